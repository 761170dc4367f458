"""Checks of the ssft row format: the error type, the M > N rule, raw-row and tokenized-row validators.

Every problem is an `SSFTDataError` that names the dataset, the row (its number in the source data) and
the field, and says how to fix it. `trl_ssft.data` re-exports everything public here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class SSFTDataError(ValueError):
    """Bad input data. The message names the dataset, row and field, and says how to fix it."""

    def __init__(self, row: int | None, field_name: str, problem: str, fix: str = "", dataset: str = "train"):
        where = f"{dataset} dataset, row {row}" if row is not None else f"{dataset} dataset"
        msg = f"SSFT data error in {where}, field '{field_name}': {problem}"
        if fix:
            msg += f" Fix: {fix}"
        super().__init__(msg)
        self.row, self.field, self.dataset = row, field_name, dataset

    def __reduce__(self):  # crosses process boundaries intact (`Dataset.map(num_proc=...)`)
        return _rebuild_error, (str(self), self.row, self.field, self.dataset)


def _rebuild_error(message: str, row: int | None, field_name: str, dataset: str) -> SSFTDataError:
    err = SSFTDataError.__new__(SSFTDataError)
    ValueError.__init__(err, message)
    err.row, err.field, err.dataset = row, field_name, dataset
    return err


# ------------------------------------------------------------------ M > N, the one rule
MAX_TRACES_FIX = "raise ssft_num_fork_tokens, remove traces, or set ssft_max_traces_policy: subsample."


def more_traces_than_tokens(m, n: int | None, assignment: str):
    """M > N where it matters: an assignment mode that uses forking tokens (`matching.uses_fork_tokens`;
    not ``none``, SFT-mixed).

    `m` is an int or a numpy array of trace counts; returns a bool of the same shape.
    """
    from .matching import uses_fork_tokens  # the registry says which modes use tokens

    if n is None or not uses_fork_tokens(assignment):
        return m > float("inf")  # all False, in the shape of m
    return m > n


def check_max_traces(m: int, n: int | None, policy: str, assignment: str, *, row: int | None = None,
                     field_name: str = "traces", dataset: str | None = None) -> bool:
    """The M > N rule: True when a question's `m` traces must be subsampled to `n` each step.

    Under `policy` ``error`` (anything but ``subsample``) M > N raises, with one wording everywhere:
    an `SSFTDataError` naming `dataset`, `row` and `field_name` when `dataset` is given, else a
    `ValueError` ("a question has ..."). False when M <= N, N is None or the assignment is ``none``.
    """
    if not more_traces_than_tokens(m, n, assignment):
        return False
    if policy == "subsample":
        return True
    problem = f"has {m} traces but there are only {n} forking tokens (M > N)."
    if dataset is None:
        raise ValueError(f"a question {problem} Fix: {MAX_TRACES_FIX}")
    raise SSFTDataError(row, field_name, problem, MAX_TRACES_FIX, dataset)


_FORK_FIX = "remove it from the data or choose another ssft_fork_token_template."


def check_prompt(prompt: Any, row: int, dataset: str) -> None:
    """Raise `SSFTDataError` naming `row` / `prompt` unless `prompt` is a non-empty string or chat message list."""
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
    check_prompt(row["prompt"], index, dataset)
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
    check_max_traces(len(traces), num_fork_tokens, max_traces_policy, assignment, row=index, dataset=dataset)
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
    check_max_traces(len(traces), num_fork_tokens, max_traces_policy, assignment, row=index,
                     field_name=traces_field, dataset=dataset)
