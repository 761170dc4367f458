"""Output of an evaluation report (`evaluate.evaluate_model`): text table, JSON file, heat map PNG.

The printed summary always ends with the scoring rules the numbers were computed with (equality,
missing-answer rule, extraction, Cons@k estimator), so two reports can be compared knowingly.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _token_table(report: dict) -> list[str]:
    """One row per token: Pass@1, share answered, new tokens (and modes when classified)."""
    labels, modes = report["tokens"], report.get("modes")
    head = ["token", "pass@1", "answered", "new tok"]
    if modes:
        head += ["majority mode", "consistency"] + modes["names"]
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
    return [fmt.format(*head), "-+-".join("-" * w for w in widths)] + [fmt.format(*r) for r in rows]


def _k_values(report: dict, key: str, name: str) -> list[str]:
    """``Cons@8: 62.5`` for each k; a k above the samples per question is marked, never shown as a number."""
    total = report.get("samples_per_question")
    return [f"{name}@{k}: " + (_pct(v) if v is not None else f"n/a (k > {total} samples)")
            for k, v in (report.get(key) or {}).items()]


def rules_line(report: dict) -> str:
    """The scoring rules of a report as one line (empty for a report without them)."""
    r = report.get("rules")
    if not r:
        return ""
    return (f"rules: equality={r['equality']}, missing answers={r['missing_answers']}, "
            f"extraction={r['extraction']}, Cons@k estimator={r['cons_estimator']}")


def format_report(report: dict) -> str:
    """The report as a plain-text table (one row per token) plus summary lines and the scoring rules."""
    labels = report["tokens"]
    lines = _token_table(report)
    samp = "greedy" if report["greedy"] else f"T={report['temperature']}, top-p={report['top_p']}"
    lines.append(f"{report['num_questions']} questions x {len(labels)} tokens x {report['rounds']} rounds ({samp})")
    if report["has_answers"]:
        lines.append(f"Pass@1 ({report['pass1_token']}): {_pct(report['pass1'])}   "
                     f"Cons@{len(labels)}: {_pct(report['cons_at_n'])}")
        extra = _k_values(report, "cons_at_k", "Cons") + _k_values(report, "pass_at_k", "Pass")
        if extra:
            lines.append("   ".join(extra))
    lines.append(f"distinct answers per question: {report['distinct_answers_per_question']:.2f}")
    modes = report.get("modes")
    if modes:
        lines.append(f"distinct modes per question: {modes['distinct_modes_per_question']:.2f}   "
                     f"mean token consistency: {_pct(modes['mean_consistency'])}")
    sc = report.get("self_chosen")
    if sc:
        lines += _self_chosen_lines(sc, len(labels))
    if rules_line(report):
        lines.append(rules_line(report))
    lines += protocol_lines(report)
    return "\n".join(lines)


def protocol_lines(report: dict) -> list[str]:
    """A task run's benchmark, layout and the settings that differ from the authors' evaluation (empty without)."""
    proto = report.get("protocol")
    if not proto:
        return []
    ds = proto["dataset"]
    src = ds["data_files"] or f"{ds['hub_id']} ({ds['config']}, {ds['split']}, revision {ds['revision']})"
    layout = report.get("fork_layout") or {}
    lines = [f"task {proto['task']} ({proto['protocol']} protocol) on {src}; fork layout "
             f"{layout.get('name', 'none')}; differs from the authors ({proto['authors_task']}):"]
    for d in proto["differs_from_authors"]:
        lines.append(f"  {d['setting']}: {d['ours']}" if d["setting"] == "note" else
                     f"  {d['setting']}: ours {d['ours']!r}, authors {d['authors']!r}")
    return lines


def _self_chosen_lines(sc: dict, n: int, max_questions: int = 20) -> list[str]:
    """The model's own token choice: Pass@1 and Cons@N over self-chosen samples, per-token and per-question choices."""
    if "per_question" not in sc:  # a report from before the per-question choices
        return [f"self-chosen token ({sc['strategy']}): Pass@1 {_pct(sc['pass1'])}, counts {sc['token_counts']}"]
    lines = [f"self-chosen token ({sc['strategy']}, {sc['samples_per_question']} samples per question): "
             f"Pass@1 {_pct(sc['pass1'])}   Cons@{n} {_pct(sc['cons_at_n'])}"]
    lines += ["  token: chosen in % of draws / Pass@1 when chosen / questions where most chosen"]
    total = max(sum(sc["draw_counts"].values()), 1)
    for t, c in sc["draw_counts"].items():
        lines.append(f"  {t}: {_pct(c / total)} / {_pct(sc['pass1_when_chosen'][t])} / {sc['token_counts'][t]}")
    for q in sc["per_question"][:max_questions]:
        picks = ", ".join(f"{t} x{c}" for t, c in sorted(
            {t: q["tokens"].count(t) for t in q["tokens"]}.items(), key=lambda kv: -kv[1]))
        lines.append(f"  q{q['question']}: {picks}" + (f" (Pass@1 {_pct(q['pass1'])})" if q["pass1"] is not None else ""))
    if len(sc["per_question"]) > max_questions:
        lines.append(f"  ... {len(sc['per_question']) - max_questions} more questions in the JSON (self_chosen.per_question)")
    return lines


def print_report(report: dict, file=None) -> None:
    """Print `format_report`."""
    print(format_report(report), file=file or sys.stdout, flush=True)


def write_report(report: dict, path: str) -> None:
    """Write the report as indented JSON (parent dirs created)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=2)


def write_samples(samples: list[dict], path: str) -> None:
    """Write every sample (question, token, round, text, answer, correct, mode) as jsonl."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        for s in samples:
            f.write(json.dumps(s) + "\n")


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
