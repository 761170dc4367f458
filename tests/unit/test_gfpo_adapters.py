"""GFPO's continuation anchor for PEFT adapters (real PEFT, real bitsandbytes 4-bit on CPU): a fresh LoRA is
anchored to the model with its adapter disabled, a continued SSFT adapter to a frozen copy of itself kept as a
second adapter (LoRA matrices and trainable forking-token rows); trl >= 1.15's fused LM head scores through
PEFT's trainable rows exactly. trl 1.9 and 1.16."""

from __future__ import annotations

import pytest
import torch
from test_gfpo import NAMES, fake_generation, group_inputs, make_args, make_trainer, toy  # noqa: F401


def constant(completions, **kwargs):
    return [1.0] * len(completions)


def ssft_adapter(path: str, four_bit: bool = False, trained: bool = True):
    """A PeftModel like an SSFT adapter: LoRA on q/v plus trainable forking-token rows; `trained` moves every
    trainable value (LoRA B and the rows) as SSFT training would. Returns (model, tokenizer, fork ids)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from trl_ssft.tokens import add_trainable_tokens_to_peft_config

    tok = AutoTokenizer.from_pretrained(path)
    kw = {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                    bnb_4bit_compute_dtype=torch.float32)} if four_bit else {}
    base = AutoModelForCausalLM.from_pretrained(path, **kw)
    ids = [tok.convert_tokens_to_ids(n) for n in NAMES]
    cfg = add_trainable_tokens_to_peft_config(LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.1,
                                                         task_type="CAUSAL_LM"), base, ids)
    model = get_peft_model(base, cfg)
    if trained:
        perturb(model, seed=1)
    return model, tok, ids


def perturb(model, seed: int, scale: float = 0.3) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=gen).to(p))


def peft_trainer(toy, tmp_path, model, tok, **kw):  # noqa: F811
    from datasets import Dataset

    from trl_ssft import GFPOTrainer

    return GFPOTrainer(model=model, reward_funcs=kw.pop("reward", constant), args=make_args(tmp_path, **kw),
                       train_dataset=Dataset.from_list(toy[1]), processing_class=tok)


def ref_and_policy(trainer, inputs):
    """(reference, policy) continuation log-probs of one generation batch; the policy scored without dropout (not
    in eval mode: see `trl_ssft.gfpo.anchor.dropout_off`)."""
    from trl_ssft.gfpo.anchor import dropout_off

    trainer.model.train()
    batch = trainer._generate_and_score_completions([dict(x) for x in inputs])
    with torch.no_grad(), dropout_off(trainer.model):
        policy = trainer._gfpo_cont_logps(trainer.model, batch)
    mask = batch["gfpo_cont_mask"].bool()
    return batch["gfpo_ref_cont_logps"][mask], policy[mask]


def flags(model) -> dict:
    return {n: p.requires_grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("which,four_bit", [("untied", False), ("tied", True)])
def test_continued_adapter_is_anchored_to_a_frozen_copy_of_itself(toy, tmp_path, which, four_bit):  # noqa: F811
    """An SSFT adapter (QLoRA: on a 4-bit base; the tied Qwen2 has q/k/v biases) continued by GFPO: the reference is a
    second PEFT adapter holding the starting adapter (LoRA and forking-token rows), so at the start reference ==
    policy; it stays put while the trained adapter moves; PEFT's adapter switching leaves every requires_grad flag as
    it was; the anchor lowers the KL after the trained adapter is pushed away."""
    from trl_ssft.gfpo.anchor import REF_ADAPTER

    model, tok, _ = ssft_adapter(toy[0][which], four_bit=four_bit)
    trainer = peft_trainer(toy, tmp_path, model, tok, gfpo_token_choice="enumerate", gfpo_anchor_coef=1.0,
                           max_steps=8, learning_rate=3e-3, lr_scheduler_type="constant", max_completion_length=8)
    assert trainer._gfpo_ref.kind == "adapter_copy" and REF_ADAPTER in model.peft_config
    ref_params = {n: p.detach().clone() for n, p in model.named_parameters() if REF_ADAPTER in n.split(".")}
    assert any("trainable_tokens_delta" in n for n in ref_params) and not any(
        p.requires_grad for n, p in model.named_parameters() if n in ref_params)
    before = flags(model)
    fake_generation(trainer, lambda p, k: [5 + k % 3, 9, 11, 7])
    ref, policy = ref_and_policy(trainer, group_inputs(toy[1]))
    torch.testing.assert_close(ref, policy, rtol=0, atol=1e-5)
    assert flags(model) == before and model.active_adapter == "default"

    perturb(model, seed=2)  # the trained adapter moves; the reference must not
    ref2, policy2 = ref_and_policy(trainer, group_inputs(toy[1]))
    torch.testing.assert_close(ref2, ref, rtol=0, atol=1e-5)
    assert (policy2 - ref2).abs().max() > 1e-2
    del trainer._generate_single_turn  # real generation from here on
    trainer.train()
    kl = [h["gfpo/anchor_kl"] for h in trainer.state.log_history if "gfpo/anchor_kl" in h]
    assert len(kl) == 8 and kl[0] > 1e-3 and sum(kl[-2:]) < 0.8 * sum(kl[:2]), kl
    for n, p in model.named_parameters():
        if n in ref_params:
            assert torch.equal(p, ref_params[n]), n


def test_fresh_lora_is_anchored_to_the_model_with_its_adapter_disabled(toy, tmp_path):  # noqa: F811
    """A fresh LoRA (TRL's peft_config) on a full SSFT model: the adapter starts as the identity, so the reference is
    the same model with the adapter disabled (no copy, no second adapter); after the LoRA moves, the reference is
    still the starting model's log-probs."""
    from peft import LoraConfig

    trainer = make_trainer(toy, tmp_path, reward=constant, gfpo_token_choice="enumerate", gfpo_anchor_coef=1.0,
                           peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    peft = trainer.model
    assert trainer._gfpo_ref.kind == "adapter_off" and list(peft.peft_config) == ["default"]
    fake_generation(trainer, lambda p, k: [5 + k % 3, 9, 11, 7])
    ref, policy = ref_and_policy(trainer, group_inputs(toy[1]))
    torch.testing.assert_close(ref, policy, rtol=0, atol=1e-5)
    perturb(peft, seed=3)
    ref2, policy2 = ref_and_policy(trainer, group_inputs(toy[1]))
    torch.testing.assert_close(ref2, ref, rtol=0, atol=1e-5)
    assert (policy2 - ref2).abs().max() > 1e-2


def test_adapter_identity_rule():
    """`adapter_is_identity`: a fresh LoRA with forking-token rows is; any trained LoRA B or row is not."""
    from peft import LoraConfig, get_peft_model

    from trl_ssft.demo.synthetic import corpus, make_rows
    from trl_ssft.demo.tiny import build_tiny_model, build_tiny_tokenizer
    from trl_ssft.gfpo.anchor import adapter_is_identity
    from trl_ssft.tokens import add_trainable_tokens_to_peft_config, prepare_fork_tokens

    tok = build_tiny_tokenizer(corpus(make_rows(4, seed=0)))
    base = build_tiny_model(tok, arch="llama", tie_word_embeddings=False)
    ids = prepare_fork_tokens(base, tok, NAMES)
    cfg = add_trainable_tokens_to_peft_config(LoraConfig(r=4, target_modules=["q_proj"]), base, ids)
    model = get_peft_model(base, cfg)
    assert adapter_is_identity(model, "default")
    for part in ("lora_B", "trainable_tokens_delta"):
        name, p = next((n, p) for n, p in model.named_parameters() if part in n)
        with torch.no_grad():
            old = p.clone()
            p[0, 0] += 0.1
        assert not adapter_is_identity(model, "default"), part
        with torch.no_grad():
            p.copy_(old)
    assert adapter_is_identity(model, "default")


def test_fork_rows_keeps_only_the_rows_trainable_around_the_reference(toy, tmp_path):  # noqa: F811
    """`gfpo_trainable: fork_rows` on a continued adapter: switching to the reference adapter and back (PEFT's
    set_adapter marks the active adapter trainable) must not unfreeze the LoRA matrices."""
    model, tok, _ = ssft_adapter(toy[0]["untied"])
    trainer = peft_trainer(toy, tmp_path, model, tok, gfpo_trainable="fork_rows", gfpo_anchor_coef=1.0,
                           weight_decay=0.0)
    trainable = {n for n, f in flags(model).items() if f}
    assert trainable and all("trainable_tokens_delta.default" in n for n in trainable), trainable
    fake_generation(trainer, lambda p, k: [5, 9])
    ref_and_policy(trainer, group_inputs(toy[1]))
    assert {n for n, f in flags(model).items() if f} == trainable


def test_trl_reference_adapter_gets_the_forking_rows(toy, tmp_path):  # noqa: F811
    """beta > 0 with a PeftModel: TRL copies `default` into a `ref` adapter by the pattern '.default.', which misses
    the trainable-token rows; GFPO copies them too, so TRL's KL reference scores the forking tokens as trained."""
    model, tok, _ = ssft_adapter(toy[0]["untied"])
    peft_trainer(toy, tmp_path, model, tok, beta=0.1)
    assert "ref" in model.peft_config
    params = dict(model.named_parameters())
    rows = [n for n in params if n.endswith("trainable_tokens_delta.default")]
    assert rows
    for n in rows:
        original = n.replace("trainable_tokens_delta.default", "trainable_tokens_original.default")
        assert torch.equal(params[n.replace(".default", ".ref")], params[n])
        assert not torch.equal(params[n], dict(model.named_buffers())[original].to(params[n]))


def test_fused_head_scores_through_trainable_rows(toy, tmp_path):  # noqa: F811
    """trl >= 1.15 scores completions through a fused LM head: with PEFT's trainable forking rows (tied and untied)
    it now gives the PEFT model's exact log-probabilities, and the gradient reaches the trained rows."""
    from trl.trainer import grpo_trainer

    from trl_ssft.gfpo.anchor import dropout_off

    if not hasattr(grpo_trainer, "add_fused_lm_head"):
        pytest.skip("this trl has no fused LM head (trl < 1.15)")
    for which in ("untied", "tied"):
        model, tok, ids = ssft_adapter(toy[0][which])
        trainer = peft_trainer(toy, tmp_path, model, tok, gfpo_anchor_coef=1.0, temperature=0.7)
        x = torch.tensor([[5, 6, 7, ids[0], 9, ids[1], 11, 12]])
        mask = torch.ones_like(x)
        with dropout_off(model):  # no LoRA dropout: the two paths must agree exactly
            fused, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, x, mask, 5)
            with torch.no_grad():
                logits = trainer.model(input_ids=x).logits[:, -6:-1].float() / 0.7
        plain = torch.log_softmax(logits, -1).gather(-1, x[:, -5:, None])[..., 0]
        torch.testing.assert_close(fused.detach(), plain, rtol=1e-4, atol=1e-5)
        model.zero_grad()
        fused.sum().backward()
        rows = [p for n, p in model.named_parameters() if n.endswith("trainable_tokens_delta.default")]
        assert rows and all(p.grad is not None and p.grad.abs().sum() > 0 for p in rows), which
