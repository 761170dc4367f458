"""GFPO benchmark: does stage 2 teach an SSFT model to pick the forking token that suits the question?

    python benchmarks/gfpo.py --seeds 0,1,2   # writes docs/gfpo_benchmark.{md,json,png}

On a 2-core machine the seeds can run in parallel processes, then be reported together (every finished run
is read back from its benchmark_run.json):

    for s in 0 1 2; do python benchmarks/gfpo.py --seeds $s --reuse --out-dir /tmp/gfpo_seed$s & done; wait
    python benchmarks/gfpo.py --seeds 0,1,2 --reuse

Task (fixed before any run; `trl_ssft.demo.digitsum`, the demo family): four strategies (forward, pairs,
cross, outer), all correct in principle. Questions come in two kinds, told by the parity of the first digit
of ``sum a b c d``; each kind has two suitable strategies:

    odd first digit  -> forward or pairs        even first digit -> cross or outer

The reward is 1 when the final answer is right **and** the rollout follows a strategy that suits the
question's kind (`classify_mode` on the text), else 0. An SSFT model whose tokens keep to distinct
strategies therefore earns, with any fixed token, at most about half the reward (the questions of the one
kind its strategy suits); a per-question choice of token can earn about twice that.

Per seed:
1. **Stage 1 (SSFT)**: `benchmarks/mode_preservation.py`'s ``hungarian`` run (same tiny model, data, budget
   and seed; reused from `--work-dir` when that run already exists there, with ``--reuse``).
2. **Before**: on held-out questions (balanced kinds), forced tokens and self-chosen tokens
   (`evaluate_model(self_choose="sample")`, T = 0.7, top-p 0.95): reward per forced token (the best fixed
   token), reward of the self-chosen tokens, the mean N-way token distribution per kind, the strategy each
   token keeps to (its dominant mode) and its fidelity (share of its samples in that mode).
3. **GFPO** (`GFPOTrainer`, Adam, forking tokens suppressed in the continuations, the default) on questions
   disjoint from both, with the reward above, for each arm of ``--arms``: token choice (``sample`` /
   ``enumerate``), trainable set (``all`` weights, or ``fork_rows``: the forking tokens' output rows only, a
   router that cannot change what a forced token does; from an untied copy of the SSFT model), learning rate
   and `gfpo_anchor_coef` (the KL anchor of the continuations; the authors published none of these); and for
   each a **control** run with the same settings whose rewards are shuffled across the batch at every step
   (same reward rate, no relation to the token).
4. **After**: the same evaluation (same held-out rows, seed), for GFPO and for the control.

Claims checked, not assumed: GFPO's self-chosen reward approaches twice the best fixed token's; the token
distribution per kind moves to the suitable tokens; forced-token fidelity does not fall (GFPO must not blur
the modes); the shuffled control does not move.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shlex
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SUITS = {"odd": ("forward", "pairs"), "even": ("cross", "outer")}


def kind_of(digits) -> str:
    """The question's kind: the parity of its first digit."""
    return "odd" if digits[0] % 2 else "even"


