"""`trl-ssft eval`: parallel generation with every forking token, metrics, JSON report, table, heat map.

    trl-ssft eval MODEL_DIR --task aime25 --backend vllm          # a benchmark with the paper's protocol
    trl-ssft eval MODEL_DIR DATA [--rounds 4 --temperature 0.7 --top-p 0.95 --output report.json ...]

MODEL_DIR is a saved SSFT model or adapter dir (its `ssft_state.json` gives the forking tokens, their layout and
the Pass@1 token). `--task` picks a benchmark preset (`trl_ssft.eval.tasks`: aime24, aime25, math500,
gpqa_diamond) with its protocol defaults; `--data-files` points it at a local copy. DATA is otherwise a jsonl /
json / parquet / csv file in the ssft format (`prompt`, `traces`, optional `answer`, `trace_sources`) or a
prompt/answer dataset (columns chosen with `--prompt-column` / `--answer-column`). For each question, each forking
token and each round one sample is generated (Q x N x R samples), written to the samples file as it finishes;
`--resume` continues an interrupted run from that file.

This module is the command line only: the evaluation is `trl_ssft.eval.evaluate.evaluate_model`,
the output `trl_ssft.eval.report`, the metric definitions `trl_ssft.eval.metrics` and docs/metrics.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .answers import EXTRACT_MODES, math_verify_available
from .metrics import CONS_ESTIMATORS, MISSING_RULES
from .modes import MODE_CLASSIFIERS
from .tasks import PROMPT_STYLES, PROTOCOLS, TASKS


def _int_list(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def _vllm_arg(s: str) -> tuple[str, object]:
    key, sep, value = s.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--vllm-arg wants KEY=VALUE, got {s!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", "-o", default=None,
                   help="JSON report path (default: MODEL/eval_report.json, MODEL/eval_TASK.json with --task)")
    p.add_argument("--plot", default=None, help="heat map PNG path (default: next to the JSON report)")
    p.add_argument("--no-plot", action="store_true", help="do not write the heat map")
    p.add_argument("--samples-out", default=None,
                   help="the samples file: every sample as jsonl, written as it finishes, with its answer and mode at "
                   "the end (default: next to the JSON report, REPORT.samples.jsonl)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted evaluation from its samples file (same settings; only the missing "
                   "samples are generated)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fork-tokens", default=None,
                   help="comma-separated forking tokens (default: from ssft_state.json or <think1>.. in the vocab)")
    p.add_argument("--no-fork-tokens", action="store_true",
                   help="sample the bare prompt (SFT-mixed models; automatic when trained with ssft_assignment none)")
    p.add_argument("--num-samples", type=int, default=None,
                   help="samples per round with --no-fork-tokens (default: the number of forking tokens)")
    p.add_argument("--pass1-token", default=None, help="token for Pass@1 (default: pass1_token of ssft_state.json)")
    p.add_argument("--fork-layout", default=None,
                   help="text around the forking token: bare, released (<|im_start|> before, a newline after: the "
                   "released SSFT-32B checkpoints) or a JSON object {\"before\": .., \"after\": ..} (default: "
                   "fork_layout of ssft_state.json, else bare)")
    p.add_argument("--rounds", type=int, default=None,
                   help="samples per (question, token); Cons@N averages over them (default: the task's, else 1)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (0 = greedy; default 0.7)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling top-p (default 0.95)")
    p.add_argument("--greedy", action="store_true", help="greedy decoding (one round)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's (32768), else 256")
    p.add_argument("--batch-size", type=int, default=32, help="prompts per generate call (hf backend)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--self-choose", choices=["argmax", "sample", "none"], default=None,
                   help="also let the model pick its own forking token per question (needs ssft_fork_token_loss or "
                   "GFPO); default: sample for a GFPO model (ssft_state.json pass1_choice: self), else off; none: off")
    p.add_argument("--suppress-fork-tokens", choices=["auto", "on", "off"], default="auto",
                   help="forbid the forking tokens in continuations after a forced or self-chosen token; auto: on "
                   "for a GFPO model trained that way (ssft_state.json gfpo.suppress_fork_tokens), else off")
    p.add_argument("--backend", choices=["hf", "vllm"], default="hf",
                   help="generation: hf (transformers generate) or vllm (trl_ssft.eval.vllm_backend)")
    p.add_argument("--tensor-parallel-size", type=int, default=None, help="vllm: GPUs per engine")
    p.add_argument("--data-parallel-size", type=int, default=None,
                   help="vllm: engines in processes of their own, each on --tensor-parallel-size GPUs")
    p.add_argument("--gpu-memory-utilization", type=float, default=None, help="vllm: share of GPU memory per engine")
    p.add_argument("--max-model-len", type=int, default=None, help="vllm: context length of the engine")
    p.add_argument("--vllm-arg", type=_vllm_arg, action="append", default=[], metavar="KEY=VALUE",
                   help="any other vllm.LLM option (VALUE parsed as JSON when it can be), repeatable")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: as saved)")


def _add_scoring_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--answer-pattern", default=None,
                   help="regex for the final answer (first group, else whole match); overrides --extract")
    p.add_argument("--extract", choices=list(EXTRACT_MODES), default=None,
                   help="boxed (default): the last \\boxed{...}; fallback: the authors' order \\boxed{}, 'final answer "
                   "is', 'Answer:', last number (also credits a truncated text whose last number is right)")
    p.add_argument("--choices", default=None,
                   help="multiple choice with these option letters, e.g. ABCD (GPQA): extract, vote and compare the "
                   "letter; gold answers must be letters")
    p.add_argument("--math-verify", choices=["auto", "on", "off"], default="auto",
                   help="math-aware answer equality via math_verify (auto: when installed; the report says which)")
    p.add_argument("--missing-answers", choices=list(MISSING_RULES), default=None,
                   help="samples without an answer in votes: skip (default: not a vote) or vote (the authors' rule: "
                   "a vote that can win and scores 0)")
    p.add_argument("--cons-estimator", choices=list(CONS_ESTIMATORS), default=None,
                   help="Cons@k: groups (default: mean over disjoint groups of k samples) or first-k (one vote over "
                   "the first k samples, the paper's Cons@32)")
    p.add_argument("--cons-k", type=_int_list, default=None,
                   help="comma-separated k for Cons@k over the N x R samples of a question, e.g. 8,16 "
                   "(k > N x R: reported as n/a; default: the task's, else none)")
    p.add_argument("--pass-k", type=_int_list, default=None,
                   help="comma-separated k for unbiased Pass@k over all tokens' samples (k > N x R: reported as n/a; "
                   "default 1)")
    p.add_argument("--mode-classifier", choices=["auto", "none", *MODE_CLASSIFIERS], default="auto",
                   help="how to label each sample's reasoning mode: synthetic (trl_ssft.demo.synthetic.classify_mode), "
                   "nearest-trace (trace_sources of the most similar reference trace), auto (nearest-trace when the "
                   "data has trace_sources)")


def build_parser() -> argparse.ArgumentParser:
    """The `trl-ssft eval` argument parser."""
    p = argparse.ArgumentParser(
        prog="trl-ssft eval", description="Evaluate an SSFT model: one sample per forking token (and round), "
        "Pass@1 per token, Cons@N, Pass@k, distinct answers/modes, token x mode table.",
    )
    p.add_argument("model", help="saved model or adapter dir (with ssft_state.json when trained by SSFTTrainer)")
    p.add_argument("data", nargs="?", default=None,
                   help="questions: .jsonl / .json / .parquet / .csv, ssft format or prompt/answer columns (or --task)")
    p.add_argument("--task", choices=list(TASKS), default=None,
                   help="a benchmark preset with the paper's protocol (trl_ssft.eval.tasks; docs/paper_protocol.md)")
    p.add_argument("--data-files", default=None,
                   help="--task: a local copy of the benchmark in the hub dataset's own columns (offline machines)")
    p.add_argument("--protocol", choices=list(PROTOCOLS), default="ours",
                   help="--task: ours (our prompt and scoring rules) or authors (their prompt, fallback extraction, "
                   "missing answers vote, first-k Cons@k); explicit flags win")
    p.add_argument("--prompt-style", choices=list(PROMPT_STYLES), default=None,
                   help="--task: the prompt, ours (default) or the authors' lighteval prompt")
    p.add_argument("--choice-seed", type=int, default=0,
                   help="--task gpqa_diamond: seed of the options' order (simple-evals' rule)")
    p.add_argument("--max-questions", type=int, default=None, help="evaluate only the first K questions")
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--answer-column", default="answer")
    p.add_argument("--chat", choices=["auto", "always", "never"], default="auto",
                   help="wrap plain-string prompts in a user message (auto: only for data without traces)")
    _add_output_args(p)
    _add_sampling_args(p)
    _add_scoring_args(p)
    return p


def _vllm_options(a: argparse.Namespace) -> dict:
    opts = dict(a.vllm_arg)
    for key in ("tensor_parallel_size", "data_parallel_size", "gpu_memory_utilization", "max_model_len"):
        if getattr(a, key) is not None:
            opts[key] = getattr(a, key)
    return opts


def _evaluate(a: argparse.Namespace, math_verify: bool | None, samples_out: str) -> dict:
    from .evaluate import evaluate_model

    return evaluate_model(
        a.model, a.data, task=a.task, data_files=a.data_files, protocol=a.protocol, prompt_style=a.prompt_style,
        choice_seed=a.choice_seed, fork_tokens=a.fork_tokens.split(",") if a.fork_tokens else None,
        fork_layout=a.fork_layout, use_fork_tokens=False if a.no_fork_tokens else None,
        num_plain_samples=a.num_samples, pass1_token=a.pass1_token, rounds=a.rounds, temperature=a.temperature,
        top_p=a.top_p, greedy=a.greedy, max_new_tokens=a.max_new_tokens, batch_size=a.batch_size, seed=a.seed,
        max_questions=a.max_questions, answer_pattern=a.answer_pattern, math_verify=math_verify,
        missing_answers=a.missing_answers, extract=a.extract, choices=a.choices, cons_estimator=a.cons_estimator,
        mode_classifier=a.mode_classifier, self_choose=a.self_choose, cons_k=a.cons_k, pass_k=a.pass_k,
        prompt_column=a.prompt_column, answer_column=a.answer_column, chat=a.chat, backend=a.backend,
        device=a.device, dtype=a.dtype, progress=not a.no_progress,
        suppress_fork_tokens={"auto": None, "on": True, "off": False}[a.suppress_fork_tokens],
        samples_path=samples_out, resume=a.resume, vllm_options=_vllm_options(a),
    )


def main(argv: list[str] | None = None) -> int:
    """Run `trl-ssft eval`; returns the exit status."""
    from .report import plot_heatmap, print_report, write_report

    a = build_parser().parse_args(argv)
    mv = {"auto": None, "on": True, "off": False}[a.math_verify]
    if mv and not math_verify_available():
        print("--math-verify on: math_verify is not installed (pip install math-verify)", file=sys.stderr)
        return 2
    if (a.data is None) == (a.task is None):
        print("give either DATA or --task", file=sys.stderr)
        return 2
    if a.data_files and not a.task:
        print("--data-files needs --task (a plain data file is the DATA argument)", file=sys.stderr)
        return 2
    out = a.output or os.path.join(a.model, f"eval_{a.task}.json" if a.task else "eval_report.json")
    samples_out = a.samples_out or os.path.splitext(out)[0] + ".samples.jsonl"
    if a.resume and not os.path.exists(samples_out):
        print(f"--resume: no samples file {samples_out} (pass --samples-out)", file=sys.stderr)
        return 2
    report = _evaluate(a, mv, samples_out)
    if not a.no_plot:
        png = a.plot or os.path.splitext(out)[0] + ".png"
        report["plot"] = png if plot_heatmap(report, png) else None
        if report["plot"] is None:
            print("matplotlib is not installed: no heat map written", file=sys.stderr)
    write_report(report, out)
    print_report(report)
    print(f"report: {out}   samples: {samples_out}" + (f"   heat map: {report['plot']}" if report.get("plot") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
