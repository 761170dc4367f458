"""The "ssft" dataset format: validation with row/field errors, tokenization, converters.

A row is one question::

    {"prompt": str | [{"role": ..., "content": ...}, ..., {"role": "user", ...}],
     "traces": [str, ...],            # M >= 1 distinct reasoning traces (full assistant answers)
     "answer": str,                   # optional: gold final answer, for evaluation
     "trace_sources": [str, ...]}     # optional: one label per trace (e.g. the teacher)

Tokenized, a row becomes ``{"prompt_ids": [P], "trace_ids": [[L_1], ..., [L_M]]}`` where each trace
ends with the end-of-turn (EOS) token. Tokenized rows do not depend on N or on the assignment mode:
forking tokens are inserted when batches are built (see `loss.py`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

TOKENIZED_COLUMNS = ("prompt_ids", "trace_ids")


class SSFTDataError(ValueError):
    """Bad input data. The message names the dataset, row and field, and says how to fix it."""

    def __init__(self, row: int | None, field_name: str, problem: str, fix: str = "", dataset: str = "train"):
        where = f"{dataset} dataset, row {row}" if row is not None else f"{dataset} dataset"
        msg = f"SSFT data error in {where}, field '{field_name}': {problem}"
        if fix:
            msg += f" Fix: {fix}"
        super().__init__(msg)
        self.row, self.field, self.dataset = row, field_name, dataset


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

    def summary(self) -> str:
        m = sorted(self.traces_per_row.elements())
        m_str = f"M min/mean/max {m[0]}/{sum(m) / len(m):.2f}/{m[-1]}" if m else "M n/a"
        return (
            f"SSFT data ({self.dataset}): {self.rows} rows, {self.traces} traces ({m_str}); "
            f"{self.truncated} traces truncated to max_length, {self.dropped_long} too-long traces dropped, "
            f"{self.duplicates} duplicate traces ({self.dropped_duplicates} dropped), "
            f"{self.dropped_rows} rows dropped (no trace left), "
            f"{self.subsampled_rows} rows with more traces than forking tokens (subsampled each step)"
        )


_FORK_FIX = "remove it from the data or choose another ssft_fork_token_template."


def _check_prompt(prompt: Any, row: int, dataset: str) -> None:
    if prompt is None or (isinstance(prompt, str) and not prompt.strip()):
        raise SSFTDataError(row, "prompt", "missing or empty.", "give each row a non-empty prompt.", dataset)
    if isinstance(prompt, str):
        return
    if not isinstance(prompt, (list, tuple)) or not prompt:
        raise SSFTDataError(
            row, "prompt", f"must be a string or a non-empty list of chat messages, got {_describe(prompt)}.",
            "use a plain string, or [{'role': 'user', 'content': ...}].", dataset,
        )
    for k, msg in enumerate(prompt):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise SSFTDataError(
                row, f"prompt[{k}]", f"each message must be a dict with 'role' and 'content', got {_describe(msg)}.",
                "write messages as {'role': 'user', 'content': '...'}.", dataset,
            )
        if not isinstance(msg["role"], str) or not msg["role"].strip():
            raise SSFTDataError(row, f"prompt[{k}].role", f"must be a non-empty string, got {_describe(msg['role'])}.",
                                "use 'system', 'user' or 'assistant'.", dataset)
        if not isinstance(msg["content"], str):
            raise SSFTDataError(row, f"prompt[{k}].content",
                                f"message content must be a string, got {_describe(msg['content'])}.",
                                "give the message text as a string.", dataset)
    last = len(prompt) - 1
    if prompt[-1]["role"] != "user":
        raise SSFTDataError(
            row, "prompt", f"the last message has role {prompt[-1]['role']!r}; it must be a user turn.",
            "end the prompt with the user's question; the assistant's answers belong in 'traces'.", dataset,
        )
    if not prompt[-1]["content"].strip():
        raise SSFTDataError(row, f"prompt[{last}].content", "the user's question is empty.",
                            "give each row a non-empty question.", dataset)


def _describe(x: Any) -> str:
    """Type and a short repr of a bad value, for error messages."""
    r = repr(x)
    return f"{type(x).__name__} {r[:60] + '...' if len(r) > 60 else r}"


def validate_row(
    row: dict,
    index: int,
    *,
    num_fork_tokens: int | None = None,
    max_traces_policy: str = "error",
    fork_names: Sequence[str] = (),
    dataset: str = "train",
    assignment: str = "hungarian",
) -> None:
    """Raise `SSFTDataError` naming `index` and the field if `row` is not a valid ssft row.

    M > N is an error only with ``max_traces_policy="error"`` and an assignment that uses tokens
    (``assignment="none"``, SFT-mixed, has no forking token and accepts any M).
    """
    if not isinstance(row, dict):
        raise SSFTDataError(index, "<row>", f"a row must be a mapping, got {_describe(row)}.",
                            "give each row as {'prompt': ..., 'traces': [...]}.", dataset)
    if "prompt" not in row:
        raise SSFTDataError(index, "prompt", "missing.", "every row needs 'prompt' and 'traces'.", dataset)
    _check_prompt(row["prompt"], index, dataset)
    traces = row.get("traces")
    if traces is None:
        raise SSFTDataError(index, "traces", "missing.", "every row needs a list of trace strings.", dataset)
    if isinstance(traces, str) or not isinstance(traces, (list, tuple)):
        raise SSFTDataError(
            index, "traces", f"must be a list of strings, got {_describe(traces)}.",
            "wrap a single trace in a list: ['...'].", dataset,
        )
    if len(traces) == 0:
        raise SSFTDataError(index, "traces", "is empty.", "give at least one trace per row, or drop the row.", dataset)
    for j, t in enumerate(traces):
        if not isinstance(t, str):
            raise SSFTDataError(index, f"traces[{j}]", f"must be a string, got {_describe(t)}.",
                                "give every trace as text.", dataset)
        if not t.strip():
            raise SSFTDataError(index, f"traces[{j}]", "is empty.", "remove empty traces.", dataset)
    if (num_fork_tokens is not None and len(traces) > num_fork_tokens and max_traces_policy == "error"
            and assignment != "none"):
        raise SSFTDataError(
            index, "traces",
            f"has {len(traces)} traces but there are only {num_fork_tokens} forking tokens (M > N).",
            "raise ssft_num_fork_tokens, remove traces, or set ssft_max_traces_policy: subsample.", dataset,
        )
    sources = row.get("trace_sources")
    if sources is not None and (not isinstance(sources, (list, tuple)) or len(sources) != len(traces)):
        raise SSFTDataError(
            index, "trace_sources", f"must be a list with one label per trace ({len(traces)}), got {_describe(sources)}.",
            "give one label per trace, or leave trace_sources out.", dataset,
        )
    texts = [("prompt", row["prompt"])] if isinstance(row["prompt"], str) else [
        (f"prompt[{k}].content", m["content"]) for k, m in enumerate(row["prompt"])
    ]
    texts += [(f"traces[{j}]", t) for j, t in enumerate(traces)]
    for name in fork_names:
        for field_name, text in texts:
            if name in text:
                raise SSFTDataError(index, field_name, f"contains the forking-token text {name!r}.", _FORK_FIX, dataset)


def validate_tokenized_row(
    row: Any,
    index: int,
    *,
    vocab_size: int | None = None,
    fork_ids: Sequence[int] = (),
    fork_names: Sequence[str] = (),
    num_fork_tokens: int | None = None,
    max_traces_policy: str = "error",
    assignment: str = "hungarian",
    dataset: str = "train",
    fields: tuple[str, str] = ("prompt_ids", "trace_ids"),
) -> None:
    """`validate_row` for an already tokenized row ``{"prompt_ids": [int], "trace_ids": [[int], ...]}``.

    `fields` are the names the errors give the prompt and the traces (Axolotl, whose users wrote
    `prompt`/`traces` and never saw the token ids, passes ``("prompt", "traces")``).
    """
    prompt_field, traces_field = fields
    fork_set = set(fork_ids)
    if not isinstance(row, dict):
        raise SSFTDataError(index, "<row>", f"a row must be a mapping, got {_describe(row)}.", "", dataset)

    def ids(value, name: str, fix: str) -> None:
        if not isinstance(value, (list, tuple)) or not value:
            raise SSFTDataError(index, name, f"must be a non-empty list of token ids, got {_describe(value)}.", fix,
                                dataset)
        for t in value:
            if isinstance(t, bool) or not isinstance(t, int):
                raise SSFTDataError(index, name, f"contains {_describe(t)}, not a token id.", fix, dataset)
            if t < 0 or (vocab_size is not None and t >= vocab_size):
                raise SSFTDataError(index, name, f"contains token id {t}, outside the vocabulary [0, {vocab_size}).",
                                    "tokenize with this model's tokenizer.", dataset)
            if t in fork_set:
                tok = fork_names[list(fork_ids).index(t)] if fork_names else t
                raise SSFTDataError(index, name, f"contains the forking token {tok!r}.", _FORK_FIX, dataset)

    ids(row.get("prompt_ids"), prompt_field, "give the tokenized prompt.")
    traces = row.get("trace_ids")
    if not isinstance(traces, (list, tuple)) or not traces:
        raise SSFTDataError(index, traces_field, f"must be a non-empty list of token-id lists, got "
                            f"{_describe(traces)}.", "give at least one tokenized trace per row.", dataset)
    for j, t in enumerate(traces):
        ids(t, f"{traces_field}[{j}]", "remove empty or malformed traces.")
    if (num_fork_tokens is not None and len(traces) > num_fork_tokens and max_traces_policy == "error"
            and assignment != "none"):
        raise SSFTDataError(
            index, traces_field, f"has {len(traces)} traces but there are only {num_fork_tokens} forking tokens (M > N).",
            "raise ssft_num_fork_tokens, remove traces, or set ssft_max_traces_policy: subsample.", dataset,
        )


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


def _keep_row(out: list, report: DataReport, prompt_ids: list[int], traces: list[list[int]]) -> None:
    """Append a tokenized row to `out` and count it, or count it as dropped when no trace is left."""
    if count_row(report, traces):
        out.append({"prompt_ids": prompt_ids, "trace_ids": traces})


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
        _keep_row(out, report, prompt_ids, traces)
    if report.duplicates and duplicate_policy == "warn":
        logger.warning(
            "%s dataset: %d duplicate traces within rows (kept; set ssft_duplicate_traces: drop to remove them)",
            dataset, report.duplicates,
        )
    return out


def _fork_pairs(tokenizer, names: Sequence[str]) -> tuple[list[int], list[str]]:
    """(ids, names) of the forking tokens already in `tokenizer` (names it does not know are skipped)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    known = [n for n in names if n in vocab and vocab[n] != unk]
    return [vocab[n] for n in known], known