def suits(mode: str | None, kind: str) -> bool:
    return mode in SUITS[kind]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default="docs", help="where gfpo_benchmark.{md,json,png} go")
    p.add_argument("--work-dir", default="/tmp/ssft_mode_preservation",
                   help="models (stage 1 is mode_preservation.py's layout: seed<S>/hungarian)")
    p.add_argument("--reuse", action="store_true",
                   help="reuse an existing stage-1 model in --work-dir (trained by benchmarks/mode_preservation.py "
                   "with its defaults), and every GFPO run whose benchmark_run.json has this invocation's settings, "
                   "instead of training them again (seeds run in parallel processes, then reported together)")
    p.add_argument("--stage1-steps", type=int, default=None,
                   help="SSFT steps of stage 1 (default: mode_preservation.py's; fewer only for a quick smoke run)")
    p.add_argument("--seeds", default="0", help="comma-separated model/training seeds")
    p.add_argument("--seed", type=int, default=0, help="data seed")
    p.add_argument("--gfpo-questions", type=int, default=256, help="GFPO training questions (disjoint)")
    p.add_argument("--eval-questions", type=int, default=64, help="held-out questions, half of each kind")
    p.add_argument("--rounds", type=int, default=2, help="sampled rounds per (question, token)")
    p.add_argument("--steps", type=int, default=100, help="GFPO steps")
    p.add_argument("--num-generations", type=int, default=8, help="rollouts per question (the group)")
    p.add_argument("--questions-per-step", type=int, default=4)
    p.add_argument("--arms", default="enumerate:all:1e-3,enumerate:all:1e-3:1,enumerate:all:1e-3:3,"
                   "enumerate:fork_rows:3e-2",
                   help="GFPO runs as gfpo_token_choice:gfpo_trainable:learning_rate[:gfpo_anchor_coef], each with a "
                   "shuffled-reward control (Adam). fork_rows runs start from an untied copy of the SSFT model (same "
                   "function)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return p.parse_args(argv)


# ------------------------------------------------------------------ data
def make_data(a):
    """(stage-1 rows, GFPO rows, held-out rows): stage 1's are mode_preservation.py's (same prefix of
    `make_rows`), the other two are disjoint and later in the same stream; held-out is balanced by kind."""
    from trl_ssft.demo import digitsum
    from trl_ssft.demo.digitsum import parse_question

    import mode_preservation as MP

    mp = MP.parse_args([] if a.stage1_steps is None else ["--steps", str(a.stage1_steps)])
    stream = digitsum.make_rows(mp.train_questions + mp.eval_questions + a.gfpo_questions + 4 * a.eval_questions,
                                seed=a.seed)
    stage1 = stream[: mp.train_questions]
    rest = stream[mp.train_questions + mp.eval_questions:]

    def tag(row):
        q = parse_question(row["prompt"][-1]["content"])
        return {"prompt": row["prompt"], "answer": row["answer"], "digits": list(q), "kind": kind_of(q)}

    gfpo_rows = [tag(r) for r in rest[: a.gfpo_questions]]
    pool = [tag(r) for r in rest[a.gfpo_questions:]]
    held = [r for r in pool if r["kind"] == "odd"][: a.eval_questions // 2]
    held += [r for r in pool if r["kind"] == "even"][: a.eval_questions - len(held)]
    return stage1, gfpo_rows, held, mp


# ------------------------------------------------------------------ reward
def make_reward(shuffle_seed: int | None = None):
    """TRL reward: 1.0 when the answer is right and the rollout's strategy suits the question's kind.
    With `shuffle_seed`, the batch's rewards are permuted at random (the control)."""
    from trl_ssft.demo.digitsum import classify_mode
    from trl_ssft.gfpo.rewards import completion_text, make_correctness_reward

    correct = make_correctness_reward(use_math_verify=False)
    rng = random.Random(shuffle_seed)

    def mode_reward(completions, answer, digits, kind, **kwargs):
        ok = correct(completions=completions, answer=answer)
        out = [float(bool(r) and suits(classify_mode(completion_text(c), tuple(d)), k))
               for c, r, d, k in zip(completions, ok, digits, kind, strict=True)]
        if shuffle_seed is not None:
            rng.shuffle(out)
        return out

    mode_reward.__name__ = "mode_reward" if shuffle_seed is None else "shuffled_mode_reward"
    return mode_reward


# ------------------------------------------------------------------ stages
def stage1(seed: int, rows, mp, a) -> str:
    import mode_preservation as MP
    from trl_ssft.demo import digitsum
    from trl_ssft.demo.tiny import save_tiny_model

    mp.work_dir, mp.reuse = a.work_dir, a.reuse  # mode_preservation.train reuses a complete run (training.json)
    allrows = digitsum.make_rows(mp.train_questions + mp.eval_questions, seed=a.seed)
    base = os.path.join(a.work_dir, f"seed{seed}", "base")
    if not os.path.exists(os.path.join(base, "config.json")):  # the same weights as mode_preservation.py's
        save_tiny_model(base, digitsum.corpus(allrows), hidden_size=mp.hidden_size, num_layers=mp.layers, seed=seed)
    print(f"== seed {seed}: stage 1 (SSFT, {mp.steps} steps)", flush=True)
    done = MP.train("hungarian", base, rows, mp, seed)
    print(f"   {'reused' if done.get('reused') else 'trained'} {done['dir']}", flush=True)
    return done["dir"]


def untied_copy(model_dir: str, dest: str) -> str:
    """`model_dir` with its output layer untied from the input embeddings (same weights, same function), so that
    ``gfpo_trainable: fork_rows`` can train the forking tokens' output rows alone; checked on a batch of ids."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if os.path.exists(os.path.join(dest, "config.json")):
        return dest
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
    model.save_pretrained(dest)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(dest)
    shutil.copy(os.path.join(model_dir, "ssft_state.json"), dest)
    ids = torch.arange(1, 33).view(2, 16) % model.config.vocab_size
    again = AutoModelForCausalLM.from_pretrained(dest)
    assert again.lm_head.weight.data_ptr() != again.get_input_embeddings().weight.data_ptr()
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, again(ids).logits, atol=1e-5)
    return dest


def gfpo(model_dir: str, out: str, rows, seed: int, a, shuffle: bool, choice: str, trainable: str,
         lr: float, anchor: float = 0.0) -> dict:
    from datasets import Dataset

    from trl_ssft import GFPOConfig, GFPOTrainer

    args = GFPOConfig(
        output_dir=out, bf16=False, use_cpu=True, report_to=[], seed=seed, disable_tqdm=True, save_strategy="no",
        gfpo_token_choice=choice, gfpo_trainable=trainable, num_generations=a.num_generations,
        per_device_train_batch_size=a.num_generations * a.questions_per_step, max_completion_length=48,
        temperature=0.7, top_p=0.95, beta=0.0, learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_steps=a.steps, logging_steps=max(1, a.steps // 10), gfpo_anchor_coef=anchor,
    )
    trainer = GFPOTrainer(model=model_dir, args=args, train_dataset=Dataset.from_list(rows),
                          reward_funcs=make_reward(seed + 1000 if shuffle else None))
    t0 = time.time()
    trainer.train()
    seconds = time.time() - t0
    trainer.save_model(out)
    logs = [h for h in trainer.state.log_history if "gfpo/entropy" in h]
    reward_key = next((k for k in (logs[0] if logs else {}) if k.startswith("rewards/") and k.endswith("/mean")), None)
    return {"dir": out, "seconds": round(seconds, 1), "seconds_per_step": round(seconds / a.steps, 2),
            "reward_curve": [round(float(h.get(reward_key or "reward", float("nan"))), 3) for h in logs],
            "entropy_curve": [round(float(h["gfpo/entropy"]), 3) for h in logs]}


# ------------------------------------------------------------------ evaluation
def evaluate(model_dir: str, held, a, dominant: dict | None = None) -> dict:
    """Forced and self-chosen samples on `held`, scored by the benchmark's reward."""
    import numpy as np

    from trl_ssft.eval.evaluate import evaluate_model

    rep = evaluate_model(model_dir, held, rounds=a.rounds, temperature=0.7, top_p=0.95, max_new_tokens=64,
                         batch_size=64, seed=a.seed, mode_classifier="digitsum", math_verify=False,
                         self_choose="sample", keep_samples=True, progress=False, suppress_fork_tokens=True)
    tokens = rep["tokens"]
    forced = [s for s in rep["samples"] if not s["self_chosen"]]
    own = [s for s in rep["samples"] if s["self_chosen"]]

    def reward(s):
        return float(s["correct"] and suits(s["mode"], held[s["question"]]["kind"]))

    per_token = {t: [s for s in forced if s["token"] == t] for t in tokens}
    modes = {t: {m: sum(s["mode"] == m for s in ss) / len(ss) for m in dict.fromkeys(s["mode"] for s in ss)}
             for t, ss in per_token.items()}
    if dominant is None:  # the strategy each token keeps to, fixed from the SSFT model
        dominant = {t: max(m, key=m.get) for t, m in modes.items()}
    dist = {}
    for kind in SUITS:
        probs = [q["probs"] for q, r in zip(rep["self_chosen"]["per_question"], held) if r["kind"] == kind]
        dist[kind] = {t: float(np.mean([p[t] for p in probs])) for t in tokens}
    return {
        "forced_reward": {t: float(np.mean([reward(s) for s in ss])) for t, ss in per_token.items()},
        "forced_pass1": {t: float(np.mean([s["correct"] for s in ss])) for t, ss in per_token.items()},
        "self_reward": float(np.mean([reward(s) for s in own])),
        "self_pass1": float(np.mean([s["correct"] for s in own])),
        "self_suitable": float(np.mean([suits(dominant[s["token"]], held[s["question"]]["kind"]) for s in own])),
        "token_dist": dist,
        "dominant": dominant,
        "fidelity": {t: modes[t].get(dominant[t], 0.0) for t in tokens},
        "modes": modes,
        "seconds": rep["seconds"],
    }


def arm_keys(run: dict) -> list[str]:
    """``before``, then ``gfpo@CHOICE:LR`` and ``control@CHOICE:LR`` for every arm of the run."""
    return ["before"] + [f"{kind}@{arm}" for arm in run["arms"] for kind in ("gfpo", "control")]


def arm_label(key: str) -> str:
    if key == "before":
        return "SSFT (before GFPO)"
    kind, spec = key.split("@")
    choice, trainable, lr, anchor = parse_arm(spec)
    what = f"{choice}, {trainable}, lr {lr}" + (f", anchor {anchor:g}" if anchor else "")
    return f"after GFPO, {what}" if kind == "gfpo" else f"after control (shuffled rewards), {what}"


def parse_arm(spec: str) -> tuple[str, str, str, float]:
    """``choice:trainable:lr[:anchor]`` -> (gfpo_token_choice, gfpo_trainable, learning rate, gfpo_anchor_coef)."""
    parts = spec.split(":")
    if len(parts) not in (3, 4):
        raise ValueError(f"arm {spec!r}: expected choice:trainable:lr[:anchor]")
    return parts[0], parts[1], parts[2], float(parts[3]) if len(parts) == 4 else 0.0


RUN_FILE = "benchmark_run.json"
RUN_SETTINGS = ("seed", "gfpo_questions", "eval_questions", "rounds", "steps", "num_generations",
                "questions_per_step", "stage1_steps")


def save_run(run_dir: str, a, result: dict) -> None:
    """A finished GFPO run's training record and evaluation, with the settings that produced them, so that a
    later ``--reuse`` (e.g. the report over seeds trained in parallel processes) reads it instead of re-running."""
    with open(os.path.join(run_dir, RUN_FILE), "w") as f:
        json.dump({"settings": {k: getattr(a, k) for k in RUN_SETTINGS}, **result}, f, default=str)


def load_run(run_dir: str, a) -> dict | None:
    """The saved run of `run_dir` when its settings equal this invocation's, else None."""
    path = os.path.join(run_dir, RUN_FILE)
    if not os.path.exists(path):
        return None
    saved = json.load(open(path))
    return saved if saved.get("settings") == {k: getattr(a, k) for k in RUN_SETTINGS} else None


def seed_run(seed: int, data, a) -> dict:
    stage1_rows, gfpo_rows, held, mp = data
    ssft_dir = stage1(seed, stage1_rows, mp, a)
    out = {"ssft_dir": ssft_dir, "arms": a.arms.split(",")}
    print(f"== seed {seed}: evaluating the SSFT model", flush=True)
    out["before"] = evaluate(ssft_dir, held, a)
    dominant = out["before"]["dominant"]
    for spec in out["arms"]:
        choice, trainable, lr, anchor = parse_arm(spec)
        start = ssft_dir if trainable != "fork_rows" else untied_copy(ssft_dir, ssft_dir + "_untied")
        for kind, shuffle in (("gfpo", False), ("control", True)):
            key = f"{kind}@{spec}"
            print(f"== seed {seed}: {key} ({a.steps} steps)", flush=True)
            name = f"{kind}_{choice}_{trainable}_lr{lr}" + (f"_anchor{anchor:g}" if anchor else "")
            run_dir = os.path.join(a.work_dir, f"seed{seed}", name)
            cached = load_run(run_dir, a) if a.reuse else None
            if cached is not None:
                print("   reused (benchmark_run.json)", flush=True)
                out[f"{key}_training"], out[key] = cached["training"], cached["eval"]
                continue
            out[f"{key}_training"] = gfpo(start, run_dir, gfpo_rows, seed, a, shuffle, choice, trainable, float(lr),
                                          anchor)
            out[key] = evaluate(out[f"{key}_training"]["dir"], held, a, dominant)
            save_run(run_dir, a, {"training": out[f"{key}_training"], "eval": out[key]})
    for key in arm_keys(out):
        r = out[key]
        print(f"   {key:14s} best fixed token {max(r['forced_reward'].values()):.3f}  self-chosen "
              f"{r['self_reward']:.3f}  suitable choices {r['self_suitable']:.3f}  mean fidelity "
              f"{sum(r['fidelity'].values()) / len(r['fidelity']):.3f}", flush=True)
    return out


# ------------------------------------------------------------------ report
def headline(run: dict) -> dict:
    """The per-seed figures of the summary table, for each arm."""
    out = {}
    for arm in arm_keys(run):
        r = run[arm]
        best = max(r["forced_reward"], key=r["forced_reward"].get)
        out[arm] = {
            "best_fixed_reward": r["forced_reward"][best],
            "self_reward": r["self_reward"],
            "ratio": r["self_reward"] / r["forced_reward"][best] if r["forced_reward"][best] else float("nan"),
            "self_suitable": r["self_suitable"],
            "self_pass1": r["self_pass1"],
            "mean_forced_pass1": sum(r["forced_pass1"].values()) / len(r["forced_pass1"]),
            "min_fidelity": min(r["fidelity"].values()),
            "mean_fidelity": sum(r["fidelity"].values()) / len(r["fidelity"]),
        }
    return out


COLUMNS = (("best_fixed_reward", "reward, best fixed token"), ("self_reward", "reward, self-chosen"),
           ("ratio", "self / best fixed"), ("self_suitable", "suitable choices"),
           ("mean_forced_pass1", "answer Pass@1, forced (mean over tokens)"),
           ("self_pass1", "answer Pass@1, self-chosen"), ("mean_fidelity", "forced-token fidelity (mean)"),
           ("min_fidelity", "fidelity (worst token)"))


def spread(values) -> str:
    import numpy as np

    v = np.array(values, dtype=float)
    return f"{v.mean():.3f}" + (f" [{v.min():.3f}, {v.max():.3f}]" if len(v) > 1 else "")


def summary(per_seed: dict) -> tuple[list[str], list[list[str]]]:
    heads = {s: headline(run) for s, run in per_seed.items()}
    keys = arm_keys(next(iter(per_seed.values())))
    head = ["model"] + [c[1] for c in COLUMNS]
    rows = [[arm_label(k)] + [spread([heads[s][k][c] for s in heads]) for c, _ in COLUMNS] for k in keys]
    return head, rows


def suitable_mass(run: dict, arm: str) -> float:
    """Mean over kinds of the N-way probability on the tokens whose strategy (before GFPO) suits the kind."""
    dom = run["before"]["dominant"]
    return sum(sum(p for t, p in run[arm]["token_dist"][kind].items() if suits(dom[t], kind))
               for kind in SUITS) / len(SUITS)


def dist_table(per_seed: dict) -> tuple[list[str], list[list[str]]]:
    """Per arm: the probability on the suitable tokens (mean over kinds), and per kind the token distribution of
    the first seed, with each token's strategy."""
    first_seed = next(iter(per_seed))
    run = per_seed[first_seed]
    tokens = list(run["before"]["forced_reward"])
    head = ["model", "mass on suitable tokens (seeds)"] + [
        f"seed {first_seed}, {kind}: " + " / ".join(f"{t} ({run['before']['dominant'][t]})" for t in tokens)
        for kind in SUITS]
    rows = []
    for k in arm_keys(run):
        rows.append([arm_label(k), spread([suitable_mass(r, k) for r in per_seed.values()])]
                    + [" / ".join(f"{run[k]['token_dist'][kind][t]:.2f}" for t in tokens) for kind in SUITS])
    return head, rows


def md_table(head, rows) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(r) + " |" for r in rows])


