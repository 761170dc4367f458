"""The demo's evaluation: the trained model with and without its forking tokens, one summary, one JSON.

    python -m trl_ssft.demo.demo_eval MODEL_DIR EVAL_JSONL --out demo_out [--rounds 4 --temperature 0.7]

1. with forking tokens: one sample per token and round on the held-out questions (the paper's
   T = 0.7, top-p 0.95): the token x mode table, the heat map (``OUT/eval_report.png``), Pass@1 per
   token and native Cons@N (a vote over one sample of each token);
2. the same model without forking tokens: N samples of the bare prompt per round (Pass@1 and a
   vote over N samples);
3. a summary: Pass@1 of the best token, of the most-matched token (the paper's heuristic) and the
   mean over tokens; Cons@N with and without tokens.

Writes ``OUT/eval_report.json`` (with tokens), ``OUT/eval_plain.json`` (without) and
``OUT/demo_report.json`` (the summary and both reports: the file `docs/demo_report.json` is a copy of
one such run, the source of every demo figure the README quotes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np


def summarise(fork: dict, plain: dict) -> dict:
    """The figures the demo prints (fractions, not percentages)."""
    p1 = fork["pass1_per_token"] or {}
    best = max(p1, key=p1.get) if p1 else None
    modes = fork.get("modes") or {}
    plain_p1 = plain["pass1_per_token"] or {}
    return {
        "num_questions": fork["num_questions"], "rounds": fork["rounds"], "temperature": fork["temperature"],
        "top_p": fork["top_p"], "num_tokens": len(fork["tokens"]),
        "pass1_per_token": p1,
        "best_token": best, "pass1_best_token": p1.get(best) if best else None,
        "most_matched_token": fork["pass1_token"], "pass1_most_matched_token": fork["pass1"],
        "pass1_mean_over_tokens": float(np.mean(list(p1.values()))) if p1 else None,
        "cons_at_n_with_tokens": fork["cons_at_n"],
        "pass1_without_tokens": float(np.mean(list(plain_p1.values()))) if plain_p1 else None,
        "cons_at_n_without_tokens": plain["cons_at_n"],
        "pass_at_k_with_tokens": fork.get("pass_at_k"), "pass_at_k_without_tokens": plain.get("pass_at_k"),
        "distinct_modes_per_question": modes.get("distinct_modes_per_question"),
        "token_consistency": modes.get("token_consistency"),
        "mean_token_consistency": modes.get("mean_consistency"),
        "token_majority_mode": modes.get("token_majority_mode"),
        "distinct_answers_per_question_with_tokens": fork["distinct_answers_per_question"],
        "distinct_answers_per_question_without_tokens": plain["distinct_answers_per_question"],
    }


def format_summary(s: dict) -> str:
    pc = lambda v: "-" if v is None else f"{100 * v:.1f} %"  # noqa: E731
    n = s["num_tokens"]
    lines = [
        f"Summary ({s['num_questions']} held-out questions x {s['rounds']} rounds, T={s['temperature']}, "
        f"top-p={s['top_p']}):",
        "  Pass@1 per token: " + ", ".join(f"{t} {pc(v)}" for t, v in s["pass1_per_token"].items()),
        f"  Pass@1: best token {s['best_token']} {pc(s['pass1_best_token'])}, most-matched token "
        f"{s['most_matched_token']} {pc(s['pass1_most_matched_token'])}, mean over tokens "
        f"{pc(s['pass1_mean_over_tokens'])}",
        f"  Cons@{n} across the {n} forking tokens: {pc(s['cons_at_n_with_tokens'])}",
        f"  same model without forking tokens ({n} samples of the bare prompt): Pass@1 "
        f"{pc(s['pass1_without_tokens'])}, Cons@{n} {pc(s['cons_at_n_without_tokens'])}",
    ]
    if s.get("distinct_modes_per_question") is not None:
        lines.append(f"  strategies per question with tokens: {s['distinct_modes_per_question']:.2f}; "
                     f"mean token consistency {pc(s['mean_token_consistency'])}")
    return "\n".join(lines)


def run(model_dir: str, data: str, out: str, rounds: int = 4, temperature: float = 0.7, top_p: float = 0.95,
        mode_classifier: str = "digitsum", max_new_tokens: int = 64, seed: int = 0) -> dict:
    from trl_ssft.eval.evaluate import evaluate_model
    from trl_ssft.eval.inference import load_ssft_model
    from trl_ssft.eval.report import plot_heatmap, print_report

    t0 = time.time()
    os.makedirs(out, exist_ok=True)
    sm = load_ssft_model(model_dir, device="cpu")
    kw = dict(rounds=rounds, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, batch_size=96,
              seed=seed, mode_classifier=mode_classifier, math_verify=False, progress=True, pass_k=(1, 4))
    fork = evaluate_model(sm, data, use_fork_tokens=True, **kw)
    fork["model"], fork["dataset"] = model_dir, data
    print("\n== with forking tokens (one sample per token per round)")
    print_report(fork)
    plot_heatmap(fork, os.path.join(out, "eval_report.png"))
    plain = evaluate_model(sm, data, use_fork_tokens=False, num_plain_samples=len(fork["tokens"]), **kw)
    plain["model"], plain["dataset"] = model_dir, data
    summary = summarise(fork, plain)
    print("\n" + format_summary(summary))
    report = {"summary": summary, "with_tokens": fork, "without_tokens": plain,
              "seconds": round(time.time() - t0, 1),
              "machine": f"{platform.platform()}, {os.cpu_count()} CPU cores visible"}
    for name, obj in (("eval_report.json", fork), ("eval_plain.json", plain), ("demo_report.json", report)):
        with open(os.path.join(out, name), "w") as f:
            json.dump(obj, f, indent=1, default=str)
    return report


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir")
    p.add_argument("data")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--mode-classifier", default="digitsum")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    run(a.model_dir, a.data, a.out, a.rounds, a.temperature, a.top_p, a.mode_classifier, a.max_new_tokens, a.seed)


if __name__ == "__main__":
    main()
