"""The questions of an evaluation: reading data files, normalising rows, multiple-choice gold letters.

A row after `normalise_rows` is ``{"prompt": str | [messages], "answer": str | None, "traces", "trace_sources"}``
(missing fields None). Task presets (`eval.tasks`) build such rows from a benchmark's own schema.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence

from .answers import normalize_choice

DATA_EXTENSIONS = (".jsonl", ".json", ".parquet", ".csv")


def read_rows(path: str) -> list[dict]:
    """Rows of a .jsonl / .json / .parquet / .csv file as dicts."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".jsonl":
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    if ext == ".json":
        with open(path) as f:
            data = json.load(f)
        if isinstance(data, dict):  # {"data": [...]} or column-oriented
            data = data.get("data", data)
            if isinstance(data, dict):
                keys = list(data)
                data = [dict(zip(keys, vals)) for vals in zip(*data.values())]
        return list(data)
    if ext == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if ext == ".csv":
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    raise ValueError(f"{path}: unsupported extension {ext!r} (use {', '.join(DATA_EXTENSIONS)})")


def normalise_rows(rows: Sequence[dict], prompt_column: str = "prompt", answer_column: str = "answer",
                   chat: str = "auto") -> list[dict]:
    """Rows -> ``{"prompt", "answer", "traces", "trace_sources"}`` (missing fields None).

    `chat`: ``auto`` wraps a plain-string prompt into a user message only for rows without traces
    (prompt/answer data; ssft rows keep their prompt exactly as trained), ``always`` wraps every
    string prompt, ``never`` keeps strings raw.
    """
    out = []
    for k, r in enumerate(rows):
        if prompt_column not in r:
            raise ValueError(f"row {k}: no column {prompt_column!r} (has {sorted(r)}); set --prompt-column")
        p = r[prompt_column]
        has_traces = bool(r.get("traces"))
        if isinstance(p, str) and (chat == "always" or (chat == "auto" and not has_traces)):
            p = [{"role": "user", "content": p}]
        a = r.get(answer_column)
        out.append({"prompt": p, "answer": None if a is None else str(a), "traces": r.get("traces"),
                    "trace_sources": r.get("trace_sources")})
    return out


def gold_choices(rows: list[dict], choices: str) -> None:
    """Multiple choice: every gold answer becomes its option letter (ValueError when it is none)."""
    for k, row in enumerate(rows):
        if row["answer"] is not None:
            letter = normalize_choice(row["answer"], choices)
            if letter is None:
                raise ValueError(f"row {k}: gold answer {row['answer']!r} is not one of the option letters {choices}")
            row["answer"] = letter
