"""Other data layouts -> ssft rows ``{"prompt", "traces", "trace_sources"[, "answer"]}``.

- `row_from_columns`: one row of a one-column-per-trace layout (e.g. one column per teacher);
- `columns_to_ssft`: a whole `datasets.Dataset` in that layout (batched `Dataset.map`).

The Axolotl plugin's `ssft_prompt_column` / `ssft_trace_columns` use `row_from_columns` too.
"""

from __future__ import annotations

from collections.abc import Sequence


def row_from_columns(
    row: dict,
    prompt_column: str,
    trace_columns: Sequence[str],
    *,
    system_prompt: str | None = None,
    as_messages: bool = True,
    skip_empty: bool = True,
) -> dict | None:
    """One row of a one-column-per-trace layout -> ``{"prompt", "traces", "trace_sources"}``.

    Empty or missing trace cells are skipped when `skip_empty`; None when no trace is left. A string
    question becomes a chat ``[system?, user]`` prompt when `as_messages`; a message list is kept.
    """
    cells = [(c, row.get(c)) for c in trace_columns]
    if skip_empty:
        cells = [(c, t) for c, t in cells if not (t is None or (isinstance(t, str) and not t.strip()))]
    if not cells:
        return None
    prompt = row[prompt_column]
    if as_messages and isinstance(prompt, str):
        system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        prompt = system + [{"role": "user", "content": prompt}]
    return {"prompt": prompt, "traces": [t for _, t in cells], "trace_sources": [c for c, _ in cells]}


def columns_to_ssft(
    dataset,
    prompt_column: str,
    trace_columns: Sequence[str],
    answer_column: str | None = None,
    system_prompt: str | None = None,
    as_messages: bool = True,
    skip_empty: bool = True,
):
    """Convert a one-column-per-trace layout into the ssft format.

    Example (s1K-1.1): ``columns_to_ssft(ds, "question", ["deepseek_thinking_trajectory",
    "gemini_thinking_trajectory"], answer_column="solution")``. `trace_sources` is set to the column
    names. Empty or missing trace cells are skipped when `skip_empty` (a row left with none is dropped).
    """
    missing = [c for c in [prompt_column, *trace_columns, *([answer_column] if answer_column else [])]
               if c not in dataset.column_names]
    if missing:
        raise ValueError(f"columns_to_ssft: columns {missing} not in the dataset (has {dataset.column_names})")

    def convert(batch):
        out = {"prompt": [], "traces": [], "trace_sources": [], "answer": []}
        for k in range(len(batch[prompt_column])):
            row = row_from_columns({c: batch[c][k] for c in batch}, prompt_column, trace_columns,
                                   system_prompt=system_prompt, as_messages=as_messages, skip_empty=skip_empty)
            if row is None:
                continue
            for key, value in row.items():
                out[key].append(value)
            out["answer"].append(None if answer_column is None else str(batch[answer_column][k]))
        return out

    return dataset.map(convert, batched=True, remove_columns=dataset.column_names)
