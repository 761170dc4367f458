"""Every public layout of multi-trace data -> candidate records (one per question x trace) -> ssft rows.

A **candidate** (`Candidate`) is one trace of one question with what is known about it: its question,
prompt and reference answer, its teacher, its thinking and final text, the source's grade, the finish
reason and a request error. Four source shapes (`SHAPES`, a registry) produce them:

- ``columns``: one row per question, one column group per teacher: thinking (`trace_columns`), final
  answer (`final_columns`) and grade (`grade_columns`), e.g. s1K-1.1's ``deepseek_thinking_trajectory``,
  ``deepseek_attempt``, ``deepseek_grade`` ("Yes"/"No"). Without `final_columns` each trace column holds a
  complete trace.
- ``lists``: one row per question, a list of generations (`response_column`) with parallel lists of
  correctness flags (`correct_column`), finish reasons, thinking or teachers: OpenR1-Math's ``problem``,
  ``answer``, ``generations``, ``correctness_math_verify``, ``finish_reasons``; also the ssft format itself.
- ``long``: one row per (question, trace), grouped by `id_column`. Its defaults read the **candidates
  file** that ``trl-ssft data generate`` writes, with no options (one JSON object per line)::

      question_id   str                 the question's key (all samples of a question share it)
      prompt        str | [messages]    the question (a chat message list ends with the user turn)
      answer        str | null          the reference short answer (null: none)
      teacher       str                 the model that wrote the sample
      sample_index  int                 0..K-1 within (question, teacher)
      thinking      str | null          reasoning returned separately (the `reasoning_content`
                                        convention); null: not split by the server
      response      str                 the final message content; when `thinking` is null it may
                                        itself carry ``<think>...</think>``, which is split off
      finish_reason str                 "stop", "length", ...; "length" is dropped (cut off)
      error         str | null          a request that failed for good: counted as a drop, never trained

- ``join``: several files (one per teacher), each in the long layout, joined by `id_column`;
  the teacher of a file is its label (`trace_sources`, default the file name).

The reference answer comes from `answer_column`: as it is (``answer_from: value``) or, when the source
only has a worked solution, its last ``\\boxed{}`` (``answer_from: boxed``; none: no reference, counted).
Grade / correctness columns become filters (`verify.py`). `PRESETS` name the column sets of public datasets.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..checks import SSFTDataError
from ..fields import option


@dataclass(slots=True)
class Candidate:
    """One trace of one question, before verification (see the module docstring for each field)."""

    question_id: str
    prompt: Any
    answer: str | None
    teacher: str
    thinking: str | None
    response: str | None
    correct: bool | None = None
    finish_reason: str | None = None
    error: str | None = None
    row: int = -1


@dataclass
class SourceSpec:
    """Where a source keeps each part of a candidate. Unset fields take the shape's defaults (`SHAPES`)."""

    shape: str | None = option(None, "Source layout: columns, lists, long or join (default: from --preset, or "
                                     "detected from the column names).")
    prompt_column: str | None = option(None, "Column holding the question (a string or a list of chat messages).")
    id_column: str | None = option(None, "Column holding the question key (long/join: required, default "
                                         "question_id; columns/lists: default the row number).")
    answer_column: str | None = option(None, "Column holding the reference answer (row `answer`), or a worked "
                                             "solution with --answer-from boxed.")
    answer_from: str | None = option(None, "How the reference is read from answer_column: `value` (as it is) or "
                                       "`boxed` (the last \\boxed{} of a worked solution; none: counted as missing).")
    trace_columns: list[str] = option((), "columns: one column per teacher holding its thinking (or, without "
                                          "final_columns, its complete trace).")
    final_columns: list[str] = option((), "columns: one column per teacher (parallel to trace_columns) holding its "
                                          "final answer text, e.g. s1K-1.1's deepseek_attempt.")
    grade_columns: list[str] = option((), "columns: one column per teacher holding its grade (Yes/No, true/false, "
                                          "1/0); a wrong grade drops the trace (counted).")
    response_column: str | None = option(None, "lists: the column with the list of generations; long/join: the "
                                               "column with the response (may carry <think>...</think>).")
    thinking_column: str | None = option(None, "lists/long: column with the reasoning returned separately (null: "
                                               "split from the response).")
    correct_column: str | None = option(None, "lists/long: correctness flags (a list parallel to the generations "
                                              "in lists), used as grades.")
    finish_reason_column: str | None = option(None, "lists/long: finish reasons (`length` is dropped).")
    teacher_column: str | None = option(None, "lists/long: the teacher of each trace (a parallel list in lists).")
    error_column: str | None = option(None, "long/join: request errors (a set value drops the trace).")
    trace_sources: list[str] = option((), "Teacher labels: columns: one per trace column (default the column "
                                          "names); join: one per file (default the file names).")
    teacher: str | None = option(None, "lists/long: the teacher label when there is no teacher column.")
    system_prompt: str | None = option(None, "With string questions: the prompt becomes [system, user] chat "
                                             "messages with this system message.")
    as_messages: bool | None = option(None, "Turn string questions into a [user] chat message list (rendered "
                                            "with the chat template; the default); false keeps them as plain text.")


