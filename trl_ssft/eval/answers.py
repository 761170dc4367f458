"""Answers of generated texts: extraction, normalisation, equality (one home for all three).

Extraction (`extract_answer`): ``boxed`` (default) takes the last ``\\boxed{...}``; ``fallback``
tries, in the authors' order, ``\\boxed{}``, then "final answer is ...", then "Answer: ...", then the
last number of the text. The fallback also credits a truncated text whose last number happens to
be the right answer. Multiple-choice questions (`extract_choice`) give an option letter.

Equality (`answers_equal`): normalised strings (`normalize_answer`) or equal plain numbers
(integers, decimals, ``a/b``, ``\\frac{a}{b}``) first, then ``math_verify`` when it is installed
(it is part of the ``eval`` extra). `equality_name` says which one a run used, for the report.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from fractions import Fraction

EXTRACT_MODES = ("boxed", "fallback")
DEFAULT_CHOICES = "ABCD"


# ---------------------------------------------------------------- extraction
def _balanced(text: str, k: int) -> str | None:
    """Content of the brace group opening at ``text[k] == "{"`` (nested braces allowed), None if unbalanced."""
    depth = 0
    for e in range(k, len(text)):
        if text[e] == "{":
            depth += 1
        elif text[e] == "}":
            depth -= 1
            if depth == 0:
                return text[k + 1: e].strip()
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (nested braces allowed), or None. ``\\boxed 5`` also works."""
    start = text.rfind("\\boxed")
    while start != -1:
        k = start + len("\\boxed")
        while k < len(text) and text[k] == " ":
            k += 1
        if k < len(text) and text[k] == "{":
            inner = _balanced(text, k)
            if inner is not None:
                return inner
            # unbalanced: try an earlier \boxed
        elif k > start + len("\\boxed"):
            m = re.match(r"[^\s$]+", text[k:])
            if m:
                return m.group(0)
        start = text.rfind("\\boxed", 0, start)
    return None


