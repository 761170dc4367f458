"""Benchmark presets (`trl_ssft.eval.tasks`) on local files in each hub dataset's own schema: prompts rendered as
documented (ours and the authors'), GPQA's options shuffled by simple-evals' seeded rule, answers extracted and
scored, the report's protocol block (dataset, settings, every difference from the authors)."""

from __future__ import annotations

import csv
import json
import random

import pytest

from trl_ssft.eval import tasks as T

NAMES = [f"<think{i}>" for i in range(1, 5)]
HUB_ROWS = {  # a few rows per benchmark, in the hub dataset's own columns
    "aime24": [{"id": 60, "problem": "Find $1+2$.", "solution": "It is $\\framebox{3}$.", "answer": "3",
                "url": "https://artofproblemsolving.com/x", "year": "2024"},
               {"id": 61, "problem": "Find $2 \\cdot 5$.", "solution": "10", "answer": "10", "url": "u", "year": "2024"}],
    "aime25": [{"id": "0", "problem": "Compute $7+8$.", "answer": "15"},
               {"id": "1", "problem": "Compute $9 \\cdot 9$.", "answer": "81"}],
    "math500": [{"problem": "What is $\\frac{1}{2}+\\frac{1}{4}$?", "solution": "$\\boxed{\\frac34}$",
                 "answer": "\\frac{3}{4}", "subject": "Algebra", "level": 1, "unique_id": "test/algebra/1.json"},
                {"problem": "Simplify $\\sqrt{8}$.", "solution": "$\\boxed{2\\sqrt{2}}$", "answer": "2\\sqrt{2}",
                 "subject": "Algebra", "level": 2, "unique_id": "test/algebra/2.json"}],
    "gpqa_diamond": [{"Record ID": f"rec{k}", "Question": f"Which particle is number {k}?",
                      "Correct Answer": f"right {k}", "Incorrect Answer 1": f"wrong a{k}",
                      "Incorrect Answer 2": f"wrong b{k}", "Incorrect Answer 3": f"wrong c{k}",
                      "High-level domain": "Physics"} for k in range(3)],
}


def write_local(tmp_path, task: str) -> str:
    rows = HUB_ROWS[task]
    if task == "gpqa_diamond":  # the hub dataset is CSV files
        path = tmp_path / "gpqa_diamond.csv"
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        return str(path)
    path = tmp_path / f"{task}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_registry_and_protocol_defaults():
    assert list(T.TASKS) == ["aime24", "aime25", "math500", "gpqa_diamond"]
    for spec in T.TASKS.values():
        assert spec.revision and len(spec.revision) == 40 and spec.revision_source and spec.authors_task
        p = spec.protocol
        assert (p.temperature, p.top_p, p.max_new_tokens, p.cons_k, p.pass_k) == (0.7, 0.95, 32768, (32,), (1,))
        assert 6 * p.rounds >= 32  # Cons@32 needs 32 samples per question
    assert T.get_task("aime25").protocol.rounds == 11 and T.get_task("math500").protocol.rounds == 6
    cfg = T.resolve_settings(T.get_task("aime25"), "ours", {"rounds": 2, "temperature": None})
    assert cfg["rounds"] == 2 and cfg["temperature"] == 0.7 and cfg["max_new_tokens"] == 32768
    assert cfg["extract"] == "boxed" and cfg["prompt_style"] == "ours"
    auth = T.resolve_settings(T.get_task("aime25"), "authors", {"extract": "boxed"})
    assert auth["prompt_style"] == "authors" and auth["missing_answers"] == "vote" and auth["extract"] == "boxed"
    assert T.resolve_settings(None, "ours", {})["max_new_tokens"] == 256  # no task: the library defaults
    with pytest.raises(ValueError, match="unknown task"):
        T.get_task("aime26")


@pytest.mark.parametrize("task", ["aime24", "aime25", "math500"])
@pytest.mark.parametrize("style", ["ours", "authors"])
def test_math_prompts_as_documented(tmp_path, task, style):
    rows = T.load_task_rows(T.get_task(task), write_local(tmp_path, task), style)
    raw = HUB_ROWS[task]
    assert [r["answer"] for r in rows] == [r["answer"] for r in raw]
    text = rows[0]["prompt"][0]["content"]
    assert rows[0]["prompt"][0]["role"] == "user" and len(rows[0]["prompt"]) == 1
    if style == "ours":
        assert text == raw[0]["problem"] + "\n\nPlease reason step by step, and put your final answer within \\boxed{}."
    else:  # lighteval's aime_prompt_fn / math_500 in the authors' fork
        assert text.startswith("Solve the following math problem efficiently and clearly.  The last line of your "
                               "response should be of the following format: 'Therefore, the final answer is: "
                               "$\\boxed{ANSWER}$. I hope it is correct' (without quotes)")
        assert text.endswith("Think step by step before answering.\n\n" + raw[0]["problem"])


