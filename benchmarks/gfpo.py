"""GFPO benchmark: does stage 2 teach an SSFT model to pick the forking token that suits the question?

    python benchmarks/gfpo.py --seeds 0,1,2   # writes docs/gfpo_benchmark.{md,json,png}

On a 2-core machine the seeds can run in parallel processes, then be reported together (every finished run
is read back from its benchmark_run.json):

    for s in 0 1 2; do python benchmarks/gfpo.py --seeds $s --reuse --out-dir /tmp/gfpo_seed$s & done; wait
    python benchmarks/gfpo.py --seeds 0,1,2 --reuse

Arms may run on adapters (`--arms ...:lora`, `...:qlora`: a fresh LoRA on the SSFT model, or an SSFT QLoRA adapter
on the 4-bit SSFT model continued, as the recipes do), and `--previous` summarises earlier runs from their JSON.
`benchmarks/gfpo_report.py` holds the arm specs and the report; `benchmarks/gfpo_recipes.py` runs the shipped tiny
recipes on this task.

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

from gfpo_report import (SUITS, arm_keys, kind_of, parse_arm, plain_table, plot, suits, summary,  # noqa: E402
                         verdicts, write_docs)

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
                   help="GFPO runs as gfpo_token_choice:gfpo_trainable:learning_rate[:gfpo_anchor_coef[:model]], each "
                   "with a shuffled-reward control (Adam). model: full (default), lora (a fresh LoRA on the SSFT model, "
                   "as `trl-ssft gfpo --use_peft`), qlora (an SSFT QLoRA adapter on the 4-bit SSFT model, continued, as "
                   "examples/yaml/trl_gfpo_qlora_24gb.yaml; made by --qlora-ssft-steps of SSFT first). fork_rows runs "
                   "start from an untied copy of the SSFT model (same function)")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank of the lora / qlora arms (alpha = 2 r, every "
                   "linear layer)")
    p.add_argument("--qlora-ssft-steps", type=int, default=100,
                   help="SSFT steps that make the qlora arms' starting adapter (on the 4-bit SSFT model, lr 1e-3)")
    p.add_argument("--previous", default="",
                   help="comma-separated gfpo_benchmark.json files of earlier runs, summarised after this run's "
                   "tables (their own command and date)")
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
    """TRL reward: `trl_ssft.demo.gfpo_task.suited_strategy_reward` (1.0 when the answer is right and the rollout's
    strategy suits the question's kind). With `shuffle_seed`, the batch's rewards are permuted at random (the
    control)."""
    from trl_ssft.demo.gfpo_task import suited_strategy_reward

    rng = random.Random(shuffle_seed)

    def mode_reward(prompts, completions, answer, **kwargs):
        out = suited_strategy_reward(prompts=prompts, completions=completions, answer=answer)
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


def lora_config(a, fork_ids=None):
    """The LoRA of the lora / qlora arms: rank --lora-r, alpha 2 r, every linear layer, no dropout."""
    from peft import LoraConfig

    return LoraConfig(r=a.lora_r, lora_alpha=2 * a.lora_r, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def bnb_4bit():
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)


def qlora_adapter(ssft_dir: str, rows, seed: int, a) -> str:
    """The qlora arms' start: an SSFT QLoRA adapter (LoRA + the forking-token rows, as `SSFTTrainer` adds them) on
    the 4-bit SSFT model, trained --qlora-ssft-steps more SSFT steps on stage 1's data (the 24 GB recipe's shape:
    GFPO continues a trained adapter). Reused when its ssft_state.json exists."""
    import datasets

    from trl_ssft import SSFTConfig, SSFTTrainer

    out = os.path.join(a.work_dir, f"seed{seed}", f"qlora_ssft_r{a.lora_r}_{a.qlora_ssft_steps}")
    if os.path.exists(os.path.join(out, "ssft_state.json")) and os.path.exists(os.path.join(out, "adapter_config.json")):
        return out
    cfg = SSFTConfig(output_dir=out, bf16=False, use_cpu=True, report_to=[], seed=seed, ssft_assignment="hungarian",
                     ssft_num_fork_tokens=4, max_steps=a.qlora_ssft_steps, per_device_train_batch_size=8,
                     learning_rate=1e-3, lr_scheduler_type="constant", weight_decay=0.0, save_strategy="no",
                     logging_steps=max(1, a.qlora_ssft_steps // 5), disable_tqdm=True)
    trainer = SSFTTrainer(model=ssft_dir, args=cfg, train_dataset=datasets.Dataset.from_list(rows),
                          peft_config=lora_config(a), quantization_config=bnb_4bit())
    trainer.train()
    trainer.save_model(out)
    return out


def load_qlora_start(adapter_dir: str, args):
    """The 4-bit base + the SSFT adapter, trainable: `trl-ssft gfpo`'s own loader (`trl_ssft.gfpo.cli`)."""
    from types import SimpleNamespace

    from trl_ssft.gfpo.cli import load_policy

    model, tok, _full = load_policy(adapter_dir, SimpleNamespace(attn_implementation=None, dtype="float32"), args,
                                    bnb_4bit())
    return model, tok


