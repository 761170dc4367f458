"""Print a committed benchmark report's result, one line per method, labelled as recorded (not recomputed).

    python -m trl_ssft.demo.recorded docs/accuracy_claim_results.json [--setting T=0.7]

`scripts/demo.sh` ends with this, so a newcomer sees the comparison the paper is about (SSFT against
SFT-mixed and random tags, trained from the same weights with equal budgets) next to the demo's own
figures. The numbers are read from the report's ``across_seeds`` block, written by
`benchmarks/mode_preservation.py`; nothing is trained or evaluated here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

def _pct(v: dict) -> str:
    one = v["seeds"] <= 1 or abs(v["max"] - v["min"]) < 1e-12
    return f"{100 * v['mean']:.1f} %" + ("" if one else f" [{100 * v['min']:.1f}-{100 * v['max']:.1f}]")


def method_line(method: str, label: str, m: dict, n: int) -> str:
    """One method's line: Pass@1, Cons@N, Pass@N, modes per question, token consistency (mean [min-max])."""
    tokens = method != "none"  # SFT-mixed has no tokens: its Pass@1 is its samples'
    parts = [f"Pass@1 {'mean over tokens' if tokens else '(its samples)'} {_pct(m['Pass@1 mean'])}"]
    if tokens:
        parts.append(f"best token {_pct(m['Pass@1 best token'])}")
    parts.append(f"Cons@{n} {_pct(m['Cons@N'])}")
    if f"Pass@{n}" in m:
        parts.append(f"Pass@{n} {_pct(m[f'Pass@{n}'])}")
    modes = m["modes/question"]
    spread = "" if modes["seeds"] <= 1 else f" [{modes['min']:.2f}-{modes['max']:.2f}]"
    parts.append(f"{modes['mean']:.2f}{spread} modes/question")
    if tokens:
        parts.append(f"token consistency {_pct(m['token consistency'])}")
    return f"  {label}: " + ", ".join(parts)


def recorded_lines(report: dict, setting: str = "T=0.7", source: str = "") -> list[str]:
    """The header (what, whence, which command) and one line per method of `report` at `setting`."""
    if setting not in report.get("across_seeds", {}):
        raise ValueError(f"{source or 'the report'} has no across-seeds figures at {setting!r} "
                         f"(it has {sorted(report.get('across_seeds', {}))})")
    block = report["across_seeds"][setting]
    labels = report.get("method_labels", {})
    args = report.get("args", {})
    n = args.get("num_tokens", 4)
    seeds = args.get("seeds", "?")
    lines = [f"Recorded, not recomputed ({source or 'report'}; seeds {seeds}, {setting}, mean [min-max] over seeds), "
             f"from: {report['command']}"]
    lines += [method_line(m, labels.get(m, m), block[m], n) for m in block]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report", help="a JSON report of benchmarks/mode_preservation.py")
    p.add_argument("--setting", default="T=0.7")
    a = p.parse_args(argv)
    if not os.path.exists(a.report):
        print(f"no recorded report at {a.report}", file=sys.stderr)
        return 1
    with open(a.report) as f:
        report = json.load(f)
    print("\n".join(recorded_lines(report, a.setting, a.report)))
    for line in report.get("verdicts", []):
        print("  " + line.strip().lstrip("- ").replace("**", ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
