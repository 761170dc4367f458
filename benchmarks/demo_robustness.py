"""Demo robustness: does `bash scripts/demo.sh` reach its goal on every training seed and thread count?

    python benchmarks/demo_robustness.py --seeds 0,1,2,3,4 --threads 1,2 --eval-seeds 0,1 --reuse
    # writes docs/demo_robustness.{md,json}

Each run is the demo's own path, in subprocesses, with only the recipe's ``seed:`` (and, for probes,
``--set KEY=VALUE`` recipe overrides) changed:

1. the demo's assets, built once per work dir by the command `scripts/demo.sh` runs
   (``python -m trl_ssft.demo.assets DIR`` + `ASSET_ARGS`);
2. ``axolotl train`` on the demo recipe (`examples/yaml/axolotl_tiny_cpu.yaml`, paths rewritten as
   demo.sh rewrites them), with ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` = the thread count (the
   thread count is part of the floating-point path: another machine's CPU follows another path the
   same way; `accelerate launch` passes an explicit ``OMP_NUM_THREADS`` through to the trainer);
3. ``python -m trl_ssft.demo.demo_eval`` with demo.sh's arguments (`EVAL_ARGS`) and ``--seed`` = the
   evaluation's sampling seed, under the same thread count.

What differs from demo.sh: the thread count is set explicitly (demo.sh leaves it to accelerate, which
sets ``OMP_NUM_THREADS=1`` for the trainer when unset, and to torch's default for the evaluation), and
the evaluation's sampling seed is varied (demo.sh uses 0). Every run writes ``run.json`` in its
directory; ``--reuse`` skips a run whose recipe, seed and thread count match, so runs can be made by
separate processes and reported by one. The goal (issue 20) is checked per run: best-token Pass@1 >=
80 %, Cons@N >= 85 %, >= 3.5 distinct strategies per question, every token >= 85 % consistent.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSET_ARGS = ["--family", "digitsum", "--train", "512", "--eval", "64"]  # as in scripts/demo.sh
EVAL_ARGS = ["--mode-classifier", "digitsum", "--temperature", "0.7", "--rounds", "2"]  # as in scripts/demo.sh
GOAL = {"pass1_best_token": 0.80, "cons_at_n_with_tokens": 0.85, "distinct_modes_per_question": 3.5,
        "min_token_consistency": 0.85}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="examples/yaml/axolotl_tiny_cpu.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe override for a probe (value parsed as YAML), e.g. --set ssft_num_fork_tokens=4")
    p.add_argument("--seeds", default="0,1,2,3,4", help="training seeds (the recipe's seed:)")
    p.add_argument("--threads", default="1,2", help="torch thread counts (OMP_NUM_THREADS) of training and evaluation")
    p.add_argument("--eval-seeds", default="0", help="sampling seeds of the evaluation (demo.sh: 0)")
    p.add_argument("--work-dir", default="/tmp/ssft_demo_robustness")
    p.add_argument("--out-dir", default="docs")
    p.add_argument("--name", default="demo_robustness", help="report file stem in --out-dir")
    p.add_argument("--reuse", action="store_true", help="skip runs already finished with the same settings")
    p.add_argument("--report-only", action="store_true", help="report the finished runs; train nothing")
    p.add_argument("--probe", action="append", default=[], metavar="JSON",
                   help="an earlier report of this benchmark (another recipe: a probe of the diagnosis) to show, "
                   "with its command, in a table of probes; its runs are copied into this report's JSON")
    return p.parse_args(argv)


def recipe_text(a, assets: str, out: str, seed: int) -> str:
    """The demo recipe with demo.sh's path rewrite, the seed and the overrides."""
    text = open(os.path.join(REPO, a.recipe)).read()
    text = text.replace("demo_assets/", assets.rstrip("/") + "/").replace("outputs/ssft-tiny", out)
    cfg = yaml.safe_load(text)
    for kv in a.set:
        key, _, value = kv.partition("=")
        cfg[key] = yaml.safe_load(value)
    cfg["seed"] = seed
    return yaml.safe_dump(cfg, sort_keys=False)


def recipe_key(a) -> str:
    """Identifies the training settings: the parsed recipe with the overrides, without the seed and the
    paths (so a probe's ``--set`` and a committed recipe with the same settings share their runs)."""
    cfg = yaml.safe_load(recipe_text(a, "ASSETS", "OUT", 0))
    cfg.pop("seed")
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:12]


