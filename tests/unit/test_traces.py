"""trl_ssft.traces: converters on small local datasets in the real column layouts of their sources,
verification (math-verify), de-duplication, the diverse choice of M, bad input, report, CLI."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from datasets import Dataset

from trl_ssft.checks import SSFTDataError
from trl_ssft.traces.build import build
from trl_ssft.traces.select import SelectOptions, select_traces, signatures, similarity
from trl_ssft.traces.columns import columns_to_ssft
from trl_ssft.traces.templates import get_template, split_thinking
from trl_ssft.traces.verify import Verifier, VerifyOptions

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
         "upsilon phi chi psi omega").split()


def _text(seed: int, n: int = 60) -> str:
    """A deterministic pseudo-random word sequence (distinct seeds share few 5-grams)."""
    import random

    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _jsonl(path: Path, rows: list[dict]) -> str:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


def _read(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def _s1k_row(i: int, *, gemini_grade="Yes", solution=None, ds_thinking=None, ds_attempt=None) -> dict:
    """One row in simplescaling/s1K-1.1's columns (grades "Yes"/"No", `solution` a worked solution)."""
    return {"solution": f"Adding gives \\boxed{{{i + 1}}}." if solution is None else solution,
            "question": f"What is {i} + 1?", "cot_type": "math", "source_type": "synthetic", "metadata": "{}",
            "gemini_thinking_trajectory": f"Counting up from {i}. " + _text(100 + i),
            "gemini_attempt": f"The final answer is $\\boxed{{{i + 1}}}$",
            "deepseek_thinking_trajectory": f"Okay, {i} plus one. " + _text(200 + i) if ds_thinking is None
            else ds_thinking,
            "deepseek_attempt": f"So the answer is \\boxed{{{i + 1}}}." if ds_attempt is None else ds_attempt,
            "gemini_grade": gemini_grade, "gemini_grade_reason": "checked", "deepseek_grade": "Yes",
            "deepseek_grade_reason": "checked"}


# ------------------------------------------------------------------ templates
def test_templates_end_with_the_answer():
    assert get_template("think").render("R", "A") == "<think>\nR\n</think>\n\nA"
    s1 = get_template("s1")
    assert s1.render("R", "\\boxed{3}") == "<|im_start|>think\nR\n<|im_start|>answer\nAnswer: \\boxed{3}"
    assert s1.render("R", "Answer: 3") == "<|im_start|>think\nR\n<|im_start|>answer\nAnswer: 3"
    assert get_template("plain").render("", "A") == "A" and get_template("plain").render("R", "A") == "R\n\nA"
    assert get_template("{thinking} => {answer}").render(" R ", "A") == "R => A"
    assert get_template("think").render(None, " whole trace ") == "whole trace"  # one complete text: kept
    with pytest.raises(ValueError, match=r"\{thinking\} and \{answer\}"):
        get_template("{answer} only")
    assert split_thinking("<think>\nR\n</think>\n\nA") == ("R", "A")
    assert split_thinking("R</think>A") == ("R", "A")  # opening tag in the prompt (Qwen3 / R1 templates)
    assert split_thinking("<think>cut off") == ("cut off", "")
    assert split_thinking("no tags") == (None, "no tags")


