"""bf16, the dtype of every GPU recipe, on CPU: bf16 weights, and fp32 weights under bf16 autocast.

Against the fp32 run with the same weights and batch: the matching costs and the set loss agree within bf16's
tolerance, the assignments are equal wherever fp32's margin is clear (several times the bf16 cost error), the
trainable parameters get finite gradients of their own dtype, and the chunked output head raises no dtype error.
Full fine-tuning, LoRA with the forking rows as PEFT trainable tokens, QLoRA (NF4 with bf16 compute) and GFPO's
loss. The toy questions have short traces and forking-token rows scaled up, so the token changes the cost a lot.
"""

from __future__ import annotations

import contextlib
from itertools import permutations

import numpy as np
import pytest
import torch
from datasets import Dataset

from conftest import cpu_args
from trl_ssft import SSFTTrainer
from trl_ssft.demo.synthetic import make_rows

BF16 = torch.bfloat16
COST_ATOL, LOSS_RTOL = 0.08, 0.02  # bf16 keeps 8 bits of mantissa: ~0.4 % per rounding, costs of ~6 nats


def _margin(cost: np.ndarray) -> tuple[tuple[int, ...], float]:
    """(best assignment, second-best total - best total) over every injective map traces -> tokens."""
    n, m = cost.shape
    totals = sorted((float(sum(cost[p[j], j] for j in range(m))), p) for p in permutations(range(n), m))
    return totals[0][1], (totals[1][0] - totals[0][0]) if len(totals) > 1 else np.inf


def _trainer(path, tmp_path, *, peft=False, quant=None, dtype=torch.float32, **kw):
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    extra = {}
    if quant is not None:  # NF4 weights, `quant` the compute dtype (and the dtype of the other weights)
        extra["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                          bnb_4bit_compute_dtype=quant)
        model = path
        kw["model_init_kwargs"] = {"dtype": str(quant).split(".")[-1]}
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if peft:
        extra["peft_config"] = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    rows = [{"prompt": r["prompt"], "traces": [t.split(":")[0] for t in r["traces"]]} for r in make_rows(8, seed=3)]
    args = cpu_args(tmp_path, ssft_num_fork_tokens=4, ssft_fork_init_noise=1.0, ssft_match_tokens=4,
                    ssft_logits_chunk_tokens=5, **kw)
    trainer = SSFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), **extra)
    with torch.no_grad():  # forking rows far apart: the token decides much of a short trace's cost
        for w in {id(m.weight): m.weight for m in (trainer.model.get_input_embeddings(),)}.values():
            w[trainer.fork_token_ids] *= 4
    return trainer


def _step(trainer, autocast=False):
    """(costs, loss, grads) of the first 4 questions; one forward + backward of the set loss."""
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    prompts, traces = trainer._unpack(batch)
    ctx = torch.autocast("cpu", dtype=BF16) if autocast else contextlib.nullcontext()
    trainer.model.train()
    trainer.model.zero_grad(set_to_none=True)
    with ctx:
        costs = trainer.ssft_cost_matrices(prompts, traces)
        loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad for n, p in trainer.model.named_parameters() if p.requires_grad}
    return costs, loss.detach(), grads


def _compare(ref, got):
    (c32, l32, _), (c16, l16, g16) = ref, got
    assert l16.dtype == torch.float32 and torch.isfinite(l16)  # the chunked head reduces in fp32
    assert float(l16) == pytest.approx(float(l32), rel=LOSS_RTOL)
    err = max(float(np.abs(a - b).max()) for a, b in zip(c16, c32))
    assert err < COST_ATOL, f"bf16 costs differ from fp32 by {err}"
    clear = 0
    for a, b in zip(c32, c16):
        best, margin = _margin(a)
        if margin > 4 * err:
            clear += 1
            assert _margin(b)[0] == best, f"assignment changed at fp32 margin {margin:.3f} (bf16 error {err:.3f})"
    assert clear >= 3, "the toy must have clear margins"
    for n, g in g16.items():
        assert g is not None and torch.isfinite(g.float()).all(), n


@pytest.fixture(scope="module")
def fp32(tiny_models, tmp_path_factory):
    """The fp32 trainers (built once): full fine-tuning per head, LoRA on the untied head."""
    cache = {}

    def get(head, peft=False):
        if (head, peft) not in cache:
            cache[head, peft] = _trainer(tiny_models[head], tmp_path_factory.mktemp("fp32"), peft=peft)
        return cache[head, peft]

    return get


