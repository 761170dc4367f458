"""Training runs of SSFTTrainer: full fine-tuning, LoRA and QLoRA (bitsandbytes 4-bit on CPU),
on a tied Qwen2 and an untied Llama; forking-token rows are the only embedding rows that move
under (Q)LoRA; gradient accumulation is exact; save/reload/generate; resume restores match counts."""

import json
import os

import numpy as np
import pytest
import torch
from datasets import Dataset

from conftest import cpu_args
from trl_ssft import SSFTTrainer


def _losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def _lora(r=8):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], task_type="CAUSAL_LM",
                      lora_dropout=0.0)


def _qconfig():
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)


def _effective_rows(model, ids):
    """Input-embedding rows and output-layer logits weights as the (PEFT-wrapped) model sees them."""
    emb = model.get_input_embeddings()
    with torch.no_grad():
        e = emb(torch.tensor(ids)).float().clone()
        out = model.get_output_embeddings()
        h = torch.eye(e.shape[1])
        logits = out(h).float()[:, ids].clone()
    return e, logits


@pytest.mark.parametrize("kind", ["tied", "untied"])
@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_training_decreases_loss_and_only_fork_rows_move(tiny_models, rows, tmp_path, kind, method):
    args = cpu_args(tmp_path, max_steps=14, learning_rate=3e-2 if method != "full" else 3e-3,
                    per_device_train_batch_size=4, gradient_checkpointing=False)
    kw = {}
    if method in ("lora", "qlora"):
        kw["peft_config"] = _lora()
    if method == "qlora":
        kw["quantization_config"] = _qconfig()
    trainer = SSFTTrainer(model=tiny_models[kind], args=args, train_dataset=Dataset.from_list(rows), **kw)
    if method == "qlora":
        import bitsandbytes as bnb

        assert any(isinstance(m, bnb.nn.Linear4bit) for m in trainer.model.modules())
    fork = trainer.fork_token_ids
    other = [i for i in range(20, 40)]
    before = _effective_rows(trainer.model, fork + other)
    trainer.train()
    losses = _losses(trainer)
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.08, losses
    after = _effective_rows(trainer.model, fork + other)
    n = len(fork)
    emb_delta = (after[0] - before[0]).abs().amax(-1)
    assert (emb_delta[:n] > 0).all(), "every forking-token embedding row must be trained"
    if method != "full":
        assert (emb_delta[n:] == 0).all(), "frozen embedding rows moved under (Q)LoRA"
        head_delta = (after[1] - before[1]).abs().amax(0)
        if kind == "untied":
            assert (head_delta[n:] == 0).all()
        trainable = [p for _, p in trainer.model.named_parameters() if p.requires_grad]
        total = sum(p.numel() for p in trainable)
        vocab, dim = trainer.model.get_input_embeddings().weight.shape
        assert total < vocab * dim, "the whole embedding matrix must not be trainable"
    state = json.load(open(os.path.join(args.output_dir, "ssft_state.json"))) if os.path.exists(
        os.path.join(args.output_dir, "ssft_state.json")) else trainer.ssft_state()
    assert sum(state["match_counts"]) == 14 * 4 * 4  # every trace of every step was matched once


def _one_sgd_step(path, rows, tmp_path, bs, ga, mode):
    args = cpu_args(tmp_path, max_steps=1, per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
                    optim="sgd", learning_rate=0.5, max_grad_norm=0.0, lr_scheduler_type="constant",
                    warmup_steps=0, weight_decay=0.0, ssft_assignment=mode, gradient_checkpointing=False)
    trainer = SSFTTrainer(model=path, args=args, train_dataset=Dataset.from_list(rows[:8]))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    delta = {n: (p.detach() - before[n]) for n, p in trainer.model.named_parameters()}
    return trainer.state.log_history[-1]["train_loss"], delta


@pytest.mark.parametrize("mode", ["hungarian", "none"])
def test_gradient_accumulation_equals_large_batch(tiny_models, rows, tmp_path, mode):
    # Traces differ in length (the `columns` mode is longer), so a mean of per-micro-batch means would differ.
    loss_big, d_big = _one_sgd_step(tiny_models["untied"], rows, tmp_path / "big", 4, 1, mode)
    loss_ga, d_ga = _one_sgd_step(tiny_models["untied"], rows, tmp_path / "ga", 1, 4, mode)
    assert loss_ga == pytest.approx(loss_big, rel=1e-4)
    for name in d_big:
        torch.testing.assert_close(d_ga[name], d_big[name], rtol=1e-3, atol=1e-6, msg=name)
    assert max(d.abs().max().item() for d in d_big.values()) > 1e-4  # the step did something


def test_save_reload_generate_and_resume(tiny_models, rows, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    args = cpu_args(tmp_path, max_steps=6, save_strategy="steps", save_steps=3, gradient_checkpointing=False)
    trainer = SSFTTrainer(model=tiny_models["tied"], args=args, train_dataset=Dataset.from_list(rows))
    trainer.train()
    trainer.save_model()
    final_counts = trainer.ssft_state()["match_counts"]
    out = args.output_dir
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.convert_tokens_to_ids("<think3>") == trainer.fork_token_ids[2]
    assert tok("<think3>", add_special_tokens=False)["input_ids"] == [trainer.fork_token_ids[2]]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.get_input_embeddings().weight.shape[0] >= len(tok)
    saved = json.load(open(os.path.join(out, "ssft_state.json")))
    assert saved["match_counts"] == final_counts and saved["pass1_token"] in saved["fork_tokens"]
    ck3 = json.load(open(os.path.join(out, "checkpoint-3", "ssft_state.json")))
    assert sum(ck3["match_counts"]) == 3 * 2 * 4 and ck3["global_step"] == 3
    prompt = tok.apply_chat_template(rows[0]["prompt"], tokenize=False, add_generation_prompt=True)
    ids = tok(prompt + "<think2>", add_special_tokens=False, return_tensors="pt")
    assert ids["input_ids"][0, -1].item() == trainer.fork_token_ids[1]
    gen = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert gen.shape[1] > ids["input_ids"].shape[1]

    # resume from checkpoint-3: step count and cumulative match counts continue
    args2 = cpu_args(tmp_path, max_steps=6, save_strategy="steps", save_steps=3, gradient_checkpointing=False)
    resumed = SSFTTrainer(model=tiny_models["tied"], args=args2, train_dataset=Dataset.from_list(rows))
    resumed.train(resume_from_checkpoint=os.path.join(out, "checkpoint-3"))
    assert resumed.state.global_step == 6
    assert sum(resumed.ssft_state()["match_counts"]) == 6 * 2 * 4
    np.testing.assert_array_equal(resumed.ssft_state()["match_counts"], final_counts)
