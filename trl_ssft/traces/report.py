"""`trl-ssft data report FILE --tokenizer NAME`: what an ssft training set holds, before training on it.

Reports: questions; traces per question; teachers (`trace_sources`); trace length in the target
tokenizer's tokens (end token included, as training sees it: p50 / p90 / max); with `max_length`, the
share of traces training would truncate (the trainer's own rule, `trl_ssft.data.apply_trace_policies`:
prompt + forking token + trace must fit); pairwise diversity per question (1 - estimated Jaccard
similarity of word n-gram sets, `select.similarity`, the measure selection uses: the mean over a
question's pairs, and its closest pair); and, when ``<FILE>.build.json`` from ``trl-ssft data build``
is there, the drops by reason. A table (`format_report`), a JSON dict and a PNG (`plot_report`).

Tokenization is the trainer's (`trl_ssft.data.tokenize_rows`), row by row in a ``Dataset.map``
(`num_proc` processes), so rows are validated on the way: a bad row stops the report with an error
naming the row and field.
"""

from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np

from ..checks import SSFTDataError
from .build import build_report_path, load_input
from .select import signatures, similarity


def _row_stats(batch, indices, tokenizer, max_length: int | None, num_perm: int, shingle: int, dataset: str):
    """`Dataset.map` body: per question, token lengths, truncated traces and diversity."""
    from ..data import DataReport, apply_trace_policies, tokenize_rows

    out = {"prompt_len": [], "trace_lens": [], "truncated": [], "diversity": [], "closest": []}
    for k, i in enumerate(indices):
        row = {c: batch[c][k] for c in batch}
        try:
            tok = tokenize_rows([row], tokenizer, max_length=None, duplicate_policy="keep", dataset=dataset)[0]
        except SSFTDataError as e:  # name the row of the file, not of the one-row batch
            raise SSFTDataError(i, e.field, str(e).split(f"field '{e.field}': ", 1)[-1], "", dataset) from e
        traces = tok["trace_ids"]
        cut = 0
        if max_length is not None:
            rep = DataReport(dataset=dataset)
            try:
                apply_trace_policies(i, tok["prompt_ids"], traces, max_length=max_length, duplicate_policy="keep",
                                     long_policy="truncate", report=rep, dataset=dataset)
                cut = rep.truncated
            except SSFTDataError:  # the prompt alone leaves no room: every trace is cut
                cut = len(traces)
        div = closest = None
        if len(row["traces"]) > 1:
            d = 1.0 - similarity(signatures(row["traces"], num_perm, shingle))
            pairs = d[np.triu_indices(len(d), 1)]
            div, closest = float(pairs.mean()), float(pairs.min())
        out["prompt_len"].append(len(tok["prompt_ids"]))
        out["trace_lens"].append([len(t) for t in traces])
        out["truncated"].append(cut)
        out["diversity"].append(div)
        out["closest"].append(closest)
    return out


def _pct(values, qs=(50, 90)) -> dict:
    if len(values) == 0:
        return {}
    v = np.asarray(values, dtype=float)
    out = {f"p{q}": float(np.percentile(v, q)) for q in qs}
    out.update(mean=float(v.mean()), min=float(v.min()), max=float(v.max()))
    return out


def data_report(path: str, tokenizer, max_length: int | None = None, *, build_report: str | None = None,
                num_proc: int = 1, num_perm: int = 128, shingle: int = 5) -> dict:
    """The report of an ssft file (see the module docstring); `tokenizer`: a tokenizer or its name / path."""
    if isinstance(tokenizer, str):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    ds = load_input(path)
    missing = [c for c in ("prompt", "traces") if c not in ds.column_names]
    if missing:
        raise SSFTDataError(None, ", ".join(missing), f"not an ssft file (columns {ds.column_names}).",
                            "run `trl-ssft data build` on it first.", path)
    stats = ds.select_columns(["prompt", "traces"]).map(
        _row_stats, batched=True, batch_size=64, with_indices=True, num_proc=num_proc if num_proc > 1 else None,
        remove_columns=["prompt", "traces"], load_from_cache_file=False, desc="report",
        fn_kwargs=dict(tokenizer=tokenizer, max_length=max_length, num_perm=num_perm, shingle=shingle, dataset=path),
    )
    lens = [n for ls in stats["trace_lens"] for n in ls]
    per_q = Counter(len(ls) for ls in stats["trace_lens"])
    teachers = Counter(t for ts in ds["trace_sources"] for t in (ts or [])) if "trace_sources" in ds.column_names \
        else Counter()
    div = [d for d in stats["diversity"] if d is not None]
    closest = [d for d in stats["closest"] if d is not None]
    truncated = int(sum(stats["truncated"]))
    rep = {"file": path, "questions": len(ds), "traces": len(lens),
           "traces_per_question": {str(k): per_q[k] for k in sorted(per_q)}, "teachers": dict(teachers.most_common()),
           "trace_tokens": _pct(lens), "prompt_tokens": _pct(stats["prompt_len"]), "max_length": max_length,
           "truncated_traces": truncated if max_length else None,
           "truncated_share": truncated / len(lens) if max_length and lens else None,
           "diversity": _pct(div, (10, 50, 90)), "closest_pair": _pct(closest, (10, 50, 90)),
           "questions_with_one_trace": per_q.get(1, 0), "trace_token_lengths": lens, "question_diversity": div}
    build_report = build_report or build_report_path(path)
    if os.path.exists(build_report):
        with open(build_report) as f:
            built = json.load(f)
        rep["build"] = {k: built.get(k) for k in ("candidates", "drops", "kept_incorrect", "questions_in",
                                                   "questions_dropped", "questions_without_reference")}
    return rep


