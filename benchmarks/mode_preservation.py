"""Mode-preservation benchmark: do SSFT's forking tokens keep distinct reasoning modes apart?

    python benchmarks/mode_preservation.py --seeds 0,1,2   # writes docs/mode_preservation.{md,png,json}

Seeds in parallel processes (one core each), then one report over all of them:

    python benchmarks/mode_preservation.py --seeds 0 --out-dir /tmp/mp0 &
    python benchmarks/mode_preservation.py --seeds 1 --out-dir /tmp/mp1; wait
    python benchmarks/mode_preservation.py --seeds 0,1,2 --reuse   # trains only what is missing (seed 2)

Data: `trl_ssft.demo.digitsum` (the demo family, the default: sum of four digits, four correct
strategies forward / pairs / cross / outer with different hard questions) or, with
``--family synthetic``, `trl_ssft.demo.synthetic` (three two-digit numbers); each trace's mode is
recognisable from its first step. For each seed (initial weights and training seed), one tiny
Qwen2-style model (random init, local BPE tokenizer) is trained from the SAME initial weights three
ways with identical budgets (steps, batch, learning rate, data order):

- ``none``      SFT-mixed: the 4 traces as 4 examples, no forking token;
- ``random``    forking tokens, a random distinct token per trace each step (the paper's ablation);
- ``hungarian`` SSFT: tokens matched to traces by minimum cost every step.

Then on held-out questions, for each method, one sample per token (N slots of the bare prompt for
``none``) and round, greedy and sampled at T = 0.7 (top-p 0.95, the paper's setting) and T = 1.0
(top-p 1.0: plain sampling, where a token that only biases a mixture shows its mixture): the
token x mode table, distinct modes per question, per-token mode consistency, Pass@1 (best token,
most-matched token, mean over tokens), Cons@N and Pass@k; with several seeds, the mean and the
spread (min-max) of each over seeds, so that a difference can be told from noise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

METHODS = ("none", "random", "hungarian")
METHOD_LABEL = {"none": "SFT-mixed (none)", "random": "random tags", "hungarian": "SSFT (hungarian)"}
FAMILY_TASK = {"digitsum": "the sum of four digits", "synthetic": "three-number addition",
               "teachers": "the sum of four digits and each teacher's slips"}


def split_method(spec: str, default_noise: float) -> tuple[str, float]:
    """``"hungarian"`` -> ("hungarian", default noise); ``"hungarian:0.1"`` -> ("hungarian", 0.1)."""
    name, _, noise = spec.partition(":")
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of {METHODS} (optionally ':NOISE')")
    return name, float(noise) if noise else default_noise


def label(spec: str) -> str:
    name, _, noise = spec.partition(":")
    return METHOD_LABEL[name] + (f", init noise {noise}" if noise else "")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default="docs", help="where mode_preservation.{md,png,json} go")
    p.add_argument("--work-dir", default=None,
                   help="models and intermediate files (default /tmp/ssft_mode_preservation, + _FAMILY for a family "
                   "other than digitsum)")
    p.add_argument("--train-questions", type=int, default=512)
    p.add_argument("--eval-questions", type=int, default=48)
    p.add_argument("--num-tokens", type=int, default=4, help="N forking tokens (M = 4 traces per question)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=8, help="questions per step (x 4 traces)")
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--fork-init-noise", type=float, default=1.0,
                   help="ssft_fork_init_noise of every method: std of the new token rows' noise, in units of the "
                   "vocabulary's per-dimension std (the library default is 0.1)")
    p.add_argument("--rounds", type=int, default=2, help="sampled rounds per (question, token)")
    p.add_argument("--seed", type=int, default=0, help="data seed")
    p.add_argument("--seeds", default="0", help="comma-separated model/training seeds, one full run each")
    p.add_argument("--family", default="digitsum", choices=["digitsum", "synthetic", "teachers"],
                   help="teachers: digitsum's questions from four teachers each wrong on its own fifth of them "
                   "(trl_ssft.demo.teachers; the pre-registered accuracy-claim benchmark, docs/accuracy_claim.md)")
    p.add_argument("--name", default="mode_preservation", help="report file stem in --out-dir (.md, .png, .json)")
    p.add_argument("--loss-slice-tokens", type=int, default=None,
                   help="ssft_loss_slice_tokens of every method (default: the library's); the same numbers, fewer "
                   "forward passes (the demo recipe uses 8192)")
    p.add_argument("--match-max-tokens", type=int, default=None,
                   help="ssft_match_max_tokens of every method (default: the library's; the demo recipe uses 16384)")
    p.add_argument("--settings", default="greedy,T=0.7,T=1.0", help="decodings to evaluate (greedy, T=0.7, T=1.0)")
    p.add_argument("--methods", default="hungarian,random,none",
                   help="which to train, in this order; NAME:NOISE overrides --fork-init-noise for one run "
                   "(e.g. hungarian:0.1 adds SSFT at the library's default noise 0.1 as an ablation)")
    p.add_argument("--reuse", action="store_true",
                   help="skip the training of a (seed, method) whose model and training.json are already in --work-dir "
                   "(so seeds can be trained by separate processes, then evaluated and reported by one run)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1: a model this small runs fastest single-threaded, and a shared "
                   "machine does not thrash)")
    a = p.parse_args(argv)
    a.work_dir = a.work_dir or "/tmp/ssft_mode_preservation" + ("" if a.family == "digitsum" else f"_{a.family}")
    return a


def train(spec: str, base_dir: str, rows: list[dict], a, seed: int = 0) -> dict:
    """Train one method from the shared initial model; returns timing and the final training loss."""
    import datasets

    from trl_ssft import SSFTConfig, SSFTTrainer

    method, noise = split_method(spec, a.fork_init_noise)
    out = os.path.join(a.work_dir, f"seed{seed}", spec.replace(":", "_noise"))
    record = os.path.join(out, "training.json")
    if getattr(a, "reuse", False) and os.path.exists(record):
        with open(record) as f:
            done = json.load(f)
        same = (done.get("steps"), done.get("batch_size"), done.get("lr"), done.get("fork_init_noise"),
                done.get("loss_slice_tokens"), done.get("match_max_tokens"), done.get("family", "digitsum")) == (
            a.steps, a.batch_size, a.lr, noise, getattr(a, "loss_slice_tokens", None),
            getattr(a, "match_max_tokens", None), getattr(a, "family", "digitsum"))
        if same:
            return {**done, "dir": out, "reused": True}
        print(f"   {out}: trained with other settings, training again", flush=True)
    slicing = {k: v for k, v in (("ssft_loss_slice_tokens", getattr(a, "loss_slice_tokens", None)),
                                 ("ssft_match_max_tokens", getattr(a, "match_max_tokens", None))) if v is not None}
    cfg = SSFTConfig(
        **slicing, output_dir=out, bf16=False, use_cpu=True, report_to=[], seed=seed, ssft_assignment=method,
        ssft_num_fork_tokens=a.num_tokens, ssft_fork_init_noise=noise, max_steps=a.steps,
        per_device_train_batch_size=a.batch_size,
        learning_rate=a.lr, lr_scheduler_type="constant_with_warmup", warmup_steps=50, weight_decay=0.0,
        save_strategy="no", logging_steps=max(1, a.steps // 10), disable_tqdm=True, dataloader_num_workers=0,
    )
    t0 = time.time()
    trainer = SSFTTrainer(model=base_dir, args=cfg, train_dataset=datasets.Dataset.from_list(rows))
    result = trainer.train()
    trainer.save_model()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    done = {"seconds": round(time.time() - t0, 1), "final_loss": float(losses[-1]) if losses else None,
            "train_loss": float(result.training_loss), "match_counts": [int(c) for c in trainer.ssft_match_counts],
            "steps": a.steps, "batch_size": a.batch_size, "lr": a.lr, "fork_init_noise": noise,
            **({"loss_slice_tokens": a.loss_slice_tokens, "match_max_tokens": a.match_max_tokens}
               if slicing else {}), **({"family": a.family} if a.family != "digitsum" else {})}
    with open(record, "w") as f:  # written last: its presence means the model is complete (--reuse)
        json.dump(done, f)
    return {**done, "dir": out}


SETTINGS = (("greedy", dict(greedy=True)), ("T=0.7", dict(temperature=0.7, top_p=0.95)),
            ("T=1.0", dict(temperature=1.0, top_p=1.0)))


def evaluate(method: str, model_dir: str, rows: list[dict], a) -> dict:
    """Per decoding setting, the evaluation report; a family with `error_anatomy` (teachers) adds the split of
    the samples into right / teacher's slip / own error (post-hoc: not part of the pre-registered verdicts)."""
    import importlib

    from trl_ssft.eval.evaluate import evaluate_model
    from trl_ssft.eval.inference import load_ssft_model

    anatomy = getattr(importlib.import_module(f"trl_ssft.demo.{a.family}"), "error_anatomy", None)
    sm = load_ssft_model(model_dir, device="cpu")
    out = {}
    wanted = a.settings.split(",")
    for name, kw in SETTINGS:
        if name not in wanted:
            continue
        out[name] = evaluate_model(
            sm, rows, use_fork_tokens=not method.startswith("none"), num_plain_samples=a.num_tokens, rounds=a.rounds,
            max_new_tokens=64, batch_size=64, seed=a.seed, mode_classifier=a.family, math_verify=False,
            progress=False, pass_k=(1, a.num_tokens), keep_samples=anatomy is not None, **kw,
        )
        if anatomy is not None:
            out[name]["error_anatomy"] = anatomy(out[name].pop("samples"), rows)
    return out


