"""The padding-free set loss (`trl_ssft/packed_rows.py`) equals the padded one: loss and every trainable gradient.

Packed rows go through transformers' packed-sequence masks (sdpa, eager) on CPU; flash-attention's
variable-length inputs (``cu_seq_lens``) are checked through a reference variable-length attention registered
with transformers (per-segment causal sdpa driven only by the ``cu_seq_lens`` it receives), since flash-attn
needs a GPU.
"""

import pytest
import torch
from datasets import Dataset

from conftest import cpu_args
from trl_ssft import SSFTConfig, SSFTTrainer
from trl_ssft.demo.synthetic import MODES, make_rows
from trl_ssft.output_head import IGNORE_INDEX, OutputHead
from trl_ssft.packed_rows import PACKED_ATTENTION, pack_budget, packed_attention, packed_row, plan_packs
from trl_ssft.rows import build_rows, sliced_set_loss


def _config_model(impl: str, **cfg):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, **cfg)
    model = Qwen2ForCausalLM(config).eval()
    model.set_attn_implementation(impl)
    return model


def test_plan_packs_first_fit_decreasing_within_budget():
    lengths = [5, 9, 3, 4, 2, 12]
    packs = plan_packs(lengths, 12)
    assert sorted(r for p in packs for r in p) == list(range(6))
    assert packs == [[5], [1, 2], [0, 3, 4]]  # 12 alone (a row over the budget would be alone too); 9 + 3; 5 + 4 + 2
    assert all(sum(lengths[r] for r in p) <= 12 for p in packs)
    assert plan_packs([7, 7], 3) == [[0], [1]]
    # mask-based kernels: L^2 <= budget x longest row (a padded slice's mask bound); flash: the budget itself
    assert pack_budget([10, 4, 4], None, 0, "sdpa") == 10 and pack_budget([10, 4, 4], 40, 0, "sdpa") == 20
    assert pack_budget([10, 4, 4], 40, 0, "flash") == 40 and pack_budget([10, 4, 4], None, 64, "flash") == 64


def test_packed_row_is_the_built_rows_without_padding():
    prompts, traces = [[1, 2, 3], [4, 5]], [[[6, 7], [8]], [[9, 10, 11]]]
    ids, mask, labels = build_rows(prompts, traces, [[0, 1], [1]], fork_ids=[50, 51], fork_loss=True, pad_id=0)
    lengths = mask.sum(-1).tolist()
    row = packed_row(ids, labels, lengths, [2, 0, 1], "sdpa")
    assert row["input_ids"].tolist() == [[4, 5, 51, 9, 10, 11, 1, 2, 3, 50, 6, 7, 1, 2, 3, 51, 8]]
    assert row["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4]]
    assert row["labels"][0].tolist() == [IGNORE_INDEX, IGNORE_INDEX, 51, 9, 10, 11] + [IGNORE_INDEX] * 3 + \
        [50, 6, 7] + [IGNORE_INDEX] * 3 + [51, 8]
    assert "attention_mask" not in row  # transformers builds the packed-sequence mask itself
    flash = packed_row(ids, labels, lengths, [2, 0, 1], "flash")
    assert flash["cu_seq_lens_q"].tolist() == [0, 6, 12, 17] and flash["cu_seq_lens_q"].dtype == torch.int32
    assert flash["max_length_q"] == flash["max_length_k"] == 6


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("sliding", [False, True])
def test_transformers_packed_masks_isolate_segments(impl, sliding):
    """Position ids that restart, no attention mask, no cache: a packed segment's logits equal a separate run
    (also under sliding-window layers). With the default cache on, transformers does not detect the segments."""
    kw = dict(use_sliding_window=True, sliding_window=4, max_window_layers=1) if sliding else {}
    model = _config_model(impl, **kw)
    a, b = torch.randint(0, 100, (1, 7)), torch.randint(0, 100, (1, 6))
    pos = torch.cat([torch.arange(7), torch.arange(6)])[None]
    with torch.no_grad():
        packed = model(input_ids=torch.cat([a, b], 1), position_ids=pos, use_cache=False).logits[:, 7:]
        alone = model(input_ids=b, use_cache=False).logits
        leaky = model(input_ids=torch.cat([a, b], 1), position_ids=pos).logits[:, 7:]  # cache on: no detection
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)
    assert (leaky - alone).abs().max() > 1e-3


