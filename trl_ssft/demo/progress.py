"""Readable training progress for the demo: one line per logging step from a raw trainer log.

    axolotl train recipe.yaml 2>&1 | tee train.log | python -m trl_ssft.demo.progress

reads the log (tqdm bars separated by carriage returns, the trainer's metric dicts, everything else)
and prints, for each logged training step, ``step 128/1024 (12%) loss 0.412 margin 0.031
elapsed 0:41 ETA 4:45``, the eval loss when there is one, the ``SSFT ...`` summary lines and
errors. Nothing else: the full log stays in the tee'd file.
"""

from __future__ import annotations

import ast
import re
import sys

BAR = re.compile(r"(\d+)/(\d+) \[([\d:]+)<([\d:?]+)")


def _metrics(line: str) -> dict | None:
    try:
        d = ast.literal_eval(line.strip())
    except (ValueError, SyntaxError):
        return None
    return d if isinstance(d, dict) else None


def _f(d: dict, key: str) -> str:
    try:
        return f"{float(d[key]):.3f}"
    except (KeyError, TypeError, ValueError):
        return "-"


def format_line(line: str, state: dict) -> str | None:
    """The progress line for one log line (None: nothing to print); `state` keeps the last bar."""
    m = BAR.search(line)
    if m and ("it/s" in line or "s/it" in line):
        # the training bar is the longest one (eval and weight-loading bars are short)
        if int(m.group(2)) >= state.get("total", 0):
            state.update(step=int(m.group(1)), total=int(m.group(2)), elapsed=m.group(3), eta=m.group(4))
        return None
    s = line.strip()
    if "examples/s" in s:
        return None
    if s.startswith("{'loss'") or s.startswith("{'eval_loss'"):
        d = _metrics(s)
        if d is None:
            return None
        step, total = state.get("step", 0), state.get("total", 0)
        pct = f" ({100 * step / total:.0f}%)" if total else ""
        where = f"step {step}/{total}{pct}" if total else f"step {step}"
        timing = f"elapsed {state.get('elapsed', '-')} ETA {state.get('eta', '-')}"
        if "loss" in d:
            return (f"{where}  loss {_f(d, 'loss')}  ssft margin {_f(d, 'ssft/margin')}  "
                    f"usage entropy {_f(d, 'ssft/usage_entropy')}  {timing}")
        return f"{where}  eval loss {_f(d, 'eval_loss')}  eval margin {_f(d, 'eval_ssft/margin')}"
    if s.startswith("{'train_runtime'"):
        d = _metrics(s) or {}
        return f"training done in {_f(d, 'train_runtime')} s, mean loss {_f(d, 'train_loss')}"
    if s.startswith("SSFT") or "Traceback" in s or re.search(r"\bError\b|Error:", s):
        return s
    return None


def main(stream=None, out=None) -> None:
    stream, out = stream or sys.stdin, out or sys.stdout
    state: dict = {}
    for chunk in stream:  # tqdm's updates end with \r, so one chunk holds the bar updates before a line
        for part in re.split(r"[\r\n]", chunk):
            line = format_line(part, state)
            if line:
                print(line, file=out, flush=True)


if __name__ == "__main__":
    main()
