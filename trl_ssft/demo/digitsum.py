"""The demo's question family: the sum of four digits, four strategies with different hard cases.

Each question asks for the sum of four digits 1..9 (``sum 3 8 1 6``). Four strategies solve it,
all correct in principle; each trace names its strategy in its first word and then writes every
step as ``x+y=z``, so the mode of a generated text is recognisable mechanically (`classify_mode`
checks the word and the operands of the first step):

=========  ===================================================================================
mode       trace (for 3 8 1 6)
=========  ===================================================================================
forward    ``forward: 3+8=11 . 11+1=12 . 12+6=18 . answer \\boxed{18}``   (a, b, c, d)
backward   ``backward: 6+1=7 . 7+8=15 . 15+3=18 . answer \\boxed{18}``    (d, c, b, a)
pairs      ``pairs: 3+8=11 . 1+6=7 . 11+7=18 . answer \\boxed{18}``        (a+b) + (c+d)
outer      ``outer: 3+6=9 . 8+1=9 . 9+9=18 . answer \\boxed{18}``          (a+d) + (b+c)
=========  ===================================================================================

Why this family (and not `trl_ssft.demo.synthetic`, three two-digit numbers): the tokenizer splits
numbers into single digits, so a step like ``68 + 17 = 85`` asks a 2-layer model to emit the tens
digit before the ones digit, i.e. to look ahead through a carry from two-digit operands. The old
family's demo model learned the strategies' form but got 2-8 % of the answers right. Here every
step adds a number <= 27 to a digit (or two numbers <= 18), a lookup a tiny model learns within
the demo's budget, and traces are ~35 tokens.

Why the strategies fail on different questions: the four strategies compute different
intermediate sums for the same question, and the error-prone step of a tiny model is a step that
adds to a two-digit number with a carry into the tens (``15+8=23``, ``12+9=21``). Where such a step
happens depends on the order: for ``3 8 1 6`` forward has none (``11+1``, ``12+6``), backward one
(``7+8`` is easy, ``15+3`` no carry: none), pairs none, outer none; for ``9 2 8 4`` forward has two
(``11+8=19``? no: ``11+8`` has no carry, ``19+4=23`` does), backward one (``12+2`` no, ``14+9=23``
yes), and so on: `hard_steps` counts them per strategy, and about half of the questions that are
hard for one strategy are easy for another. A vote across strategies can outvote one strategy's
slip; a vote across samples of one strategy slips on the same steps more often.

A row is in the ssft format: ``{"prompt": [{"role": "user", "content": ...}], "traces": [...],
"trace_sources": [mode names], "answer": "18"}``; the order of the traces is shuffled per row.
"""

from __future__ import annotations

import random
import re

from .synthetic import corpus  # noqa: F401  (texts for the tiny tokenizer: one home, shared by both families)

MODES = ("forward", "pairs", "cross", "outer")


def question_text(digits: tuple[int, ...]) -> str:
    return "sum " + " ".join(str(d) for d in digits)


def steps_for(mode: str, digits: tuple[int, ...]) -> list[tuple[int, int]]:
    """The (x, y) additions of `mode`, in order (each step writes ``x+y=x+y``)."""
    a, b, c, d = digits
    if mode == "forward":
        return [(a, b), (a + b, c), (a + b + c, d)]
    if mode == "cross":
        return [(a, c), (b, d), (a + c, b + d)]
    if mode == "pairs":
        return [(a, b), (c, d), (a + b, c + d)]
    if mode == "outer":
        return [(a, d), (b, c), (a + d, b + c)]
    raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")


def trace_for(mode: str, digits: tuple[int, ...]) -> str:
    """The trace of `mode` for the question `digits`."""
    body = " . ".join(f"{x}+{y}={x + y}" for x, y in steps_for(mode, digits))
    return f"{mode}: {body} . answer \\boxed{{{sum(digits)}}}"


def hard_steps(mode: str, digits: tuple[int, ...]) -> int:
    """`mode`'s error-prone steps for `digits`: a step on a two-digit operand with a carry into the
    tens (``14+7=21``, ``12+9=21``), where the model must add the ones and also raise the tens digit
    (one-digit facts like ``7+8=15`` are a 9 x 9 table it learns early)."""
    return sum(max(x, y) >= 10 and (x % 10 + y % 10) >= 10 for x, y in steps_for(mode, digits))


def parse_question(text: str) -> tuple[int, int, int, int] | None:
    m = re.search(r"sum (\d) (\d) (\d) (\d)\b", text)
    return tuple(int(x) for x in m.groups()) if m else None  # type: ignore[return-value]


def classify_mode(text: str, question: tuple[int, ...]) -> str:
    """Which strategy a generated `text` follows for `question`, or ``"other"``.

    The opening word names the strategy and the first step must add that strategy's operands in its
    order; a text that names one mode and starts another, or uses wrong operands, is ``"other"``.
    Later steps are not checked, so a sample that slips later still counts for the mode it started.
    """
    head, sep, body = text.strip().partition(":")
    mode = head.strip()
    if not sep or mode not in MODES:
        return "other"
    m = re.match(r"\s*(\d+)\s*\+\s*(\d+)", body)
    if not m:
        return "other"
    return mode if (int(m.group(1)), int(m.group(2))) == steps_for(mode, tuple(question))[0] else "other"


def make_rows(num_questions: int, seed: int = 0, modes: tuple[str, ...] = MODES,
              shuffle_traces: bool = True, trace=None) -> list[dict]:
    """`num_questions` distinct ssft rows, each with one trace per mode in `modes`; `trace(mode, digits)`
    writes a trace (default `trace_for`; `trl_ssft.demo.teachers` passes its flawed teachers')."""
    trace = trace or trace_for
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < num_questions:
        q = tuple(rng.randint(1, 9) for _ in range(4))
        if q in seen:
            continue
        seen.add(q)
        order = list(modes)
        if shuffle_traces:
            rng.shuffle(order)
        rows.append({
            "prompt": [{"role": "user", "content": question_text(q)}],
            "traces": [trace(m, q) for m in order],
            "trace_sources": order,
            "answer": str(sum(q)),
        })
    return rows
