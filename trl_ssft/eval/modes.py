"""Mode classifiers: label each generated sample with the reasoning mode it follows.

A classifier is ``classify(text, row) -> mode name`` (``"other"`` when unrecognised); a factory
``factory(rows) -> (classify, known mode names)`` builds it for an evaluation's rows. Factories live
in a small registry (`MODE_CLASSIFIERS`, extend it with `register_mode_classifier`). The built-in
``synthetic`` factory imports the demo family (`trl_ssft.demo.synthetic`) only when it is asked for.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Sequence

import numpy as np

ModeClassifier = Callable[[str, dict], str]
ClassifierFactory = Callable[[Sequence[dict]], tuple[ModeClassifier, list[str]]]


def prompt_text(prompt) -> str:
    """The question text of a prompt (the last user message of a message list)."""
    if isinstance(prompt, str):
        return prompt
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")


def nearest_trace_classifier(text: str, row: dict, chars: int = 200) -> str:
    """The `trace_sources` label of the reference trace most similar to the sample (first `chars`
    characters, difflib ratio); ``"other"`` when the row has no labelled traces."""
    traces, sources = row.get("traces") or [], row.get("trace_sources") or []
    if not traces or len(sources) != len(traces):
        return "other"
    scores = [difflib.SequenceMatcher(None, text[:chars], t[:chars]).ratio() for t in traces]
    return str(sources[int(np.argmax(scores))])


def _nearest_trace_factory(rows: Sequence[dict]) -> tuple[ModeClassifier, list[str]]:
    names: list[str] = []
    for r in rows:
        for s in r.get("trace_sources") or []:
            if str(s) not in names:
                names.append(str(s))
    return nearest_trace_classifier, names


def _family_factory(module: str) -> ClassifierFactory:
    """The classifier of a demo question family (`parse_question`, `classify_mode`, `MODES`), imported by
    name only when asked for."""

    def factory(rows: Sequence[dict]) -> tuple[ModeClassifier, list[str]]:
        family = importlib.import_module(module)

        def classify(text: str, row: dict) -> str:
            q = family.parse_question(prompt_text(row["prompt"]))
            return "other" if q is None else family.classify_mode(text, q)

        return classify, list(family.MODES)

    return factory


MODE_CLASSIFIERS: dict[str, ClassifierFactory] = {
    "nearest-trace": _nearest_trace_factory,
    "synthetic": _family_factory("trl_ssft.demo.synthetic"),
    "digitsum": _family_factory("trl_ssft.demo.digitsum"),
    "teachers": _family_factory("trl_ssft.demo.teachers"),
}


def register_mode_classifier(name: str, factory: ClassifierFactory) -> None:
    """Add a classifier factory under `name` (usable as ``mode_classifier=name`` / ``--mode-classifier``)."""
    if name in ("auto", "none"):
        raise ValueError(f"{name!r} is reserved")
    MODE_CLASSIFIERS[name] = factory


def resolve_classifier_name(name: str, rows: Sequence[dict]) -> str:
    """``auto`` -> ``nearest-trace`` when rows carry `trace_sources` and traces, else ``none``."""
    if name == "auto":
        return "nearest-trace" if any(r.get("trace_sources") and r.get("traces") for r in rows) else "none"
    return name


def pick_classifier(name: str, rows: Sequence[dict]) -> tuple[ModeClassifier | None, list[str]]:
    """(classifier(text, row) -> mode, known mode names) for a registered name, ``none`` or ``auto``."""
    name = resolve_classifier_name(name, rows)
    if name == "none":
        return None, []
    if name not in MODE_CLASSIFIERS:
        raise ValueError(f"unknown mode classifier {name!r} (known: auto, none, {', '.join(MODE_CLASSIFIERS)})")
    return MODE_CLASSIFIERS[name](rows)