def format_report(rep: dict) -> str:
    """The report as a plain-text table."""
    def num(d: dict, k: str, fmt: str = "{:.0f}") -> str:
        return fmt.format(d[k]) if d and k in d else "n/a"

    t, dv, cp = rep["trace_tokens"], rep["diversity"], rep["closest_pair"]
    lines = [f"ssft data report: {rep['file']}",
             f"  questions                {rep['questions']}",
             f"  traces                   {rep['traces']}",
             "  traces per question      " + ", ".join(f"{k}: {v}" for k, v in rep["traces_per_question"].items()),
             "  teachers                 " + (", ".join(f"{k} {v}" for k, v in rep["teachers"].items()) or "n/a"),
             f"  trace tokens             p50 {num(t, 'p50')}  p90 {num(t, 'p90')}  max {num(t, 'max')}  "
             f"(end token included; prompt p50 {num(rep['prompt_tokens'], 'p50')})"]
    if rep["max_length"]:
        lines.append(f"  truncated at max_length  {rep['max_length']}: {rep['truncated_traces']} traces "
                     f"({100 * (rep['truncated_share'] or 0):.1f} %)")
    lines.append(f"  diversity per question   mean pairwise distance p10 {num(dv, 'p10', '{:.3f}')}  "
                 f"p50 {num(dv, 'p50', '{:.3f}')}  p90 {num(dv, 'p90', '{:.3f}')}; closest pair p50 "
                 f"{num(cp, 'p50', '{:.3f}')} (1 - Jaccard of word n-grams)")
    b = rep.get("build")
    if b:
        drops = ", ".join(f"{k} {v}" for k, v in (b.get("drops") or {}).items()) or "none"
        lines.append(f"  build: {b.get('candidates')} candidates of {b.get('questions_in')} questions; drops: {drops}")
        lines.append(f"         questions dropped: {b.get('questions_dropped') or 'none'}; kept incorrect: "
                     f"{b.get('kept_incorrect')}; questions without reference: {b.get('questions_without_reference')}")
    else:
        lines.append("  build: no <file>.build.json (drops by reason are known only for files built by "
                     "`trl-ssft data build`)")
    return "\n".join(lines)


def plot_report(rep: dict, png: str) -> str:
    """A 2 x 2 PNG: trace token lengths (with max_length), traces per question, teachers, diversity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 2, figsize=(11, 7.5))
    ax[0, 0].hist(rep["trace_token_lengths"], bins=50, color="#4477aa")
    if rep["max_length"]:
        ax[0, 0].axvline(rep["max_length"], color="#cc3311", ls="--", label=f"max_length {rep['max_length']}")
        ax[0, 0].legend()
    ax[0, 0].set(title="trace length (tokens)", xlabel="tokens", ylabel="traces")
    per_q = rep["traces_per_question"]
    ax[0, 1].bar(list(per_q), list(per_q.values()), color="#228833")
    ax[0, 1].set(title="traces per question", xlabel="M", ylabel="questions")
    ax[1, 0].barh(list(rep["teachers"])[::-1], list(rep["teachers"].values())[::-1], color="#aa3377")
    ax[1, 0].set(title="traces per teacher", xlabel="traces")
    ax[1, 1].hist(rep["question_diversity"], bins=40, range=(0, 1), color="#ee7733")
    ax[1, 1].set(title="diversity per question (mean pairwise 1 - Jaccard)", xlabel="distance", ylabel="questions")
    fig.suptitle(os.path.basename(rep["file"]))
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


__all__ = ["data_report", "format_report", "plot_report"]