# ---------------------------------------------------------------- across seeds
def seed_metrics(rep: dict) -> dict:
    """The per-run figures compared across seeds (fractions)."""
    import numpy as np

    p1 = rep["pass1_per_token"]
    return {"modes/question": rep["modes"]["distinct_modes_per_question"],
            "token consistency": rep["modes"]["mean_consistency"],
            "Pass@1 best token": max(p1.values()), "Pass@1 most-matched": rep["pass1"],
            "Pass@1 mean": float(np.mean(list(p1.values()))), "Cons@N": rep["cons_at_n"],
            f"Pass@{len(p1)}": (rep["pass_at_k"] or {}).get(str(len(p1))),
            **({"teacher's slips (post-hoc)": rep["error_anatomy"]["slip"],
                "own errors (post-hoc)": rep["error_anatomy"]["own error"],
                "slip reproduced (post-hoc)": rep["error_anatomy"]["slip_reproduced"]}
               if "error_anatomy" in rep else {})}


def across_numbers(per_seed: dict, setting: str) -> dict:
    """{method: {metric: {mean, min, max, seeds}}} over the seeds evaluated at `setting` (fractions; modes/question a
    count). Written into the report's JSON, where `trl_ssft.demo.recorded` reads it."""
    import numpy as np

    out = {}
    for m in next(iter(per_seed.values())):
        vals = [seed_metrics(per_seed[s][m][setting]) for s in per_seed if setting in per_seed[s].get(m, {})]
        if not vals:
            continue
        out[m] = {}
        for k in vals[0]:
            xs = np.array([v[k] for v in vals if v[k] is not None], dtype=float)
            if len(xs):
                out[m][k] = {"mean": float(xs.mean()), "min": float(xs.min()), "max": float(xs.max()), "seeds": len(xs)}
    return out