# ---------------------------------------------------------------- small readers
_TRUE = {"yes", "y", "true", "t", "correct", "1"}
_FALSE = {"no", "n", "false", "f", "incorrect", "wrong", "0"}


def parse_grade(value: Any, row: int, column: str, dataset: str = "source") -> bool | None:
    """A grade / correctness cell -> True, False or None (no grade). Raises `SSFTDataError` for other values."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise SSFTDataError(row, column, f"grade {value!r} is not one of yes/no, true/false, correct/incorrect, 1/0.",
                        "map the grades to yes/no, or leave the grade column out.", dataset)


def read_reference(value: Any, how: str) -> str | None:
    """The reference answer of a cell: as it is (`value`) or the last ``\\boxed{}`` (`boxed`); None when missing."""
    if value is None:
        return None
    text = str(value).strip()
    if how == "boxed":
        from ..eval.answers import extract_boxed

        return extract_boxed(text) or None
    return text or None


def make_prompt(value: Any, spec: SourceSpec, row: int, dataset: str) -> Any:
    """The row's prompt: a string (kept, or made a [system?, user] chat when `as_messages`) or a message list."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise SSFTDataError(row, spec.prompt_column, "the question is missing or empty.",
                            "give every row a question, or drop the row.", dataset)
    if isinstance(value, str) and (spec.as_messages or spec.system_prompt):
        system = [{"role": "system", "content": spec.system_prompt}] if spec.system_prompt else []
        return system + [{"role": "user", "content": value}]
    return list(value) if not isinstance(value, str) else value


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _question(row: dict, index: int, spec: SourceSpec, dataset: str) -> tuple[str, Any, str | None]:
    key = row.get(spec.id_column) if spec.id_column else index
    if key is None:
        raise SSFTDataError(index, spec.id_column, "the question key is missing.", "give every row a key.", dataset)
    prompt = make_prompt(row.get(spec.prompt_column), spec, index, dataset)
    reference = read_reference(row.get(spec.answer_column), spec.answer_from) if spec.answer_column else None
    return str(key), prompt, reference


# ---------------------------------------------------------------- the shapes
def from_columns(row: dict, index: int, spec: SourceSpec, dataset: str = "source") -> list[Candidate]:
    """``columns``: one candidate per trace column (s1K-1.1: thinking + attempt + grade per teacher)."""
    qid, prompt, reference = _question(row, index, spec, dataset)
    labels = list(spec.trace_sources) or list(spec.trace_columns)
    out = []
    for j, col in enumerate(spec.trace_columns):
        grade = parse_grade(row.get(spec.grade_columns[j]), index, spec.grade_columns[j], dataset) \
            if spec.grade_columns else None
        if spec.final_columns:  # thinking and answer apart: a null thinking is an empty one
            thinking, response = _text(row.get(col)) or "", _text(row.get(spec.final_columns[j]))
        else:
            thinking, response = None, _text(row.get(col))
        out.append(Candidate(qid, prompt, reference, labels[j], thinking, response, grade, row=index))
    return out


def _parallel(row: dict, column: str | None, n: int, index: int, spec: SourceSpec, dataset: str) -> list:
    values = row.get(column) if column else None
    if values is None:
        return [None] * n
    if isinstance(values, str) or len(values) != n:
        got = "a string" if isinstance(values, str) else f"{len(values)} items"
        raise SSFTDataError(index, column, f"has {got} but '{spec.response_column}' has {n} generations.",
                            "give one value per generation.", dataset)
    return list(values)