def gfpo(model_dir: str, out: str, rows, seed: int, a, shuffle: bool, choice: str, trainable: str,
         lr: float, anchor: float = 0.0, kind: str = "full") -> dict:
    """One GFPO run; `kind`: full (model_dir is a model), lora (a fresh LoRA on it), qlora (model_dir is an SSFT
    QLoRA adapter dir, continued on the 4-bit base). Returns the training record and the trained SSFTModel."""
    from datasets import Dataset

    from trl_ssft import GFPOConfig, GFPOTrainer
    from trl_ssft.eval.inference import SSFTModel

    args = GFPOConfig(
        output_dir=out, bf16=False, use_cpu=True, report_to=[], seed=seed, disable_tqdm=True, save_strategy="no",
        gfpo_token_choice=choice, gfpo_trainable=trainable, num_generations=a.num_generations,
        per_device_train_batch_size=a.num_generations * a.questions_per_step, max_completion_length=48,
        temperature=0.7, top_p=0.95, beta=0.0, learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_steps=a.steps, logging_steps=max(1, a.steps // 10), gfpo_anchor_coef=anchor,
    )
    extra = {}
    if kind == "lora":
        extra["peft_config"] = lora_config(a)
    model = model_dir
    if kind == "qlora":
        model, extra["processing_class"] = load_qlora_start(model_dir, args)
        extra["ssft_state_dir"] = model_dir
    trainer = GFPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                          reward_funcs=make_reward(seed + 1000 if shuffle else None), **extra)
    t0 = time.time()
    trainer.train()
    seconds = time.time() - t0
    trainer.save_model(out)
    logs = [h for h in trainer.state.log_history if "gfpo/entropy" in h]
    reward_key = next((k for k in (logs[0] if logs else {}) if k.startswith("rewards/") and k.endswith("/mean")), None)
    record = {"dir": out, "seconds": round(seconds, 1), "seconds_per_step": round(seconds / a.steps, 2),
              "reward_curve": [round(float(h.get(reward_key or "reward", float("nan"))), 3) for h in logs],
              "entropy_curve": [round(float(h["gfpo/entropy"]), 3) for h in logs],
              "anchor_kl_curve": [round(float(h["gfpo/anchor_kl"]), 4) for h in logs if "gfpo/anchor_kl" in h],
              "reference": trainer._gfpo_ref.kind if trainer._gfpo_ref is not None else None}
    if kind == "full":  # evaluated from the saved dir, as before
        return record, out
    from trl_ssft.state import read_ssft_state

    state = read_ssft_state(out)
    trained = SSFTModel(trainer.model.eval(), trainer.processing_class, list(trainer.gfpo_fork_names),
                        list(trainer.gfpo_fork_ids), state.get("pass1_token"), state)
    return record, trained


