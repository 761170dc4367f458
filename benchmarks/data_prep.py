"""Time the per-start finaliser of tokenized ssft rows, through both front ends.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/data_prep.py --rows 100000

Builds `--rows` synthetic tokenized rows ``{"prompt_ids": [P], "trace_ids": [[L] * M]}`` (P = 64,
M = 4 traces of L = 256 random ids; every 10th row repeats a trace, every 50th row has one trace too
long for `--max-length`, every 100th row has 8 traces > N = 6, run under ``subsample``) and times:

- TRL: `trl_ssft.data.prepare_ssft_dataset(dataset, tokenizer, cfg, max_length)` (tokenized branch);
- Axolotl: `axolotl_ssft.ssft.finalize_dataset(dataset, settings, fork_ids, fork_names, max_length)`
  (the rows carry `ssft_row` / `ssft_source` like Axolotl's cached dataset).

Both check every id (vocabulary, forking tokens), M > N, and apply the duplicate and long-trace
policies; the printed summaries must agree. Building the dataset is not timed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def build_dataset(n: int, prompt_len: int = 64, traces: int = 4, trace_len: int = 256, vocab: int = 250,
                  seed: int = 0):
    """A `datasets.Dataset` of `n` synthetic tokenized rows, built from numpy (ids in [0, vocab): no forking id)."""
    import numpy as np
    import pyarrow as pa
    from datasets import Dataset

    rng = np.random.default_rng(seed)
    rows = np.arange(n)
    m = np.where(rows % 100 == 99, 8, traces)  # M > N = 6
    lens = np.full(int(m.sum()), trace_len)
    first = np.concatenate([[0], np.cumsum(m)[:-1]])
    lens[first[rows % 50 == 7] + 1] = 3 * trace_len  # one trace too long for max_length
    values = rng.integers(0, vocab, int(lens.sum()))
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    for r in rows[rows % 10 == 3]:  # the last trace repeats the first
        a, b = starts[first[r]], starts[first[r] + m[r] - 1]
        values[b:b + trace_len] = values[a:a + trace_len]
    inner = pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(lens)]), pa.int32()), pa.array(values))
    outer = pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(m)]), pa.int32()), inner)
    prompts = pa.ListArray.from_arrays(pa.array(np.arange(n + 1) * prompt_len, pa.int32()),
                                       pa.array(rng.integers(0, vocab, n * prompt_len)))
    return Dataset(pa.table({"prompt_ids": prompts, "trace_ids": outer}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--front", choices=["both", "trl", "axolotl"], default="both")
    a = p.parse_args()

    try:
        from trl_ssft.fields import SSFTFields, fork_token_names
    except ImportError:  # older layout
        from trl_ssft.config import SSFTFields, fork_token_names
    from trl_ssft.demo.tiny import build_tiny_tokenizer

    settings = SSFTFields(ssft_num_fork_tokens=6, ssft_max_traces_policy="subsample")
    names = fork_token_names(settings)
    tok = build_tiny_tokenizer(["add 12 34 56", "12 + 34 = 46 . answer", "abc xyz 0123456789"], vocab_size=300)
    tok.add_special_tokens({"additional_special_tokens": names})
    fork_ids = tok.convert_tokens_to_ids(names)
    t0 = time.perf_counter()
    ds = build_dataset(a.rows)
    import trl_ssft.config  # noqa: F401  (imports trl: not part of the timings)
    import trl_ssft.data  # noqa: F401
    print(f"built {a.rows} rows in {time.perf_counter() - t0:.1f}s (not timed below)", flush=True)
    results = {}
    if a.front in ("both", "trl"):
        from trl_ssft.data import prepare_ssft_dataset

        results["trl"] = _timed(lambda: prepare_ssft_dataset(ds, tok, settings, a.max_length, "train"))
    if a.front in ("both", "axolotl"):
        from axolotl_ssft.ssft import finalize_dataset

        ads = ds.add_column("ssft_row", list(range(a.rows))).add_column("ssft_source", ["train"] * a.rows)
        results["axolotl"] = _timed(lambda: finalize_dataset(ads, settings, fork_ids, names, a.max_length, "train"))
    for front, (seconds, summary, n) in results.items():
        print(f"{front:8s} {seconds:8.2f} s  {a.rows / seconds:10.0f} rows/s  -> {n} rows\n    {summary}")


def _timed(fn) -> tuple[float, str, int]:
    buf = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(buf):
        out = fn()
    seconds = time.perf_counter() - t0
    summary = [line for line in buf.getvalue().splitlines() if line.startswith("SSFT data")]
    return seconds, (summary[-1] if summary else "(no summary)"), len(out)


if __name__ == "__main__":
    main()
