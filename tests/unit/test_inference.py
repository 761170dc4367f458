"""Inference helpers, answers and the eval CLI on tiny local models (trl_ssft.eval.inference, .answers, .cli)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from trl_ssft.eval import answers as ans  # noqa: E402
from trl_ssft.eval import inference as inf  # noqa: E402
from trl_ssft.eval import metrics as M  # noqa: E402
from trl_ssft.demo.synthetic import corpus, make_rows  # noqa: E402
from trl_ssft.demo.tiny import build_tiny_model, build_tiny_tokenizer  # noqa: E402
from trl_ssft.data import encode_prompt  # noqa: E402
from trl_ssft.tokens import prepare_fork_tokens  # noqa: E402

NAMES = [f"<think{i}>" for i in range(1, 5)]


@pytest.fixture(scope="module")
def tiny():
    rows = make_rows(40, seed=1)
    tok = build_tiny_tokenizer(corpus(rows), vocab_size=400)
    model = build_tiny_model(tok, hidden_size=32, num_layers=2, seed=0)
    prepare_fork_tokens(model, tok, NAMES, noise=1.0, seed=0)
    model.eval()
    return tok, model, rows


# ---------------------------------------------------------------- prompts
def test_each_prompt_ends_with_its_own_fork_token(tiny):
    tok, _, rows = tiny
    ids = inf.fork_prompt_ids(tok, rows[0]["prompt"], NAMES)
    fork_ids = tok.convert_tokens_to_ids(NAMES)
    assert len(ids) == 4 and len(set(fork_ids)) == 4
    base = tok.apply_chat_template(rows[0]["prompt"], tokenize=False, add_generation_prompt=True)
    base_ids = tok(base, add_special_tokens=False)["input_ids"]
    for p, fid in zip(ids, fork_ids):
        assert p[-1] == fid
        assert p[:-1] == base_ids
    strings = inf.fork_prompt_strings(tok, rows[0]["prompt"], NAMES)
    for s, name, p in zip(strings, NAMES, ids):
        assert s.endswith("<|im_start|>assistant\n" + name)
        assert tok(s, add_special_tokens=False)["input_ids"] == p
    assert inf.fork_prompt_ids(tok, rows[0]["prompt"], None) == [base_ids]


# ---------------------------------------------------------------- generation
def test_batched_greedy_equals_one_by_one(tiny):
    tok, model, _ = tiny
    # prompts of different lengths, so the batch is really left-padded
    prompts = []
    for text in ["add 12 34 56", "add 7", "add 98 76 54 32 10 11 12", "x"]:
        prompts += inf.fork_prompt_ids(tok, [{"role": "user", "content": text}], NAMES[:2])
    assert len({len(p) for p in prompts}) > 1
    batched = inf.generate_ids(model, tok, prompts, max_new_tokens=12, greedy=True, batch_size=len(prompts))
    single = [inf.generate_ids(model, tok, [p], max_new_tokens=12, greedy=True, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert any(len(x) > 0 for x in batched)
    # different forking tokens lead to different continuations somewhere (the tokens are distinct inputs)
    assert batched[0::2] != batched[1::2]


def test_sampling_is_seeded(tiny):
    tok, model, rows = tiny
    prompts = inf.fork_prompt_ids(tok, rows[0]["prompt"], NAMES)
    a = inf.generate_ids(model, tok, prompts, max_new_tokens=8, temperature=1.0, top_p=1.0, seed=3)
    b = inf.generate_ids(model, tok, prompts, max_new_tokens=8, temperature=1.0, top_p=1.0, seed=3)
    c = inf.generate_ids(model, tok, prompts, max_new_tokens=8, temperature=1.0, top_p=1.0, seed=4)
    assert a == b and a != c


def test_self_chosen_token_is_argmax_of_unpadded_forward(tiny):
    tok, model, rows = tiny
    prompts = [r["prompt"] for r in rows[:6]] + [[{"role": "user", "content": "add 1"}]]
    fork_ids = tok.convert_tokens_to_ids(NAMES)
    probs = inf.fork_token_probs(model, tok, prompts, NAMES, batch_size=4)
    assert probs.shape == (7, 4)
    assert torch.allclose(probs.sum(-1), torch.ones(7), atol=1e-5)
    for k, p in enumerate(prompts):  # reference: one unpadded forward per prompt
        ids = torch.tensor([encode_prompt(tok, p)])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1, fork_ids]
        assert torch.allclose(probs[k], torch.softmax(logits, -1), atol=1e-4)
    assert inf.choose_fork_token(model, tok, prompts, NAMES, "argmax") == probs.argmax(-1).tolist()
    s1 = inf.choose_fork_token(model, tok, prompts, NAMES, "sample", seed=0)
    assert s1 == inf.choose_fork_token(model, tok, prompts, NAMES, "sample", seed=0)
    assert all(0 <= k < 4 for k in s1)


# ---------------------------------------------------------------- answers
@pytest.mark.parametrize("text, expected", [
    ("so \\boxed{12} and then \\boxed{85}", "85"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("x \\boxed{a{b{c}}d} y", "a{b{c}}d"),
    ("answer \\boxed 7.", "7."),
    ("no box here", None),
    ("\\boxed{85} then broken \\boxed{1", "85"),
])
def test_extract_boxed(text, expected):
    assert ans.extract_answer(text) == expected


def test_extract_with_pattern_and_equality():
    assert ans.extract_answer("Answer: 3. Final answer: 42", r"answer:\s*(\d+)") == "42"  # the last match
    assert ans.extract_answer("Answer: 3. The end", r"answer:\s*(\d+)") is None
    assert ans.extract_answer("Answer: 3. The end", r"(?i)answer:\s*(\d+)") == "3"
    assert ans.extract_answer("the end 99", r"\d+") == "99"
    assert ans.answers_equal("85", " 85. ", use_math_verify=False)
    assert ans.answers_equal("1,000", "1000", use_math_verify=False)
    assert ans.answers_equal("\\dfrac{1}{2}", "\\frac{1}{2}", use_math_verify=False)
    assert ans.answers_equal("2.50", "2.5", use_math_verify=False)
    assert not ans.answers_equal("85", "86", use_math_verify=False)
    assert not ans.answers_equal("85", None)
    if ans.math_verify_available():
        assert ans.answers_equal("\\frac{1}{2}", "0.5", use_math_verify=True)


def test_vote_over_extracted_answers():
    texts = ["\\boxed{5}", "\\boxed{7}", "\\boxed{7.0}", "nothing", "\\boxed{5}"]
    answers = [ans.extract_answer(t) for t in texts]
    # 5 and 7/7.0 tie at two each under numeric equality; 5 is seen first
    assert M.majority_vote(answers, ans.make_equal(False)) == "5"
    assert M.majority_vote(answers[1:], ans.make_equal(False)) == "7"


# ---------------------------------------------------------------- eval CLI on a trained tiny model
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import datasets

    from trl_ssft import SSFTConfig, SSFTTrainer
    from trl_ssft.demo.assets import build_demo_assets

    root = tmp_path_factory.mktemp("ssft_eval")
    paths = build_demo_assets(str(root / "assets"), num_train=16, num_eval=6, hidden_size=32, num_layers=1)
    rows = [json.loads(line) for line in open(paths["train"])]
    out = str(root / "out")
    cfg = SSFTConfig(output_dir=out, bf16=False, use_cpu=True, report_to=[], ssft_num_fork_tokens=4,
                     ssft_fork_token_loss=True, max_steps=3, per_device_train_batch_size=4, learning_rate=1e-3,
                     save_strategy="no", disable_tqdm=True, logging_strategy="no")
    trainer = SSFTTrainer(model=paths["model"], args=cfg, train_dataset=datasets.Dataset.from_list(rows))
    trainer.train()
    trainer.save_model()
    return out, paths["eval"], root


def test_load_ssft_model_reads_state(trained):
    out, _, _ = trained
    sm = inf.load_ssft_model(out, device="cpu")
    state = json.load(open(os.path.join(out, "ssft_state.json")))
    assert sm.fork_tokens == state["fork_tokens"] == NAMES
    assert sm.fork_token_ids == state["fork_token_ids"]
    assert sm.pass1_token == state["pass1_token"]


def test_eval_cli_writes_json_and_png(trained, capsys):
    from trl_ssft.eval.cli import main

    out, data, root = trained
    report_path = str(root / "rep" / "report.json")
    rc = main([out, data, "--output", report_path, "--rounds", "2", "--temperature", "1.0",
               "--max-new-tokens", "16", "--batch-size", "5", "--mode-classifier", "synthetic",
               "--cons-k", "8", "--pass-k", "1,2,100", "--self-choose", "argmax",
               "--samples-out", str(root / "rep" / "samples.jsonl"), "--no-progress"])
    assert rc == 0
    rep = json.load(open(report_path))
    assert os.path.getsize(rep["plot"]) > 1000 and rep["plot"].endswith(".png")
    with open(rep["plot"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert rep["num_questions"] == 6 and rep["rounds"] == 2 and rep["tokens"] == NAMES
    # every (question, round) sample of each token is in the token x mode table exactly once
    for t in NAMES:
        assert sum(rep["modes"]["table"][t].values()) == 6 * 2
    assert set(rep["pass_at_k"]) == {"1", "2", "100"} and set(rep["cons_at_k"]) == {"8"}
    assert sum(rep["self_chosen"]["token_counts"].values()) == 6
    lines = [json.loads(line) for line in open(root / "rep" / "samples.jsonl")]
    assert lines[0]["header"]["tokens"] == NAMES  # the samples file starts with the settings that made it
    kept = lines[1:]
    samples = [s for s in kept if not s["self_chosen"]]  # the forced tokens' samples, then the self-chosen ones
    assert len(samples) == 6 * 4 * 2 and len(kept) == 2 * len(samples)
    assert kept[: len(samples)] == samples
    # the reported Pass@1 of each token agrees with the saved samples
    for t in NAMES:
        mine = [s["correct"] for s in samples if s["token"] == t]
        assert rep["pass1_per_token"][t] == pytest.approx(sum(mine) / len(mine))
    printed = capsys.readouterr().out
    assert "Cons@4" in printed and "<think1>" in printed and "distinct modes per question" in printed


def test_eval_cli_scoring_rule_flags_reach_the_report(trained, tmp_path, capsys):
    from trl_ssft.eval.cli import main

    out, data, _ = trained
    path = str(tmp_path / "rules.json")
    rc = main([out, data, "--output", path, "--greedy", "--max-new-tokens", "8", "--no-plot", "--no-progress",
               "--missing-answers", "vote", "--extract", "fallback", "--cons-estimator", "first-k",
               "--cons-k", "2,9", "--pass-k", "4,5", "--math-verify", "off", "--mode-classifier", "none"])
    assert rc == 0
    rep = json.load(open(path))
    assert rep["rules"]["equality"] == "string" and rep["rules"]["missing_answers"] == "vote"
    assert rep["rules"]["extraction"] == "fallback" and rep["rules"]["cons_estimator"] == "first-k"
    assert rep["samples_per_question"] == 4  # greedy: one round of 4 tokens
    assert rep["cons_at_k"]["9"] is None and rep["pass_at_k"]["5"] is None and rep["pass_at_k"]["4"] is not None
    printed = capsys.readouterr().out
    assert "rules: equality=string, missing answers=vote, extraction=fallback, Cons@k estimator=first-k" in printed
    assert "Pass@5: n/a (k > 4 samples)" in printed


def test_eval_prompt_answer_dataset_without_modes(trained, tmp_path):
    from trl_ssft.eval.evaluate import evaluate_model
    from trl_ssft.eval.report import heatmap_matrix

    out, _, _ = trained
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"add {a} 11 12", "solution": str(a + 23)})
                              for a in (20, 31, 42)))
    rep = evaluate_model(out, str(data), prompt_column="question", answer_column="solution", greedy=True,
                         max_new_tokens=8, progress=False, mode_classifier="auto")
    assert rep["modes"] is None and rep["greedy"] and rep["rounds"] == 1
    mat, rows, cols, _ = heatmap_matrix(rep)
    assert cols == ["correct", "wrong", "no answer"] and rows == NAMES
    assert mat.sum(axis=1) == pytest.approx([1.0] * 4)


def test_adapter_dir_loads_and_generates(tiny, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    tok, model, rows = tiny
    base_dir, adapter_dir = str(tmp_path / "base"), str(tmp_path / "adapter")
    model.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    from transformers import AutoModelForCausalLM

    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                                LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(adapter_dir)
    tok.save_pretrained(adapter_dir)
    with open(os.path.join(adapter_dir, "ssft_state.json"), "w") as f:
        json.dump({"fork_tokens": NAMES[:3], "pass1_token": "<think2>"}, f)
    sm = inf.load_ssft_model(adapter_dir, device="cpu")
    assert isinstance(sm.model, PeftModel)
    assert sm.fork_tokens == NAMES[:3] and sm.pass1_token == "<think2>"
    prompts = [p for r in rows[:2] for p in inf.fork_prompt_ids(tok, r["prompt"], sm.fork_tokens)]
    loaded = inf.generate_ids(sm.model, sm.tokenizer, prompts, max_new_tokens=10, greedy=True)
    peft_model.eval()
    assert loaded == inf.generate_ids(peft_model, tok, prompts, max_new_tokens=10, greedy=True)
    assert loaded != inf.generate_ids(model, tok, prompts, max_new_tokens=10, greedy=True)  # the adapter acts


def _prefer_fork_tokens(model, ids):
    """Add 30 to the forking tokens' logits at every position (a model that would emit them everywhere)."""

    def boost(_module, _inputs, logits):
        logits = logits.clone()
        logits[..., ids] += 30.0
        return logits

    return model.get_output_embeddings().register_forward_hook(boost)