def plain_table(head, rows) -> str:
    w = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    return "\n".join("  ".join(str(x).ljust(n) for x, n in zip(r, w)) for r in [head, *rows])


def verdicts(per_seed: dict) -> list[str]:
    heads = [headline(run) for run in per_seed.values()]
    runs = list(per_seed.values())
    n = len(heads)
    out = [f"Before GFPO: best fixed token {spread([h['before']['best_fixed_reward'] for h in heads])}, self-chosen "
           f"{spread([h['before']['self_reward'] for h in heads])}, mass on suitable tokens "
           f"{spread([suitable_mass(r, 'before') for r in runs])}, forced-token fidelity "
           f"{spread([h['before']['mean_fidelity'] for h in heads])}."]
    for lr in runs[0]["arms"]:
        g, c = f"gfpo@{lr}", f"control@{lr}"
        twice = sum(h[g]["self_reward"] >= 1.5 * h["before"]["best_fixed_reward"] and h[g]["self_reward"] > 0
                    for h in heads)
        kept = sum(h[g]["mean_fidelity"] >= h["before"]["mean_fidelity"] - 0.05 for h in heads)
        still = sum(abs(h[c]["self_reward"] - h["before"]["self_reward"]) <= 0.05
                    and abs(suitable_mass(r, c) - suitable_mass(r, "before")) <= 0.05 for h, r in zip(heads, runs))
        out.append(
            f"- {arm_label(g).replace('after GFPO, ', '')}: self-chosen reward after GFPO {spread([h[g]['self_reward'] for h in heads])} "
            f"(>= 1.5x the SSFT model's best fixed token in {twice} of {n} seeds); mass on suitable tokens "
            f"{spread([suitable_mass(r, g) for r in runs])}; forced-token fidelity "
            f"{spread([h[g]['mean_fidelity'] for h in heads])} (kept within 0.05 in {kept} of {n}); control: "
            f"self-chosen reward {spread([h[c]['self_reward'] for h in heads])}, suitable mass "
            f"{spread([suitable_mass(r, c) for r in runs])}, fidelity {spread([h[c]['mean_fidelity'] for h in heads])} "
            f"(did not move in {still} of {n}).")
    return out


