"""Verification of candidate traces: which ones may train, and the trace text of each one that may.

Checks, in this order; the first that fails drops the candidate under its reason (`REASONS`):

1. ``error``: the generation request failed for good (the candidates file's `error`).
2. ``length``: cut by the length limit (finish reason ``length``).
3. ``empty``: no text at all; ``no_final_answer``: reasoning without a final answer text (an unclosed
   ``<think>``, an empty attempt column); ``empty_thinking``: the template lays out thinking
   (``think``, ``s1``, a format with ``{thinking}``) but the thinking part is empty.
4. ``graded_incorrect``: the source graded it wrong (a grade / correctness column; `use_grades`).
5. The answer check (`check_answers`: ``always`` / ``auto`` / ``never``), against the question's reference
   answer with the evaluation's equality (`trl_ssft.eval.answers.answers_equal`, math-verify; there is no
   second equality rule here): ``no_reference`` (none to check against; under ``auto`` a trace the source
   graded correct is kept on its grade), ``reference_unparseable`` (math-verify cannot read the
   reference), ``no_answer`` (nothing extracted from the final answer text: the last ``\\boxed{}`` by
   default, `extract` / `answer_pattern` as in evaluation), ``incorrect`` (a different answer).

With `keep_incorrect`, ``graded_incorrect`` and ``incorrect`` traces are kept (and counted as
``kept_incorrect``). A kept candidate's trace is its template rendering (`templates.py`): thinking,
then the final answer, so every trace ends with the answer the model must learn.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from ..eval.answers import answers_equal, make_extract, math_verify_available, reference_parses
from ..fields import option
from .sources import Candidate
from .templates import TraceTemplate, get_template, split_thinking

REASONS: dict[str, str] = {
    "error": "the generation request failed for good",
    "length": "cut by the length limit (finish reason `length`)",
    "empty": "no trace text",
    "no_final_answer": "reasoning without a final answer text",
    "empty_thinking": "the template lays out thinking, but it is empty",
    "graded_incorrect": "graded wrong by the source (grade / correctness column)",
    "no_reference": "no reference answer to check against",
    "reference_unparseable": "math-verify cannot parse the reference answer",
    "no_answer": "no answer extracted from the final answer text",
    "incorrect": "its answer differs from the reference (math-verify)",
}
CHECK_MODES = ("auto", "always", "never")
KEPT_INCORRECT = "kept_incorrect"


@dataclass
class VerifyOptions:
    """What makes a candidate trainable, and how its trace text is laid out."""

    template: str = option("think", "Trace layout from thinking + final answer: a preset (think, s1, plain) or a "
                                    "format string with {thinking} and {answer}. A trace given as one text is kept "
                                    "as it is.")
    check_answers: str = option("auto", "Check each trace's answer against the reference with math-verify: "
                                        "`always`, `never`, or `auto` (where a reference exists; without one a "
                                        "trace is kept only if the source graded it correct).")
    use_grades: bool = option(True, "Use the source's grade / correctness columns as filters.")
    keep_incorrect: bool = option(False, "Keep traces graded wrong or whose answer differs from the reference "
                                         "(counted as kept_incorrect).")
    extract: str = option("boxed", "How the answer is read from the final answer text: `boxed` (the last "
                                   "\\boxed{}) or `fallback` (the evaluation's fallback order).")
    answer_pattern: str | None = option(None, "A regex whose last match is the answer (overrides extract).")


def check_options(opts: VerifyOptions) -> None:
    """Raise `ValueError` / `ImportError` for options that cannot work (before any row is read)."""
    get_template(opts.template)
    if opts.check_answers not in CHECK_MODES:
        raise ValueError(f"check_answers must be one of {CHECK_MODES}, got {opts.check_answers!r}")
    make_extract(opts.answer_pattern, opts.extract)
    if opts.check_answers != "never" and not math_verify_available():
        raise ImportError("checking answers needs math-verify: pip install 'trl-ssft[eval]', or turn the check "
                          "off (--check-answers never / check_answers='never').")


@lru_cache(maxsize=4096)
def _reference_parses(reference: str) -> bool:
    return reference_parses(reference)


class Verifier:
    """`check(candidate) -> (trace | None, reason | None)` under fixed options (template and extractor built once)."""

    def __init__(self, opts: VerifyOptions):
        check_options(opts)
        self.opts = opts
        self.template: TraceTemplate = get_template(opts.template)
        self.extract = make_extract(opts.answer_pattern, opts.extract)

    def parts(self, c: Candidate) -> tuple[str | None, str, str | None]:
        """(thinking, final answer text, drop reason) of a candidate; thinking None: one complete text."""
        thinking, final = c.thinking, c.response or ""
        if thinking is None:
            thinking, final = split_thinking(final)
        if thinking is None:
            return None, final, None if final.strip() else "empty"
        if not final.strip():
            return thinking, final, "no_final_answer" if thinking.strip() else "empty"
        if self.template.needs_thinking and not thinking.strip():
            return thinking, final, "empty_thinking"
        return thinking, final, None

    def _answer(self, c: Candidate, final: str) -> str | None:
        """None when the answer check passes (or is off), else the reason it fails."""
        mode = self.opts.check_answers
        if mode == "never":
            return None
        if c.answer is None:
            graded_ok = self.opts.use_grades and c.correct is True
            return None if mode == "auto" and graded_ok else "no_reference"
        if not _reference_parses(c.answer):
            return "reference_unparseable"
        pred = self.extract(final)
        if pred is None:
            return "no_answer"
        return None if answers_equal(c.answer, pred, use_math_verify=True) else "incorrect"

    def check(self, c: Candidate) -> tuple[str | None, str | None]:
        """(the trace text, None) for a kept candidate (reason ``kept_incorrect`` when kept only thanks to
        `keep_incorrect`), or (None, the drop reason)."""
        if c.error:
            return None, "error"
        if (c.finish_reason or "").lower() == "length":
            return None, "length"
        thinking, final, reason = self.parts(c)
        if reason is not None:
            return None, reason
        wrong = None
        if self.opts.use_grades and c.correct is False:
            wrong = "graded_incorrect"
        else:
            wrong = self._answer(c, final)
            if wrong not in (None, "incorrect"):
                return None, wrong
        if wrong is not None and not self.opts.keep_incorrect:
            return None, wrong
        return self.template.render(thinking, final), KEPT_INCORRECT if wrong else None


def verify_question(candidates: list[Candidate], verifier: Verifier) -> tuple[list[str], list[str], Counter]:
    """(traces, their teachers, Counter of drop reasons and ``kept_incorrect``) of one question's candidates."""
    traces, teachers, counts = [], [], Counter()
    for c in candidates:
        trace, reason = verifier.check(c)
        if reason is not None:
            counts[reason] += 1
        if trace is not None:
            traces.append(trace)
            teachers.append(c.teacher)
    return traces, teachers, counts


__all__ = ["CHECK_MODES", "KEPT_INCORRECT", "REASONS", "Verifier", "VerifyOptions", "check_options", "verify_question"]
