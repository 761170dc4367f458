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


def _demo_section(text):
    start = text.index("**`bash scripts/demo.sh`**")
    return text[start:text.index("**`bash scripts/test.sh`**", start)]


def _percentages(obj, out=None):
    """Every number of the report rendered as a percentage, as the README writes them (52 / 52.3)."""
    out = set() if out is None else out
    if isinstance(obj, dict):
        for v in obj.values():
            _percentages(v, out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _percentages(v, out)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool) and 0 <= obj <= 1:
        out.update({f"{100 * obj:.1f}", f"{100 * obj:.0f}"})
    return out


def test_readme_demo_figures_come_from_the_recorded_demo_report():
    """Every percentage the README's demo section quotes is in docs/demo_report.json (the last recorded
    `bash scripts/demo.sh` run) or in the seed spread of docs/demo_robustness.json (the recorded sweep over
    training seeds and thread counts, and the goal it checks), and so is the run time it states."""
    import json

    section = _demo_section(_readme())
    report = json.load(open(os.path.join(REPO, "docs", "demo_report.json")))
    sweep = json.load(open(os.path.join(REPO, "docs", "demo_robustness.json")))
    known = _percentages(report["summary"]) | _percentages(sweep["summary"]["spread"]) | _percentages(sweep["goal"])
    assert "docs/demo_robustness.md" in section and sweep["summary"]["goal_met"] == sweep["summary"]["runs"]
    quoted = re.findall(r"(\d+(?:\.\d+)?)\s?%", section)
    assert quoted, "the demo section quotes no figures"
    missing = [q for q in quoted if q not in known]
    assert not missing, f"README demo figures not in docs/demo_report.json: {missing}"
    assert "docs/demo_report.json" in section
    minutes = re.findall(r"(\d+(?:\.\d+)?) minutes", section)
    assert minutes and f"{report['measured']['wall_seconds'] / 60:.1f}" in minutes


def test_readme_demo_figures_test_catches_a_stale_figure():
    known = _percentages({"summary": {"pass1": 0.875, "cons": [0.5]}})
    assert "87.5" in known and "50" in known and "52" not in known