def from_lists(row: dict, index: int, spec: SourceSpec, dataset: str = "source") -> list[Candidate]:
    """``lists``: one candidate per item of the generations list (OpenR1-Math: ``generations`` and
    ``correctness_math_verify``), with optional parallel lists of finish reasons, thinking and teachers."""
    qid, prompt, reference = _question(row, index, spec, dataset)
    responses = row.get(spec.response_column)
    if responses is None:
        responses = []
    if isinstance(responses, str):
        raise SSFTDataError(index, spec.response_column, "is a string, not a list of generations.",
                            "use --shape long for one generation per row.", dataset)
    n = len(responses)
    col = {c: _parallel(row, getattr(spec, c), n, index, spec, dataset)
           for c in ("correct_column", "finish_reason_column", "thinking_column", "teacher_column")}
    default = spec.teacher or spec.response_column
    return [Candidate(qid, prompt, reference, _text(col["teacher_column"][j]) or default,
                      _text(col["thinking_column"][j]), _text(responses[j]),
                      parse_grade(col["correct_column"][j], index, spec.correct_column or "", dataset),
                      _text(col["finish_reason_column"][j]), row=index)
            for j in range(n)]


def from_long(row: dict, index: int, spec: SourceSpec, dataset: str = "source") -> list[Candidate]:
    """``long`` / ``join``: the row is one candidate (the candidates file of ``trl-ssft data generate``)."""
    qid, prompt, reference = _question(row, index, spec, dataset)
    get = lambda c: row.get(c) if c else None  # noqa: E731
    teacher = _text(get(spec.teacher_column)) or spec.teacher or "unknown"
    grade = parse_grade(get(spec.correct_column), index, spec.correct_column or "", dataset)
    return [Candidate(qid, prompt, reference, teacher, _text(get(spec.thinking_column)),
                      _text(get(spec.response_column)), grade, _text(get(spec.finish_reason_column)),
                      _text(get(spec.error_column)), row=index)]


@dataclass(frozen=True)
class Shape:
    """A source layout: its row reader, whether a row is a whole question (`wide`), its default columns."""

    read: Callable[..., list[Candidate]]
    wide: bool
    defaults: dict = field(default_factory=dict)


_LONG = dict(id_column="question_id", prompt_column="prompt", answer_column="answer", teacher_column="teacher",
             thinking_column="thinking", response_column="response", finish_reason_column="finish_reason",
             error_column="error")
SHAPES: dict[str, Shape] = {
    "columns": Shape(from_columns, True, dict(prompt_column="prompt")),
    "lists": Shape(from_lists, True, dict(prompt_column="prompt", response_column="generations")),
    "long": Shape(from_long, False, _LONG),
    "join": Shape(from_long, False, {**_LONG, "teacher_column": None}),
}

_FINAL_DEFAULTS = dict(answer_from="value", as_messages=True)
_OPTIONAL = ("thinking_column", "finish_reason_column", "error_column", "teacher_column", "correct_column")
# Public datasets, by their real column names (a preset = a shape + its columns).
PRESETS: dict[str, dict] = {
    "s1k": dict(shape="columns", prompt_column="question", answer_column="solution", answer_from="boxed",
                trace_columns=["deepseek_thinking_trajectory", "gemini_thinking_trajectory"],
                final_columns=["deepseek_attempt", "gemini_attempt"], grade_columns=["deepseek_grade", "gemini_grade"],
                trace_sources=["deepseek", "gemini"]),
    "openr1": dict(shape="lists", prompt_column="problem", id_column="uuid", answer_column="answer",
                   response_column="generations", correct_column="correctness_math_verify",
                   finish_reason_column="finish_reasons", teacher="deepseek-r1"),
    "candidates": dict(shape="long"),
    "ssft": dict(shape="lists", prompt_column="prompt", answer_column="answer", response_column="traces",
                 teacher_column="trace_sources", teacher="trace", as_messages=False),
}
# Detection order: the first preset whose marker columns are all present.
_MARKERS = [("candidates", {"question_id", "response"}), ("s1k", {"deepseek_attempt", "gemini_attempt"}),
            ("openr1", {"generations", "correctness_math_verify"}), ("ssft", {"prompt", "traces"})]


def detect_preset(columns: Sequence[str]) -> str | None:
    """The preset whose marker columns a source has (candidates, s1k, openr1, ssft), or None."""
    have = set(columns)
    return next((name for name, marks in _MARKERS if marks <= have), None)


