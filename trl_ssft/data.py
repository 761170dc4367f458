"""The "ssft" dataset format: tokenization, trace policies, the report, and the one tokenized-row finaliser.

A row is one question::

    {"prompt": str | [{"role": ..., "content": ...}, ..., {"role": "user", ...}],
     "traces": [str, ...],            # M >= 1 distinct reasoning traces (full assistant answers)
     "answer": str,                   # optional: gold final answer, for evaluation
     "trace_sources": [str, ...]}     # optional: one label per trace (e.g. the teacher)

Tokenized, a row becomes ``{"prompt_ids": [P], "trace_ids": [[L_1], ..., [L_M]]}`` where each trace
ends with the end-of-turn (EOS) token. Tokenized rows do not depend on N or on the assignment mode:
forking tokens are inserted when batches are built (see `set_loss.py`).

Row checks and the M > N rule live in `checks.py` (re-exported here); other layouts in `traces/sources.py`.
Both front ends end in `finalize_tokenized` (TRL: `prepare_ssft_dataset`; Axolotl:
`axolotl_ssft.ssft.finalize_dataset`), so they check, count and print the same way.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .checks import (  # noqa: F401  (public names of the data format, re-exported)
    MAX_TRACES_FIX,
    SSFTDataError,
    check_max_traces,
    more_traces_than_tokens,
    validate_row,
    validate_tokenized_row,
)

logger = logging.getLogger(__name__)

TOKENIZED_COLUMNS = ("prompt_ids", "trace_ids")


@dataclass
class DataReport:
    """What data preparation did, printed before training starts."""

    dataset: str = "train"
    rows: int = 0
    traces: int = 0
    truncated: int = 0
    dropped_long: int = 0
    duplicates: int = 0
    dropped_duplicates: int = 0
    dropped_rows: int = 0
    subsampled_rows: int = 0
    traces_per_row: Counter = field(default_factory=Counter)
    lengths: dict = field(default_factory=dict)  # `row_kernels.length_stats`, before the policies
    max_length: int | None = None

    def summary(self) -> str:
        m, rows = self.traces_per_row, sum(self.traces_per_row.values())
        mean = sum(k * c for k, c in m.items()) / rows if rows else 0.0
        m_str = f"M min/mean/max {min(m)}/{mean:.2f}/{max(m)}" if rows else "M n/a"
        return (
            f"SSFT data ({self.dataset}): {self.rows} rows, {self.traces} traces ({m_str}); "
            f"{self.truncated} traces truncated to max_length, {self.dropped_long} too-long traces dropped, "
            f"{self.duplicates} duplicate traces ({self.dropped_duplicates} dropped), "
            f"{self.dropped_rows} rows dropped (no trace left), "
            f"{self.subsampled_rows} rows with more traces than forking tokens (subsampled each step)"
        )

    def lengths_line(self) -> str:
        """The trace-length distribution next to max_length (before truncation or dropping)."""
        n = self.lengths
        if not n:
            return ""
        limit = "no max_length" if self.max_length is None else (
            f"max_length {self.max_length}: {n['too_long']} of {n['traces']} traces "
            f"({n['too_long'] / max(1, n['traces']):.1%}) do not fit")
        return (f"SSFT trace lengths ({self.dataset}, tokens with the end token): p50 {n['trace_p50']}, p90 "
                f"{n['trace_p90']}, max {n['trace_max']}; prompt + forking token + trace: p90 {n['row_p90']}, max "
                f"{n['row_max']}; {limit}")

    def emit(self, duplicate_policy: str) -> None:
        """Print the summary and the length line; warn about kept duplicates (``ssft_duplicate_traces: warn``)."""
        print(self.summary(), flush=True)
        if self.lengths:
            print(self.lengths_line(), flush=True)
        self.warn_duplicates(duplicate_policy)

    def check_truncation(self, max_share: float) -> None:
        """Stop when more than `max_share` of the traces lost their end token to truncation (`SSFTDataError`)."""
        kept = max(1, self.traces)
        if self.truncated / kept <= max_share:
            return
        n = self.lengths
        fits = f"{n.get('row_max')} (fits every trace)"
        if n.get("row_p90") != n.get("row_max"):
            fits = f"{n.get('row_p90')} (fits 90 % of the traces) or " + fits
        raise SSFTDataError(
            None, "traces", f"{self.truncated} of {self.traces} traces ({self.truncated / kept:.1%}) are longer than "
            f"max_length={self.max_length} allows after their prompt and forking token, and would lose their end "
            f"token; more than ssft_max_truncated_share={max_share:g}. Trace lengths (tokens): p50 "
            f"{n.get('trace_p50')}, p90 {n.get('trace_p90')}, max {n.get('trace_max')}.",
            f"raise max_length (Axolotl: sequence_len) to {fits}, or set ssft_long_traces: drop, or accept the "
            "truncation with a higher ssft_max_truncated_share (1.0 accepts any).", self.dataset)

    def warn_duplicates(self, duplicate_policy: str) -> None:
        if self.duplicates and duplicate_policy == "warn":
            logger.warning("%s dataset: %d duplicate traces within rows (kept; set ssft_duplicate_traces: drop to "
                           "remove them)", self.dataset, self.duplicates)


def render_prompt(tokenizer, prompt: str | list[dict], index: int = 0, dataset: str = "train") -> str:
    """The prompt as text: a message list goes through the chat template with the generation prompt."""
    if isinstance(prompt, str):
        return prompt
    if getattr(tokenizer, "chat_template", None) is None:
        raise SSFTDataError(
            index, "prompt", "is a list of chat messages but the tokenizer has no chat template.",
            "set tokenizer.chat_template (Axolotl: chat_template: ...), or give plain-string prompts.", dataset,
        )
    try:
        return tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
    except Exception as e:  # template errors come in many types
        raise SSFTDataError(
            index, "prompt", f"the chat template cannot render it ({type(e).__name__}: {e}).",
            "check the message roles against the template.", dataset,
        ) from e


def encode_prompt(tokenizer, prompt: str | list[dict], index: int = 0, dataset: str = "train") -> list[int]:
    """Token ids of the rendered prompt (the chat template's own special tokens are not doubled)."""
    text = render_prompt(tokenizer, prompt, index, dataset)
    return tokenizer(text, add_special_tokens=isinstance(prompt, str))["input_ids"]


def end_token_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no EOS token; SSFT ends every trace with it. Set tokenizer.eos_token.")
    return tokenizer.eos_token_id


def apply_trace_policies(
    index: int,
    prompt_ids: list[int],
    trace_ids: list[list[int]],
    *,
    max_length: int | None,
    duplicate_policy: str,
    long_policy: str,
    report: DataReport,
    dataset: str = "train",
) -> list[list[int]]:
    """Duplicate and length policies on one tokenized row; returns the traces kept (possibly none).

    A trace (with its end token) longer than ``max_length - len(prompt) - 1`` (one slot is kept for the
    forking token, in every assignment mode, so all modes see identical data) is truncated or dropped.
    Raises `SSFTDataError` when the prompt leaves no room for any trace token.
    """
    room = None if max_length is None else max_length - len(prompt_ids) - 1
    if room is not None and room < 1:
        raise SSFTDataError(
            index, "prompt", f"is {len(prompt_ids)} tokens long, leaving no room for a trace within "
            f"max_length={max_length} (prompt + forking token + at least one trace token).",
            "shorten the prompt or raise max_length (Axolotl: sequence_len).", dataset,
        )
    seen, out = set(), []
    for ids in trace_ids:
        key = tuple(ids)
        if key in seen:
            report.duplicates += 1
            if duplicate_policy == "drop":
                report.dropped_duplicates += 1
                continue
        seen.add(key)
        if room is not None and len(ids) > room:
            if long_policy == "drop":
                report.dropped_long += 1
                continue
            ids = list(ids[:room])
            report.truncated += 1
        out.append(list(ids))
    return out


def count_row(report: DataReport, traces: list[list[int]]) -> bool:
    """Count a row whose policies left `traces` in `report`; False (counted as dropped) when none is left."""
    if not traces:
        report.dropped_rows += 1
        return False
    report.rows += 1
    report.traces += len(traces)
    report.traces_per_row[len(traces)] += 1
    return True


def tokenize_rows(
    rows: Sequence[dict],
    tokenizer,
    *,
    max_length: int | None,
    duplicate_policy: str = "warn",
    long_policy: str = "truncate",
    dataset: str = "train",
    report: DataReport | None = None,
) -> list[dict]:
    """Validate (`validate_row`, without N) and tokenize rows into ``{"prompt_ids", "trace_ids"}``.

    Every trace gets the EOS token appended; then `apply_trace_policies` (duplicates, too-long traces).
    A row left with no trace is dropped and counted. Raises `SSFTDataError` naming the row and field.
    """
    report = report if report is not None else DataReport(dataset=dataset)
    eos = end_token_id(tokenizer)
    out = []
    for i, row in enumerate(rows):
        validate_row(row, i, dataset=dataset)
        prompt_ids = list(encode_prompt(tokenizer, row["prompt"], i, dataset))
        if not prompt_ids:
            raise SSFTDataError(i, "prompt", "renders to no tokens.", "check the prompt and the chat template.",
                                dataset)
        trace_ids = [list(tokenizer(t, add_special_tokens=False)["input_ids"]) + [eos] for t in row["traces"]]
        traces = apply_trace_policies(
            i, prompt_ids, trace_ids, max_length=max_length, duplicate_policy=duplicate_policy,
            long_policy=long_policy, report=report, dataset=dataset,
        )
        if count_row(report, traces):
            out.append({"prompt_ids": prompt_ids, "trace_ids": traces})
    report.warn_duplicates(duplicate_policy)
    return out




# ------------------------------------------------------------------ the one tokenized-row finaliser
def finalize_tokenized(
    dataset,
    *,
    fork_ids: Sequence[int],
    fork_names: Sequence[str],
    num_fork_tokens: int | None,
    max_traces_policy: str,
    assignment: str,
    duplicate_policy: str,
    long_policy: str,
    max_length: int | None,
    vocab_size: int | None = None,
    name: str = "train",
    fields: tuple[str, str] = TOKENIZED_COLUMNS,
    num_proc: int | None = None,
    max_truncated_share: float = 0.1,
):
    """Check tokenized rows against this run (N, vocabulary, forking ids, max_length); apply the policies.

    `dataset`: a `datasets.Dataset` with ``prompt_ids`` [P] and ``trace_ids`` [M][L] integer columns
    (other columns are kept; ``ssft_row`` / ``ssft_source``, when present, name a row's source in errors),
    or a list of such row dicts (checked as Python rows when Arrow cannot hold them as integer lists).
    Runs as a batched ``Dataset.map`` over Arrow batches (`trl_ssft.row_kernels`; `num_proc` processes, by
    default `row_kernels.num_proc`: several only for a memory-mapped dataset above 50k rows). Raises
    `SSFTDataError` naming dataset, row and field (`fields`: the names errors give the two columns) for
    a bad or forking-token id, M > N under ``error`` (`check_max_traces`), or a prompt that leaves no
    room within `max_length`. Prints the `DataReport` summary, the trace-length distribution next to
    `max_length` (and the duplicate warning); raises `SSFTDataError` when more than `max_truncated_share` of the
    traces lose their end token to truncation (`DataReport.check_truncation`). Returns ``(dataset, report)``: the
    input itself when no trace changed, else the rows with traces left, truncated or dropped as configured.
    """
    import numpy as np

    from . import row_kernels as rk

    opts = dict(vocab_size=vocab_size, fork_ids=list(fork_ids), fork_names=list(fork_names), name=name,
                n=num_fork_tokens, policy=max_traces_policy, assignment=assignment, fields=tuple(fields),
                duplicate_policy=duplicate_policy, long_policy=long_policy, max_length=max_length)
    dataset = _as_id_dataset(dataset, opts)
    out, stats = rk.run(dataset, opts, raise_row_error, num_proc)
    report = _report(stats, name, num_fork_tokens, assignment)
    report.lengths, report.max_length = rk.length_stats(dataset, max_length), max_length
    report.emit(duplicate_policy)
    if long_policy == "truncate":
        report.check_truncation(max_truncated_share)
    if not report.rows:
        raise SSFTDataError(None, fields[1], "no usable row is left after the trace policies.",
                            "check ssft_long_traces / ssft_duplicate_traces and max_length (Axolotl: sequence_len).",
                            name)
    if not (report.dropped_duplicates or report.dropped_long or report.truncated):
        return dataset, report
    out = out.remove_columns(list(rk.STATS))
    return (out.select(np.flatnonzero(stats["ssft_kept"] > 0)) if report.dropped_rows else out), report


def _report(stats: dict, name: str, n: int | None, assignment: str) -> DataReport:
    """A `DataReport` from the per-row counts of `row_kernels.STATS` (numpy arrays, one entry per row)."""
    import numpy as np

    kept = stats["ssft_kept"]
    report = DataReport(dataset=name, rows=int((kept > 0).sum()), traces=int(kept.sum()),
                        dropped_rows=int((kept == 0).sum()), truncated=int(stats["ssft_truncated"].sum()),
                        dropped_long=int(stats["ssft_dropped_long"].sum()),
                        duplicates=int(stats["ssft_duplicates"].sum()),
                        dropped_duplicates=int(stats["ssft_dropped_duplicates"].sum()),
                        subsampled_rows=int(np.sum(more_traces_than_tokens(kept, n, assignment))))
    report.traces_per_row.update({m: int(c) for m, c in enumerate(np.bincount(kept)) if m and c})
    return report


def _as_id_dataset(data, opts: dict):
    """`data` (Dataset or list of row dicts) as a Dataset of integer id lists, or the first bad row's error."""
    from datasets import Dataset

    from .row_kernels import typed_as_ids

    fields, name = opts["fields"], opts["name"]
    if isinstance(data, list):
        try:
            if all(isinstance(r, dict) for r in data):
                ds = Dataset.from_dict({c: [r.get(c) for r in data] for c in TOKENIZED_COLUMNS})
                if typed_as_ids(ds):
                    return ds
        except (TypeError, ValueError, OverflowError, ArithmeticError):  # Arrow cannot hold the rows
            pass
    else:
        missing = [c for c in TOKENIZED_COLUMNS if c not in data.column_names]
        if missing:
            raise SSFTDataError(None, "/".join(fields), f"the dataset has columns {data.column_names}, not "
                                f"tokenized ssft rows (missing {missing}).", "give prompt_ids and trace_ids.", name)
        if typed_as_ids(data):
            return data
    for k, row in enumerate(data):  # error path: name the first bad row
        _check_row(row, k, opts)
    raise SSFTDataError(None, "/".join(fields), "the columns are not lists of integer token ids.",
                        "give integer token ids.", name)


def _check_row(row: Any, k: int, opts: dict) -> None:
    """`validate_tokenized_row` and the room check for one row (`k`: its index in the dataset)."""
    src = (row.get("ssft_source") if isinstance(row, dict) else None) or opts["name"]
    i = int(row["ssft_row"]) if isinstance(row, dict) and row.get("ssft_row") is not None else k
    validate_tokenized_row(
        row, i, vocab_size=opts["vocab_size"], fork_ids=opts["fork_ids"], fork_names=opts["fork_names"],
        num_fork_tokens=opts["n"], max_traces_policy=opts["policy"], assignment=opts["assignment"], dataset=src,
        fields=opts["fields"],
    )
    apply_trace_policies(i, row["prompt_ids"], row["trace_ids"], max_length=opts["max_length"],
                         duplicate_policy="keep", long_policy="truncate", report=DataReport(), dataset=src)


def raise_row_error(row: Any, k: int, opts: dict) -> None:
    """Raise the `SSFTDataError` of a row that the batched checks flagged."""
    _check_row(row, k, opts)
    raise SSFTDataError(k, opts["fields"][1], "was flagged by the batched checks.", "report this as a bug.",
                        opts["name"])


def prepare_ssft_dataset(dataset, tokenizer, cfg, max_length: int | None, name: str = "train"):
    """The TRL front end: validate and tokenize ssft rows, then `finalize_tokenized` (columns: `TOKENIZED_COLUMNS`).

    `dataset`: a `datasets.Dataset` or a list of row dicts, with ``prompt``/``traces`` (validated with
    `validate_row`, tokenized with `tokenize_rows`) or already tokenized ``prompt_ids``/``trace_ids``.
    Raises `SSFTDataError` (naming dataset, row and field) on the first bad row, before any training,
    and prints the `DataReport` summary. Returns a Dataset with ``prompt_ids`` [P] and ``trace_ids`` [M][L].
    """
    from datasets import Dataset, IterableDataset

    from .config import fork_token_names
    from .tokens import fork_token_ids

    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "column_names") and not isinstance(dataset, list):
        raise SSFTDataError(
            None, "<dataset>", f"got a {type(dataset).__name__}; SSFT needs a map-style datasets.Dataset "
            "(streaming is not supported: every row is validated before training).",
            "load the data without streaming=True, or pass Dataset.from_list(rows).", name,
        )
    is_list = isinstance(dataset, list)
    columns = sorted({k for r in dataset if isinstance(r, dict) for k in r}) if is_list else dataset.column_names
    names, n = fork_token_names(cfg), cfg.ssft_num_fork_tokens
    policy, assignment = cfg.ssft_max_traces_policy, cfg.ssft_assignment
    fields = TOKENIZED_COLUMNS
    if not all(c in columns for c in TOKENIZED_COLUMNS):
        if "prompt" not in columns or "traces" not in columns:
            raise SSFTDataError(
                None, "prompt/traces", f"the dataset has columns {columns}, not the ssft format.",
                "give one row per question with 'prompt' and 'traces' (`trl-ssft data build` converts "
                "other layouts; see docs/data.md).", name,
            )
        rows = list(dataset) if is_list else dataset.to_list()
        for i, row in enumerate(rows):
            validate_row(row, i, num_fork_tokens=n, max_traces_policy=policy, fork_names=names, dataset=name,
                         assignment=assignment)
        tokenized = tokenize_rows(rows, tokenizer, max_length=None, duplicate_policy="keep", dataset=name)
        dataset = Dataset.from_dict({c: [r[c] for r in tokenized] for c in TOKENIZED_COLUMNS})
        fields = ("prompt", "traces")
    known = [(i, t) for i, t in zip(fork_token_ids(tokenizer, names, missing="none"), names) if i is not None]
    if max_length is not None:  # the forking-token layout's text (trl_ssft.layout) counts against max_length
        from .layout import layout_extra_tokens

        max_length -= layout_extra_tokens(tokenizer, getattr(cfg, "ssft_fork_layout", None))
    out, _ = finalize_tokenized(
        dataset, fork_ids=[i for i, _ in known], fork_names=[t for _, t in known], num_fork_tokens=n,
        max_traces_policy=policy, assignment=assignment, duplicate_policy=cfg.ssft_duplicate_traces,
        long_policy=cfg.ssft_long_traces, max_length=max_length, vocab_size=len(tokenizer), name=name, fields=fields,
        max_truncated_share=cfg.ssft_max_truncated_share,
    )
    return out.select_columns(list(TOKENIZED_COLUMNS))