def test_suppress_ids_are_never_generated(tiny):
    tok, model, rows = tiny
    ids = tok.convert_tokens_to_ids(NAMES)
    prompts = inf.fork_prompt_ids(tok, rows[0]["prompt"], NAMES)
    handle = _prefer_fork_tokens(model, ids)
    try:
        free = inf.generate_ids(model, tok, prompts, max_new_tokens=6, temperature=1.0, seed=0)
        kept = inf.generate_ids(model, tok, prompts, max_new_tokens=6, temperature=1.0, seed=0, suppress_ids=ids)
    finally:
        handle.remove()
    assert all(t in ids for c in free for t in c) and all(len(c) == 6 for c in free)
    assert not any(t in ids for c in kept for t in c) and any(kept)


def test_eval_suppresses_forking_tokens_as_the_model_was_trained(trained, tmp_path):
    """A GFPO model trained with gfpo.suppress_fork_tokens is evaluated with the forking tokens forbidden after
    the forking position (auto); `suppress_fork_tokens=False` turns it off, and the report says which ran."""
    import shutil

    from trl_ssft.eval.evaluate import evaluate_model
    from trl_ssft.state import read_ssft_state, write_ssft_state

    out, eval_path, _ = trained
    model_dir = str(tmp_path / "gfpo_model")
    shutil.copytree(out, model_dir)
    state = read_ssft_state(model_dir)
    write_ssft_state(model_dir, {**state, "gfpo": {"suppress_fork_tokens": True}})
    sm = inf.load_ssft_model(model_dir, device="cpu")
    _prefer_fork_tokens(sm.model, sm.fork_token_ids)
    kw = dict(max_questions=2, max_new_tokens=6, self_choose="none", progress=False, keep_samples=True,
              mode_classifier="none")
    on = evaluate_model(sm, eval_path, **kw)
    off = evaluate_model(sm, eval_path, suppress_fork_tokens=False, **kw)
    assert on["suppress_fork_tokens"] is True and off["suppress_fork_tokens"] is False
    assert all(s["text"] for s in on["samples"])  # real tokens, not forking tokens
    assert not any(s["text"] for s in off["samples"])  # forking tokens only, skipped when decoded
