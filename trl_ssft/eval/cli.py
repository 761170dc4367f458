"""`trl-ssft eval`: parallel generation with every forking token, metrics, JSON report, table, heat map.

    trl-ssft eval MODEL_DIR DATA [--rounds 4 --temperature 0.7 --top-p 0.95 --output report.json ...]

MODEL_DIR is a saved SSFT model or adapter dir (its `ssft_state.json` gives the forking tokens and
the Pass@1 token). DATA is a jsonl / json / parquet file in the ssft format (`prompt`, `traces`,
optional `answer`, `trace_sources`) or a prompt/answer dataset (columns chosen with
`--prompt-column` / `--answer-column`). For each question, each forking token and each round one
sample is generated (Q x N x R samples); see `trl_ssft.metrics` for the metric definitions.

From Python: `evaluate_model(model_dir, rows_or_path, ...)` returns the same report;
`print_report(report)` prints the table.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

from . import metrics as M

PLAIN_LABEL = "sample{i}"


# ---------------------------------------------------------------- data
def read_rows(path: str) -> list[dict]:
    """Rows of a .jsonl / .json / .parquet file as dicts."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".jsonl":
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    if ext == ".json":
        with open(path) as f:
            data = json.load(f)
        if isinstance(data, dict):  # {"data": [...]} or column-oriented
            data = data.get("data", data)
            if isinstance(data, dict):
                keys = list(data)
                data = [dict(zip(keys, vals)) for vals in zip(*data.values())]
        return list(data)
    if ext == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    raise ValueError(f"{path}: unsupported extension {ext!r} (use .jsonl, .json or .parquet)")


def normalise_rows(rows: Sequence[dict], prompt_column: str = "prompt", answer_column: str = "answer",
                   chat: str = "auto") -> list[dict]:
    """Rows -> ``{"prompt", "answer", "traces", "trace_sources"}`` (missing fields None).

    `chat`: ``auto`` wraps a plain-string prompt into a user message only for rows without traces
    (prompt/answer data; ssft rows keep their prompt exactly as trained), ``always`` wraps every
    string prompt, ``never`` keeps strings raw.
    """
    out = []
    for k, r in enumerate(rows):
        if prompt_column not in r:
            raise ValueError(f"row {k}: no column {prompt_column!r} (has {sorted(r)}); set --prompt-column")
        p = r[prompt_column]
        has_traces = bool(r.get("traces"))
        if isinstance(p, str) and (chat == "always" or (chat == "auto" and not has_traces)):
            p = [{"role": "user", "content": p}]
        a = r.get(answer_column)
        out.append({"prompt": p, "answer": None if a is None else str(a), "traces": r.get("traces"),
                    "trace_sources": r.get("trace_sources")})
    return out


def prompt_text(prompt) -> str:
    """The question text of a prompt (the last user message of a message list)."""
    if isinstance(prompt, str):
        return prompt
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")


# ---------------------------------------------------------------- mode classifiers
def synthetic_classifier(text: str, row: dict) -> str:
    """Mode of a sample on the `trl_ssft.synthetic` question family."""
    from ..demo.synthetic import classify_mode, parse_question

    q = parse_question(prompt_text(row["prompt"]))
    return "other" if q is None else classify_mode(text, q)


def nearest_trace_classifier(text: str, row: dict, chars: int = 200) -> str:
    """The `trace_sources` label of the reference trace most similar to the sample (first `chars`
    characters, difflib ratio); ``"other"`` when the row has no labelled traces."""
    traces, sources = row.get("traces") or [], row.get("trace_sources") or []
    if not traces or len(sources) != len(traces):
        return "other"
    scores = [difflib.SequenceMatcher(None, text[:chars], t[:chars]).ratio() for t in traces]
    return str(sources[int(np.argmax(scores))])