def prepare_ssft_dataset(dataset, tokenizer, cfg, max_length: int | None, name: str = "train"):
    """Validate every row of an ssft dataset, then tokenize it (columns: `TOKENIZED_COLUMNS`).

    Raises `SSFTDataError` (naming dataset, row and field) on the first bad row, before any training,
    and prints the `DataReport` summary. An already tokenized dataset (with `prompt_ids`/`trace_ids`)
    is validated the same way (ids, M > N, forking tokens, length and duplicate policies).
    """
    from datasets import Dataset, IterableDataset

    from .config import fork_token_names

    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "column_names") and not isinstance(dataset, list):
        raise SSFTDataError(
            None, "<dataset>", f"got a {type(dataset).__name__}; SSFT needs a map-style datasets.Dataset "
            "(streaming is not supported: every row is validated before training).",
            "load the data without streaming=True, or pass Dataset.from_list(rows).", name,
        )
    rows = list(dataset) if isinstance(dataset, list) else None
    columns = dataset.column_names if rows is None else sorted({k for r in rows if isinstance(r, dict) for k in r})
    if rows is None:
        rows = dataset.to_list()
    fork_names = fork_token_names(cfg)
    n_tokens = cfg.ssft_num_fork_tokens
    policy, assignment = cfg.ssft_max_traces_policy, cfg.ssft_assignment
    report = DataReport(dataset=name)
    if all(c in columns for c in TOKENIZED_COLUMNS):
        fork_ids, known = _fork_pairs(tokenizer, fork_names)
        tokenized = []
        for i, row in enumerate(rows):
            validate_tokenized_row(
                row, i, vocab_size=len(tokenizer), fork_ids=fork_ids, fork_names=known, num_fork_tokens=n_tokens,
                max_traces_policy=policy, assignment=assignment, dataset=name,
            )
            traces = apply_trace_policies(
                i, list(row["prompt_ids"]), [list(t) for t in row["trace_ids"]], max_length=max_length,
                duplicate_policy=cfg.ssft_duplicate_traces, long_policy=cfg.ssft_long_traces, report=report,
                dataset=name,
            )
            _keep_row(tokenized, report, list(row["prompt_ids"]), traces)
    else:
        if "prompt" not in columns or "traces" not in columns:
            raise SSFTDataError(
                None, "prompt/traces", f"the dataset has columns {columns}, not the ssft format.",
                "give one row per question with 'prompt' and 'traces' (see trl_ssft.data.columns_to_ssft to "
                "convert one-column-per-teacher layouts).", name,
            )
        for i, row in enumerate(rows):
            validate_row(
                row, i, num_fork_tokens=n_tokens, max_traces_policy=policy, fork_names=fork_names, dataset=name,
                assignment=assignment,
            )
        tokenized = tokenize_rows(
            rows, tokenizer, max_length=max_length, duplicate_policy=cfg.ssft_duplicate_traces,
            long_policy=cfg.ssft_long_traces, dataset=name, report=report,
        )
    if assignment != "none":
        report.subsampled_rows = sum(len(r["trace_ids"]) > n_tokens for r in tokenized)
    print(report.summary(), flush=True)
    if not tokenized:
        raise SSFTDataError(None, "traces", "no usable row is left after filtering.",
                            "check ssft_long_traces / ssft_duplicate_traces and max_length.", name)
    return Dataset.from_list(tokenized)


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