def across_seeds(per_seed: dict, setting: str) -> list[list[str]]:
    """Rows method x metric: mean [min-max] over seeds."""
    rows = []
    for m, metrics in across_numbers(per_seed, setting).items():
        row = [label(m)]
        for k, v in metrics.items():
            scale, fmt = (1, "{:.2f}") if k == "modes/question" else (100, "{:.1f}")
            row.append(fmt.format(scale * v["mean"]) + (f" [{fmt.format(scale * v['min'])}-{fmt.format(scale * v['max'])}]"
                                                         if v["seeds"] > 1 else ""))
        rows.append(row)
    return rows


def across_head(per_seed: dict, setting: str) -> list[str]:
    first = next(iter(per_seed.values()))
    rep = next(iter(first.values()))[setting]
    return ["method"] + [k + ("" if k == "modes/question" else " %") for k in seed_metrics(rep)]


def half_two_verdict(per_seed: dict, setting: str = "T=0.7") -> str:
    """Does SSFT's Cons@N beat SFT-mixed's on every seed, with Pass@1 (most-matched token) not lower?"""
    seeds = [s for s in per_seed if "hungarian" in per_seed[s] and "none" in per_seed[s]
             and setting in per_seed[s]["none"]]
    if not seeds:
        return f"- Half (2): needs both hungarian and none runs, evaluated at {setting}."
    h = [seed_metrics(per_seed[s]["hungarian"][setting]) for s in seeds]
    n = [seed_metrics(per_seed[s]["none"][setting]) for s in seeds]
    cons = [a["Cons@N"] - b["Cons@N"] for a, b in zip(h, n)]
    p1 = [a["Pass@1 most-matched"] - b["Pass@1 mean"] for a, b in zip(h, n)]
    holds = all(c > 0 for c in cons) and all(p >= -0.02 for p in p1)
    return (f"- Half (2) of the paper's claim ({setting}): SSFT Cons@N minus SFT-mixed Cons@N per seed "
            f"{', '.join(f'{100 * c:+.1f}' for c in cons)} points; SSFT Pass@1 (most-matched token) minus SFT-mixed "
            f"Pass@1 per seed {', '.join(f'{100 * p:+.1f}' for p in p1)} points: "
            + ("**holds** on every seed." if holds else "**does not hold** on every seed (see the numbers)."))


