"""Do the shipped tiny GFPO recipes reproduce the benchmark's gain? Run them through their real CLIs and measure.

    python benchmarks/gfpo_recipes.py --seeds 0 --reuse   # writes docs/gfpo_recipes.{md,json}

For each seed and front end, the recipe file as shipped (`examples/yaml/trl_gfpo_tiny_cpu.yaml` through
`trl-ssft gfpo`, `examples/yaml/axolotl_gfpo_tiny_cpu.yaml` through `axolotl train`, each in a subprocess) with
only what a user of the benchmark's task would change: the starting model (the GFPO benchmark's stage-1 SSFT model,
`benchmarks/gfpo.py`, trained when missing), the data (its GFPO questions, ``prompt`` + ``answer``), the reward
(`trl_ssft.demo.gfpo_task.suited_strategy_reward`: right answer and a strategy that suits the question's kind) and
the output dir. Every GFPO and GRPO setting (token choice, anchor, learning rate, group, steps) is the recipe's.

Measured on the benchmark's held-out questions, before and after: the N-way probability on the suitable tokens per
kind of question (it must rise for both kinds), the self-chosen reward against the best fixed token, and the
forced tokens' fidelity to their strategy (it must not fall).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REWARD = "trl_ssft.demo.gfpo_task.suited_strategy_reward"
RECIPES = {"trl": "examples/yaml/trl_gfpo_tiny_cpu.yaml", "axolotl": "examples/yaml/axolotl_gfpo_tiny_cpu.yaml"}


def parse_args(argv=None):
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0")
    p.add_argument("--front-ends", default="trl,axolotl")
    p.add_argument("--work-dir", default="/tmp/ssft_mode_preservation", help="as benchmarks/gfpo.py's --work-dir")
    p.add_argument("--out-dir", default="docs")
    p.add_argument("--reuse", action="store_true", help="reuse stage 1 and finished recipe runs (their result.json)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (OMP_NUM_THREADS of the runs too)")
    p.add_argument("--max-steps", type=int, default=None, help="override the recipes' max_steps (smoke runs only)")
    p.add_argument("--stage1-steps", type=int, default=None, help="as benchmarks/gfpo.py's (smoke runs only)")
    return p.parse_args(argv)


def recipe_config(front_end: str, model: str, data: str, out: str, max_steps: int | None = None) -> dict:
    """The shipped recipe with the model, data, reward and output dir replaced; nothing else."""
    import yaml

    cfg = yaml.safe_load(open(os.path.join(REPO, RECIPES[front_end])))
    if front_end == "trl":
        cfg.update(model_name_or_path=model, dataset_name=data, output_dir=out, gfpo_reward_funcs=[REWARD])
    else:
        cfg.update(base_model=model, output_dir=out, dataset_prepared_path=out + "_prepared")
        cfg["datasets"] = [{"path": data, "ds_type": "json", "split": "train"}]
        cfg["trl"] = {**cfg["trl"], "reward_funcs": [REWARD]}
    if max_steps is not None:
        cfg["max_steps"] = max_steps
    return cfg


def run_recipe(front_end: str, cfg: dict, out: str, threads: int) -> float:
    import yaml

    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "recipe.yaml")
    yaml.safe_dump(cfg, open(path, "w"), sort_keys=False)
    bin_dir = os.path.dirname(sys.executable)
    cmd = ([os.path.join(bin_dir, "trl-ssft"), "gfpo", "--config", path] if front_end == "trl"
           else [os.path.join(bin_dir, "axolotl"), "train", path, "--launcher", "python"])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    t0 = time.time()
    with open(os.path.join(out, "run.log"), "w") as log:
        subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.time() - t0


def kind_mass(ev: dict, dominant: dict) -> dict:
    """N-way probability on the tokens whose (pre-GFPO) strategy suits each kind."""
    from gfpo_report import SUITS, suits

    return {k: sum(p for t, p in ev["token_dist"][k].items() if suits(dominant[t], k)) for k in SUITS}


def summary(ev: dict, dominant: dict) -> dict:
    return {"mass": kind_mass(ev, dominant), "self_reward": ev["self_reward"],
            "best_fixed": max(ev["forced_reward"].values()), "suitable": ev["self_suitable"],
            "fidelity": sum(ev["fidelity"].values()) / len(ev["fidelity"])}


def seed_run(seed: int, a, data) -> dict:
    import gfpo as G

    stage1_rows, gfpo_rows, held, mp = data
    ssft_dir = G.stage1(seed, stage1_rows, mp, a.bench)
    before = G.evaluate(ssft_dir, held, a.bench)
    rows_path = os.path.join(a.work_dir, f"seed{seed}", "gfpo_rows.jsonl")
    with open(rows_path, "w") as f:
        for r in gfpo_rows:
            f.write(json.dumps({"prompt": r["prompt"], "answer": r["answer"]}) + "\n")
    out = {"before": summary(before, before["dominant"])}
    for fe in a.front_ends.split(","):
        run_dir = os.path.join(a.work_dir, f"seed{seed}", f"recipe_{fe}")
        result = os.path.join(run_dir, "result.json")
        if a.reuse and os.path.exists(result):
            out[fe] = json.load(open(result))
            continue
        shutil.rmtree(run_dir, ignore_errors=True)
        cfg = recipe_config(fe, ssft_dir, rows_path, os.path.join(run_dir, "model"), a.max_steps)
        print(f"== seed {seed}: {RECIPES[fe]}", flush=True)
        seconds = run_recipe(fe, cfg, run_dir, a.threads)
        ev = G.evaluate(os.path.join(run_dir, "model"), held, a.bench, before["dominant"])
        out[fe] = {**summary(ev, before["dominant"]), "seconds": round(seconds, 1),
                   "gfpo": json.load(open(os.path.join(run_dir, "model", "ssft_state.json")))["gfpo"]}
        json.dump(out[fe], open(result, "w"))
    return out


def report(per_seed: dict, a, command: str, wall: float) -> str:
    from gfpo_report import md_table

    head = ["seed", "model", "N-way mass on suitable tokens, odd / even", "self-chosen reward", "best fixed token",
            "self / best fixed (before)", "suitable choices", "forced-token fidelity", "run minutes"]
    rows = []
    for s, run in per_seed.items():
        base = run["before"]["best_fixed"]
        for key in ["before", *a.front_ends.split(",")]:
            r = run[key]
            rows.append([str(s), "SSFT (before)" if key == "before" else f"after `{RECIPES[key]}`",
                         f"{r['mass']['odd']:.2f} / {r['mass']['even']:.2f}", f"{r['self_reward']:.3f}",
                         f"{r['best_fixed']:.3f}", f"{r['self_reward'] / base:.2f}" if base else "-",
                         f"{r['suitable']:.2f}", f"{r['fidelity']:.3f}",
                         f"{r['seconds'] / 60:.1f}" if "seconds" in r else "-"])
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return "\n".join([
        "# The tiny GFPO recipes on the benchmark's task (generated by `benchmarks/gfpo_recipes.py`)", "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared), Python {platform.python_version()}; date "
        f"{datetime.date.today().isoformat()}; wall time {wall / 60:.1f} min; load average at the end {load}.", "",
        "Each recipe file as shipped, through its real CLI in a subprocess, with only the starting model (the GFPO "
        "benchmark's stage-1 SSFT model, 4 forking tokens), the data (its GFPO questions), the reward "
        f"(`{REWARD}`) and the output dir replaced. Held-out: the benchmark's 64 questions, forced and self-chosen, "
        "T 0.7. The N-way mass per kind must rise for both kinds; fidelity must not fall.", "",
        md_table(head, rows), ""])


def main(argv=None) -> int:
    a = parse_args(argv)
    import torch

    import gfpo as G

    torch.set_num_threads(a.threads)
    a.bench = G.parse_args(["--work-dir", a.work_dir] + (["--reuse"] if a.reuse else [])
                           + (["--stage1-steps", str(a.stage1_steps)] if a.stage1_steps else []))
    os.makedirs(a.work_dir, exist_ok=True)
    t0 = time.time()
    data = G.make_data(a.bench)
    per_seed = {int(s): seed_run(int(s), a, data) for s in a.seeds.split(",") if s}
    wall = time.time() - t0
    command = "python benchmarks/gfpo_recipes.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
    os.makedirs(a.out_dir, exist_ok=True)
    text = report(per_seed, a, command.strip(), wall)
    open(os.path.join(a.out_dir, "gfpo_recipes.md"), "w").write(text)
    json.dump({"command": command.strip(), "date": datetime.date.today().isoformat(), "per_seed": per_seed},
              open(os.path.join(a.out_dir, "gfpo_recipes.json"), "w"), indent=1, default=str)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
