"""Recipe kernels against SSFT's two passes, on CPU where the kernels' code runs here.

- Axolotl's LoRA kernels (`lora_qkv_kernel`, `lora_o_kernel`: plain-torch autograd functions; `lora_mlp_kernel` is
  Triton, GPU only): with the forking-token rows as PEFT trainable tokens, the set loss, every gradient and the
  matching costs equal the unpatched model's, and the rows change after a step (tied and untied heads).
- Liger's fused linear cross-entropy patches the model's forward; SSFT calls it without labels, so it projects
  through the output module (intercepted by SSFT's chunked head): same loss, gradients and costs, and the fused
  loss (which would read `lm_head.weight` and skip PEFT's rows) is never called.
- A process-wide replacement of `torch.nn.functional.cross_entropy` (what Liger's `cross_entropy` patch does for
  most model types) is what SSFT's chunked head calls, in both passes.
"""

from __future__ import annotations

import contextlib
import copy
import sys

import pytest
import torch

from trl_ssft.output_head import OutputHead
from trl_ssft.rows import build_rows, rows_nll_sum
from trl_ssft.scoring import ScoringOptions, cost_matrices
from trl_ssft.tokens import add_trainable_tokens_to_peft_config, prepare_fork_tokens

pytestmark = pytest.mark.axolotl  # Axolotl's kernels and Liger come with the axolotl extra

NAMES = [f"<think{i}>" for i in range(1, 5)]
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _peft_pair(path: str):
    """(patched-to-be PEFT model, reference copy with equal weights, forking ids): LoRA with random B, fork rows."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids = prepare_fork_tokens(model, AutoTokenizer.from_pretrained(path), NAMES, noise=1.0, seed=0)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LINEAR, init_lora_weights=False,
                     task_type="CAUSAL_LM")
    cfg = add_trainable_tokens_to_peft_config(cfg, model, ids)
    ref = get_peft_model(copy.deepcopy(model), copy.deepcopy(cfg))
    peft = get_peft_model(model, cfg)
    ref.load_state_dict(peft.state_dict())
    return peft, ref, ids


def _batch(fork_ids, vocab=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(4, vocab, (n,), generator=g).tolist() for n in (6, 9)]
    traces = [[torch.randint(4, vocab, (n,), generator=g).tolist() for n in lens] for lens in ((7, 12, 5), (10, 4))]
    return prompts, traces, build_rows(prompts, traces, [[0, 1, 2], [3, 1]], fork_ids, True, 0)


def _loss_grads_costs(model, fork_ids, prompts, traces, rows):
    model.train()
    model.zero_grad()
    loss = rows_nll_sum(model, OutputHead(model), *rows, chunk_tokens=8)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    costs, _ = cost_matrices(model, prompts, traces, fork_ids, match_tokens=6, max_tokens=64, pad_token_id=0,
                             options=ScoringOptions(share_prefix=True, logits_chunk_tokens=8))
    return loss.item(), grads, costs


@contextlib.contextmanager
def _lora_kernels(base_path: str, model, ref, **flags):
    """Axolotl's own patch (`patch_self_attn_lora` + `apply_lora_kernel_patches`) on `model`; `ref` gets the same
    class rewrite with every kernel off (its original projections). The class patch is undone afterwards."""
    from axolotl.monkeypatch.lora_kernels import apply_lora_kernel_patches, get_attention_cls_from_config
    from axolotl.monkeypatch.lora_kernels import patch_self_attn_lora
    from axolotl.utils.dict import DictDefault

    cfg = DictDefault(base_model=base_path, **flags)
    cls = get_attention_cls_from_config(cfg)
    saved = cls.forward
    try:
        patch_self_attn_lora(cfg)
        apply_lora_kernel_patches(model, cfg)
        apply_lora_kernel_patches(ref, DictDefault(base_model=base_path))
        yield
    finally:
        cls.forward = saved
        if "_original_forward" in cls.__dict__:
            del cls._original_forward


@pytest.mark.parametrize("head", ["tied", "untied"])
def test_lora_kernels_keep_forking_rows_training(tiny_models, head):
    model, ref, fork_ids = _peft_pair(tiny_models[head])
    flags = dict(lora_qkv_kernel=True, lora_o_kernel=True, lora_mlp_kernel=False, lora_embedding_kernel=True)
    with _lora_kernels(tiny_models[head], model, ref, **flags):
        attn = model.base_model.model.model.layers[0].self_attn
        assert attn.apply_qkv.__func__.__name__ == "apply_lora_qkv" and attn.apply_o.__func__.__name__ == "apply_lora_o"
        embed = model.base_model.model.model.embed_tokens
        assert type(embed).__name__ == "TrainableTokensWrapper" and "forward" not in embed.__dict__
        prompts, traces, rows = _batch(fork_ids)
        loss, grads, costs = _loss_grads_costs(model, fork_ids, prompts, traces, rows)
        ref_loss, ref_grads, ref_costs = _loss_grads_costs(ref, fork_ids, prompts, traces, rows)
        assert loss == pytest.approx(ref_loss, rel=1e-6)
        assert grads.keys() == ref_grads.keys()
        for k in grads:
            torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-4, atol=1e-5)
        for c, r in zip(costs, ref_costs):
            torch.testing.assert_close(torch.from_numpy(c), torch.from_numpy(r), rtol=1e-5, atol=1e-6)
        rows_ = {k: p for k, p in model.named_parameters() if "trainable_tokens_delta" in k}
        assert len(rows_) == (1 if head == "tied" else 2)
        before = {k: p.detach().clone() for k, p in rows_.items()}
        torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
        for k, p in rows_.items():
            assert (p.detach() - before[k]).abs().amax(dim=1).gt(0).all(), f"{k}: forking rows did not move"


def _liger_patch_forward(model) -> str:
    """Liger's own instance patch, fused linear cross-entropy only (its module kernels are Triton); returns the
    module of the patched forward."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    _apply_liger_kernel_to_instance(model=base, rope=False, rms_norm=False, swiglu=False, cross_entropy=False,
                                    fused_linear_cross_entropy=True)
    assert "forward" in base.__dict__
    return base.forward.__func__.__module__


