"""Resumable sampling (`trl_ssft.eval.sampling`, `inference.RowSampler`): per-sample seeds make samples independent
of batching and order; the samples file refuses other settings and survives a cut-off last line."""

from __future__ import annotations

import json

import pytest
import torch

from trl_ssft.eval import inference as inf
from trl_ssft.eval.sampling import SampleStore, sample_seed

NAMES = [f"<think{i}>" for i in range(1, 4)]


def test_seed_depends_on_the_key_only():
    assert sample_seed(0, 3, 1, 2) == sample_seed(0, 3, 1, 2)
    keys = {(s, q, i, r, o) for s in (0, 1) for q in range(3) for i in range(3) for r in range(2) for o in (0, 1)}
    assert len({sample_seed(*k) for k in keys}) == len(keys)


def test_row_sampler_keeps_the_nucleus_and_follows_its_probabilities():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    sampler = inf.RowSampler([7], temperature=1.0, top_p=0.7)
    picks = [int(sampler(None, logits).argmax()) for _ in range(4000)]
    assert set(picks) == {0, 1}  # 0.5 + 0.3 >= 0.7: the nucleus is the first two tokens
    assert abs(picks.count(0) / 4000 - 0.5 / 0.8) < 0.03
    out = sampler(None, logits)
    assert torch.isinf(out).sum() == 3 and out.max() == 0


@pytest.fixture(scope="module")
def tiny():
    from trl_ssft.demo.synthetic import corpus, make_rows
    from trl_ssft.demo.tiny import build_tiny_model, build_tiny_tokenizer
    from trl_ssft.tokens import prepare_fork_tokens

    rows = make_rows(20, seed=2)
    tok = build_tiny_tokenizer(corpus(rows), vocab_size=400)
    model = build_tiny_model(tok, hidden_size=32, num_layers=2, seed=0)
    prepare_fork_tokens(model, tok, NAMES, noise=1.0)
    return tok, model.eval(), rows


def test_per_sample_seeds_do_not_depend_on_batching(tiny):
    tok, model, rows = tiny
    prompts = []
    for r in rows[:3]:  # prompts of different lengths: a left-padded batch
        prompts += inf.fork_prompt_ids(tok, r["prompt"], NAMES)
    seeds = [sample_seed(0, j, 0, 0) for j in range(len(prompts))]
    kw = dict(max_new_tokens=10, temperature=1.0, top_p=0.9)
    batched = inf.generate_ids(model, tok, prompts, seeds=seeds, batch_size=len(prompts), **kw)
    alone = [inf.generate_ids(model, tok, [p], seeds=[s], **kw)[0] for p, s in zip(prompts, seeds)]
    reverse = inf.generate_ids(model, tok, prompts[::-1], seeds=seeds[::-1], batch_size=4, **kw)[::-1]
    assert batched == alone == reverse
    other = inf.generate_ids(model, tok, prompts, seeds=[s + 1 for s in seeds], **kw)
    assert other != batched and len({tuple(x) for x in batched}) > 1


def test_store_refuses_other_settings_and_drops_a_cut_line(tmp_path):
    path = tmp_path / "s.jsonl"
    store = SampleStore(str(path), {"seed": 0, "tokens": NAMES})
    rec = {"question": 0, "slot": 1, "round": 0, "self_chosen": False, "token": NAMES[1], "text": "x", "new_tokens": 1}
    store.add([rec, {**rec, "slot": 2}])
    with open(path, "a") as f:
        f.write('{"question": 1, "slot"')  # a write cut off by a kill
    again = SampleStore(str(path), {"seed": 0, "tokens": NAMES}, resume=True)
    assert again.resumed == 2 and set(again.done) == {(0, 1, 0, False), (0, 2, 0, False)}
    assert open(path).read().endswith("\n") and len(open(path).read().splitlines()) == 3
    with pytest.raises(ValueError, match=r"cannot resume .*seed: file 0, this run 1"):
        SampleStore(str(path), {"seed": 1, "tokens": NAMES}, resume=True)
    fresh = SampleStore(str(path), {"seed": 1, "tokens": NAMES})  # without resume: a new file
    assert not fresh.done and json.loads(open(path).readline())["header"]["seed"] == 1