def claim_verdicts(per_seed: dict, setting: str = "T=0.7") -> list[str]:
    """The accuracy claim's verdicts by the rules fixed in docs/accuracy_claim.md before its runs: per seed,
    SSFT minus SFT-mixed (and minus random tags) in points; a half holds when SSFT is ahead on every seed and
    by >= 5 (Cons@N) / 2 (Pass@1, mean over tokens) points on average; premise: SFT-mixed Pass@1 in 50-90 %."""
    seeds = [s for s in per_seed if {"hungarian", "none"} <= set(per_seed[s]) and setting in per_seed[s]["none"]]
    if not seeds:
        return ["- Accuracy claim: needs hungarian and none runs."]
    m = {k: [seed_metrics(per_seed[s][k][setting]) for s in seeds] for k in ("hungarian", "none", "random")
         if all(k in per_seed[s] for s in seeds)}

    def diffs(a_key, b_key, other="none"):
        return [100 * (h[a_key] - o[b_key or a_key]) for h, o in zip(m["hungarian"], m[other])]

    def verdict(d, bar):
        return "**holds**" if all(x > 0 for x in d) and sum(d) / len(d) >= bar else "**does not hold**"

    fmt = lambda d: ", ".join(f"{x:+.1f}" for x in d)  # noqa: E731
    cons, p1 = diffs("Cons@N", None), diffs("Pass@1 mean", "Pass@1 mean")
    out = [f"- Pre-registered verdicts ({setting}, seeds {', '.join(map(str, seeds))}; SSFT minus SFT-mixed, points "
           "per seed):",
           f"  - Cons@N half: {fmt(cons)} (mean {sum(cons) / len(cons):+.1f}; bar: > 0 on every seed, mean >= 5): "
           + verdict(cons, 5) + ".",
           f"  - Pass@1 half (mean over tokens vs SFT-mixed's samples): {fmt(p1)} (mean {sum(p1) / len(p1):+.1f}; "
           "bar: > 0 on every seed, mean >= 2): " + verdict(p1, 2) + ". Secondary: most-matched token "
           f"{fmt(diffs('Pass@1 most-matched', 'Pass@1 mean'))}, best token (chosen on these test questions) "
           f"{fmt(diffs('Pass@1 best token', 'Pass@1 mean'))}."]
    if "random" in m:
        ctrl = diffs("Cons@N", None, "random")
        out.append(f"  - Control, SSFT minus random tags, Cons@N: {fmt(ctrl)}: "
                   + ("SSFT ahead on every seed." if all(x > 0 for x in ctrl) else "SSFT not ahead on every seed."))
    prem = [100 * x["Pass@1 mean"] for x in m["none"]]
    out.append(f"  - Premise (the task and the slips were learned): SFT-mixed Pass@1 {', '.join(f'{x:.1f}' for x in prem)} "
               "%: " + ("**holds** (50-90 % on every seed)." if all(50 <= x <= 90 for x in prem) else
                        "**does not hold** (outside 50-90 % on some seed: above, a vote has little to correct; "
                        "below, the task itself was not learned)."))
    return out