# ------------------------------------------------------------------ s1K-1.1: per-teacher column groups
def test_s1k_layout_traces_end_with_answers_and_no_graded_dropped(tmp_path):
    rows = [_s1k_row(0), _s1k_row(1, gemini_grade="No"), _s1k_row(2, solution="A proof without a box.")]
    ds = Dataset.from_list(rows)
    out = columns_to_ssft(ds, "question", ["deepseek_thinking_trajectory", "gemini_thinking_trajectory"],
                          final_columns=["deepseek_attempt", "gemini_attempt"],
                          grade_columns=["deepseek_grade", "gemini_grade"], trace_sources=["deepseek", "gemini"],
                          answer_column="solution", answer_from="boxed").to_list()
    assert [r["trace_sources"] for r in out] == [["deepseek", "gemini"], ["deepseek"], ["deepseek", "gemini"]]
    assert out[0]["traces"][0].startswith("<think>\nOkay, 0 plus one.")
    assert out[0]["traces"][0].endswith("</think>\n\nSo the answer is \\boxed{1}.")
    assert out[0]["traces"][1].endswith("The final answer is $\\boxed{1}$")
    assert [r["answer"] for r in out] == ["1", "2", None]  # the last \boxed{} of the worked solution
    # the same through build with the preset (detected from the columns), answers checked with math-verify
    report = build([_jsonl(tmp_path / "s1k.jsonl", rows)], str(tmp_path / "out.jsonl"))
    built = _read(str(tmp_path / "out.jsonl"))
    assert [r["traces"] for r in built[:2]] == [out[0]["traces"], out[1]["traces"]]
    assert report["drops"] == {"graded_incorrect": 1}
    assert report["questions_without_reference"] == 1
    # q2 has no reference: under check_answers=auto its "Yes"-graded traces are kept on their grade
    assert built[2]["trace_sources"] == ["deepseek", "gemini"]
    strict = build([str(tmp_path / "s1k.jsonl")], str(tmp_path / "strict.jsonl"),
                   verify=VerifyOptions(check_answers="always"))
    assert strict["drops"] == {"no_reference": 2, "graded_incorrect": 1} and strict["questions_out"] == 2


def test_bad_input_named_or_counted(tmp_path):
    ds = Dataset.from_list([_s1k_row(0, ds_thinking="", ds_attempt="   "), _s1k_row(1, ds_thinking=" ")])
    cols = dict(final_columns=["deepseek_attempt", "gemini_attempt"], grade_columns=["deepseek_grade", "gemini_grade"])
    out = columns_to_ssft(ds, "question", ["deepseek_thinking_trajectory", "gemini_thinking_trajectory"], **cols)
    assert [r["trace_sources"] for r in out] == [["gemini_thinking_trajectory"]] * 2  # empty parts: dropped
    with pytest.raises(SSFTDataError, match=r"field 'gemini_attempt, gemini_grade': column\(s\) not in the dataset"):
        columns_to_ssft(ds.remove_columns(["gemini_attempt", "gemini_grade"]), "question",
                        ["deepseek_thinking_trajectory", "gemini_thinking_trajectory"], **cols)
    bad = Dataset.from_list([_s1k_row(0), _s1k_row(1, gemini_grade="maybe")])
    with pytest.raises(SSFTDataError, match=r"row 1, field 'gemini_grade': grade 'maybe' is not one of"):
        columns_to_ssft(bad, "question", ["deepseek_thinking_trajectory", "gemini_thinking_trajectory"], **cols)
    no_q = Dataset.from_list([_s1k_row(0), {**_s1k_row(1), "question": ""}])
    with pytest.raises(SSFTDataError, match=r"row 1, field 'question': the question is missing"):
        columns_to_ssft(no_q, "question", ["deepseek_thinking_trajectory"])
    with pytest.raises(ValueError, match=r"final_columns needs one entry per trace column"):
        columns_to_ssft(ds, "question", ["deepseek_thinking_trajectory"], final_columns=["a", "b"])
    counts = build([_jsonl(tmp_path / "e.jsonl", ds.to_list())], str(tmp_path / "e_out.jsonl"),
                   verify=VerifyOptions(check_answers="never"))["drops"]
    assert counts == {"empty": 1, "empty_thinking": 1}


# ------------------------------------------------------------------ OpenR1-Math: generations + correctness lists
def test_openr1_layout_lists_and_flags(tmp_path):
    gen = lambda r, a: f"<think>\n{r}\n</think>\n\nThus \\boxed{{{a}}}."  # noqa: E731
    rows = [{"problem": "Compute 1/2.", "solution": "...", "answer": "\\frac{1}{2}", "problem_type": "Algebra",
             "question_type": "math-word-problem", "source": "olympiads", "uuid": "u-0",
             "is_reasoning_complete": [True, True, True, False],
             "generations": [gen(_text(1), "0.5"), gen(_text(2), "\\frac12"), gen(_text(3), "2"), "<think>\n" + _text(4)],
             "correctness_math_verify": [True, True, False, False], "correctness_llama": None,
             "finish_reasons": ["stop", "stop", "stop", "length"], "correctness_count": 2,
             "messages": [{"role": "user", "content": "Compute 1/2."}]}]
    report = build([_jsonl(tmp_path / "r1.jsonl", rows)], str(tmp_path / "out.parquet"), preset="openr1")
    assert report["drops"] == {"graded_incorrect": 1, "length": 1}
    out = Dataset.from_parquet(str(tmp_path / "out.parquet")).to_list()
    assert out[0]["question_id"] == "u-0" and out[0]["answer"] == "\\frac{1}{2}"
    assert [t.rsplit("\n\n", 1)[1] for t in out[0]["traces"]] == ["Thus \\boxed{0.5}.", "Thus \\boxed{\\frac12}."]
    assert out[0]["trace_sources"] == ["deepseek-r1"] * 2


