"""Array kernels behind `trl_ssft.data.finalize_tokenized`: one Arrow batch of tokenized rows at a time.

A batch holds B rows: ``prompt_ids`` (Arrow list<int>, one list per row) and ``trace_ids`` (list<list<int>>,
M_i traces per row). Nothing here loops over tokens in Python; the duplicate check hashes whole traces,
only in rows where a cheap vectorised fingerprint (length, first, last, sum) already collides.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .checks import more_traces_than_tokens

STATS = ("ssft_kept", "ssft_duplicates", "ssft_dropped_duplicates", "ssft_dropped_long", "ssft_truncated")


def is_id_lists(arrow_type: pa.DataType, depth: int) -> bool:
    """True when `arrow_type` is `depth` levels of (large) lists around an integer type."""
    for _ in range(depth):
        if not (pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)):
            return False
        arrow_type = arrow_type.value_type
    return pa.types.is_integer(arrow_type)


def ints(arr: pa.Array) -> np.ndarray:
    """An integer Arrow array as int64 numpy (nulls as 0; no copy when it already is int64 without nulls)."""
    if arr.null_count:
        arr = pc.fill_null(arr, 0)
    return np.asarray(arr.to_numpy(), dtype=np.int64)


def lengths(arr: pa.Array) -> np.ndarray:
    """Length of each list of `arr` (0 for a null list), int64 [len(arr)]."""
    return ints(pc.list_value_length(arr))


def _bad_values(values: pa.Array, vocab_size: int | None, fork_ids) -> np.ndarray:
    """Per value: null, negative, outside the vocabulary, or a forking-token id."""
    v = ints(values)
    bad = (v < 0) if vocab_size is None else (v.astype(np.uint64) >= vocab_size)  # negatives wrap around
    if values.null_count:
        bad |= values.is_null().to_numpy(zero_copy_only=False)
    if len(fork_ids):
        ids = np.asarray(list(fork_ids), dtype=np.int64)
        near = (v >= ids.min()) & (v <= ids.max())
        if near.any():
            bad[near] |= np.isin(v[near], ids)
    return bad


def bad_rows(prompts: pa.Array, traces: pa.Array, *, vocab_size: int | None, fork_ids) -> np.ndarray:
    """Rows [B] bool with an empty/null prompt, no trace, an empty/null trace or a bad id anywhere."""
    n = len(prompts)
    bad = lengths(prompts) == 0
    bad |= lengths(traces) == 0
    p_vals = prompts.flatten()
    p_rows = pc.list_parent_indices(prompts).to_numpy()
    bad |= np.bincount(p_rows[_bad_values(p_vals, vocab_size, fork_ids)], minlength=n)[:n] > 0
    inner = traces.flatten()
    t_rows = pc.list_parent_indices(traces).to_numpy()
    bad |= np.bincount(t_rows[lengths(inner) == 0], minlength=n)[:n] > 0
    v_traces = pc.list_parent_indices(inner).to_numpy()
    bad_v = _bad_values(inner.flatten(), vocab_size, fork_ids)
    bad |= np.bincount(t_rows[v_traces[bad_v]], minlength=n)[:n] > 0
    return bad


def _duplicates(values: np.ndarray, starts: np.ndarray, lens: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per trace [T] bool: equal to an earlier trace of the same row (the first occurrence is not marked)."""
    dup = np.zeros(len(lens), dtype=bool)
    if len(lens) < 2:
        return dup
    ends = starts + lens
    key = np.stack([rows, lens, values[starts], values[ends - 1], np.add.reduceat(values, starts)], axis=1)
    ks = key[np.lexsort(key.T[::-1])]
    clash = np.unique(ks[1:, 0][np.all(ks[1:] == ks[:-1], axis=1)])
    for r in clash:  # exact check, only in rows whose fingerprints collide
        seen: set[bytes] = set()
        for j in np.flatnonzero(rows == r):
            b = values[starts[j]:ends[j]].tobytes()
            dup[j] = b in seen
            seen.add(b)
    return dup


def trace_policies(traces: pa.Array, room: np.ndarray | None, duplicate_policy: str,
                   long_policy: str) -> tuple[pa.Array, dict[str, np.ndarray]]:
    """Apply the duplicate and long-trace policies to valid rows (as `data.apply_trace_policies` does per row).

    `room` [B] is the trace budget of each row (None: no limit). Returns the new ``trace_ids`` array (the
    input itself when nothing changes; rows may be left with no trace) and per-row counts [B] named `STATS`.
    """
    n = len(traces)
    inner = traces.flatten()
    rows = ints(pc.list_parent_indices(traces))
    values_arr = inner.flatten()
    values = ints(values_arr)
    lens = lengths(inner)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    dup = _duplicates(values, starts, lens, rows)
    drop_dup = dup if duplicate_policy == "drop" else np.zeros_like(dup)
    alive = ~drop_dup
    long = alive & (lens > room[rows]) if room is not None else np.zeros_like(dup)
    keep, new_len = alive, lens
    if long_policy == "drop":
        keep = alive & ~long
    elif room is not None:
        new_len = np.where(long, room[rows], lens)

    def per_row(mask: np.ndarray) -> np.ndarray:
        return np.bincount(rows[mask], minlength=n)[:n].astype(np.int64)

    stats = {"ssft_kept": per_row(keep), "ssft_duplicates": per_row(dup), "ssft_dropped_duplicates": per_row(drop_dup),
             "ssft_dropped_long": per_row(long & ~keep), "ssft_truncated": per_row(long & keep)}
    if keep.all() and np.array_equal(new_len, lens):
        return traces, stats
    pos = np.arange(len(values)) - np.repeat(starts, lens)
    v_trace = np.repeat(np.arange(len(lens)), lens)
    new_values = values_arr.filter(pa.array(keep[v_trace] & (pos < new_len[v_trace])))
    off_type = traces.offsets.type
    inner_off = pa.array(np.concatenate([[0], np.cumsum(new_len[keep])]), type=inner.offsets.type)
    outer_off = pa.array(np.concatenate([[0], np.cumsum(stats["ssft_kept"])]), type=off_type)
    new_inner = type(inner).from_arrays(inner_off, new_values)
    return type(traces).from_arrays(outer_off, new_inner).cast(traces.type), stats


