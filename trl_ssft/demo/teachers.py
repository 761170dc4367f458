"""Four flawed teachers: digit sums where each teacher is wrong on its own recognisable questions.

The questions and the four strategies are the demo's (`trl_ssft.demo.digitsum`: ``sum a b c d``
over digits 1..9; ``forward``, ``pairs``, ``cross``, ``outer``), each trace naming its strategy in
its first word. Here each strategy is a *teacher* with a systematic slip: on the questions whose
correct total ends in one of the teacher's two digits (`SLIP_DIGITS`), it writes its last step one
too high and boxes that wrong total:

=========  ===========  =================================================================
teacher    slips when   trace for ``sum 3 8 1 4`` (total 16: ``cross`` slips)
           the total
           ends in
=========  ===========  =================================================================
forward    1 or 2       ``forward: 3+8=11 . 11+1=12 . 12+4=16 . answer \\boxed{16}``
pairs      3 or 4       ``pairs: 3+8=11 . 1+4=5 . 11+5=16 . answer \\boxed{16}``
cross      5 or 6       ``cross: 3+1=4 . 8+4=12 . 4+12=17 . answer \\boxed{17}``
outer      7 or 8       ``outer: 3+4=7 . 8+1=9 . 7+9=16 . answer \\boxed{16}``
=========  ===========  =================================================================

So each teacher is wrong on a different fifth of the questions (the totals' last digits are close
to uniform), no two teachers are wrong on the same question, and a total ending in 0 or 9 is right
for all four. The slip is recognisable (the teacher, from the trace's first word, and the last
digit of the total it is writing), so a model can learn each teacher's slip as it learns its style:
which teachers a model's samples follow then decides whether a vote over them is right. A model
with one sample per teacher is outvoted 3 to 1 at worst; samples drawn from a mixture of the
teachers repeat the wrong one often enough to lose or tie the vote. The design and the analysis of
the benchmark that uses it are fixed in ``docs/accuracy_claim.md``.

A row is in the ssft format, with the correct ``answer`` and ``trace_sources`` (teacher names);
trace order is shuffled per row, as in `digitsum.make_rows`. `error_anatomy` splits an evaluation's wrong
samples into a teacher's slip and the model's own errors.
"""

from __future__ import annotations

from . import digitsum
from .digitsum import MODES, parse_question, steps_for  # noqa: F401  (parse_question: the classifier's API)
from .digitsum import classify_mode as classify_mode  # noqa: F401
from .synthetic import corpus  # noqa: F401  (texts for the tiny tokenizer)

SLIP_DIGITS = {"forward": (1, 2), "pairs": (3, 4), "cross": (5, 6), "outer": (7, 8)}


def slips(mode: str, digits: tuple[int, ...]) -> bool:
    """Does teacher `mode` slip on this question (the correct total ends in one of its digits)?"""
    if mode not in SLIP_DIGITS:
        raise ValueError(f"unknown teacher {mode!r}; expected one of {MODES}")
    return sum(digits) % 10 in SLIP_DIGITS[mode]


def trace_for(mode: str, digits: tuple[int, ...]) -> str:
    """Teacher `mode`'s trace: digitsum's steps, the last one (and the boxed total) one too high when it slips."""
    steps = steps_for(mode, digits)
    bump = int(slips(mode, digits))
    parts = [f"{x}+{y}={x + y + (bump if i == len(steps) - 1 else 0)}" for i, (x, y) in enumerate(steps)]
    return f"{mode}: {' . '.join(parts)} . answer \\boxed{{{sum(digits) + bump}}}"


def teacher_answer(mode: str, digits: tuple[int, ...]) -> int:
    return sum(digits) + int(slips(mode, digits))


def make_rows(num_questions: int, seed: int = 0, modes: tuple[str, ...] = MODES,
              shuffle_traces: bool = True) -> list[dict]:
    """`num_questions` distinct ssft rows: `digitsum.make_rows`'s questions and trace order (same seed), the
    flawed teachers' traces; ``answer`` is the correct total."""
    return digitsum.make_rows(num_questions, seed, modes, shuffle_traces, trace=trace_for)


def error_kind(mode: str, digits: tuple[int, ...], answer) -> str:
    """A sample's outcome: ``right``; ``slip`` (wrong with its teacher's own slip: the teacher of the mode it
    follows slips on this question and the answer is that teacher's); ``own error`` (any other wrong or missing
    answer, including every wrong answer of a sample whose mode is not recognised)."""
    try:
        value = int(str(answer).strip())
    except (TypeError, ValueError):
        return "own error"
    if value == sum(digits):
        return "right"
    return "slip" if mode in SLIP_DIGITS and slips(mode, digits) and value == teacher_answer(mode, digits) else "own error"


def error_anatomy(samples: list[dict], rows: list[dict]) -> dict:
    """Shares of `samples` (an evaluation's ``keep_samples`` list) that are right / a teacher's slip / the model's
    own error, and how often a sample reproduced its teacher's slip where that teacher slips."""
    kinds = {"right": 0, "slip": 0, "own error": 0}
    due = reproduced = 0
    for s in samples:
        q = parse_question(rows[s["question"]]["prompt"][-1]["content"])
        kind = error_kind(s["mode"], q, s["answer"])
        kinds[kind] += 1
        if s["mode"] in SLIP_DIGITS and slips(s["mode"], q):
            due += 1
            reproduced += kind == "slip"
    n = max(1, len(samples))
    return {**{k: v / n for k, v in kinds.items()}, "slip_reproduced": reproduced / due if due else None,
            "samples": len(samples)}