# ---------------------------------------------------------------- report
def unrecognised(rep: dict) -> float:
    """Share of samples whose mode was not recognised (`other`)."""
    total = rep["num_questions"] * rep["rounds"] * len(rep["tokens"])
    return sum(rep["modes"]["table"][t]["other"] for t in rep["tokens"]) / total


def summary_rows(results: dict) -> list[list[str]]:
    rows = []
    for method, per in results.items():
        for setting, rep in per.items():
            m = rep["modes"]
            cons = list(m["token_consistency"].values())
            rows.append([
                label(method), setting, f"{m['distinct_modes_per_question']:.2f}",
                f"{100 * m['mean_consistency']:.0f}", f"{100 * min(cons):.0f}",
                f"{100 * rep['pass1']:.1f}", f"{100 * rep['cons_at_n']:.1f}",
                f"{rep['distinct_answers_per_question']:.2f}",
                f"{100 * unrecognised(rep):.0f}",
            ])
    return rows


SUMMARY_HEAD = ["method", "decoding", "distinct modes / question", "token consistency % (mean)",
                "token consistency % (min)", "Pass@1 %", "Cons@N %", "distinct answers / question",
                "unrecognised %"]


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def plain_table(head: list[str], rows: list[list[str]]) -> str:
    w = [max(len(h), *(len(r[c]) for r in rows)) for c, h in enumerate(head)]
    fmt = "  ".join("{:<%d}" % x for x in w)
    return "\n".join([fmt.format(*head), "  ".join("-" * x for x in w)] + [fmt.format(*r) for r in rows])


def mode_table_md(rep: dict) -> str:
    m = rep["modes"]
    head = ["token"] + m["names"] + ["majority", "consistency %", "Pass@1 %"]
    rows = [[t] + [str(m["table"][t][k]) for k in m["names"]] + [str(m["token_majority_mode"][t]),
            f"{100 * m['token_consistency'][t]:.0f}", f"{100 * rep['pass1_per_token'][t]:.1f}"]
            for t in rep["tokens"]]
    return markdown_table(head, rows)


def acceptance(results: dict) -> list[str]:
    lines = []
    h = results.get("hungarian", {}).get("T=1.0")
    r = results.get("random", {}).get("T=1.0")
    if h:
        modes, cons = h["modes"]["distinct_modes_per_question"], list(h["modes"]["token_consistency"].values())
        ok = modes >= 3 and min(cons) >= 0.8
        lines.append(f"- SSFT at T=1.0: {modes:.2f} distinct modes per question (bar: >= 3), every token keeps to "
                     f"its mode on >= {100 * min(cons):.0f}% of held-out samples (bar: 80%): "
                     f"**{'met' if ok else 'NOT met'}**.")
    if r:
        cons = list(r["modes"]["token_consistency"].values())
        lines.append(f"- random tags at T=1.0: token consistency {100 * min(cons):.0f}-{100 * max(cons):.0f}% "
                     f"(mean {100 * r['modes']['mean_consistency']:.0f}%; bar: well below 80%): "
                     f"**{'met' if max(cons) < 0.6 else 'NOT met'}**.")
    return lines