def env_for(threads: int) -> dict:
    # OMP_WAIT_POLICY=PASSIVE: on a shared machine, spinning OpenMP threads of a 2-thread run starve each other
    # (23 s per step instead of ~1 s at a load of 18); the wait policy does not change how work is split.
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE",
               PYTHONPATH=REPO,
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", AXOLOTL_DO_NOT_TRACK="1",
               WANDB_DISABLED="true", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def build_assets(work: str) -> str:
    assets = os.path.join(work, "assets")
    if not os.path.exists(os.path.join(assets, "eval.jsonl")):
        subprocess.run([sys.executable, "-m", "trl_ssft.demo.assets", assets, *ASSET_ARGS], check=True,
                       env=env_for(1), stdout=subprocess.DEVNULL)
    return assets


def final_loss(log_path: str) -> float | None:
    import ast

    loss = None
    for line in open(log_path, errors="replace"):
        s = line.strip()
        if s.startswith("{") and "'loss'" in s:
            try:
                loss = float(ast.literal_eval(s)["loss"])
            except (ValueError, SyntaxError, KeyError):
                pass
    return loss


def one_run(a, key: str, assets: str, seed: int, threads: int, eval_seeds: list[int]) -> dict:
    """Train (unless reusable) and evaluate one (seed, threads); returns its run.json record."""
    d = os.path.join(a.work_dir, key, f"seed{seed}_threads{threads}")
    path = os.path.join(d, "run.json")
    rec = json.load(open(path)) if os.path.exists(path) else None
    if rec is None or not (a.reuse or a.report_only):
        if a.report_only:
            return {}
        os.makedirs(d, exist_ok=True)
        model = os.path.join(d, "axolotl-ssft")
        with open(os.path.join(d, "recipe.yaml"), "w") as f:
            f.write(recipe_text(a, assets, model, seed))
        t0 = time.time()
        with open(os.path.join(d, "train.log"), "w") as log:
            subprocess.run(["axolotl", "train", os.path.join(d, "recipe.yaml")], check=True, env=env_for(threads),
                           stdout=log, stderr=subprocess.STDOUT, cwd=d)
        state = json.load(open(os.path.join(model, "ssft_state.json")))
        rec = {"seed": seed, "threads": threads, "recipe_key": key, "overrides": a.set,
               "train_seconds": round(time.time() - t0, 1), "final_loss": final_loss(os.path.join(d, "train.log")),
               "match_counts": state.get("match_counts"), "evals": {}}
        with open(path, "w") as f:
            json.dump(rec, f, indent=1)
    for e in eval_seeds:
        if str(e) in rec["evals"] or a.report_only:
            continue
        out = os.path.join(d, f"eval{e}")
        t0 = time.time()
        with open(os.path.join(d, f"eval{e}.log"), "w") as log:
            subprocess.run([sys.executable, "-m", "trl_ssft.demo.demo_eval", os.path.join(d, "axolotl-ssft"),
                            os.path.join(assets, "eval.jsonl"), "--out", out, *EVAL_ARGS, "--seed", str(e)],
                           check=True, env=env_for(threads), stdout=log, stderr=subprocess.STDOUT)
        rec["evals"][str(e)] = {**json.load(open(os.path.join(out, "demo_report.json")))["summary"],
                                "eval_seconds": round(time.time() - t0, 1)}
        with open(path, "w") as f:  # after each evaluation: an interrupted sweep keeps what it finished
            json.dump(rec, f, indent=1)
    return rec


# ---------------------------------------------------------------- report
def figures(summary: dict) -> dict:
    """The goal's figures of one evaluation (fractions; strategies per question as a count)."""
    cons = summary["token_consistency"] or {}
    return {"pass1_best_token": summary["pass1_best_token"],
            "pass1_most_matched_token": summary["pass1_most_matched_token"],
            "pass1_mean_over_tokens": summary["pass1_mean_over_tokens"],
            "cons_at_n_with_tokens": summary["cons_at_n_with_tokens"],
            "distinct_modes_per_question": summary["distinct_modes_per_question"],
            "min_token_consistency": min(cons.values()) if cons else 0.0}


def goal_met(fig: dict) -> bool:
    return all(fig[k] >= v for k, v in GOAL.items())


def spread(rows: list[dict]) -> dict:
    """min / max of every figure over the runs."""
    return {k: {"min": min(r[k] for r in rows), "max": max(r[k] for r in rows)} for k in rows[0]} if rows else {}