# ------------------------------------------------------------------ evaluation
def evaluate(model_dir, held, a, dominant: dict | None = None) -> dict:
    """Forced and self-chosen samples on `held` (a model dir or an in-memory `SSFTModel`), scored by the
    benchmark's reward."""
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


def qlora_start_model(adapter_dir: str, a):
    """The qlora arms' starting model (4-bit base + SSFT adapter) as an SSFTModel, for the `before@qlora` row."""
    from types import SimpleNamespace

    from trl_ssft.eval.inference import SSFTModel
    from trl_ssft.state import read_ssft_state

    model, tok = load_qlora_start(adapter_dir, SimpleNamespace(model_init_kwargs=None, use_cpu=True,
                                                               gradient_checkpointing=False))
    state = read_ssft_state(adapter_dir)
    return SSFTModel(model.eval(), tok, state["fork_tokens"], state["fork_token_ids"], state.get("pass1_token"), state)


def seed_run(seed: int, data, a) -> dict:
    stage1_rows, gfpo_rows, held, mp = data
    ssft_dir = stage1(seed, stage1_rows, mp, a)
    out = {"ssft_dir": ssft_dir, "arms": a.arms.split(",")}
    print(f"== seed {seed}: evaluating the SSFT model", flush=True)
    out["before"] = evaluate(ssft_dir, held, a)
    dominant = out["before"]["dominant"]
    starts = {"full": ssft_dir, "lora": ssft_dir}
    if any(parse_arm(spec)[4] == "qlora" for spec in out["arms"]):
        starts["qlora"] = qlora_adapter(ssft_dir, stage1_rows, seed, a)
        print(f"== seed {seed}: evaluating the SSFT QLoRA adapter {starts['qlora']}", flush=True)
        out["before@qlora"] = evaluate(qlora_start_model(starts["qlora"], a), held, a, dominant)
    for spec in out["arms"]:
        choice, trainable, lr, anchor, kind = parse_arm(spec)
        start = starts[kind] if trainable != "fork_rows" or kind != "full" else untied_copy(ssft_dir, ssft_dir + "_untied")
        for what, shuffle in (("gfpo", False), ("control", True)):
            key = f"{what}@{spec}"
            print(f"== seed {seed}: {key} ({a.steps} steps)", flush=True)
            name = f"{what}_{choice}_{trainable}_lr{lr}" + (f"_anchor{anchor:g}" if anchor else "") + (
                f"_{kind}_r{a.lora_r}" if kind != "full" else "") + (f"_s{a.qlora_ssft_steps}" if kind == "qlora" else "")
            run_dir = os.path.join(a.work_dir, f"seed{seed}", name)
            cached = load_run(run_dir, a) if a.reuse else None
            if cached is not None:
                print("   reused (benchmark_run.json)", flush=True)
                out[f"{key}_training"], out[key] = cached["training"], cached["eval"]
                continue
            record, trained = gfpo(start, run_dir, gfpo_rows, seed, a, shuffle, choice, trainable, float(lr), anchor,
                                   kind)
            out[f"{key}_training"] = record
            out[key] = evaluate(trained, held, a, dominant)
            save_run(run_dir, a, {"training": out[f"{key}_training"], "eval": out[key]})
    for key in arm_keys(out):
        r = out[key]
        print(f"   {key:14s} best fixed token {max(r['forced_reward'].values()):.3f}  self-chosen "
              f"{r['self_reward']:.3f}  suitable choices {r['self_suitable']:.3f}  mean fidelity "
              f"{sum(r['fidelity'].values()) / len(r['fidelity']):.3f}", flush=True)
    return out


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
        json.dump({"args": vars(a), "command": command, "wall_seconds": wall, "date": datetime.date.today().isoformat(),
                   "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "loadavg": os.getloadavg(),
                   "per_seed": per_seed}, f, indent=1, default=str)
    head, rows = summary(per_seed)
    print()
    print(plain_table(head, rows))
    print("\n".join(verdicts(per_seed)))
    print(f"wrote {a.out_dir}/gfpo_benchmark.{{md,json,png}} ({wall / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
