"""The README keeps its promises: two set-up commands first, every ssft_* option documented."""

import os
import re
from dataclasses import fields

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _readme():
    return open(os.path.join(REPO, "README.md")).read()


def test_readme_starts_with_exactly_two_commands():
    text = _readme()
    m = re.match(r"```bash\n(.*?)\n```", text, re.S)
    assert m, "README must start with a bash block"
    cmds = [line.split("#")[0].strip() for line in m.group(1).splitlines() if line.split("#")[0].strip()]
    assert cmds == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    for c in cmds:
        assert os.path.exists(os.path.join(REPO, c.split()[1]))
    ci = open(os.path.join(REPO, ".ci", "run")).read()
    assert "scripts/test.sh" in ci


def test_every_option_is_documented_with_help():
    from trl_ssft.config import SSFTFields

    text = _readme()
    for f in fields(SSFTFields):
        assert len(f.metadata.get("help", "")) > 20, f.name
        assert f"| `{f.name}` |" in text, f"{f.name} missing from the README options table"