def run_rows(records: list[dict]) -> list[dict]:
    """One row per (training seed, threads, evaluation seed)."""
    rows = []
    for rec in records:
        counts = list((rec.get("match_counts") or {}).values()) if isinstance(rec.get("match_counts"), dict) \
            else list(rec.get("match_counts") or [])
        for e, summary in sorted(rec["evals"].items()):
            fig = figures(summary)
            rows.append({"seed": rec["seed"], "threads": rec["threads"], "eval_seed": int(e), **fig,
                         "goal_met": goal_met(fig), "match_counts": counts, "final_loss": rec.get("final_loss"),
                         "train_seconds": rec.get("train_seconds"), "eval_seconds": summary.get("eval_seconds")})
    return rows


def probe_rows(probes: list[dict]) -> list[str]:
    """One markdown row per probe: its overrides, runs meeting the goal, and the min-max of each figure."""
    pc = lambda d: f"{100 * d['min']:.1f}-{100 * d['max']:.1f}"  # noqa: E731
    out = ["| probe (recipe overrides) | command | runs (seed x threads) | goal met | best token % | mean over tokens % "
           "| Cons@N % | strategies / question | lowest token consistency % | traces matched per token (min-max) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for p in probes:
        sp, runs = p["summary"]["spread"], p["runs"]
        counts = [c for r in runs for c in r["match_counts"]]
        which = ", ".join(f"{r['seed']}x{r['threads']}" for r in runs)
        out.append(f"| {', '.join(p['args']['set']) or 'as committed'} | `{p['command']}` | {which} | "
                   f"{p['summary']['goal_met']} of {p['summary']['runs']} | {pc(sp['pass1_best_token'])} | "
                   f"{pc(sp['pass1_mean_over_tokens'])} | {pc(sp['cons_at_n_with_tokens'])} | "
                   f"{sp['distinct_modes_per_question']['min']:.2f}-{sp['distinct_modes_per_question']['max']:.2f} | "
                   f"{pc(sp['min_token_consistency'])} | {min(counts)}-{max(counts)} |")
    return out


def spread_line(sp: dict) -> str:
    pc = lambda k: f"{100 * sp[k]['min']:.1f}-{100 * sp[k]['max']:.1f} %"  # noqa: E731
    return (f"best token {pc('pass1_best_token')}, most-matched token {pc('pass1_most_matched_token')}, mean over "
            f"tokens {pc('pass1_mean_over_tokens')}, Cons@N {pc('cons_at_n_with_tokens')}, strategies per question "
            f"{sp['distinct_modes_per_question']['min']:.2f}-{sp['distinct_modes_per_question']['max']:.2f}, lowest "
            f"token consistency {pc('min_token_consistency')}")


def run_table(rows: list[dict]) -> list[str]:
    pc = lambda v: f"{100 * v:.1f}"  # noqa: E731
    out = ["| seed | threads | eval seed | best token % | most-matched % | mean % | Cons@N % | strategies / question "
           "| lowest token consistency % | traces matched per token | final loss | train s | goal |",
           "|" + "---|" * 13]
    for r in rows:
        loss = "-" if r["final_loss"] is None else f"{r['final_loss']:.3f}"
        out.append(f"| {r['seed']} | {r['threads']} | {r['eval_seed']} | {pc(r['pass1_best_token'])} | "
                   f"{pc(r['pass1_most_matched_token'])} | {pc(r['pass1_mean_over_tokens'])} | "
                   f"{pc(r['cons_at_n_with_tokens'])} | {r['distinct_modes_per_question']:.2f} | "
                   f"{pc(r['min_token_consistency'])} | {r['match_counts']} | {loss} | {r['train_seconds']} | "
                   f"{'met' if r['goal_met'] else '**NOT met**'} |")
    return out


MARKERS = ("<!-- demo_robustness.py: generated from here -->", "<!-- demo_robustness.py: generated up to here -->")


def write_keeping_notes(path: str, generated: str) -> None:
    """Write `generated` between the MARKERS of `path`, keeping any hand-written text outside them (the
    diagnosis); a file without markers is replaced."""
    text = open(path).read() if os.path.exists(path) else ""
    body = f"{MARKERS[0]}\n{generated.rstrip()}\n{MARKERS[1]}\n"
    if MARKERS[0] in text and MARKERS[1] in text:
        head, rest = text.split(MARKERS[0], 1)
        text = head + body + rest.split(MARKERS[1], 1)[1].lstrip("\n")
    else:
        text = body
    with open(path, "w") as f:
        f.write(text)


def markdown(rows: list[dict], sp: dict, a, command: str, wall: float, load: str, probes: list[dict] = ()) -> str:
    import torch

    lines = [
        "## The sweep", "",
        f"Produced by (numbers in this file and `{a.name}.json` come from it):", "", "```", command, "```", "",
        f"Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. Machine: "
        f"{platform.platform()}, {os.cpu_count()} CPU cores visible, shared with other jobs (load average when the "
        f"report was written: {load}), torch {torch.__version__}. Wall time of this command: {wall / 60:.1f} min"
        + (" (runs finished by earlier invocations with the same settings are reused: `--reuse`; train seconds "
           "below were measured under that sharing and are not the demo's time)." if a.reuse else "."),
        "",
        f"Recipe: `{a.recipe}`" + (f" with overrides {', '.join('`' + x + '`' for x in a.set)}" if a.set else
                                   " as committed") + f" (recipe key {recipe_key(a)}); training seeds {a.seeds} (the "
        f"recipe's `seed:`), torch threads {a.threads} (`OMP_NUM_THREADS` of training and evaluation), evaluation "
        f"sampling seeds {a.eval_seeds}. Each run: the demo's assets (`python -m trl_ssft.demo.assets DIR "
        f"{' '.join(ASSET_ARGS)}`, the same files for every run), `axolotl train`, then `python -m "
        f"trl_ssft.demo.demo_eval ... {' '.join(EVAL_ARGS)} --seed E`, as `scripts/demo.sh` runs them.",
        "",
        "Goal (issue 20), per run: best-token Pass@1 >= 80 %, Cons@N >= 85 %, >= 3.5 distinct strategies per "
        "question, every token >= 85 % consistent.",
        "",
        f"**Goal met on {sum(r['goal_met'] for r in rows)} of {len(rows)} runs.** "
        + (f"Min-max over all runs: {spread_line(sp)}." if rows else "No finished runs."),
        "",
    ]
    lines += ["### Runs", "", *run_table(rows), ""]
    if probes:
        lines += ["### Probes (other recipes, same benchmark)", "",
                  "Each probe is an earlier run of this benchmark with recipe overrides (`--set`), its own command and "
                  "date in its JSON (copied into this report's JSON under `probes`).", "", *probe_rows(probes), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    a = parse_args(argv)
    t0 = time.time()
    seeds = [int(x) for x in a.seeds.split(",") if x]
    threads = [int(x) for x in a.threads.split(",") if x]
    eval_seeds = [int(x) for x in a.eval_seeds.split(",") if x]
    os.makedirs(a.work_dir, exist_ok=True)
    key = recipe_key(a)
    assets = build_assets(a.work_dir)
    records = []
    for seed in seeds:
        for k in threads:
            print(f"== seed {seed}, {k} thread(s)", flush=True)
            rec = one_run(a, key, assets, seed, k, eval_seeds)
            if rec:
                records.append(rec)
                for row in run_rows([rec]):
                    print("   " + ", ".join(f"{n} {row[n]:.3f}" for n in GOAL) + f", goal {row['goal_met']}",
                          flush=True)
    rows = run_rows(records)
    keys = list(GOAL) + ["pass1_most_matched_token", "pass1_mean_over_tokens"]
    sp = spread([{k: r[k] for k in keys} for r in rows])
    wall = time.time() - t0
    argv_str = " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    command = "python benchmarks/demo_robustness.py" + (f" {argv_str}" if argv_str else "")
    load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else ["?"]
    probes = [json.load(open(p)) for p in a.probe]
    os.makedirs(a.out_dir, exist_ok=True)
    md = markdown(rows, sp, a, command, wall, " ".join(load), probes)
    write_keeping_notes(os.path.join(a.out_dir, a.name + ".md"), md)
    summary = {"runs": len(rows), "goal_met": sum(r["goal_met"] for r in rows), "spread": sp}
    with open(os.path.join(a.out_dir, a.name + ".json"), "w") as f:
        json.dump({"command": command, "args": vars(a), "recipe_key": key, "goal": GOAL, "summary": summary,
                   "runs": rows, "records": records, "wall_seconds": round(wall, 1),
                   "probes": [{k: p[k] for k in ("command", "args", "summary", "runs", "date") if k in p}
                              for p in probes],
                   "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}, f, indent=1)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
