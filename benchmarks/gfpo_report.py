"""The GFPO benchmark's arms and report: arm specs, summary tables, verdicts, plot and markdown
(`benchmarks/gfpo.py` runs the benchmark; this module only reads its per-seed results)."""

from __future__ import annotations

import datetime
import json
import os
import platform

from trl_ssft.demo.gfpo_task import SUITS, kind_of, suits  # noqa: F401  (the task: one home)


def arm_keys(run: dict) -> list[str]:
    """``before`` (and ``before@qlora``), then ``gfpo@SPEC`` and ``control@SPEC`` for every arm of the run."""
    starts = ["before"] + (["before@qlora"] if "before@qlora" in run else [])
    return starts + [f"{kind}@{arm}" for arm in run["arms"] for kind in ("gfpo", "control")]


def arm_label(key: str) -> str:
    if key == "before":
        return "SSFT (before GFPO)"
    if key == "before@qlora":
        return "SSFT QLoRA adapter on the 4-bit SSFT model (before GFPO)"
    kind, spec = key.split("@")
    choice, trainable, lr, anchor, model = parse_arm(spec)
    what = (f"{choice}, {trainable}, lr {lr}" + (f", anchor {anchor:g}" if anchor else "")
            + {"full": "", "lora": ", fresh LoRA", "qlora": ", QLoRA adapter continued"}[model])
    return f"after GFPO, {what}" if kind == "gfpo" else f"after control (shuffled rewards), {what}"


MODELS = ("full", "lora", "qlora")


def parse_arm(spec: str) -> tuple[str, str, str, float, str]:
    """``choice:trainable:lr[:anchor[:model]]`` -> (gfpo_token_choice, gfpo_trainable, learning rate,
    gfpo_anchor_coef, model kind: full / lora / qlora)."""
    parts = spec.split(":")
    if len(parts) not in (3, 4, 5) or (len(parts) == 5 and parts[4] not in MODELS):
        raise ValueError(f"arm {spec!r}: expected choice:trainable:lr[:anchor[:{'|'.join(MODELS)}]]")
    return (parts[0], parts[1], parts[2], float(parts[3]) if len(parts) >= 4 else 0.0,
            parts[4] if len(parts) == 5 else "full")


def start_key(arm_key: str) -> str:
    """The key of the model an arm starts from: ``before``, or ``before@qlora`` for a qlora arm."""
    return "before@qlora" if arm_key.startswith(("gfpo@", "control@")) and parse_arm(
        arm_key.split("@", 1)[1])[4] == "qlora" else "before"


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
    if "before@qlora" in runs[0]:
        b = "before@qlora"
        out.append(f"Before GFPO, the SSFT QLoRA adapter: best fixed token "
                   f"{spread([h[b]['best_fixed_reward'] for h in heads])}, self-chosen "
                   f"{spread([h[b]['self_reward'] for h in heads])}, mass on suitable tokens "
                   f"{spread([suitable_mass(r, b) for r in runs])}, forced-token fidelity "
                   f"{spread([h[b]['mean_fidelity'] for h in heads])}.")
    for lr in runs[0]["arms"]:
        g, c = f"gfpo@{lr}", f"control@{lr}"
        b = start_key(g)
        twice = sum(h[g]["self_reward"] >= 1.5 * h[b]["best_fixed_reward"] and h[g]["self_reward"] > 0
                    for h in heads)
        kept = sum(h[g]["mean_fidelity"] >= h[b]["mean_fidelity"] - 0.05 for h in heads)
        still = sum(abs(h[c]["self_reward"] - h[b]["self_reward"]) <= 0.05
                    and abs(suitable_mass(r, c) - suitable_mass(r, b)) <= 0.05 for h, r in zip(heads, runs))
        start = "its starting model's" if b != "before" else "the SSFT model's"
        out.append(
            f"- {arm_label(g).replace('after GFPO, ', '')}: self-chosen reward after GFPO {spread([h[g]['self_reward'] for h in heads])} "
            f"(>= 1.5x {start} best fixed token in {twice} of {n} seeds); mass on suitable tokens "
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
        for k in arm_keys(runs[0]) if not k.startswith("before")]
    models = {parse_arm(spec)[4] for spec in runs[0]["arms"]}
    adapters = (
        [f"Adapters: `lora` arms put a fresh LoRA (rank {a.lora_r}, alpha {2 * a.lora_r}, every linear layer, no "
         "dropout; no trainable token rows, as `trl-ssft gfpo --use_peft` builds it) on the full SSFT model, and the "
         "anchor's reference is that model with the adapter disabled. `qlora` arms start from an SSFT QLoRA adapter "
         f"(same LoRA plus the forking-token rows, trained {a.qlora_ssft_steps} more SSFT steps on the stage-1 data, "
         "lr 1e-3, on the SSFT model loaded in 4-bit NF4 by bitsandbytes), loaded as `trl-ssft gfpo` loads an adapter "
         "dir and continued; the anchor's reference is a frozen copy of that adapter kept as a second PEFT adapter. "
         "Adapter arms are evaluated in memory (the 4-bit base for qlora).", ""] if models - {"full"} else [])
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    md = [
        "# GFPO benchmark (generated by `benchmarks/gfpo.py`; do not edit by hand)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}; "
        f"date {datetime.date.today().isoformat()}; wall time {wall / 60:.1f} min (with `--reuse`, stage 1 comes "
        "from `benchmarks/mode_preservation.py`'s runs and finished GFPO runs from their benchmark_run.json: the "
        f"seeds were run in parallel processes first, see the module docstring; training times are below); load "
        f"average at the end {load} (a machine shared with other jobs: times are not a cost comparison).",
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
        *adapters,
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
        *previous_runs(a.previous),
    ]
    with open(os.path.join(a.out_dir, "gfpo_benchmark.md"), "w") as f:
        f.write("\n".join(md) + "\n")


def previous_runs(paths: str) -> list[str]:
    """Markdown for earlier runs (their gfpo_benchmark.json): command, date, summary table and verdicts, rebuilt
    from their recorded per-seed results (nothing is re-run)."""
    import re

    out = []
    for path in [p for p in paths.split(",") if p]:
        saved = json.load(open(path))
        per_seed = {int(k): v for k, v in saved["per_seed"].items()}
        date = saved.get("date")
        md = os.path.join(os.path.dirname(path), "gfpo_benchmark.md")
        if date is None and os.path.exists(md):
            found = re.search(r"date (\d{4}-\d{2}-\d{2})", open(md).read())
            date = found.group(1) if found else None
        head, rows = summary(per_seed)
        out += ["", f"## Earlier run: {saved['args']['steps']} steps ({date or 'date not recorded'})", "",
                f"Not re-run today: the figures of `{saved['command']}` on {date or '?'} (2 CPU cores), rebuilt from "
                f"its recorded results [`{path}`]({os.path.relpath(path, 'docs')}).", "", md_table(head, rows), "",
                *verdicts(per_seed)]
    return out


