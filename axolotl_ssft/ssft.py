"""The dataset strategy behind `type: ssft` (and `type: axolotl_ssft.ssft`), plus the per-run checks.

Two stages, so that Axolotl's prepared-dataset cache stays correct when `ssft_*` keys change:

1. `load(...)` -> `SSFTDatasetStrategy.wrap_dataset`: validate every row (errors name the dataset, row
   and field) and tokenize once. The result is cached by Axolotl and depends only on the data, the
   tokenizer, the chat template and the column mapping (which the plugin stamps into the dataset's
   cache key). Output columns, one row per question::

       prompt_ids [P] int, trace_ids [M][L_j] int (each trace ends with EOS),
       ssft_row int (row number in the source dataset), ssft_source str (the dataset path)

   Nothing here depends on N, the assignment mode or the trace policies.

2. `finalize_dataset(...)`: run at every start (by the plugin, after the cache): checks that depend on
   N (M > N, forking-token ids inside a prompt or trace) and the `ssft_duplicate_traces` /
   `ssft_long_traces` policies against `sequence_len`. Prints the `DataReport`.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from trl_ssft.data import DataReport, SSFTDataError, finalize_tokenized, tokenize_rows, validate_row
from trl_ssft.traces.columns import row_from_columns
from trl_ssft.traces.sources import SourceSpec, check_columns, format_counts, resolve_spec
from trl_ssft.traces.templates import get_template
from trl_ssft.traces.verify import Verifier, VerifyOptions

from .args import plugin_listed, ssft_settings

LOG = logging.getLogger(__name__)

try:  # Axolotl's base class; the strategy also works without it (tests, other hosts)
    from axolotl.prompt_tokenizers import DatasetWrappingStrategy
except ImportError:  # pragma: no cover
    DatasetWrappingStrategy = object  # type: ignore[assignment,misc]

TOKENIZED = ("prompt_ids", "trace_ids")


def column_spec(settings) -> SourceSpec:
    """The `ssft_*_columns` keys as a `trl_ssft.traces.sources.SourceSpec` (``columns`` shape); `ValueError`
    for settings that cannot work (lists of different lengths, an unknown `ssft_answer_from`)."""
    get_template(settings.ssft_trace_template)
    return resolve_spec(SourceSpec(
        shape="columns", prompt_column=settings.ssft_prompt_column, trace_columns=list(settings.ssft_trace_columns),
        final_columns=list(settings.ssft_final_columns or ()), grade_columns=list(settings.ssft_grade_columns or ()),
        trace_sources=list(settings.ssft_trace_sources or ()), answer_column=settings.ssft_answer_column,
        answer_from=settings.ssft_answer_from, system_prompt=settings.ssft_system_prompt,
        as_messages=getattr(settings, "as_messages", True),
    ))


def map_columns(rows: list[dict], settings, name: str) -> tuple[list[dict], list[int]]:
    """One-column-group-per-teacher rows -> ssft rows (`trl_ssft.traces.columns.row_from_columns`, the one
    converter), with their source row numbers.

    Each trace is laid out by `ssft_trace_template` (thinking, then the final answer of `ssft_final_columns`);
    traces graded wrong (`ssft_grade_columns`) or empty are dropped and counted in the log; a row left with no
    trace is dropped. A string prompt becomes a chat [system?, user] conversation when `ssft_system_prompt` is
    set or `as_messages` (the tokenizer has a chat template); a list of messages is kept as it is.
    """
    spec = column_spec(settings)
    if rows:
        check_columns(spec, list(rows[0]), name)
    verifier = Verifier(VerifyOptions(template=settings.ssft_trace_template, check_answers="never"))
    out, index, counts = [], [], Counter()
    for i, row in enumerate(rows):
        converted, dropped = row_from_columns(row, spec, i, verifier, name)
        counts.update(dropped)
        if converted is not None:
            out.append(converted)
            index.append(i)
    if counts or len(out) < len(rows):
        LOG.warning("%s: traces dropped: %s; %d of %d rows kept (the others have no trace left)", name,
                    format_counts(counts), len(out), len(rows))
    return out, index


class SSFTDatasetStrategy(DatasetWrappingStrategy):  # type: ignore[misc,valid-type]
    """Validate + tokenize a whole ssft dataset (see the module docstring for the output columns)."""

    def __init__(self, tokenizer, cfg: Any, ds_cfg: Any = None):
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.name = str((ds_cfg or {}).get("path") or "train") if ds_cfg is not None else "train"

    def wrap_dataset(self, dataset, process_count: int | None = None, keep_in_memory: bool | None = False,
                     **kwargs):
        from datasets import Dataset

        if not isinstance(dataset, Dataset):
            raise ValueError(
                f"SSFT dataset {self.name}: got a {type(dataset).__name__}; SSFT needs a map-style dataset "
                "(streaming is not supported: rows are validated before training)."
            )
        settings = ssft_settings(self.cfg)
        rows = dataset.to_list()
        index = list(range(len(rows)))
        if settings.ssft_prompt_column:
            settings.as_messages = getattr(self.tokenizer, "chat_template", None) is not None or bool(
                settings.ssft_system_prompt)
            rows, index = map_columns(rows, settings, self.name)
        elif rows and ("prompt" not in rows[0] or "traces" not in rows[0]):
            raise SSFTDataError(
                None, "prompt/traces", f"the dataset has columns {dataset.column_names}, not the ssft format.",
                "give rows with 'prompt' and 'traces', or map a one-column-per-teacher layout with "
                "ssft_prompt_column and ssft_trace_columns.", self.name,
            )
        for i, row in zip(index, rows):
            validate_row(row, i, dataset=self.name)
        report = DataReport(dataset=self.name)
        tokenized = _tokenize_keep_index(rows, index, self.tokenizer, self.name, report)
        if not tokenized["prompt_ids"]:
            raise SSFTDataError(None, "traces", "the dataset has no usable row.", "", self.name)
        tokenized["ssft_source"] = [self.name] * len(tokenized["prompt_ids"])
        return Dataset.from_dict(tokenized)


def _tokenize_keep_index(rows, index, tokenizer, name, report) -> dict[str, list]:
    """`tokenize_rows` with no truncation or dropping (the policies run per start), one row at a time.

    Row by row so a chat-template error names the source row; rows stay 1:1 with the input.
    """
    out: dict[str, list] = {"prompt_ids": [], "trace_ids": [], "ssft_row": []}
    for i, row in zip(index, rows):
        try:
            tok = tokenize_rows([row], tokenizer, max_length=None, duplicate_policy="keep",
                                long_policy="truncate", dataset=name, report=report)
        except SSFTDataError as e:
            raise SSFTDataError(i, e.field, str(e).split(f"field '{e.field}': ", 1)[-1], "", name) from e
        out["prompt_ids"].append(tok[0]["prompt_ids"])
        out["trace_ids"].append(tok[0]["trace_ids"])
        out["ssft_row"].append(i)
    return out


def load(tokenizer, cfg, ds_cfg=None, processor=None) -> SSFTDatasetStrategy:
    """Axolotl entry point for `type: ssft` / `type: axolotl_ssft.ssft`."""
    if not plugin_listed(cfg):
        raise ValueError(
            f"dataset {(ds_cfg or {}).get('path')!r} has `type: {(ds_cfg or {}).get('type')}` but the SSFT plugin "
            "is not active: add `plugins: [axolotl_ssft.SSFTPlugin]` to the config (without it the ssft_* keys "
            "are ignored and training would not be SSFT)."
        )
    return SSFTDatasetStrategy(tokenizer, cfg, ds_cfg)


# ------------------------------------------------------------------ per-start checks (depend on N)
def finalize_dataset(dataset, settings, fork_ids: list[int], fork_names: list[str], max_length: int | None,
                     split: str = "train"):
    """`trl_ssft.data.finalize_tokenized` on a cached tokenized ssft dataset, with this run's settings.

    Raises `SSFTDataError` (naming the source dataset, row and field) for a forking-token id inside a
    prompt or trace, and for M > N under `ssft_max_traces_policy: error` (not with `ssft_assignment: none`).
    Duplicates (`ssft_duplicate_traces`) and traces longer than `max_length - len(prompt) - 1`
    (`ssft_long_traces`) are handled as configured; prints the same summary and trace-length line as the TRL
    front end, and stops when more than `ssft_max_truncated_share` of the traces would lose their end token.
    Returns the dataset (the same object if nothing changed), or None for None.
    """
    if dataset is None:
        return None
    missing = [c for c in TOKENIZED if c not in dataset.column_names]
    if missing:
        raise ValueError(f"{split} dataset has columns {dataset.column_names}: not an ssft dataset "
                         f"(missing {missing}); every dataset must be `type: ssft`")
    out, _ = finalize_tokenized(
        dataset, fork_ids=fork_ids, fork_names=fork_names, num_fork_tokens=len(fork_ids),
        max_traces_policy=settings.ssft_max_traces_policy, assignment=settings.ssft_assignment,
        duplicate_policy=settings.ssft_duplicate_traces, long_policy=settings.ssft_long_traces,
        max_length=max_length, name=split, fields=("prompt", "traces"),
        max_truncated_share=settings.ssft_max_truncated_share,
    )
    return out


def supervised_tokens(dataset) -> tuple[int, int]:
    """(all tokens, trace tokens) of a tokenized ssft dataset, one forking token per trace included.

    Computed on the Arrow columns (``prompt_ids`` [P], ``trace_ids`` [M][L]), without Python row loops.
    """
    import pyarrow.compute as pc

    table = dataset.with_format("arrow")[:]
    prompts = table.column("prompt_ids").combine_chunks()
    traces = table.column("trace_ids").combine_chunks()
    sup = len(traces.flatten().flatten())
    m = pc.list_value_length(traces)
    total = pc.sum(pc.multiply(m, pc.add(pc.list_value_length(prompts), 1))).as_py() or 0
    return int(total) + sup, sup