def test_gpqa_options_follow_simple_evals_seeded_rule(tmp_path):
    path = write_local(tmp_path, "gpqa_diamond")
    rows = T.load_task_rows(T.get_task("gpqa_diamond"), path, "authors", choice_seed=0)
    rng = random.Random(0)
    for r, raw in zip(rows, HUB_ROWS["gpqa_diamond"]):
        perm = rng.sample(range(4), 4)
        opts = [raw["Correct Answer"], raw["Incorrect Answer 1"], raw["Incorrect Answer 2"], raw["Incorrect Answer 3"]]
        shown = [opts[i] for i in perm]
        assert r["answer"] == "ABCD"[shown.index(raw["Correct Answer"])]
        text = r["prompt"][0]["content"]
        assert text.startswith("Answer the following multiple choice question. The last line of your response should "
                               "be of the following format: 'Answer: $LETTER'")
        assert text.endswith(f"{raw['Question']}\n\nA) {shown[0]}\nB) {shown[1]}\nC) {shown[2]}\nD) {shown[3]}")
    again = T.load_task_rows(T.get_task("gpqa_diamond"), path, "authors", choice_seed=0)
    other = T.load_task_rows(T.get_task("gpqa_diamond"), path, "authors", choice_seed=1)
    assert again == rows and other != rows  # the order is a function of the seed
    ours = T.load_task_rows(T.get_task("gpqa_diamond"), path, "ours")
    assert ours[0]["prompt"][0]["content"].endswith("within \\boxed{}.") and ours[0]["answer"] == rows[0]["answer"]


def test_missing_column_names_row_and_column(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"problem": "x", "answer": "1"}) + "\n" + json.dumps({"question": "y"}) + "\n")
    with pytest.raises(ValueError, match=r"task aime25, .*bad.jsonl, row 1: no column 'problem'"):
        T.load_task_rows(T.get_task("aime25"), str(path))


@pytest.fixture(scope="module")
def sm():
    from trl_ssft.demo.synthetic import corpus, make_rows
    from trl_ssft.demo.tiny import build_tiny_tokenizer
    from trl_ssft.eval.inference import SSFTModel
    from trl_ssft.tokens import add_fork_tokens

    tok = build_tiny_tokenizer(corpus(make_rows(40, seed=1)), vocab_size=400)
    ids, _ = add_fork_tokens(tok, NAMES)
    return SSFTModel(model=None, tokenizer=tok, fork_tokens=NAMES, fork_token_ids=ids, pass1_token=NAMES[0])


@pytest.mark.parametrize("task", list(HUB_ROWS))
@pytest.mark.parametrize("protocol", ["ours", "authors"])
def test_task_evaluation_scores_and_reports(sm, tmp_path, monkeypatch, task, protocol):
    """Generation faked: token 1's samples state the gold answer in the task's format, the others a wrong one."""
    from trl_ssft.eval import sampling as S
    from trl_ssft.eval.evaluate import evaluate_model

    spec = T.get_task(task)
    rows = T.load_task_rows(spec, write_local(tmp_path, task), "authors" if protocol == "authors" else "ours")
    rounds = 2
    keys = {S.sample_seed(0, q, i, r): (q, i) for q in range(len(rows)) for i in range(4) for r in range(rounds)}

    def text(q, i):
        gold = rows[q]["answer"] if i == 0 else ("A" if rows[q]["answer"] != "A" else "B") if spec.choices else "7"
        if spec.choices:
            return f"step by step ... Answer: ${gold}$" if protocol == "authors" else f"so \\boxed{{{gold}}}"
        return f"... Therefore, the final answer is: $\\boxed{{{gold}}}$. I hope it is correct"

    def fake(sm_, prompts, seeds, on_done, **kw):
        on_done([(j, sm.tokenizer(text(*keys[s]), add_special_tokens=False)["input_ids"]) for j, s in enumerate(seeds)])

    monkeypatch.setattr(S, "_generate", fake)
    rep = evaluate_model(sm, task=task, data_files=write_local(tmp_path, task), protocol=protocol, rounds=rounds,
                         progress=False, mode_classifier="none", math_verify=False)
    assert rep["num_questions"] == len(rows) and rep["rounds"] == rounds and rep["max_new_tokens"] == 32768
    assert rep["pass1_per_token"] == {NAMES[0]: 1.0, NAMES[1]: 0.0, NAMES[2]: 0.0, NAMES[3]: 0.0}
    assert set(rep["cons_at_k"]) == {"32"} and rep["cons_at_k"]["32"] is None  # 8 samples < 32: n/a
    assert set(rep["pass_at_k"]) == {"1"} and rep["pass_at_k"]["1"] == pytest.approx(0.25)
    assert rep["rules"]["equality"] == ("choice-letter" if spec.choices else "string")
    proto = rep["protocol"]
    assert proto["task"] == task and proto["authors_task"] == spec.authors_task
    assert proto["dataset"]["hub_id"] == spec.hub_id and proto["dataset"]["revision"] == spec.revision
    diffs = {d["setting"]: d for d in proto["differs_from_authors"]}
    assert diffs["layout"]["ours"] == "bare" and diffs["layout"]["flag"] == "--fork-layout released"
    assert diffs["rounds"]["ours"] == rounds and diffs["num_tokens"]["ours"] == 4 and "pass1_run" in diffs
    assert "temperature" not in diffs and "max_new_tokens" not in diffs
    assert ("prompt_style" in diffs) == (protocol == "ours")
    assert ("missing_answers" in diffs) == (protocol == "ours")
    if spec.choices:
        assert "extract" not in diffs and len([d for d in proto["differs_from_authors"] if d["setting"] == "note"]) == 2

    from trl_ssft.eval.report import format_report

    printed = format_report(rep)
    assert f"task {task} ({protocol} protocol)" in printed and "layout: ours 'bare', authors 'released'" in printed
