"""Forking tokens: single special tokens, reuse of existing ones, initialisation, PEFT rows."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_ssft.config import SSFTConfig, fork_token_names
from trl_ssft.tokens import add_trainable_tokens_to_peft_config, prepare_fork_tokens, trainable_token_indices


def _load(path):
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_new_tokens_are_single_distinct_and_near_the_mean(tiny_models):
    model, tok = _load(tiny_models["untied"])
    vocab0 = len(tok)
    w0 = model.get_input_embeddings().weight.detach().clone()
    names = [f"<think{i}>" for i in range(1, 7)]
    ids = prepare_fork_tokens(model, tok, names, noise=0.1, seed=0)
    assert ids == list(range(vocab0, vocab0 + 6))
    for n, i in zip(names, ids):
        assert tok(f"x {n} y", add_special_tokens=False)["input_ids"].count(i) == 1
    for w in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        w = w.detach()
        old = w[:vocab0]
        mean, std = old.mean(0), old.std(0)
        new = w[ids]
        z = ((new - mean) / std).abs().mean(-1)  # in per-dimension standard deviations
        assert (z < 0.3).all() and (z > 0.01).all()
        assert torch.cdist(new, new).add(torch.eye(6) * 1e9).min() > 0  # pairwise distinct
    torch.testing.assert_close(model.get_input_embeddings().weight[:vocab0], w0)  # old rows untouched


def test_existing_tokens_are_reused_with_their_embeddings(tiny_models):
    model, tok = _load(tiny_models["tied"])
    ids_first = prepare_fork_tokens(model, tok, ["<think1>", "<think2>"], seed=0)
    with torch.no_grad():
        model.get_input_embeddings().weight[ids_first[0]] = 7.0  # "trained" row
    size = len(tok)
    ids = prepare_fork_tokens(model, tok, ["<think1>", "<think2>", "<think3>"], seed=1)
    assert ids[:2] == ids_first and ids[2] == size and len(tok) == size + 1
    assert (model.get_input_embeddings().weight[ids[0]] == 7.0).all()


def test_padded_vocabulary_is_not_shrunk(tiny_models):
    model, tok = _load(tiny_models["tied"])
    model.resize_token_embeddings(len(tok) + 64)  # like Qwen's padded embedding matrix
    rows = model.get_input_embeddings().weight.shape[0]
    ids = prepare_fork_tokens(model, tok, ["<think1>"])
    assert model.get_input_embeddings().weight.shape[0] == rows and ids[0] < rows


def test_peft_trainable_rows_tied_and_untied(tiny_models):
    from peft import LoraConfig

    for kind, expected in [("tied", {"embed_tokens"}), ("untied", {"embed_tokens", "lm_head"})]:
        model, tok = _load(tiny_models[kind])
        ids = prepare_fork_tokens(model, tok, ["<a1>", "<a2>"])
        assert set(trainable_token_indices(model, ids)) == expected
        cfg = add_trainable_tokens_to_peft_config(LoraConfig(target_modules=["q_proj"]), model, ids)
        assert {k: sorted(v) for k, v in cfg.trainable_token_indices.items()} == {k: sorted(ids) for k in expected}
        full = add_trainable_tokens_to_peft_config(
            LoraConfig(target_modules=["q_proj"], modules_to_save=["lm_head"]), model, ids)
        assert "lm_head" not in (full.trainable_token_indices or {})


def test_fork_token_names_and_config_validation():
    import pytest

    cfg = SSFTConfig(output_dir="/tmp/x", ssft_num_fork_tokens=3, ssft_fork_token_template="<mode_{i}>",
                     use_cpu=True, bf16=False)
    assert fork_token_names(cfg) == ["<mode_1>", "<mode_2>", "<mode_3>"]
    for bad in [dict(ssft_num_fork_tokens=0), dict(ssft_fork_token_template="<t>"),
                dict(ssft_assignment="greedy"), dict(ssft_match_tokens=0), dict(ssft_max_traces_policy="x")]:
        with pytest.raises(ValueError, match="ssft_"):
            SSFTConfig(output_dir="/tmp/x", use_cpu=True, bf16=False, **bad)