def resolve_spec(spec: SourceSpec | None = None, preset: str | None = None,
                 columns: Sequence[str] | None = None) -> SourceSpec:
    """Shape defaults < preset < the fields set in `spec`. With neither shape nor preset, the preset is
    detected from `columns`. Raises `ValueError` for an unknown shape / preset or inconsistent lists."""
    spec = spec or SourceSpec()
    if preset is None and spec.shape is None and columns is not None:
        preset = detect_preset(columns)
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: use one of {', '.join(PRESETS)}")
    base = dict(PRESETS.get(preset, {}))
    shape = spec.shape or base.get("shape")
    if shape not in SHAPES:
        raise ValueError(f"source shape {shape!r}: give --shape ({', '.join(SHAPES)}) or --preset "
                         f"({', '.join(PRESETS)}); the columns {list(columns or [])} match no preset")
    merged = {**_FINAL_DEFAULTS, **SHAPES[shape].defaults, **base, "shape": shape}
    default = SourceSpec()
    given = {f.name: getattr(spec, f.name) for f in fields(SourceSpec)
             if getattr(spec, f.name) != getattr(default, f.name) and f.name != "shape"}
    if columns is not None:  # optional columns named by a default, not by the user, are read when present
        merged.update({n: None for n in _OPTIONAL if merged.get(n) and merged[n] not in columns})
    out = replace(default, **{**merged, **given})
    check_spec(out)
    return out


def check_spec(spec: SourceSpec) -> None:
    """Raise `ValueError` for settings that cannot work (shared by the CLI, the Python API and Axolotl)."""
    if spec.answer_from not in ("value", "boxed"):
        raise ValueError(f"answer_from must be `value` or `boxed`, got {spec.answer_from!r}")
    if spec.shape == "columns":
        n = len(spec.trace_columns)
        if not n:
            raise ValueError("the columns shape needs trace_columns (one column per teacher)")
        for name in ("final_columns", "grade_columns", "trace_sources"):
            if getattr(spec, name) and len(getattr(spec, name)) != n:
                raise ValueError(f"{name} needs one entry per trace column ({n}), got {list(getattr(spec, name))}")
    if spec.shape in ("long", "join") and not spec.id_column:
        raise ValueError(f"the {spec.shape} shape needs id_column (the question key)")


def required_columns(spec: SourceSpec) -> list[str]:
    """The columns a source must have for `spec`: every column it names (`resolve_spec` with the source's
    columns leaves out the optional ones a shape or preset names by default and the source lacks)."""
    cols = [spec.prompt_column, spec.id_column, spec.answer_column, *spec.trace_columns, *spec.final_columns,
            *spec.grade_columns, spec.response_column, spec.thinking_column, spec.correct_column,
            spec.finish_reason_column, spec.teacher_column, spec.error_column]
    if spec.shape == "columns":  # the lists / long columns are not read
        cols = cols[:3] + [*spec.trace_columns, *spec.final_columns, *spec.grade_columns]
    return [c for c in dict.fromkeys(cols) if c]


def check_columns(spec: SourceSpec, columns: Sequence[str], dataset: str = "source") -> None:
    """Raise `SSFTDataError` naming the columns `spec` needs that the source lacks."""
    missing = [c for c in required_columns(spec) if c not in columns]
    if missing:
        raise SSFTDataError(None, ", ".join(missing), f"column(s) not in the dataset (it has {list(columns)}).",
                            "name the right columns (see `trl-ssft data build --help`), or pick another --preset.",
                            dataset)


def row_candidates(row: dict, index: int, spec: SourceSpec, dataset: str = "source") -> list[Candidate]:
    """The candidates of one source row, by its shape (`SHAPES`)."""
    return SHAPES[spec.shape].read(row, index, spec, dataset)




# ---------------------------------------------------------------- one wide row -> one ssft row
def format_counts(counts: Counter) -> str:
    """``"graded_incorrect 3, empty 1"``: reasons by count (largest first)."""
    return ", ".join(f"{k} {v}" for k, v in counts.most_common()) or "nothing dropped"


__all__ = ["Candidate", "PRESETS", "SHAPES", "SourceSpec", "check_columns", "check_spec", "detect_preset",
           "format_counts", "parse_grade", "row_candidates", "read_reference", "required_columns", "resolve_spec"]
