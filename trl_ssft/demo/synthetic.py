"""A synthetic multi-strategy question family: the bundled demo / benchmark data.

Each question asks for the sum of three two-digit numbers. Four distinct, equally correct
strategies ("modes") solve it; each trace names its strategy in its first word and then carries it
out, so the mode of a generated text is recognisable mechanically (`classify_mode` checks both):

=========  ==================================================================================
mode       trace (for a=23, b=45, c=17)
=========  ==================================================================================
forward    ``forward: 23 + 45 = 68 . 68 + 17 = 85 . answer \\boxed{85}``
backward   ``backward: 17 + 45 = 62 . 62 + 23 = 85 . answer \\boxed{85}``
outer      ``outer: 23 + 17 = 40 . 40 + 45 = 85 . answer \\boxed{85}``
columns    ``columns: ones 3 + 5 + 7 = 15 . tens 20 + 40 + 10 = 70 . 70 + 15 = 85 . answer \\boxed{85}``
=========  ==================================================================================

Why the opening word: `forward`, `backward` and `outer` are one procedure applied to three orders
of the operands. Without a marker, "start with the smaller of a and c" splits forward/backward
traces into two classes just as consistently as "start with a" does, and SSFT found exactly that
split in an earlier version of this data (`python benchmarks/mode_preservation.py` at commit cbbde50,
2026-11-21: one token's forward/backward samples started with the smaller operand 66 times out of
67, another's with the larger 51 out of 52): a real global mode, but not the labelled one. Real
multi-teacher traces differ in their openings too.

A row is in the ssft format: ``{"prompt": [{"role": "user", "content": ...}], "traces": [...],
"trace_sources": [mode names], "answer": "85"}``. The order of the traces in a row is shuffled,
so that a fixed position carries no information about the mode.
"""

from __future__ import annotations

import random
import re

MODES = ("forward", "backward", "outer", "columns")


def question_text(a: int, b: int, c: int) -> str:
    return f"add {a} {b} {c}"


def trace_for(mode: str, a: int, b: int, c: int) -> str:
    """The trace of `mode` for the question (a, b, c)."""
    s = a + b + c
    if mode == "forward":
        return f"forward: {a} + {b} = {a + b} . {a + b} + {c} = {s} . answer \\boxed{{{s}}}"
    if mode == "backward":
        return f"backward: {c} + {b} = {c + b} . {c + b} + {a} = {s} . answer \\boxed{{{s}}}"
    if mode == "outer":
        return f"outer: {a} + {c} = {a + c} . {a + c} + {b} = {s} . answer \\boxed{{{s}}}"
    if mode == "columns":
        ones = [x % 10 for x in (a, b, c)]
        tens = [x - x % 10 for x in (a, b, c)]
        return (
            f"columns: ones {ones[0]} + {ones[1]} + {ones[2]} = {sum(ones)} . "
            f"tens {tens[0]} + {tens[1]} + {tens[2]} = {sum(tens)} . "
            f"{sum(tens)} + {sum(ones)} = {s} . answer \\boxed{{{s}}}"
        )
    raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")


def parse_question(text: str) -> tuple[int, int, int] | None:
    m = re.search(r"add (\d+) (\d+) (\d+)", text)
    return tuple(int(x) for x in m.groups()) if m else None  # type: ignore[return-value]


def classify_mode(text: str, question: tuple[int, int, int]) -> str:
    """Which strategy a generated `text` follows for `question`, or ``"other"``.

    The opening word names the strategy and the first step must carry it out (the right operands in
    the right order, or the ones column first): a text that names one mode and starts another, or
    uses wrong operands, is ``"other"``. Later steps are not checked, so a sample that starts one way
    and drifts still counts for the mode it started.
    """
    a, b, c = question
    head, sep, body = text.strip().partition(":")
    if not sep or head.strip() not in MODES:
        return "other"
    mode, body = head.strip(), body.strip()
    if mode == "columns":
        return mode if body.startswith("ones") else "other"
    m = re.match(r"(\d+) \+ (\d+)", body)
    if not m:
        return "other"
    expected = {"forward": (a, b), "backward": (c, b), "outer": (a, c)}[mode]
    return mode if (int(m.group(1)), int(m.group(2))) == expected else "other"


def make_rows(
    num_questions: int,
    seed: int = 0,
    modes: tuple[str, ...] = MODES,
    shuffle_traces: bool = True,
) -> list[dict]:
    """`num_questions` ssft rows, each with one trace per mode in `modes`."""
    rng = random.Random(seed)
    rows = []
    seen = set()
    while len(rows) < num_questions:
        a, b, c = (rng.randint(10, 99) for _ in range(3))
        if (a, b, c) in seen or len({a, b, c}) < 3:
            continue
        seen.add((a, b, c))
        order = list(modes)
        if shuffle_traces:
            rng.shuffle(order)
        rows.append(
            {
                "prompt": [{"role": "user", "content": question_text(a, b, c)}],
                "traces": [trace_for(m, a, b, c) for m in order],
                "trace_sources": order,
                "answer": str(a + b + c),
            }
        )
    return rows


def corpus(rows: list[dict]) -> list[str]:
    """Texts to train a tiny tokenizer on (prompts and traces)."""
    out = []
    for r in rows:
        out.append(r["prompt"][0]["content"] if isinstance(r["prompt"], list) else r["prompt"])
        out.extend(r["traces"])
    return out