_STATEMENT_END = r"(?=\.\s|\.?\s*$|\n)"
_FINAL_IS = re.compile(r"final answer is\s*:?\s*(.+?)" + _STATEMENT_END, re.IGNORECASE)
_ANSWER_COLON = re.compile(r"answer\s*:\s*(.+?)" + _STATEMENT_END, re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?|[-+]?\d+(?:\.\d+)?")


def _clean_statement(s: str) -> str | None:
    s = s.strip()
    m = re.match(r"\$+([^$]+)\$+", s)  # "$7$ apples" -> "7"
    if m:
        s = m.group(1)
    s = s.strip().strip("$").strip().rstrip(".").strip()
    return s or None


def _last(regex: re.Pattern, text: str) -> str | None:
    matches = list(regex.finditer(text))
    return _clean_statement(matches[-1].group(1)) if matches else None


def extract_fallback(text: str) -> str | None:
    """The authors' order: last ``\\boxed{}``, else the last "final answer is X", else the last
    "Answer: X", else the last number of the text (thousands separators kept), else None.

    The last-number step also credits a truncated text whose last number is the right answer.
    """
    for step in (extract_boxed(text), _last(_FINAL_IS, text), _last(_ANSWER_COLON, text)):
        if step is not None:
            return extract_boxed(step) or step
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def extract_answer(text: str, pattern: str | re.Pattern | None = None, mode: str = "boxed") -> str | None:
    """The final answer of a generated text.

    With a `pattern` (regex), its last match (first group when it has groups, else the whole match);
    otherwise ``mode="boxed"``: the last ``\\boxed{...}``; ``mode="fallback"``: `extract_fallback`.
    """
    if pattern is not None:
        matches = list(re.finditer(pattern, text))
        if not matches:
            return None
        m = matches[-1]
        return (m.group(1) if m.re.groups else m.group(0)).strip()
    if mode == "boxed":
        return extract_boxed(text)
    if mode == "fallback":
        return extract_fallback(text)
    raise ValueError(f"extraction mode must be one of {EXTRACT_MODES}, got {mode!r}")


def normalize_choice(s: str | None, letters: str = DEFAULT_CHOICES) -> str | None:
    """An option letter from ``"A"``, ``"(a)"``, ``"\\text{(A)}"``, ``"A."``, ``"(B) 42"``; None otherwise."""
    if s is None:
        return None
    t = re.sub(r"\\text(?:bf)?\{([^{}]*)\}", r"\1", str(s)).replace("$", "").strip().rstrip(".").strip()
    m = re.fullmatch(r"\(?\s*([A-Za-z])\s*\)?", t) or re.match(r"\(([A-Za-z])\)\s", t + " ")
    if m and m.group(1).upper() in letters.upper():
        return m.group(1).upper()
    return None


def extract_choice(text: str, letters: str = DEFAULT_CHOICES) -> str | None:
    """The option letter a multiple-choice answer picks, or None.

    Order: the last ``\\boxed{}`` when it holds a letter (``A``, ``(A)``, ``\\text{(A)}``), else the last
    "answer is (X)" / "answer: X" / "Answer: $X$" (the authors' GPQA prompt asks for 'Answer: $LETTER') with X one
    of `letters` (upper case). Nothing else is guessed.
    """
    boxed = normalize_choice(extract_boxed(text), letters)
    if boxed is not None:
        return boxed
    opts = re.escape(letters.upper())
    rx = re.compile(r"(?i:answer)(?:\s+(?:is|would be))?\s*:?\s*\**\s*\$?\s*\(?([" + opts + r"])\)?(?![A-Za-z])")
    matches = rx.findall(text)
    return matches[-1] if matches else None


# ---------------------------------------------------------------- normalisation
_STRIP = [r"\left", r"\right", r"\!", r"\,", r"\;", r"\displaystyle", "$", "^\\circ", "^{\\circ}", "°"]
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?")


def normalize_answer(s: str) -> str:
    """Light normalisation for string equality.

    Removes spaces, ``$``, ``\\left``/``\\right``, degree signs, ``\\text{...}`` wrappers, a trailing
    period and a leading one-letter ``x =``; ``dfrac``/``tfrac`` -> ``frac``, ``\\frac12`` ->
    ``\\frac{1}{2}``; ``(A)`` -> ``A``. Numbers lose a ``+`` and trailing decimal zeros; commas are
    merged only when they are thousands separators (``1,000`` -> ``1000``; ``1,2`` stays a pair).
    """
    s = str(s).strip()
    s = re.sub(r"\\text(?:bf|rm)?\{([^{}]*)\}", r"\1", s)
    for t in _STRIP:
        s = s.replace(t, "")
    s = s.replace("dfrac", "frac").replace("tfrac", "frac")
    s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\s+", "", s).rstrip(".")
    s = re.sub(r"^[A-Za-z]=(?=.)", "", s)
    s = re.sub(r"^\(([A-Z])\)$", r"\1", s)
    num = s.replace(",", "") if _THOUSANDS.fullmatch(s) else s
    if re.fullmatch(r"[-+]?\d+(\.\d+)?", num):
        num = num.lstrip("+")
        if "." in num:
            num = num.rstrip("0").rstrip(".")
        return "0" if num in ("-0", "") else num
    return s


def _number(s: str) -> Fraction | None:
    """The exact value of a normalised plain number: ``12``, ``-0.5``, ``3/4``, ``\\frac{3}{4}``, ``-\\frac{1}{2}``."""
    m = re.fullmatch(r"([-+]?)\\frac\{(\d+)\}\{(\d+)\}", s) or re.fullmatch(r"([-+]?)(\d+)/(\d+)", s)
    try:
        if m:
            v = Fraction(int(m.group(2)), int(m.group(3)))
            return -v if m.group(1) == "-" else v
        if re.fullmatch(r"[-+]?\d+(\.\d+)?", s):
            return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def strings_equal(gold: str | None, pred: str | None) -> bool:
    """Normalised string equality, or equal values when both are plain numbers (``0.5`` = ``\\frac12``)."""
    if gold is None or pred is None:
        return False
    g, p = normalize_answer(gold), normalize_answer(pred)
    if g == p:
        return True
    gv, pv = _number(g), _number(p)
    return gv is not None and gv == pv


# ---------------------------------------------------------------- equality
def math_verify_available() -> bool:
    """Whether the ``math_verify`` package can be imported."""
    try:
        import math_verify  # noqa: F401

        return True
    except ImportError:
        return False


def equality_name(use_math_verify: bool | None = None, choices: str | None = None) -> str:
    """The equality a run uses, as the report states it: ``choice-letter``, ``math-verify`` or ``string``."""
    if choices:
        return "choice-letter"
    if use_math_verify is None:
        use_math_verify = math_verify_available()
    return "math-verify" if use_math_verify else "string"


def answers_equal(gold: str | None, pred: str | None, use_math_verify: bool | None = None) -> bool:
    """Whether `pred` equals `gold`: `strings_equal` first, then `math_verify` when enabled
    (``use_math_verify=None``: when installed). None on either side is never equal."""
    if gold is None or pred is None:
        return False
    if strings_equal(gold, pred):
        return True
    if use_math_verify is None:
        use_math_verify = math_verify_available()
    if use_math_verify:
        from math_verify import verify

        try:
            return bool(verify(_mv_parse(gold), _mv_parse(pred)))
        except Exception:  # math_verify raises on odd input
            return False
    return False


@functools.lru_cache(maxsize=8192)
def _mv_parse(s: str):
    """`math_verify.parse` of an answer (as ``$...$`` first, raw otherwise), cached: votes compare pairs."""
    from math_verify import parse

    return parse(f"${s}$") or parse(s)


def reference_parses(s: str | None) -> bool:
    """Whether math-verify reads `s` as a math expression (not only as raw text), as `answers_equal` parses it.

    Needs ``math_verify``. ``\\frac{1}{2}``, ``x^2+1``, ``\\{1, 2\\}`` parse; ``\\sqrt{`` or ``???`` do not.
    """
    if s is None or not str(s).strip():
        return False
    return any(not isinstance(x, str) for x in _mv_parse(str(s)))


def make_equal(use_math_verify: bool | None = None, choices: str | None = None) -> Callable[[str, str], bool]:
    """An equality function for `majority_vote` / metrics: option letters when `choices` is given
    (multiple choice), else `answers_equal` with the chosen `math_verify` setting."""
    if choices:
        return lambda a, b: a is not None and normalize_choice(a, choices) == normalize_choice(b, choices)
    return lambda a, b: answers_equal(a, b, use_math_verify)


def make_extract(pattern: str | None = None, mode: str = "boxed",
                 choices: str | None = None) -> Callable[[str], str | None]:
    """The extraction function of a run: option letters (`choices`), a regex (`pattern`) or `mode`."""
    if choices:
        return lambda text: extract_choice(text, choices)
    if pattern is None and mode not in EXTRACT_MODES:
        raise ValueError(f"extraction mode must be one of {EXTRACT_MODES}, got {mode!r}")
    return lambda text: extract_answer(text, pattern, mode)


def extraction_name(pattern: str | None = None, mode: str = "boxed", choices: str | None = None) -> str:
    """The extraction rule as the report states it."""
    if choices:
        return f"choice-letter ({choices})"
    return f"pattern {pattern}" if pattern is not None else mode


__all__ = [
    "EXTRACT_MODES", "answers_equal", "equality_name", "extract_answer", "extract_boxed", "extract_choice",
    "extract_fallback", "extraction_name", "make_equal", "make_extract", "math_verify_available",
    "normalize_answer", "normalize_choice", "reference_parses", "strings_equal",
]
