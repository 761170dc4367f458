"""A tiny model trained with the released checkpoints' layout (`ssft_fork_layout: released`, 2 steps): the token ids
of its training rows, matching rows, HF and vLLM evaluation prompts and GFPO rollouts all carry the same span
``<|im_start|> <thinkK> \\n``; the saved state records the layout and evaluation uses it by default."""

from __future__ import annotations

import json
import os
import sys
import types

import pytest

N = 4
NAMES = [f"<think{i}>" for i in range(1, N + 1)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import datasets

    from trl_ssft import SSFTConfig, SSFTTrainer
    from trl_ssft.demo.assets import build_demo_assets

    root = tmp_path_factory.mktemp("layout")
    paths = build_demo_assets(str(root / "assets"), num_train=8, num_eval=4, hidden_size=32, num_layers=1)
    rows = [json.loads(line) for line in open(paths["train"])]
    cfg = SSFTConfig(output_dir=str(root / "out"), bf16=False, use_cpu=True, report_to=[], ssft_num_fork_tokens=N,
                     ssft_fork_layout="released", ssft_fork_token_loss=True, max_steps=2, per_device_train_batch_size=4,
                     learning_rate=1e-3, save_strategy="no", disable_tqdm=True, logging_strategy="no")
    trainer = SSFTTrainer(model=paths["model"], args=cfg, train_dataset=datasets.Dataset.from_list(rows))
    seen = {}
    import trl_ssft.scoring as scoring

    real = scoring.score_continuations

    def spy(model, prefixes, conts, *a, **kw):  # the matching rows of the last micro-batch
        seen["prefixes"], seen["shared"] = [list(p) for p in prefixes], list(kw.get("shared_lens") or a[-1])
        return real(model, prefixes, conts, *a, **kw)

    scoring.score_continuations = spy
    try:
        trainer.train()
    finally:
        scoring.score_continuations = real
    trainer.save_model()
    return {"dir": str(root / "out"), "trainer": trainer, "rows": rows, "eval": paths["eval"], "seen": seen}


def _span(tok, name):
    return [tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids(name)] + \
        tok("\n", add_special_tokens=False)["input_ids"]


def test_state_records_the_layout(trained):
    state = json.load(open(os.path.join(trained["dir"], "ssft_state.json")))
    assert state["fork_layout"] == {"name": "released", "before": "<|im_start|>", "after": "\n"}


def test_training_and_matching_rows_carry_the_span(trained):
    tr = trained["trainer"]
    tok = tr.processing_class
    batch = tr.data_collator([tr.train_dataset[0]])
    prompts, traces = tr._unpack(batch)
    assert tok.convert_tokens_to_ids("<|im_start|>") not in prompts[0][-1:]  # the cached row has no layout
    ids, _, labels = tr.ssft_build_rows(prompts, traces, [[3, 2, 1, 0]])
    p = len(prompts[0])
    for j, name in enumerate(reversed(NAMES)):
        assert ids[j, p: p + 3].tolist() == _span(tok, name)
        assert labels[j, p: p + 3].tolist() == _span(tok, name)  # ssft_fork_token_loss: the span carries loss
    seen = trained["seen"]
    assert seen["prefixes"] and all(pre[-3:] == _span(tok, tok.convert_ids_to_tokens(pre[-2]))
                                    for pre in seen["prefixes"])
    assert all(n == len(pre) - 2 for n, pre in zip(seen["shared"], seen["prefixes"]))  # prompt + <|im_start|> shared


def _prompts_sent(monkeypatch, trained, backend, **kw):
    """Run an evaluation and return the prompt ids handed to the generation backend."""
    from trl_ssft.eval import sampling
    from trl_ssft.eval.evaluate import evaluate_model

    sent = []

    def fake_stream(model_dir, prompts, *, seeds, on_done, **opts):
        sent.extend(prompts)
        on_done([(j, [2]) for j in range(len(prompts))])

    with monkeypatch.context() as m:
        if backend == "vllm":
            m.setitem(sys.modules, "trl_ssft.eval.vllm_backend", types.SimpleNamespace(stream_ids_vllm=fake_stream))
        else:
            real = sampling._generate
            m.setattr(sampling, "_generate", lambda sm, prompts, *a, **k: (sent.extend(prompts),
                                                                         real(sm, prompts, *a, **k))[1])
        rep = evaluate_model(trained["dir"], trained["eval"], backend=backend, max_questions=2, greedy=True,
                             max_new_tokens=3, progress=False, mode_classifier="none", self_choose="none", **kw)
    return sent, rep


def test_hf_and_vllm_prompts_carry_the_span_by_default(trained, monkeypatch):
    from transformers import AutoTokenizer

    from trl_ssft.eval.inference import load_ssft_model

    tok = AutoTokenizer.from_pretrained(trained["dir"])
    sm = load_ssft_model(trained["dir"], load_model=False)
    assert sm.layout.layout.name == "released"
    hf, rep = _prompts_sent(monkeypatch, trained, "hf")
    vl, rep_v = _prompts_sent(monkeypatch, trained, "vllm")
    assert hf == vl and len(hf) == 2 * N
    assert [p[-3:] for p in hf] == [_span(tok, t) for t in NAMES] * 2
    assert rep["fork_layout"]["name"] == "released" == rep_v["fork_layout"]["name"]
    bare, rep_b = _prompts_sent(monkeypatch, trained, "hf", fork_layout="bare")  # the override flag
    assert [p[-1] for p in bare] == tok.convert_tokens_to_ids(NAMES) * 2 and rep_b["fork_layout"]["name"] == "bare"
    assert [p[:-1] for p in bare] == [p[:-3] for p in hf]


def test_gfpo_rollouts_carry_the_span(trained, tmp_path):
    """GFPO on the layout model: the rollout is generated after prompt + span; the trained one-token completion is
    the forking token, after prompt + <|im_start|>; the continuation starts with the newline; the GFPO model's
    state keeps the layout."""
    from datasets import Dataset

    from trl_ssft import GFPOConfig, GFPOTrainer

    data = [{"prompt": r["prompt"], "answer": r.get("answer", "")} for r in trained["rows"][:4]]
    args = GFPOConfig(output_dir=str(tmp_path / "gfpo"), bf16=False, use_cpu=True, report_to=[],
                      per_device_train_batch_size=4, num_generations=4, max_completion_length=4, max_steps=1,
                      save_strategy="no", disable_tqdm=True, gfpo_token_choice="enumerate", seed=0)
    conts = []

    def reward(completions, gfpo_continuation_ids, **kw):
        conts.extend(gfpo_continuation_ids)
        return [1.0] * len(completions)

    trainer = GFPOTrainer(model=trained["dir"], reward_funcs=reward, args=args, train_dataset=Dataset.from_list(data))
    tok = trainer.processing_class
    assert trainer.gfpo_layout.layout.name == "released"
    sent = []

    def gen(prompt_ids, *a, **kw):
        sent.extend(list(p) for p in prompt_ids)
        return [[7, 8] for _ in prompt_ids], None

    trainer._generate_single_turn = gen
    trainer.model.train()
    out = trainer._generate_and_score_completions([dict(data[0]) for _ in range(4)])
    names = [tok.convert_ids_to_tokens(p[-2]) for p in sent]
    assert [p[-3:] for p in sent] == [_span(tok, n) for n in names] and set(names) == set(NAMES)
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    for k in range(4):
        prompt = out["prompt_ids"][k][out["prompt_mask"][k].bool()].tolist()
        assert prompt[-1] == im_start and prompt == sent[k][:-2]
        assert out["completion_ids"][k].tolist() == [sent[k][-2]]
        assert conts[k] == [sent[k][-1], 7, 8]  # the layout's newline, then the generated ids
    trainer.write_gfpo_state(str(tmp_path / "gfpo"))
    state = json.load(open(tmp_path / "gfpo" / "ssft_state.json"))
    assert state["fork_layout"]["name"] == "released" and state["pass1_choice"] == "self"