def _trainer(path, tmp_path, impl, lora=False, **kw):
    rows = make_rows(4, seed=3, modes=MODES[:4])
    # uneven M, and lengths that differ across questions
    rows[1]["traces"], rows[1]["trace_sources"] = rows[1]["traces"][:2], rows[1]["trace_sources"][:2]
    rows[2]["traces"][0] = rows[2]["traces"][0] + " and then" * 9
    peft = None
    if lora:
        from peft import LoraConfig

        peft = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    args = cpu_args(tmp_path, padding_free=True, ssft_num_fork_tokens=4, ssft_fork_init_noise=1.0,
                    ssft_assignment="random", ssft_logits_chunk_tokens=5, gradient_accumulation_steps=2,
                    model_init_kwargs={"attn_implementation": impl}, **kw)
    return SSFTTrainer(model=path, args=args, train_dataset=Dataset.from_list(rows), peft_config=peft)


def _ga_step(trainer, packing):
    """Loss and trainable gradients of one GA window of 2 micro-batches, through `Trainer.training_step`."""
    trainer.ssft_packing = packing
    trainer.ssft_loss_counts.clear()
    model = trainer.model
    model.zero_grad()
    feats = [trainer.train_dataset[i] for i in range(4)]
    batches = [trainer.data_collator(feats[:2]), trainer.data_collator(feats[2:])]
    batches, num_items = trainer.get_batch_samples(iter(batches), 2, trainer.args.device)
    loss = sum(float(trainer.training_step(model, b, num_items)) for b in batches)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss, grads, dict(trainer.ssft_loss_counts)


CASES = [  # model, attention, LoRA, set-loss slice budget (None: automatic), forking-token layout
    ("tied", "sdpa", False, 10_000, "bare"),
    ("untied", "eager", False, 160, "released"),  # the token inside the released checkpoints' text span
    ("tied", "eager", True, None, "bare"),
    ("untied", "sdpa", True, 10_000, "bare"),
]


@pytest.mark.parametrize("model,impl,lora,budget,layout", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_padding_free_loss_and_gradients_equal_padded(tiny_models, tmp_path, model, impl, lora, budget, layout):
    trainer = _trainer(tiny_models[model], tmp_path, impl, lora, ssft_loss_slice_tokens=budget,
                       ssft_fork_layout=layout)
    assert len(trainer.ssft_layout.before) + len(trainer.ssft_layout.after) > 0 or layout == "bare"
    assert trainer.ssft_packing == impl and trainer.model.config._attn_implementation == impl
    ref_loss, ref, padded = _ga_step(trainer, None)
    loss, got, packed = _ga_step(trainer, impl)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    assert got.keys() == ref.keys() and len(got) > 0
    if lora:  # the forking-token rows train next to the adapter
        assert any("trainable_tokens" in n for n in got)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], atol=2e-6, rtol=1e-4, msg=name)
    assert any(g.abs().sum() > 0 for g in got.values())
    assert packed["fed"] == packed["tokens"] == padded["tokens"]  # no padding fed
    if budget == 10_000:  # everything in one slice: padded rows pad, the packed row does not
        assert padded["fed"] > padded["tokens"] and packed["slices"] == padded["slices"] == 2