def plot(per_seed: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    heads = [headline(run) for run in per_seed.values()]
    runs = list(per_seed.values())
    keys = arm_keys(runs[0])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    x = np.arange(len(keys))
    for off, key, lab in ((-0.27, "best_fixed_reward", "reward, best fixed token"),
                          (0.0, "self_reward", "reward, self-chosen token"),
                          (0.27, "mean_fidelity", "forced-token fidelity")):
        v = np.array([[h[k][key] for k in keys] for h in heads])
        axes[0].bar(x + off, v.mean(0), 0.27, yerr=[v.mean(0) - v.min(0), v.max(0) - v.mean(0)], label=lab, capsize=2)
    labels = [arm_label(k).replace("after control (shuffled rewards)", "control").replace("after GFPO", "GFPO")
              .replace("SSFT (before GFPO)", "SSFT").replace(", ", "\n") for k in keys]
    axes[0].set_xticks(x, labels, fontsize=7)
    axes[0].set_ylim(0, 1.05)
    axes[0].legend(fontsize=7)
    axes[0].set_title("held-out, mean and min-max over seeds", fontsize=9)
    v = np.array([[suitable_mass(r, k) for k in keys] for r in runs])
    axes[1].bar(x, v.mean(0), 0.6, yerr=[v.mean(0) - v.min(0), v.max(0) - v.mean(0)], capsize=2)
    axes[1].axhline(0.5, color="grey", lw=0.8, ls="--")
    axes[1].set_xticks(x, labels, fontsize=7)
    axes[1].set_ylim(0, 1.05)
    axes[1].set_title("N-way probability on the tokens whose strategy suits the question's kind", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_docs(per_seed: dict, a, wall: float, command: str) -> None:
    head, rows = summary(per_seed)
    dhead, drows = dist_table(per_seed)
    runs = list(per_seed.values())
    train = [f"- {k}: " + "; ".join(
        f"seed {s} {run[k + '_training']['seconds_per_step']} s/step, reward per logging step "
        f"{run[k + '_training']['reward_curve']}" for s, run in per_seed.items())
        for k in arm_keys(runs[0])[1:]]
    md = [
        "# GFPO benchmark (generated by `benchmarks/gfpo.py`; do not edit by hand)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}; "
        f"date {datetime.date.today().isoformat()}; wall time {wall / 60:.1f} min (with `--reuse`, stage 1 comes "
        "from `benchmarks/mode_preservation.py`'s runs and finished GFPO runs from their benchmark_run.json: the "
        "seeds were run in parallel processes first, see the module docstring; training times are below).",
        "",
        "Task: digitsum (the demo family); kind = parity of the first digit; reward = right answer **and** a strategy "
        "that suits the kind (odd: forward / pairs, even: cross / outer). Stage 1 = `benchmarks/mode_preservation.py`'s "
        f"SSFT run; GFPO: Adam, {a.steps} steps x {a.questions_per_step} questions x {a.num_generations} rollouts, "
        f"T 0.7, beta 0, forking tokens suppressed in the continuations (rollouts and evaluation); arms "
        f"(`gfpo_token_choice`:`gfpo_trainable`:learning rate[:`gfpo_anchor_coef`]) {a.arms} (`fork_rows` starts from "
        "an untied copy of the tied SSFT model, same function); each control has the same settings "
        f"with the batch's rewards shuffled. Held-out: {a.eval_questions} questions (half per kind) x 4 tokens x "
        f"{a.rounds} rounds, forced and self-chosen, T 0.7 top-p 0.95. Fidelity: share of a forced token's samples "
        "in the strategy it kept before GFPO. Seeds " + ", ".join(str(s) for s in per_seed) + ": mean [min, max].",
        "",
        md_table(head, rows),
        "",
        "N-way probability on the suitable tokens (mean over the two kinds), and the first seed's mean token "
        "distribution per kind (tokens in the order of the header, each with its strategy):",
        "",
        md_table(dhead, drows),
        "",
        "## Verdicts",
        "",
        *verdicts(per_seed),
        "",
        "![GFPO benchmark](gfpo_benchmark.png)",
        "",
        "## Training",
        "",
        *train,
    ]
    with open(os.path.join(a.out_dir, "gfpo_benchmark.md"), "w") as f:
        f.write("\n".join(md) + "\n")


def main(argv=None) -> int:
    a = parse_args(argv)
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    os.makedirs(a.work_dir, exist_ok=True)
    os.makedirs(a.out_dir, exist_ok=True)
    t0 = time.time()
    data = make_data(a)
    per_seed = {}
    for seed in [int(x) for x in a.seeds.split(",") if x]:
        per_seed[seed] = seed_run(seed, data, a)
    wall = time.time() - t0
    argv_str = " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    command = "python benchmarks/gfpo.py" + (f" {argv_str}" if argv_str else "")
    write_docs(per_seed, a, wall, command)
    plot(per_seed, os.path.join(a.out_dir, "gfpo_benchmark.png"))
    with open(os.path.join(a.out_dir, "gfpo_benchmark.json"), "w") as f:
        json.dump({"args": vars(a), "command": command, "wall_seconds": wall, "per_seed": per_seed}, f, indent=1,
                  default=str)
    head, rows = summary(per_seed)
    print()
    print(plain_table(head, rows))
    print("\n".join(verdicts(per_seed)))
    print(f"wrote {a.out_dir}/gfpo_benchmark.{{md,json,png}} ({wall / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
