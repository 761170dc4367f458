"""The scoring rules of an evaluation (`EvalRules`) and the scoring of generated samples (`score_samples`).

Every rule here moves reported numbers; the report records them under ``"rules"`` (docs/metrics.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import metrics as M
from .answers import equality_name, extraction_name, make_equal, make_extract, math_verify_available

logger = logging.getLogger(__name__)

PASS_AT_K_RULE = "unbiased 1 - C(n-c,k)/C(n,k) over all N x R samples of a question (tokens pooled)"
CONS_AT_N_RULE = "one vote per round over one sample of each token, averaged over rounds and questions"


@dataclass
class EvalRules:
    """The scoring rules of one evaluation (all of them change reported numbers; see docs/metrics.md).

    math_verify: None = when installed. missing: ``skip`` / ``vote``. extract: ``boxed`` / ``fallback``
    (ignored with `pattern` or `choices`). choices: option letters for multiple choice (e.g. ``ABCD``).
    cons_estimator: ``groups`` / ``first-k``.
    """

    math_verify: bool | None = None
    missing: str = "skip"
    extract: str = "boxed"
    pattern: str | None = None
    choices: str | None = None
    cons_estimator: str = "groups"

    def __post_init__(self) -> None:
        if self.missing not in M.MISSING_RULES:
            raise ValueError(f"missing_answers must be one of {M.MISSING_RULES}, got {self.missing!r}")
        if self.cons_estimator not in M.CONS_ESTIMATORS:
            raise ValueError(f"cons_estimator must be one of {M.CONS_ESTIMATORS}, got {self.cons_estimator!r}")
        if self.math_verify is None and not self.choices and not math_verify_available():
            logger.warning("math_verify is not installed: answers compare as normalised strings, and equivalent "
                           "forms may split votes (pip install 'trl-ssft[eval]')")

    def equal(self) -> Callable[[str, str], bool]:
        return make_equal(self.math_verify, self.choices)

    def extractor(self) -> Callable[[str], str | None]:
        return make_extract(self.pattern, self.extract, self.choices)

    def describe(self) -> dict:
        """The rules as the report records them."""
        return {"equality": equality_name(self.math_verify, self.choices), "missing_answers": self.missing,
                "extraction": extraction_name(self.pattern, self.extract, self.choices),
                "cons_estimator": self.cons_estimator, "cons_at_n": CONS_AT_N_RULE, "pass_at_k": PASS_AT_K_RULE}


def score_samples(s: dict, rows: list[dict], rules: EvalRules, classify) -> None:
    """Add answers, correctness and modes [Q, N, R] to the sample arrays `s` (``s["texts"]`` [Q, N, R])."""
    extract, equal = rules.extractor(), rules.equal()
    texts = s["texts"]
    s["answers"] = np.empty(texts.shape, dtype=object)
    s["modes"] = np.empty(texts.shape, dtype=object)
    s["correct"] = np.zeros(texts.shape, dtype=bool)
    for (qi, i, r), text in np.ndenumerate(texts):
        ans = extract(text)
        gold = rows[qi]["answer"]
        s["answers"][qi, i, r] = ans
        s["correct"][qi, i, r] = gold is not None and ans is not None and equal(gold, ans)
        s["modes"][qi, i, r] = classify(text, rows[qi]) if classify else None