def pick_classifier(name: str, rows: Sequence[dict]) -> tuple[Callable | None, list[str]]:
    """(classifier(text, row) -> mode, known mode names) for ``synthetic``, ``nearest-trace``,
    ``none`` or ``auto`` (nearest-trace when rows carry `trace_sources`, else none)."""
    if name == "auto":
        name = "nearest-trace" if any(r.get("trace_sources") and r.get("traces") for r in rows) else "none"
    if name == "none":
        return None, []
    if name == "synthetic":
        from ..demo.synthetic import MODES

        return synthetic_classifier, list(MODES)
    if name == "nearest-trace":
        names: list[str] = []
        for r in rows:
            for s in r.get("trace_sources") or []:
                if str(s) not in names:
                    names.append(str(s))
        return nearest_trace_classifier, names
    raise ValueError(f"unknown mode classifier {name!r}")


# ---------------------------------------------------------------- evaluation
def evaluate_model(
    model,
    data,
    *,
    fork_tokens: Sequence[str] | None = None,
    use_fork_tokens: bool | None = None,
    num_plain_samples: int | None = None,
    pass1_token: str | None = None,
    rounds: int = 1,
    temperature: float = 0.7,
    top_p: float = 0.95,
    greedy: bool = False,
    max_new_tokens: int = 256,
    batch_size: int = 32,
    seed: int = 0,
    max_questions: int | None = None,
    answer_pattern: str | None = None,
    math_verify: bool | None = None,
    mode_classifier: str = "auto",
    self_choose: str | None = None,
    cons_k: Sequence[int] = (),
    pass_k: Sequence[int] = (1,),
    prompt_column: str = "prompt",
    answer_column: str = "answer",
    chat: str = "auto",
    device: str | None = None,
    dtype: str | None = None,
    progress: bool = True,
    keep_samples: bool = False,
) -> dict:
    """Generate Q x N x R samples and compute every metric; returns the report dict.

    model: a model dir (full or adapter) or an `inference.SSFTModel`. data: a file path or a list of
    rows. N is the number of forking tokens (`fork_tokens`, default from the model's
    `ssft_state.json`). A model trained with ``ssft_assignment: none`` (no token, SFT-mixed), or
    ``use_fork_tokens=False``, gets N = `num_plain_samples` (default: its number of forking tokens)
    samples of the bare prompt per round, reported as slots ``sample1..N``. Greedy decoding makes
    rounds identical, so it runs one round. `self_choose` (``argmax`` / ``sample``) also evaluates
    the model's own token choice (R samples per question with that token).
    """
    from .inference import (SSFTModel, answers_equal, extract_answer, fork_prompt_ids,
                            generate_ids, load_ssft_model)

    t0 = time.time()
    sm = model if isinstance(model, SSFTModel) else load_ssft_model(model, device=device, dtype=dtype,
                                                                      fork_tokens=fork_tokens)
    tok = sm.tokenizer
    rows_in = read_rows(data) if isinstance(data, str) else list(data)
    rows = normalise_rows(rows_in, prompt_column, answer_column, chat)[:max_questions]
    tokens = list(fork_tokens or sm.fork_tokens)
    if use_fork_tokens is None:
        use_fork_tokens = sm.state.get("assignment") != "none"
    if greedy or temperature == 0:
        greedy, rounds = True, 1
    if use_fork_tokens:
        labels = tokens
    else:
        labels = [PLAIN_LABEL.format(i=i + 1) for i in range(num_plain_samples or len(tokens))]
    n, q, r_ = len(labels), len(rows), rounds
    if pass1_token is None:
        pass1_token = sm.pass1_token if (use_fork_tokens and sm.pass1_token in labels) else labels[0]
    if pass1_token not in labels:
        raise ValueError(f"pass1 token {pass1_token!r} is not one of {labels}")

    prompts, index = [], []
    for qi, row in enumerate(rows):
        per = fork_prompt_ids(tok, row["prompt"], tokens if use_fork_tokens else None)
        per = per if use_fork_tokens else per * n
        for r in range(r_):
            for i in range(n):
                prompts.append(per[i])
                index.append((qi, i, r))
    bar = _progress_bar(len(prompts), progress, "generating")
    out_ids = generate_ids(sm.model, tok, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                           top_p=top_p, greedy=greedy, batch_size=batch_size, seed=seed,
                           progress=bar.update if bar else None)
    if bar:
        bar.close()

    equal = (lambda a, b: answers_equal(a, b, math_verify))
    classify, mode_names = pick_classifier(mode_classifier, rows)
    texts = np.empty((q, n, r_), dtype=object)
    answers = np.empty((q, n, r_), dtype=object)
    modes = np.empty((q, n, r_), dtype=object)
    correct = np.zeros((q, n, r_), dtype=bool)
    lengths = np.zeros((q, n, r_))
    for (qi, i, r), ids in zip(index, out_ids):
        text = tok.decode(ids, skip_special_tokens=True)
        texts[qi, i, r] = text
        answers[qi, i, r] = extract_answer(text, answer_pattern)
        correct[qi, i, r] = answers_equal(rows[qi]["answer"], answers[qi, i, r], math_verify)
        modes[qi, i, r] = classify(text, rows[qi]) if classify else None
        lengths[qi, i, r] = len(ids)

    gold = [row["answer"] for row in rows]
    has_answers = any(g is not None for g in gold)
    p1 = M.pass1_per_token(correct)
    report: dict = {
        "model": getattr(sm.model, "name_or_path", None) if not isinstance(model, str) else model,
        "dataset": data if isinstance(data, str) else None,
        "num_questions": q, "rounds": r_, "tokens": labels, "uses_fork_tokens": bool(use_fork_tokens),
        "pass1_token": pass1_token, "temperature": None if greedy else temperature,
        "top_p": None if greedy else top_p, "greedy": greedy, "max_new_tokens": max_new_tokens, "seed": seed,
        "has_answers": has_answers,
        "pass1": float(p1[labels.index(pass1_token)]) if has_answers else None,
        "pass1_per_token": {t: float(v) for t, v in zip(labels, p1)} if has_answers else None,
        "cons_at_n": M.cons_at_n(answers, gold, equal) if has_answers else None,
        "cons_at_k": {str(k): M.cons_at_k(answers, gold, k, equal) for k in cons_k if k <= n * r_}
        if has_answers else None,
        "pass_at_k": {str(k): M.pass_at_k_dataset(correct, k) for k in pass_k} if has_answers else None,
        "answered": {t: float(v) for t, v in zip(labels, (answers != None).mean(axis=(0, 2)))},  # noqa: E711
        "mean_new_tokens": {t: float(v) for t, v in zip(labels, lengths.mean(axis=(0, 2)))},
        "distinct_answers_per_question": M.distinct_per_question(answers, ignore=(None,)),
        "modes": None, "self_chosen": None,
    }
    if classify is not None:
        table = M.token_mode_table(modes, mode_names)
        cons = M.token_consistency(modes)
        report["modes"] = {
            "classifier": mode_classifier if mode_classifier != "auto" else "nearest-trace",
            "names": mode_names + ["other"],
            "table": {t: dict(zip(mode_names + ["other"], map(int, row))) for t, row in zip(labels, table)},
            "distinct_modes_per_question": M.distinct_per_question(modes),
            "token_majority_mode": dict(zip(labels, M.token_majority_modes(modes))),
            "token_consistency": {t: float(v) for t, v in zip(labels, cons)},
            "mean_consistency": float(cons.mean()),
        }
    if self_choose and use_fork_tokens:
        report["self_chosen"] = _self_chosen(sm, rows, tokens, self_choose, r_, equal, answer_pattern, math_verify,
                                             dict(max_new_tokens=max_new_tokens, temperature=temperature,
                                                  top_p=top_p, greedy=greedy, batch_size=batch_size, seed=seed),
                                             classify)
    report["seconds"] = round(time.time() - t0, 2)
    if keep_samples:
        report["samples"] = [
            {"question": qi, "token": labels[i], "round": r, "text": texts[qi, i, r], "answer": answers[qi, i, r],
             "correct": bool(correct[qi, i, r]), "mode": modes[qi, i, r]}
            for qi in range(q) for r in range(r_) for i in range(n)
        ]
    return report