# ------------------------------------------------------------------ math-verify verification
def test_answers_checked_with_math_verify():
    from trl_ssft.traces.sources import Candidate

    v = Verifier(VerifyOptions(check_answers="always"))
    c = lambda ans, ref="\\frac{1}{2}", **kw: Candidate("q", "p", ref, "t", "reasoning", ans, **kw)  # noqa: E731
    assert v.check(c("\\boxed{0.5}"))[1] is None
    assert v.check(c("\\boxed{\\dfrac{2}{4}}"))[1] is None
    assert v.check(c("\\boxed{x^2 + 2x + 1}", ref="(x+1)^2"))[1] is None
    assert v.check(c("\\boxed{0.6}")) == (None, "incorrect")
    assert v.check(c("no box here")) == (None, "no_answer")
    assert v.check(c("\\boxed{1}", ref="\\sqrt{")) == (None, "reference_unparseable")
    assert v.check(c("\\boxed{1}", ref=None)) == (None, "no_reference")
    assert v.check(c("\\boxed{1}", finish_reason="length")) == (None, "length")
    assert v.check(c("\\boxed{1}", error="HTTP 500")) == (None, "error")
    keep = Verifier(VerifyOptions(check_answers="always", keep_incorrect=True))
    trace, reason = keep.check(c("\\boxed{0.6}"))
    assert reason == "kept_incorrect" and trace.endswith("\\boxed{0.6}")


# ------------------------------------------------------------------ long format (the generate contract) and join
def test_candidates_file_read_with_no_options(tmp_path):
    q = [{"role": "user", "content": "What is 2+2?"}]
    base = dict(prompt=q, answer="4", sample_index=0, thinking=None, finish_reason="stop", error=None)
    rows = [  # interleaved questions, as concurrent generation writes them
        {**base, "question_id": "a", "teacher": "m1", "response": f"<think>{_text(1)}</think>\\boxed{{4}}"},
        {**base, "question_id": "b", "prompt": "x", "answer": None, "teacher": "m1", "response": "\\boxed{1}"},
        {**base, "question_id": "a", "teacher": "m2", "thinking": _text(2), "response": "It is \\boxed{4}."},
        {**base, "question_id": "a", "teacher": "m2", "sample_index": 1, "response": "", "error": "timeout",
         "finish_reason": None},
        {**base, "question_id": "a", "teacher": "m3", "response": f"<think>{_text(3)}", "finish_reason": "length"},
        {**base, "question_id": "a", "teacher": "m3", "sample_index": 1, "response": "no think tags \\boxed{5}"},
    ]
    rows[1]["prompt"] = [{"role": "user", "content": "x"}]
    report = build([_jsonl(tmp_path / "cand.jsonl", rows)], str(tmp_path / "out"), select=SelectOptions(min_traces=2))
    assert report["drops"] == {"error": 1, "length": 1, "incorrect": 1, "no_reference": 1}
    assert report["questions_dropped"] == {"no_trace": 1}
    from datasets import load_from_disk

    out = load_from_disk(str(tmp_path / "out")).to_list()
    assert len(out) == 1 and out[0]["question_id"] == "a" and out[0]["trace_sources"] == ["m1", "m2"]
    assert out[0]["traces"][0] == f"<think>\n{_text(1)}\n</think>\n\n\\boxed{{4}}"  # split, then laid out
    assert out[0]["traces"][1] == f"<think>\n{_text(2)}\n</think>\n\nIt is \\boxed{{4}}."
    # several files, one per teacher, joined by a key
    files = [_jsonl(tmp_path / f"{t}.jsonl", [{"pid": k, "problem": f"q{k}", "ref": str(k), "text": f"{_text(k + 9 * j)} "
                                                f"\\boxed{{{k}}}"} for k in range(3)]) for j, t in enumerate(("r1", "qwq"))]
    from trl_ssft.traces.sources import SourceSpec

    spec = SourceSpec(shape="join", id_column="pid", prompt_column="problem", answer_column="ref",
                      response_column="text")
    rep = build(files, str(tmp_path / "joined.jsonl"), source=spec, verify=VerifyOptions(template="plain"))
    joined = _read(str(tmp_path / "joined.jsonl"))
    assert rep["drops"] == {} and [r["trace_sources"] for r in joined] == [["r1", "qwq"]] * 3
    assert [r["answer"] for r in joined] == ["0", "1", "2"]
    bad = [{**rows[0]}, {**rows[2], "prompt": [{"role": "user", "content": "another question"}]}]
    with pytest.raises(SSFTDataError, match=r"row 1, field 'prompt': question 'a' has another prompt in row 0"):
        build([_jsonl(tmp_path / "bad.jsonl", bad)], str(tmp_path / "bad_out.jsonl"))