def paper_comparison(results: dict, a) -> list[str]:
    """Statements comparing this run with the paper's claims, worded from the measured numbers."""
    out = []
    h, r, n = (results.get(m, {}).get("T=1.0") for m in ("hungarian", "random", "none"))
    if h and r:
        hm, rm = h["modes"], r["modes"]
        cons = hm["token_consistency"]
        held = [t for t, v in cons.items() if v >= 0.8]
        agree = hm["mean_consistency"] > rm["mean_consistency"] + 0.2
        out.append(
            f"- Paper: SSFT's tokens start distinct reasoning modes, random tags' tokens behave alike. Here (T=1.0): "
            f"SSFT tokens keep to their mode on {100 * hm['mean_consistency']:.0f}% of samples on average "
            f"({hm['distinct_modes_per_question']:.2f} modes/question), random tags' on "
            f"{100 * rm['mean_consistency']:.0f}% ({rm['distinct_modes_per_question']:.2f} modes/question): "
            + ("same direction" if agree else "**differs** (no clear separation at this budget)")
            + f"; {len(held)} of {len(cons)} SSFT tokens keep to one mode on >= 80% of samples"
            + ("." if len(held) == len(cons) else
               f" (**differs** from the paper's picture of every token a distinct mode: "
               f"{', '.join(t for t in cons if t not in held)} share or mix modes)."))
    low = {k: v["T=1.0"] for k, v in results.items() if k.startswith("hungarian:")}
    for spec, rep in low.items():
        m = rep["modes"]
        cons = m["token_consistency"]
        out.append(
            f"- Ablation, SSFT with `ssft_fork_init_noise` = {spec.partition(':')[2]} (everything else equal), T=1.0: "
            f"{m['distinct_modes_per_question']:.2f} modes/question, token consistency "
            f"{', '.join(f'{100 * v:.0f}%' for v in cons.values())}; "
            f"{sum(v >= 0.8 for v in cons.values())} of {len(cons)} tokens keep to one mode on >= 80% of samples"
            + ("." if all(v >= 0.8 for v in cons.values()) else
               ": with small noise the N new rows start almost equal, every token scores every trace alike and "
               "the matching is decided by noise, so the tokens separate more slowly."))
    h7, n7 = results.get("hungarian", {}).get("T=0.7"), results.get("none", {}).get("T=0.7")
    if h7 and n7:
        better = h7["pass1"] > n7["pass1"]
        out.append(
            f"- Paper: SSFT Pass@1 (one token) beats SFT-mixed (e.g. AIME24 64.06 vs 58.23) and its Cons@N is much "
            f"higher. Here (T=0.7): Pass@1 {100 * h7['pass1']:.1f}% vs {100 * n7['pass1']:.1f}%, Cons@{a.num_tokens} "
            f"{100 * h7['cons_at_n']:.1f}% vs {100 * n7['cons_at_n']:.1f}%: "
            + ("same direction for Pass@1 and Cons@N. " if better and h7["cons_at_n"] > n7["cons_at_n"]
               else "**differs**. ")
            + ("Cons@N equals token 1's accuracy because the N answers mostly differ and the vote's tie rule "
               "takes token 1's answer. " if abs(h7["cons_at_n"] - h7["pass1"]) < 1e-9 else "")
            + f"Accuracy here measures how well a {a.hidden_size}-wide model learned {FAMILY_TASK[a.family]} "
            "within the budget; "
            "the gaps are far larger than the paper's and are not a prediction for large models.")
    out.append(f"- Scale: the paper trains a 32B model on 1k questions x 4 teacher traces with N = 6 tokens; this run "
               f"trains a {a.hidden_size}-wide, {a.layers}-layer model from scratch with N = {a.num_tokens}, M = 4, on "
               "synthetic traces whose modes differ from the first step on. Whether the matching finds modes that "
               "are less cleanly separated (real teachers) is not tested here.")
    return out