def test_varlen_inputs_reach_attention(tiny_models, tmp_path):
    """flash-attention's path: the ``cu_seq_lens`` / ``max_length`` inputs reach the attention function and
    delimit the segments (a reference variable-length attention sees only them); loss and gradients equal
    the padded sdpa rows."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    seen = []

    def varlen_reference(module, query, key, value, attention_mask, scaling=None, **kw):
        assert attention_mask is None
        cu = kw["cu_seq_lens_q"].tolist()
        seen.append((cu, kw["max_length_q"]))
        out = [sdpa_attention_forward(module, query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], None,
                                      is_causal=True, scaling=scaling)[0] for s, e in zip(cu[:-1], cu[1:])]
        return torch.cat(out, 1), None

    AttentionInterface.register("ssft_varlen_reference", varlen_reference)
    trainer = _trainer(tiny_models["untied"], tmp_path, "sdpa", ssft_loss_slice_tokens=10_000)
    prompts, traces = trainer._unpack(trainer.data_collator([trainer.train_dataset[i] for i in range(3)]))
    rows = build_rows(prompts, traces, [list(range(len(t))) for t in traces], trainer.fork_token_ids, False, 0)
    model, head = trainer.model, OutputHead(trainer.model)
    results = []
    for packing in (None, "flash"):
        model.set_attn_implementation("sdpa" if packing is None else "ssft_varlen_reference")
        model.zero_grad()
        loss = sliced_set_loss(model, head, *rows, denom=100.0, slice_tokens=10_000, chunk_tokens=4,
                               packing=packing)
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert seen and all(len(cu) > 2 and m == max(b - a for a, b in zip(cu[:-1], cu[1:])) for cu, m in seen)
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-6)
    for name, g in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], g, atol=2e-6, rtol=1e-4, msg=name)


def test_what_cannot_be_exact_is_refused(tiny_models, tmp_path):
    with pytest.raises(ValueError, match=r"attn_implementation='flex_attention'.*flash-attention.*sdpa and eager"):
        packed_attention(_config_model("flex_attention"))
    model = _config_model("sdpa")
    model.config.layer_types = ["full_attention", "linear_attention"]
    with pytest.raises(ValueError, match=r"layers are all full or sliding-window attention.*linear_attention"):
        packed_attention(model)
    with pytest.raises(ValueError, match=r"packing=True.*asks for packed rows but ssft_padding_free is false"):
        cpu_args(tmp_path, packing=True, ssft_padding_free=False)
    with pytest.raises(ValueError, match=r"attn_implementation='flex_attention'"):  # before training starts
        _trainer(tiny_models["tied"], tmp_path, "flex_attention")
    assert set(PACKED_ATTENTION) == {"flash", "sdpa", "eager"}


@pytest.mark.parametrize("flags,request_text", [
    ({"packing": True}, "packing=True (packing_strategy='bfd')"),
    ({"padding_free": True}, "padding_free=True"),
    ({"ssft_padding_free": True}, ""),
    ({}, None),
])
def test_config_maps_trl_packing_to_padding_free_rows(tmp_path, flags, request_text):
    args = SSFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], **flags)
    assert args.ssft_padding_free is (request_text is not None)
    assert not args.packing and not args.padding_free  # TRL's own packing / flattening collator stays off
    assert args.ssft_packing_request == (request_text or "")
    assert "ssft_packing_request" not in args.to_dict()


def test_trainer_trains_padding_free(tiny_models, tmp_path, capsys):
    """SSFTTrainer with TRL's `padding_free=True` or `packing=True` trains on packed rows (no padding fed),
    announces it, and logs the padded run's step-1 loss and grad norm."""
    rows = make_rows(4, seed=5)
    logs = {}
    for name, kw in (("padded", {}), ("padding_free", {"padding_free": True}), ("packing", {"packing": True})):
        args = cpu_args(tmp_path / name, max_steps=1, ssft_num_fork_tokens=4, ssft_loss_slice_tokens=4096,
                        per_device_train_batch_size=4, model_init_kwargs={"attn_implementation": "sdpa"}, **kw)
        trainer = SSFTTrainer(model=tiny_models["tied"], args=args, train_dataset=Dataset.from_list(rows))
        trainer.train()
        logs[name] = (next(h for h in trainer.state.log_history if "loss" in h), dict(trainer.ssft_loss_counts))
    out = capsys.readouterr().out
    padded, pad_layout = logs.pop("padded")
    for flag, (packed, pack_layout) in logs.items():
        assert f"SSFT packing ({flag}=True" in out
        assert pack_layout["fed"] == pack_layout["tokens"] < pad_layout["fed"]
        assert packed["loss"] == pytest.approx(padded["loss"], rel=1e-5)
        assert packed["grad_norm"] == pytest.approx(padded["grad_norm"], rel=1e-4)
    assert "the set loss runs padding-free" in out and "sdpa with transformers'" in out
    assert "SSFT packing: first micro-batch: 16 matched rows" in out
