"""Scale of `trl-ssft data build`: synthetic candidates (long traces) -> verify + select, wall time and peak memory.

    nice -n 10 .venv/bin/python benchmarks/data_build.py --questions 100000 --candidates 16 --num-proc 1,2 \\
        --out docs/data_build.json

The source is what ``trl-ssft data generate`` writes (the candidates layout, one row per sample), built
with numpy into Arrow files in a work directory (not timed): `--questions` questions x `--candidates`
samples from 4 teachers, in blocks of 256 questions whose samples interleave (as a batched engine writes
them), so the build must regroup them. Each trace is Zipf-distributed words from a 5,000-word vocabulary,
a log-normal number of words (median `--median-words`, sigma 0.6, 50..12,000), then the answer. Half carry
their reasoning inline (``<think>...</think>`` in `response`), half in `thinking`. Planted: 10 % wrong
answers, 3 % cut by the length limit, 1 % request errors, 1 % exact and 6 % near duplicates (1 % of the
words changed) of another sample of the same question.

Each `--num-proc` value runs `trl_ssft.traces.build.build` (M = 4, the defaults otherwise: math-verify
answer checks, MinHash near-duplicates, the diverse choice) in a fresh subprocess on the same memory-mapped
source, writing Parquet; the parent samples the memory of that process and its children every 0.2 s:
the peak of the summed RSS (which counts the pages of the memory-mapped source and output files the
processes touched: page cache, reclaimable) and of the summed anonymous RSS (`RssAnon`: heap, what
bounded memory is about), for the tree and for the main process alone. The outputs of every run must
be identical (their digests are compared).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

TEACHERS = ("teacher-a", "teacher-b", "teacher-c", "teacher-d")


def _rows(n_questions: int, k: int, median_words: int, seed: int):
    """The candidates rows, block by block (see the module docstring)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(5000)])
    p = 1.0 / np.arange(1, 5001) ** 1.1
    p /= p.sum()
    for start in range(0, n_questions, 256):
        qs = range(start, min(start + 256, n_questions))
        texts = {}
        for q in qs:
            words = np.clip(rng.lognormal(np.log(median_words), 0.6, k), 50, 12_000).astype(int)
            ts = [vocab[rng.choice(5000, size=w, p=p)] for w in words]
            for j in range(k):
                r = rng.random()
                if r < 0.01 and j:  # exact duplicate of the previous sample
                    ts[j] = ts[j - 1]
                elif r < 0.07 and j:  # near duplicate: 1 % of the words changed
                    ts[j] = ts[j - 1].copy()
                    idx = rng.integers(0, len(ts[j]), max(1, len(ts[j]) // 100))
                    ts[j][idx] = "x"
            texts[q] = [" ".join(t) for t in ts]
        for j in range(k):
            for q in qs:
                r = rng.random()
                ans = q + 1 if r < 0.1 else q  # 10 % wrong
                cut, err = 0.1 <= r < 0.13, 0.13 <= r < 0.14
                inline = j % 2 == 0
                think = texts[q][j]
                final = "" if cut else f"So the answer is \\boxed{{{ans}}}."
                yield {"question_id": f"q{q}", "prompt": f"Question {q}: compute it.", "answer": str(q),
                       "teacher": TEACHERS[j % 4], "sample_index": j // 4,
                       "thinking": None if inline else think,
                       "response": (f"<think>\n{think}" + ("" if cut else f"\n</think>\n\n{final}")) if inline
                       else final,
                       "finish_reason": "length" if cut else "stop", "error": "HTTP 503" if err else None}


def make_source(work: str, n_questions: int, k: int, median_words: int, seed: int) -> list[str]:
    """Write the candidates source as Arrow files under `work`; returns their paths."""
    from datasets import Dataset, Features, Value

    feats = Features({"question_id": Value("string"), "prompt": Value("string"), "answer": Value("string"),
                      "teacher": Value("string"), "sample_index": Value("int64"), "thinking": Value("string"),
                      "response": Value("string"), "finish_reason": Value("string"), "error": Value("string")})
    Dataset.from_generator(_rows, features=feats, cache_dir=os.path.join(work, "gen"), writer_batch_size=256,
                           gen_kwargs=dict(n_questions=n_questions, k=k, median_words=median_words, seed=seed))
    return sorted(glob.glob(os.path.join(work, "gen", "**", "*.arrow"), recursive=True))


def run_one(arrow: list[str], output: str, num_proc: int, work: str) -> None:
    """Inside the measured subprocess: build the memory-mapped source into `output`, print the report."""
    from datasets import Dataset, concatenate_datasets

    from trl_ssft.traces.build import build

    src = concatenate_datasets([Dataset.from_file(f) for f in arrow])
    report = build(src, output, num_proc=num_proc, work_dir=work, batch_size=64)
    print("REPORT " + json.dumps({k: v for k, v in report.items() if k not in ("source", "verify", "select")}))


def _anon_rss(pid: int) -> int:
    """Anonymous resident memory of a process (`RssAnon` of /proc/PID/status, bytes): its heap, not file pages."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))


def measure(cmd: list[str]) -> tuple[dict, float, dict]:
    """(the child's report, wall s, peak memory GiB: RSS and anonymous RSS of the process tree and of the main
    process), sampled every 0.2 s."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    main = psutil.Process(proc.pid)
    peak = {"rss_tree": 0, "anon_tree": 0, "rss_main": 0, "anon_main": 0}
    while proc.poll() is None:
        try:
            procs = [main, *main.children(recursive=True)]
            rss = [p.memory_info().rss for p in procs]
            anon = [_anon_rss(p.pid) for p in procs]
            for key, value in (("rss_tree", sum(rss)), ("anon_tree", sum(anon)), ("rss_main", rss[0]),
                               ("anon_main", anon[0])):
                peak[key] = max(peak[key], value)
        except (psutil.Error, OSError, StopIteration):
            pass
        time.sleep(0.2)
    out = proc.stdout.read()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"build failed (rc {proc.returncode}): {out[-2000:]}")
    report = json.loads(next(line[7:] for line in out.splitlines() if line.startswith("REPORT ")))
    return report, wall, {k: round(v / 2**30, 2) for k, v in peak.items()}


def _digest(parquet: str) -> str:
    import hashlib

    import pyarrow.parquet as pq

    h = hashlib.sha256()
    for batch in pq.ParquetFile(parquet).iter_batches(batch_size=4096):
        h.update(json.dumps(batch.to_pylist(), sort_keys=True).encode())
    return h.hexdigest()[:16]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", type=int, default=100_000)
    p.add_argument("--candidates", type=int, default=16)
    p.add_argument("--median-words", type=int, default=1500)
    p.add_argument("--num-proc", default="1,2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", default=None, help="where the source and outputs go (removed at the end)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--run-one", nargs=3, metavar=("ARROW_LIST", "OUTPUT", "NUM_PROC"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.run_one:
        arrow, output, num_proc = a.run_one
        run_one(arrow.split(","), output, int(num_proc), os.path.dirname(output))
        return
    import psutil

    work = tempfile.mkdtemp(prefix="ssft-data-bench-", dir=a.work_dir)
    try:
        t0 = time.perf_counter()
        arrow = make_source(work, a.questions, a.candidates, a.median_words, a.seed)
        gen_s = time.perf_counter() - t0
        size = sum(os.path.getsize(f) for f in arrow) / 2**30
        print(f"source: {a.questions} x {a.candidates} candidates, {size:.2f} GiB Arrow, built in {gen_s:.0f} s "
              "(not timed below)", flush=True)
        runs = []
        for n in [int(x) for x in a.num_proc.split(",")]:
            out = os.path.join(work, f"out_{n}.parquet")
            load = os.getloadavg()
            rep, wall, peak = measure([sys.executable, __file__, "--run-one", ",".join(arrow), out, str(n)])
            runs.append({"num_proc": n, "wall_s": round(wall, 1), "build_s": rep["wall_s"],
                         **{f"peak_{k}_gib": v for k, v in peak.items()},
                         "load_before": [round(x, 1) for x in load], "questions_out": rep["questions_out"],
                         "traces_out": rep["traces_out"], "drops": rep["drops"],
                         "questions_dropped": rep["questions_dropped"], "digest": _digest(out),
                         "output_gib": round(os.path.getsize(out) / 2**30, 3)})
            print(json.dumps(runs[-1]), flush=True)
            os.remove(out)
        result = {
            "command": "python benchmarks/data_build.py " + " ".join(sys.argv[1:]), "date": str(date.today()),
            "machine": f"{psutil.cpu_count()} shared CPU cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
                       f"no GPU ({platform.machine()})",
            "questions": a.questions, "candidates_per_question": a.candidates, "median_words": a.median_words,
            "source_gib": round(size, 2), "candidates": a.questions * a.candidates, "source_build_s": round(gen_s, 1),
            "runs": runs, "identical_outputs": len({r["digest"] for r in runs}) == 1,
            "load_after": [round(x, 1) for x in os.getloadavg()],
        }
        print(json.dumps(result, indent=1))
        if a.out:
            with open(a.out, "w") as f:
                json.dump(result, f, indent=1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