def test_ssft_file_reselected_and_optional_columns(tmp_path):
    rows = [{"prompt": f"add {k} 1", "answer": str(k + 1),
             "traces": [f"{_text(k)} \\boxed{{{k + 1}}}", f"{_text(k)}  \\boxed{{{k + 1}}}", f"{_text(k + 50)} "
                        f"\\boxed{{{k + 1}}}"]} for k in range(3)]  # no trace_sources (optional in the format)
    report = build([_jsonl(tmp_path / "old.jsonl", rows)], str(tmp_path / "new.jsonl"))
    new = _read(str(tmp_path / "new.jsonl"))
    assert report["drops"] == {"duplicate": 3} and [len(r["traces"]) for r in new] == [2, 2, 2]
    assert new[0]["prompt"] == "add 0 1" and new[0]["trace_sources"] == ["trace", "trace"]  # plain text kept
    from trl_ssft.traces.sources import SourceSpec

    with pytest.raises(SSFTDataError, match=r"field 'fr': column\(s\) not in the dataset"):  # named by the user
        build([str(tmp_path / "old.jsonl")], str(tmp_path / "x.jsonl"), source=SourceSpec(finish_reason_column="fr"))


# ------------------------------------------------------------------ selection
def test_near_duplicates_removed_and_diverse_m_chosen():
    base = _text(7, 120).split()
    near = base.copy()
    near[60] = "CHANGED"  # one word of 120: Jaccard of 5-grams ~0.92
    traces = [" ".join(base), "  ".join(base), " ".join(near), _text(8, 120), _text(9, 120)]
    keep, drops = select_traces("q", traces, ["a", "b", "c", "d", "e"], SelectOptions(max_traces=4))
    assert keep == [0, 3, 4] and drops == Counter({"duplicate": 1, "near_duplicate": 1})
    # clusters: 0-2 share a long common part (similar, not near-duplicates), 3-4 another, 5 alone
    a, b = _text(11, 150), _text(12, 150)
    cl = [a + " " + _text(20 + k, 40) for k in range(3)] + [b + " " + _text(30 + k, 40) for k in range(2)] + \
        [_text(40, 190)]
    sim = similarity(signatures(cl))
    assert sim[0, 1] > 0.5 and sim[0, 3] < 0.1  # the planted structure
    keep, drops = select_traces("q", cl, ["t"] * 6, SelectOptions(max_traces=3, near_duplicate=0.99))
    assert len([k for k in keep if k < 3]) == 1 and len([k for k in keep if k in (3, 4)]) == 1 and 5 in keep
    assert drops == Counter({"not_selected": 3})
    # teacher coverage comes first: the lone teacher "z" is chosen even inside a cluster
    keep, _ = select_traces("q", cl, ["t", "t", "z", "t", "t", "t"], SelectOptions(max_traces=3, near_duplicate=0.99))
    assert 2 in keep
    # seeded: identical for a seed; ties broken differently for another seed
    many = [_text(50 + k, 30) for k in range(8)]
    runs = {tuple(select_traces(f"q{s}", many, ["t"] * 8, SelectOptions(max_traces=2, seed=s))[0]) for s in range(6)}
    assert select_traces("q", many, ["t"] * 8, SelectOptions(max_traces=2, seed=3)) == \
        select_traces("q", many, ["t"] * 8, SelectOptions(max_traces=2, seed=3))
    assert len(runs) > 1
    keep, drops = select_traces("q", traces[:2], ["a", "b"], SelectOptions(min_traces=2))
    assert keep == [] and drops == Counter({"duplicate": 1, "too_few_traces": 1})