@pytest.mark.parametrize("head", ["tied", "untied"])
def test_liger_fused_loss_patch_is_bypassed_exactly(tiny_models, monkeypatch, head):
    model, ref, fork_ids = _peft_pair(tiny_models[head])
    module = sys.modules[_liger_patch_forward(model)]

    def fused_loss(*a, **k):
        raise AssertionError("Liger's fused loss was called")

    monkeypatch.setattr(module, "LigerForCausalLMLoss", fused_loss)
    prompts, traces, rows = _batch(fork_ids, seed=1)
    loss, grads, costs = _loss_grads_costs(model, fork_ids, prompts, traces, rows)
    ref_loss, ref_grads, ref_costs = _loss_grads_costs(ref, fork_ids, prompts, traces, rows)
    assert loss == ref_loss
    for k in grads:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=0, atol=0)
    for c, r in zip(costs, ref_costs):
        assert (c == r).all()
    ids, mask, labels = rows
    with pytest.raises(AssertionError, match="fused loss was called"):  # with labels it would have been used
        model(input_ids=ids, attention_mask=mask, labels=labels)


def test_process_wide_cross_entropy_is_what_the_chunked_head_calls(tiny_models, monkeypatch):
    import torch.nn.functional as F

    from trl_ssft.recipe_options import KEPT, NOT_APPLIED, OPTIONS

    model, _, fork_ids = _peft_pair(tiny_models["untied"])
    prompts, traces, rows = _batch(fork_ids, seed=2)
    want = _loss_grads_costs(model, fork_ids, prompts, traces, rows)
    calls = []
    original = F.cross_entropy

    def counting(*a, **k):
        calls.append(k.get("reduction"))
        return original(*a, **k)

    monkeypatch.setattr(F, "cross_entropy", counting)
    got = _loss_grads_costs(model, fork_ids, prompts, traces, rows)
    assert got[0] == want[0] and all((a == b).all() for a, b in zip(got[2], want[2]))
    assert "sum" in calls and "none" in calls  # the set loss's chunks and the matching pass's rows
    row = next(o for o in OPTIONS if o.key == "liger_cross_entropy")
    assert row.resolve()[0] == NOT_APPLIED
    from liger_kernel.transformers.functional import liger_cross_entropy

    monkeypatch.setattr(F, "cross_entropy", liger_cross_entropy)  # what Liger's patch installs (not called here)
    assert row.resolve()[0] == KEPT