def plot(results: dict, path: str, setting: str = "T=1.0") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from trl_ssft.eval.report import heatmap_matrix

    methods = sorted(results, key=lambda m: (METHODS.index(m.partition(":")[0]), m))
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.2), squeeze=False)
    for ax, method in zip(axes[0], methods):
        rep = results[method][setting]
        mat, rows, cols, _ = heatmap_matrix(rep)
        ax.imshow(mat, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        for i in range(len(rows)):
            for j in range(len(cols)):
                ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="w" if mat[i, j] < 0.6 else "k")
        m = rep["modes"]
        ax.set_title(f"{label(method)}\n{m['distinct_modes_per_question']:.2f} modes/question, "
                     f"consistency {100 * m['mean_consistency']:.0f}%", fontsize=9)
    fig.suptitle(f"Share of each token's held-out samples per reasoning mode ({setting} sampling)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    del np


def write_docs(results, training, a, wall, command, path_md, path_png, per_seed=None):
    import torch
    import transformers
    import trl

    rows = summary_rows(results)
    lines = [
        "# Mode preservation: SSFT vs. random tags vs. SFT-mixed (synthetic, CPU)",
        "",
        "Produced by one command (numbers in this file and the plot come from that run):",
        "",
        "```",
        command,
        "```",
        "",
        f"Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. "
        f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPU "
        f"cores visible, torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}. "
        f"Total wall time: {wall / 60:.1f} min"
        + (" (evaluation only: the models were trained by earlier runs with the same settings, `--reuse`; their "
           "training seconds below were measured there, on a machine shared with other jobs, so they are not a cost "
           "comparison)." if any(t.get("reused") for t in training.values()) else "."),
        "",
        "## Setup",
        "",
        f"- Data: `trl_ssft.demo.{a.family}.make_rows` (seed {a.seed}): {a.train_questions} training questions, "
        f"{a.eval_questions} held-out questions, M = 4 traces per question, "
        "trace order shuffled per question; each trace opens with its strategy's name (see the module's docstring "
        "for the strategies and why their hard questions differ).",
        f"- Model: tiny Qwen2 (`trl_ssft.demo.tiny`, hidden {a.hidden_size}, {a.layers} layers, random init, local BPE "
        "tokenizer), the same initial weights for every method.",
        f"- Training (identical budget per method): {a.steps} steps x {a.batch_size} questions x 4 traces, AdamW "
        f"lr {a.lr} (constant after 50 warm-up steps), N = {a.num_tokens} forking tokens initialised with "
        f"`ssft_fork_init_noise` = {a.fork_init_noise}, `SSFTTrainer` with `ssft_assignment` = none / random / "
        "hungarian, all other options at their defaults.",
        f"- Evaluation: one sample per token (SFT-mixed: {a.num_tokens} samples of the bare prompt) and round "
        f"({a.rounds} rounds when sampling, 1 greedy), max 64 new tokens; the mode of a sample is "
        f"`trl_ssft.demo.{a.family}.classify_mode` (its opening; a sample whose first step uses wrong operands is "
        "`other`). Token consistency: share of a token's held-out samples that follow its overall majority mode "
        "(`trl_ssft.eval.metrics.token_consistency`). For SFT-mixed the 'tokens' are sample slots, which cannot carry "
        "a mode: its consistency is a reference level for 'no control'.",
        "",
        "Training:",
        "",
        markdown_table(["method", "seconds", "final logged loss", "traces matched per token"],
                       [[label(m), str(t["seconds"]), f"{t['final_loss']:.3f}",
                         str(t["match_counts"]) if m != "none" else "-"] for m, t in training.items()]),
        "",
        *([f"Same number of steps and examples for every method; SSFT's no-gradient N x M matching pass made its "
           f"training take {training['hungarian']['seconds'] / training['random']['seconds']:.1f}x the wall time "
           "of random tags.", ""] if "hungarian" in training and "random" in training
          and not any(t.get("reused") for t in training.values()) else []),
        *(["## Across seeds (mean [min-max] over seeds " + a.seeds + ")", ""]
          + [x for st in ("T=0.7", "greedy") if st in a.settings.split(",") for x in
             (f"Decoding {st}:", "", markdown_table(across_head(per_seed, st), across_seeds(per_seed, st)), "")]
          + [half_two_verdict(per_seed), *claim_verdicts(per_seed), "",
             "SFT-mixed has no tokens: its 'Pass@1 best token' / 'most-matched' are over its N bare-prompt sample "
             "slots (the same distribution), and its Cons@N is a vote over N samples of the bare prompt.", ""]
          if per_seed else []),
        f"## Results (seed {a.seeds.split(',')[0]})",
        "",
        markdown_table(SUMMARY_HEAD, rows),
        "",
        "Acceptance (issue 4):",
        "",
        *acceptance(results),
        "",
        f"![token x mode heat maps]({a.name}.png)",
        "",
        "## Token x mode tables (T = 1.0, top-p 1.0)",
        "",
    ]
    for method in results:
        if "T=1.0" in results[method]:
            lines += [f"### {label(method)}", "", mode_table_md(results[method]["T=1.0"]), ""]
    lines += ["## Token x mode tables (T = 0.7, top-p 0.95)", ""]
    for method in results:
        if "T=0.7" in results[method]:
            lines += [f"### {label(method)}", "", mode_table_md(results[method]["T=0.7"]), ""]
    lines += ["## Against the paper's claims", "", *paper_comparison(results, a), ""]
    with open(path_md, "w") as f:
        f.write("\n".join(lines))
    shown = next((st for st in ("T=1.0", "T=0.7", "greedy") if all(st in r for r in results.values())), None)
    if shown:
        plot(results, path_png, shown)
    return rows


def main(argv=None) -> int:
    a = parse_args(argv)
    import importlib

    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    from trl_ssft.demo.tiny import save_tiny_model

    family = importlib.import_module(f"trl_ssft.demo.{a.family}")
    t0 = time.time()
    os.makedirs(a.work_dir, exist_ok=True)
    os.makedirs(a.out_dir, exist_ok=True)
    rows = family.make_rows(a.train_questions + a.eval_questions, seed=a.seed)
    train_rows, held_out = rows[: a.train_questions], rows[a.train_questions:]
    methods = [m for m in a.methods.split(",") if m]
    seeds = [int(x) for x in a.seeds.split(",") if x]
    per_seed, per_seed_training = {}, {}
    for seed in seeds:
        base = save_tiny_model(os.path.join(a.work_dir, f"seed{seed}", "base"), family.corpus(rows),
                               hidden_size=a.hidden_size, num_layers=a.layers, seed=seed)
        training, results = {}, {}
        for method in methods:
            print(f"== seed {seed}: training {method}", flush=True)
            training[method] = train(method, base, train_rows, a, seed)
            print(f"   {training[method]['seconds']} s, final loss {training[method]['final_loss']:.3f}", flush=True)
            results[method] = evaluate(method, training[method]["dir"], held_out, a)
            for s_, rep in results[method].items():
                m = seed_metrics(rep)
                print(f"   {s_}: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items() if v is not None), flush=True)
        per_seed[seed], per_seed_training[seed] = results, training
    wall = time.time() - t0
    argv_str = " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    command = "python benchmarks/mode_preservation.py" + (f" {argv_str}" if argv_str else "")
    md, png = os.path.join(a.out_dir, a.name + ".md"), os.path.join(a.out_dir, a.name + ".png")
    first = seeds[0]
    rows_ = write_docs(per_seed[first], per_seed_training[first], a, wall, command, md, png, per_seed)
    with open(os.path.join(a.out_dir, a.name + ".json"), "w") as f:
        json.dump({"args": vars(a), "command": command, "training": per_seed_training, "results": per_seed,
                   "across_seeds": {st: across_numbers(per_seed, st) for st in a.settings.split(",")},
                   "method_labels": {m: label(m) for m in methods}, "verdicts": claim_verdicts(per_seed),
                   "wall_seconds": wall}, f, indent=1, default=str)
    print()
    print(plain_table(SUMMARY_HEAD, rows_))
    for st in ("T=0.7", "greedy"):
        if st in a.settings.split(","):
            print(f"\nacross seeds, {st}:")
            print(plain_table(across_head(per_seed, st), across_seeds(per_seed, st)))
    print(half_two_verdict(per_seed))
    print("\n".join(claim_verdicts(per_seed)))
    print(f"wrote {md}, {png} ({wall / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