@pytest.mark.parametrize("head", ["tied", "untied"])
def test_full_finetune_bf16_weights(tiny_models, tmp_path, fp32, head):
    got = _step(_trainer(tiny_models[head], tmp_path, dtype=BF16))
    assert {g.dtype for g in got[2].values()} == {BF16}
    _compare(_step(fp32(head)), got)


def test_full_finetune_fp32_weights_under_autocast(fp32):
    trainer = fp32("untied")
    ref = _step(trainer)
    got = _step(trainer, autocast=True)
    assert {g.dtype for g in got[2].values()} == {torch.float32}
    _compare(ref, got)


def test_lora_bf16_weights(tiny_models, tmp_path, fp32):
    got = _step(_trainer(tiny_models["untied"], tmp_path, peft=True, dtype=BF16))
    rows = [n for n in got[2] if "trainable_tokens_delta" in n]
    assert len(rows) == 2 and all(got[2][n].abs().sum() > 0 for n in rows)  # embed_tokens and lm_head rows
    _compare(_step(fp32("untied", peft=True)), got)


def test_qlora_bf16_compute(tiny_models, tmp_path):
    """The same NF4 weights with fp32 and with bf16 compute dtype."""
    ref = _trainer(tiny_models["untied"], tmp_path / "a", peft=True, quant=torch.float32)
    trainer = _trainer(tiny_models["untied"], tmp_path / "b", peft=True, quant=BF16)
    assert any(type(m).__name__ == "Linear4bit" for m in trainer.model.modules())
    got = _step(trainer)
    assert trainer.model.get_input_embeddings().weight.dtype == BF16
    _compare(_step(ref), got)


def test_bf16_training_run(tiny_models, tmp_path):
    """The real path: `bf16=True` (accelerate's CPU autocast) for two optimizer steps, loss finite."""
    trainer = _trainer(tiny_models["tied"], tmp_path, bf16=True, max_steps=2, learning_rate=1e-2)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_gfpo_loss_bf16(tmp_path):
    """GFPO's policy-gradient loss at the forking token: bf16 weights against fp32, the same rollouts."""
    from transformers import AutoModelForCausalLM

    from trl_ssft.demo.synthetic import corpus
    from trl_ssft.demo.tiny import build_tiny_model, build_tiny_tokenizer
    from trl_ssft.tokens import prepare_fork_tokens

    rows = make_rows(8, seed=0)
    tok = build_tiny_tokenizer(corpus(rows))
    model = build_tiny_model(tok, arch="llama", tie_word_embeddings=False)
    prepare_fork_tokens(model, tok, [f"<think{i}>" for i in range(1, 5)], noise=1.0)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    data = [{"prompt": r["prompt"][0]["content"], "answer": r["answer"]} for r in rows]

    def reward(completions, gfpo_fork_index, **kw):  # depends on the token only: advantages are not all zero
        return [float(i % 2) for i in gfpo_fork_index]

    out = []
    for dtype in (torch.float32, BF16):
        from trl_ssft import GFPOConfig, GFPOTrainer

        args = GFPOConfig(output_dir=str(tmp_path / str(dtype)), bf16=False, use_cpu=True, report_to=[],
                          per_device_train_batch_size=8, num_generations=4, max_completion_length=4, seed=0,
                          gfpo_token_choice="enumerate", disable_tqdm=True)
        trainer = GFPOTrainer(model=AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=dtype),
                              reward_funcs=reward, args=args, train_dataset=Dataset.from_list(data))
        trainer._generate_single_turn = lambda prompt_ids, *a, **k: ([[7, 8, 9] for _ in prompt_ids], None)
        trainer.current_gradient_accumulation_steps = 1
        trainer.model.train()
        batch = trainer._generate_and_score_completions([dict(data[k // 4]) for k in range(8)])
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        grad = torch.cat([p.grad.float().flatten() for p in trainer.model.parameters() if p.grad is not None])
        out.append((float(loss), grad, batch["advantages"]))
    (l32, g32, a32), (l16, g16, a16) = out
    assert torch.equal(a32, a16) and a32.abs().sum() > 0
    assert torch.isfinite(g16).all() and l16 == pytest.approx(l32, abs=0.02)
    assert float(torch.nn.functional.cosine_similarity(g16, g32, dim=0)) > 0.99