def _self_chosen(sm, rows, tokens, strategy, rounds, equal, pattern, math_verify, gen_kw, classify) -> dict:
    """The model's own token per question (`choose_fork_token`), R samples each: Pass@1 and token counts."""
    from .inference import answers_equal, choose_fork_token, extract_answer, fork_prompt_ids, generate_ids

    picks = choose_fork_token(sm.model, sm.tokenizer, [r["prompt"] for r in rows], tokens, strategy,
                              seed=gen_kw["seed"])
    prompts = [fork_prompt_ids(sm.tokenizer, row["prompt"], [tokens[k]])[0] for row, k in zip(rows, picks)
               for _ in range(rounds)]
    outs = generate_ids(sm.model, sm.tokenizer, prompts, **gen_kw)
    texts = [sm.tokenizer.decode(x, skip_special_tokens=True) for x in outs]
    corr = [answers_equal(rows[j // rounds]["answer"], extract_answer(t, pattern), math_verify)
            for j, t in enumerate(texts)]
    counts = {t: 0 for t in tokens}
    for k in picks:
        counts[tokens[k]] += 1
    out = {"strategy": strategy, "token_counts": counts,
           "pass1": float(np.mean(corr)) if any(r["answer"] is not None for r in rows) else None}
    if classify is not None:
        modes = [classify(t, rows[j // rounds]) for j, t in enumerate(texts)]
        out["mode_counts"] = {m: modes.count(m) for m in dict.fromkeys(modes)}
    return out


def _progress_bar(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="sample", file=sys.stderr)


# ---------------------------------------------------------------- output
def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def format_report(report: dict) -> str:
    """The report as a plain-text table (one row per token) plus summary lines."""
    labels = report["tokens"]
    modes = report.get("modes")
    head = ["token", "pass@1", "answered", "new tok"]
    if modes:
        head += ["majority mode", "consistency"] + modes["names"]
    lines = []
    rows = []
    for t in labels:
        row = [t + (" *" if t == report["pass1_token"] and report["uses_fork_tokens"] else ""),
               _pct((report.get("pass1_per_token") or {}).get(t)), _pct(report["answered"][t]),
               f"{report['mean_new_tokens'][t]:.1f}"]
        if modes:
            row += [str(modes["token_majority_mode"][t]), _pct(modes["token_consistency"][t])]
            row += [str(modes["table"][t][m]) for m in modes["names"]]
        rows.append(row)
    widths = [max(len(h), *(len(r[c]) for r in rows)) for c, h in enumerate(head)]
    fmt = " | ".join("{:<%d}" % w for w in widths)
    lines.append(fmt.format(*head))
    lines.append("-+-".join("-" * w for w in widths))
    lines += [fmt.format(*r) for r in rows]
    samp = "greedy" if report["greedy"] else f"T={report['temperature']}, top-p={report['top_p']}"
    lines.append(f"{report['num_questions']} questions x {len(labels)} tokens x {report['rounds']} rounds ({samp})")
    if report["has_answers"]:
        lines.append(f"Pass@1 ({report['pass1_token']}): {_pct(report['pass1'])}   "
                     f"Cons@{len(labels)}: {_pct(report['cons_at_n'])}")
        extra = [f"Cons@{k}: {_pct(v)}" for k, v in (report.get("cons_at_k") or {}).items()]
        extra += [f"Pass@{k}: {_pct(v)}" for k, v in (report.get("pass_at_k") or {}).items()]
        if extra:
            lines.append("   ".join(extra))
    lines.append(f"distinct answers per question: {report['distinct_answers_per_question']:.2f}")
    if modes:
        lines.append(f"distinct modes per question: {modes['distinct_modes_per_question']:.2f}   "
                     f"mean token consistency: {_pct(modes['mean_consistency'])}")
    sc = report.get("self_chosen")
    if sc:
        lines.append(f"self-chosen token ({sc['strategy']}): Pass@1 {_pct(sc['pass1'])}, counts {sc['token_counts']}")
    return "\n".join(lines)


def print_report(report: dict, file=None) -> None:
    print(format_report(report), file=file or sys.stdout, flush=True)


def heatmap_matrix(report: dict) -> tuple[np.ndarray, list[str], list[str], str]:
    """(row-normalised matrix [N, C], row labels, column labels, title): tokens x modes when modes were
    classified, else tokens x (correct, wrong, no answer) when gold answers exist, else tokens x answered."""
    labels = report["tokens"]
    modes = report.get("modes")
    if modes:
        cols = modes["names"]
        mat = np.array([[modes["table"][t][m] for m in cols] for t in labels], dtype=float)
        title = "samples per token and mode"
    else:
        ans = np.array([report["answered"][t] for t in labels])
        if report["has_answers"]:
            p1 = np.array([report["pass1_per_token"][t] for t in labels])
            mat = np.stack([p1, ans - p1, 1 - ans], axis=1)
            cols = ["correct", "wrong", "no answer"]
        else:
            mat = np.stack([ans, 1 - ans], axis=1)
            cols = ["answered", "no answer"]
        title = "answers per token"
    mat = mat / np.maximum(mat.sum(axis=1, keepdims=True), 1e-12)
    return mat, labels, cols, title


def plot_heatmap(report: dict, path: str, title: str | None = None) -> bool:
    """Write the heat map PNG (see `heatmap_matrix`); False (nothing written) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    mat, rows, cols, default_title = heatmap_matrix(report)
    fig, ax = plt.subplots(figsize=(1.1 * len(cols) + 2, 0.5 * len(rows) + 1.6))
    im = ax.imshow(mat, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(cols)):
            ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", color="w" if mat[i, j] < 0.6 else "k",
                    fontsize=8)
    ax.set_title(title or default_title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def quick_eval(model_dir: str, data, max_questions: int = 16, temperature: float = 0.7, rounds: int = 1,
               max_new_tokens: int = 128, mode_classifier: str = "auto", **kwargs) -> dict:
    """A short evaluation for the README demo: prints the table for a just-trained model, returns the report."""
    report = evaluate_model(model_dir, data, max_questions=max_questions, temperature=temperature, rounds=rounds,
                            max_new_tokens=max_new_tokens, mode_classifier=mode_classifier, progress=False,
                            **kwargs)
    print_report(report)
    return report


# ---------------------------------------------------------------- CLI
def _int_list(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trl-ssft eval", description="Evaluate an SSFT model: one sample per forking token (and round), "
        "Pass@1 per token, Cons@N, Pass@k, distinct answers/modes, token x mode table.",
    )
    p.add_argument("model", help="saved model or adapter dir (with ssft_state.json when trained by SSFTTrainer)")
    p.add_argument("data", help="questions: .jsonl / .json / .parquet, ssft format or prompt/answer columns")
    p.add_argument("--output", "-o", default=None, help="JSON report path (default: MODEL/eval_report.json)")
    p.add_argument("--plot", default=None, help="heat map PNG path (default: next to the JSON report)")
    p.add_argument("--no-plot", action="store_true", help="do not write the heat map")
    p.add_argument("--samples-out", default=None, help="also write every sample (text, answer, mode) as jsonl")
    p.add_argument("--fork-tokens", default=None,
                   help="comma-separated forking tokens (default: from ssft_state.json or <think1>.. in the vocab)")
    p.add_argument("--no-fork-tokens", action="store_true",
                   help="sample the bare prompt (SFT-mixed models; automatic when trained with ssft_assignment none)")
    p.add_argument("--num-samples", type=int, default=None,
                   help="samples per round with --no-fork-tokens (default: the number of forking tokens)")
    p.add_argument("--pass1-token", default=None, help="token for Pass@1 (default: pass1_token of ssft_state.json)")
    p.add_argument("--rounds", type=int, default=1, help="samples per (question, token); Cons@N averages over them")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (0 = greedy)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling top-p")
    p.add_argument("--greedy", action="store_true", help="greedy decoding (one round)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32, help="prompts per generate call")
    p.add_argument("--max-questions", type=int, default=None, help="evaluate only the first K questions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--answer-pattern", default=None,
                   help="regex for the final answer (first group, else whole match); default: last \\boxed{...}")
    p.add_argument("--math-verify", choices=["auto", "on", "off"], default="auto",
                   help="math-aware answer equality via math_verify (auto: when installed)")
    p.add_argument("--mode-classifier", choices=["auto", "none", "synthetic", "nearest-trace"], default="auto",
                   help="how to label each sample's reasoning mode: synthetic (trl_ssft.synthetic.classify_mode), "
                   "nearest-trace (trace_sources of the most similar reference trace), auto (nearest-trace when the "
                   "data has trace_sources)")
    p.add_argument("--self-choose", choices=["argmax", "sample"], default=None,
                   help="also let the model pick its own forking token per question (needs ssft_fork_token_loss)")
    p.add_argument("--cons-k", type=_int_list, default=[],
                   help="comma-separated k for Cons@k over the N x R samples of a question, e.g. 8,16 "
                   "(k > N x R is skipped)")
    p.add_argument("--pass-k", type=_int_list, default=[1],
                   help="comma-separated k for unbiased Pass@k (k > N x R: the value at k = N x R)")
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--answer-column", default="answer")
    p.add_argument("--chat", choices=["auto", "always", "never"], default="auto",
                   help="wrap plain-string prompts in a user message (auto: only for data without traces)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: as saved)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    mv = {"auto": None, "on": True, "off": False}[a.math_verify]
    if mv:
        from .inference import math_verify_available

        if not math_verify_available():
            print("--math-verify on: math_verify is not installed (pip install math-verify)", file=sys.stderr)
            return 2
    report = evaluate_model(
        a.model, a.data, fork_tokens=a.fork_tokens.split(",") if a.fork_tokens else None,
        use_fork_tokens=False if a.no_fork_tokens else None, num_plain_samples=a.num_samples,
        pass1_token=a.pass1_token, rounds=a.rounds, temperature=a.temperature, top_p=a.top_p, greedy=a.greedy,
        max_new_tokens=a.max_new_tokens, batch_size=a.batch_size, seed=a.seed, max_questions=a.max_questions,
        answer_pattern=a.answer_pattern, math_verify=mv, mode_classifier=a.mode_classifier,
        self_choose=a.self_choose, cons_k=a.cons_k, pass_k=a.pass_k, prompt_column=a.prompt_column,
        answer_column=a.answer_column, chat=a.chat, device=a.device, dtype=a.dtype, progress=not a.no_progress,
        keep_samples=a.samples_out is not None,
    )
    samples = report.pop("samples", None)
    out = a.output or os.path.join(a.model, "eval_report.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if samples is not None:
        with open(a.samples_out, "w") as f:
            for s in samples:
                f.write(json.dumps(s) + "\n")
    if not a.no_plot:
        png = a.plot or os.path.splitext(out)[0] + ".png"
        report["plot"] = png if plot_heatmap(report, png) else None
        if report["plot"] is None:
            print("matplotlib is not installed: no heat map written", file=sys.stderr)
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    print_report(report)
    print(f"report: {out}" + (f"   heat map: {report['plot']}" if report.get("plot") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