def test_build_is_seeded_and_independent_of_num_proc(tmp_path):
    rows = [{"problem": f"q{i}", "answer": str(i), "uuid": f"id{i}",
             "generations": [f"<think>{_text(i * 10 + k, 40)}</think>\\boxed{{{i}}}" for k in range(6)],
             "correctness_math_verify": [True] * 6, "finish_reasons": ["stop"] * 6} for i in range(8)]
    src = _jsonl(tmp_path / "src.jsonl", rows)
    outs = []
    for k, num_proc in enumerate((1, 2, 1)):
        seed = 1 if k == 2 else 0
        build([src], str(tmp_path / f"o{k}.jsonl"), preset="openr1", num_proc=num_proc, batch_size=3,
              select=SelectOptions(max_traces=3, seed=seed))
        outs.append(Path(tmp_path / f"o{k}.jsonl").read_text())
    assert outs[0] == outs[1]  # num_proc 2 = num_proc 1
    assert len(_read(str(tmp_path / "o0.jsonl"))) == 8


# ------------------------------------------------------------------ report, CLI, docs
def test_report_counts_lengths_truncation_and_drops(tmp_path):
    from trl_ssft.data import encode_prompt
    from trl_ssft.demo.tiny import build_tiny_tokenizer
    from trl_ssft.traces.report import data_report, format_report

    rows = [_s1k_row(i, gemini_grade="No" if i == 1 else "Yes") for i in range(4)]
    out = str(tmp_path / "s1k_ssft.jsonl")
    build([_jsonl(tmp_path / "s1k.jsonl", rows)], out)
    tok = build_tiny_tokenizer([_text(k) for k in range(20)])
    rep = data_report(out, tok, max_length=80)
    built = _read(out)
    lens = [len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for r in built for t in r["traces"]]
    cut = sum(len(encode_prompt(tok, r["prompt"])) + 1 + len(tok(t, add_special_tokens=False)["input_ids"]) + 1 > 80
              for r in built for t in r["traces"])
    assert rep["questions"] == 4 and rep["traces"] == 7 and rep["traces_per_question"] == {"1": 1, "2": 3}
    assert rep["trace_tokens"]["max"] == max(lens) and rep["truncated_traces"] == cut
    assert rep["teachers"] == {"deepseek": 4, "gemini": 3}
    assert rep["build"]["drops"] == {"graded_incorrect": 1}
    assert 0.9 < rep["diversity"]["p50"] <= 1.0
    assert "graded_incorrect 1" in format_report(rep)


def test_cli_usage_and_generate_hook(capsys):
    import importlib.util

    from trl_ssft.cli import main

    assert main(["data"]) == 2 and main(["data", "--help"]) == 0 and main(["data", "bogus"]) == 2
    if importlib.util.find_spec("trl_ssft.traces.generate") is None:
        assert main(["data", "generate"]) == 2
        assert "not available in this build" in capsys.readouterr().err


def test_docs_list_every_build_option():
    from dataclasses import fields

    from trl_ssft.traces.select import SelectOptions
    from trl_ssft.traces.sources import SourceSpec

    doc = (Path(__file__).parents[2] / "docs" / "data.md").read_text()
    for cls in (SourceSpec, VerifyOptions, SelectOptions):
        for f in fields(cls):
            assert f"--{f.name.replace('_', '-')}" in doc, f.name