def finalise_batch(table: pa.Table, indices: list[int], opts: dict, on_bad) -> pa.Table:
    """`Dataset.map` body (Arrow batch in, Arrow batch out): checks, then the trace policies.

    The first flagged row is handed to `on_bad(row_dict, dataset_index, opts)`, which raises its exact
    `SSFTDataError`. Returns the batch with the new ``trace_ids`` and the per-row `STATS` columns.
    """
    prompts = table.column("prompt_ids").combine_chunks()
    traces = table.column("trace_ids").combine_chunks()
    p_len, m = lengths(prompts), lengths(traces)
    room = None if opts["max_length"] is None else opts["max_length"] - p_len - 1
    bad = bad_rows(prompts, traces, vocab_size=opts["vocab_size"], fork_ids=opts["fork_ids"])
    if opts["policy"] != "subsample":  # M > N under `error` (`checks.check_max_traces` words the error)
        bad |= more_traces_than_tokens(m, opts["n"], opts["assignment"])
    if room is not None:
        bad |= room < 1
    if bad.any():
        k = int(np.argmax(bad))
        on_bad(table.slice(k, 1).to_pylist()[0], int(indices[k]), opts)
    new, stats = trace_policies(traces, room, opts["duplicate_policy"], opts["long_policy"])
    out = table.set_column(table.schema.get_field_index("trace_ids"), "trace_ids", new)
    for name in STATS:
        out = out.append_column(name, pa.array(stats[name]))
    return out


def num_proc(dataset, requested: int | None = None) -> int | None:
    """Processes for the checks: `requested`; else, for a memory-mapped dataset of more than 50k rows, the
    CPUs (at most 8); else one. An in-memory dataset would be pickled to every worker: on 2 CPUs, 100k rows
    took 92 s with 2 processes against 8.5 s with one (docs/performance.md, "Data preparation")."""
    import os

    if requested is not None:
        return requested if requested > 1 else None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(cpus, 8) if len(dataset) > 50_000 and cpus > 1 and dataset.cache_files else None


def run(dataset, opts: dict, on_bad, procs: int | None = None):
    """`finalise_batch` over `dataset` as a batched ``Dataset.map``; returns (mapped dataset, STATS as numpy).

    The result stays in memory for an in-memory dataset, and goes to temporary cache files (removed at
    exit) for a memory-mapped one, never next to the source (e.g. Axolotl's prepared-dataset cache).
    """
    import os

    from datasets.fingerprint import generate_random_fingerprint, get_temporary_cache_files_directory

    if not len(dataset):
        return dataset, {c: np.zeros(0, np.int64) for c in STATS}
    where = {"keep_in_memory": True}
    if dataset.cache_files:
        name = f"ssft-checks-{generate_random_fingerprint()}.arrow"
        where = {"cache_file_name": os.path.join(get_temporary_cache_files_directory(), name),
                 "load_from_cache_file": False}
    out = dataset.with_format("arrow").map(
        finalise_batch, batched=True, batch_size=1000, with_indices=True, num_proc=num_proc(dataset, procs),
        fn_kwargs={"opts": opts, "on_bad": on_bad}, desc=f"SSFT checks ({opts['name']})", **where,
    ).with_format(None)
    return out, {c: out.data.column(c).to_numpy() for c in STATS}


def length_stats(dataset, max_length: int | None) -> dict[str, int]:
    """Trace and row lengths of a tokenized ssft dataset, before any policy (Arrow columns, no row loop).

    Trace: its tokens with the end token; row: prompt + forking token + trace. Returns ``traces``, ``trace_p50``,
    ``trace_p90``, ``trace_max``, ``row_p90``, ``row_max`` and ``too_long`` (traces that do not fit `max_length`
    after their prompt and forking token; 0 without a limit). Percentiles are the nearest lengths at or above.
    """
    keys = ("traces", "trace_p50", "trace_p90", "trace_max", "row_p90", "row_max", "too_long")
    if not len(dataset):
        return {k: 0 for k in keys}
    table = dataset.with_format("arrow")[:]
    prompts = table.column("prompt_ids").combine_chunks()
    traces = table.column("trace_ids").combine_chunks()
    t_len = lengths(traces.flatten())
    if not len(t_len):
        return {k: 0 for k in keys}
    p_len = lengths(prompts)[ints(pc.list_parent_indices(traces))]
    r_len = p_len + 1 + t_len

    def q(x: np.ndarray, p: float) -> int:
        return int(np.percentile(x, p, method="higher"))

    too_long = 0 if max_length is None else int((r_len > max_length).sum())
    return {"traces": int(len(t_len)), "trace_p50": q(t_len, 50), "trace_p90": q(t_len, 90), "trace_max": int(t_len.max()),
            "row_p90": q(r_len, 90), "row_max": int(r_len.max()), "too_long": too_long}


def typed_as_ids(dataset) -> bool:
    """True when ``prompt_ids`` is a list of integers and ``trace_ids`` a list of integer lists (or no rows)."""
    schema = dataset.data.schema
    return not len(dataset) or (is_id_lists(schema.field("prompt_ids").type, 1)
                                and is_id_lists(schema.field("trace_ids").type, 2))
