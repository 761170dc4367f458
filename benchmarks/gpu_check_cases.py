"""The checks of `benchmarks/gpu_check.py` (see its docstring): one function per check, `CHECKS` in running order.

Each takes the run's `Context` and returns its figures (pass), raises `Skip` (cannot run here: the reason says
what is missing) or raises anything else (fail). Shapes: real ones on a GPU (Qwen2.5-7B for ``qlora_7b``,
Qwen2.5-0.5B's layers for the others), tiny ones with --dry-run.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import subprocess
import sys
from itertools import permutations

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
FORKS = [f"<think{i}>" for i in range(1, 7)]


# ----------------------------------------------------------------------------------------------- shared pieces
class Skip(Exception):
    """A check that cannot run here (a package or the GPU is missing); the message says what to carry."""


def need(*modules: str) -> None:
    """Skip unless every module imports (the GPU machine lacks trl, datasets, bitsandbytes, liger, vllm...)."""
    missing = [m for m in modules if not importlib_ok(m)]
    if missing:
        raise Skip(f"not installed: {', '.join(missing)} (carry wheels: scripts/gpu_check.sh)")


def small_model(ctx, tied: bool = True, attn: str = "sdpa", seed: int = 0):
    """(model, tokenizer, forking ids): Qwen2 with `ctx.small_arch()`, random weights, the 6 forking tokens."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from trl_ssft.demo.tiny import build_word_tokenizer
    from trl_ssft.tokens import prepare_fork_tokens

    arch = ctx.small_arch()
    tok = build_word_tokenizer(arch["vocab_size"])
    cfg = Qwen2Config(**arch, tie_word_embeddings=tied, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=None, max_position_embeddings=32768)
    cfg._attn_implementation = attn
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=ctx.dtype).to(ctx.device)
    ids = prepare_fork_tokens(model, tok, FORKS, noise=1.0, seed=seed)
    return model, tok, ids


def questions(ctx, vocab: int, n_q: int = 4, m: int = 4, seed: int = 0):
    """Random prompts [n_q][P] and traces [n_q][m][L] of varied lengths (padding in every batch)."""
    g = np.random.default_rng(seed)
    p_len, t_len = ((5, 12), (6, 20)) if ctx.dry_run else ((100, 300), (200, 1200))
    prompts = [g.integers(4, vocab - 8, g.integers(*p_len)).tolist() for _ in range(n_q)]
    traces = [[g.integers(4, vocab - 8, g.integers(*t_len)).tolist() for _ in range(m)] for _ in range(n_q)]
    return prompts, traces


def margin(cost: np.ndarray) -> tuple[tuple[int, ...], float]:
    """(best assignment, second-best total - best total) over every injective map traces -> tokens."""
    n, m = cost.shape
    totals = sorted((float(sum(cost[p[j], j] for j in range(m))), p) for p in permutations(range(n), m))
    return totals[0][1], totals[1][0] - totals[0][0]


def ssft_passes(model, fork_ids, prompts, traces, *, grad: bool = False, chunk: int = 256) -> dict:
    """The matching pass (costs, share_prefix as the trainer uses it) and the set loss of the best assignments."""
    from trl_ssft.output_head import OutputHead
    from trl_ssft.rows import build_rows, rows_nll_sum
    from trl_ssft.scoring import ScoringOptions, cost_matrices

    dev = next(model.parameters()).device
    model.eval()
    costs, _ = cost_matrices(model, prompts, traces, fork_ids, match_tokens=64, max_tokens=16384, pad_token_id=0,
                             device=dev, options=ScoringOptions(logits_chunk_tokens=chunk))
    assign = [list(margin(c)[0]) for c in costs]
    rows = [x.to(dev) for x in build_rows(prompts, traces, assign, fork_ids, False, 0)]
    model.train(grad)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with torch.enable_grad() if grad else torch.no_grad():
        total = rows_nll_sum(model, OutputHead(model), *rows, chunk_tokens=chunk)
        loss = total / int((rows[2][:, 1:] != -100).sum())
        if grad:
            loss.backward()
    peak = torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else None
    return {"costs": costs, "assign": assign, "loss": float(loss), "peak_gb": peak}


def agree(ref: dict, got: dict, cost_tol: float, loss_rtol: float) -> dict:
    """Costs within `cost_tol`, assignments equal where the reference's margin is 4x the cost error, loss close."""
    err = max(float(np.abs(a - b).max()) for a, b in zip(ref["costs"], got["costs"]))
    assert err <= cost_tol, f"costs differ by {err:.4f} > {cost_tol}"
    clear = [margin(c)[1] > 4 * err for c in ref["costs"]]
    same = [a == b for a, b, c in zip(ref["assign"], got["assign"], clear) if c]
    assert all(same), f"assignments differ on {same.count(False)} of {len(same)} clear questions"
    rel = abs(got["loss"] - ref["loss"]) / abs(ref["loss"])
    assert rel <= loss_rtol, f"set loss differs by {rel:.2%}"
    return {"cost_max_abs_diff": err, "clear_questions": sum(clear), "loss_rel_diff": rel,
            "loss": got["loss"], "loss_ref": ref["loss"], "peak_gb": got["peak_gb"], "peak_gb_ref": ref["peak_gb"]}


# ----------------------------------------------------------------------------------------------- the checks
def qlora_7b(ctx) -> dict:
    """`benchmarks/memory_gpu.py`'s two cases (SSFT M=4 x 8k; TRL SFT one 8k trace) under a 24 GB cap."""
    need("trl", "peft", "bitsandbytes", "datasets")
    from memory import ARCHS
    from memory_gpu import ensure_checkpoint

    arch = ARCHS["qwen2.5-7b"] if not ctx.dry_run else dict(ctx.small_arch(), vocab_size=600)
    path = os.path.join(ctx.work_dir, "qwen7b-random" if not ctx.dry_run else "tiny-random")
    ensure_checkpoint(path, arch["vocab_size"], arch)
    out = {}
    for case, m in (("sft", 1), ("hungarian", 4)):
        spec = dict(case=case, L=8192 if not ctx.dry_run else 24, M=m, cap_gb=24.0, steps=1, attn="sdpa",
                    optim="paged_adamw_8bit" if ctx.cuda else "adamw_torch", path=path, work_dir=ctx.work_dir,
                    device=ctx.device, ssft={"ssft_match_tokens": 1000 if not ctx.dry_run else 8})
        proc = subprocess.run([sys.executable, os.path.join(HERE, "memory_gpu.py"), "--one", json.dumps(spec)],
                              capture_output=True, text=True, timeout=300)
        line = next((x for x in reversed(proc.stdout.splitlines()) if x.startswith("RESULT ")), None)
        r = json.loads(line[7:]) if line else {"error": proc.stderr[-1500:]}
        assert "error" not in r, f"{case}: {r['error']}"
        out[case] = {k: r[k] for k in ("peak_allocated_gb", "peak_reserved_gb", "step_s", "trainable_params")}
    if ctx.cuda:
        out["peak_ratio_ssft_to_sft"] = out["hungarian"]["peak_allocated_gb"] / out["sft"]["peak_allocated_gb"]
        out["time_ratio_ssft_to_sft"] = out["hungarian"]["step_s"] / out["sft"]["step_s"]
    return out


def attention(ctx) -> dict:
    """flash-attention 2 against sdpa (--dry-run: sdpa against eager) on the same weights, prompts shared."""
    pair = ("sdpa", "flash_attention_2") if ctx.cuda else ("eager", "sdpa")
    if ctx.cuda:
        need("flash_attn")
    ref_model, tok, ids = small_model(ctx, attn=pair[0])
    model = copy.deepcopy(ref_model)
    model.set_attn_implementation(pair[1])
    prompts, traces = questions(ctx, len(tok) - len(FORKS))
    ref, got = ssft_passes(ref_model, ids, prompts, traces), ssft_passes(model, ids, prompts, traces)
    tol = (0.05, 0.01) if ctx.cuda else (1e-4, 1e-5)
    return {"pair": pair, **agree(ref, got, *tol)}


@contextlib.contextmanager
def _spy(module, name: str, calls: list):
    """Count the calls of `module.name` (still calling it)."""
    original = getattr(module, name)

    def counting(*a, **k):
        calls.append(name)
        return original(*a, **k)

    setattr(module, name, counting)
    try:
        yield
    finally:
        setattr(module, name, original)


def _fused_case(ctx, patch, loss_fn: str) -> dict:
    """A patched copy against the plain model (run first: some patches are module-wide): same costs / loss, the
    fused loss never called by SSFT (but by a labelled forward), no higher set-loss peak. `patch(model)` returns
    the module of the patched forward, where `loss_fn` lives."""
    ref_model, tok, ids = small_model(ctx)
    model = copy.deepcopy(ref_model)
    prompts, traces = questions(ctx, len(tok) - len(FORKS), seed=1)
    ref = ssft_passes(ref_model, ids, prompts, traces, grad=True)
    module = patch(model)
    calls: list = []
    with _spy(sys.modules[module], loss_fn, calls):
        got = ssft_passes(model, ids, prompts, traces, grad=True)
        assert not calls, f"{loss_fn} was called by SSFT's passes"
        if ctx.cuda:  # with labels the fused loss runs: the spy is live
            x = torch.tensor([prompts[0] + traces[0][0]], device=ctx.device)
            model.train()
            model(input_ids=x, labels=x)
            assert calls, f"{loss_fn} not reached by a labelled forward"
    res = agree(ref, got, *((0.08, 0.02) if ctx.cuda else (1e-5, 1e-6)))
    if ctx.cuda:
        assert got["peak_gb"] <= 1.1 * ref["peak_gb"], "the patched forward raised the set-loss peak"
    return res


def fused_losses(ctx) -> dict:
    """Liger (module kernels + FLCE; then the process-wide cross-entropy) and Cut Cross Entropy (decision: the
    fused losses are not used by SSFT, the module kernels are; trl_ssft/recipe_options.py)."""
    from transformers.models.qwen2 import modeling_qwen2

    out, ran = {}, False
    module_wide = dict(vars(modeling_qwen2))  # Liger's rope / class patches are module-wide: undone below
    if importlib_ok("liger_kernel"):
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        def liger(model):
            kernels = dict(rope=ctx.cuda, rms_norm=ctx.cuda, swiglu=ctx.cuda)  # Triton: GPU only
            _apply_liger_kernel_to_instance(model=model, cross_entropy=False, fused_linear_cross_entropy=True, **kernels)
            return model.forward.__func__.__module__

        out["liger_flce"] = _fused_case(ctx, liger, "LigerForCausalLMLoss")
        ran = True
        if ctx.cuda:
            out["liger_cross_entropy"] = _liger_ce(ctx)
    else:
        out["liger"] = "skip: liger_kernel not installed"
    if ctx.cuda and importlib_ok("cut_cross_entropy.transformers"):
        from cut_cross_entropy.transformers import cce_patch

        out["cce"] = _fused_case(ctx, lambda m: cce_patch(m).forward.__func__.__module__, "apply_lce")
        ran = True
    else:
        out["cce"] = "skip: " + ("Triton/CUDA only" if not ctx.cuda else "cut_cross_entropy not installed")
    vars(modeling_qwen2).update(module_wide)
    if not ran:
        raise Skip(f"nothing to compose: {out}")
    return out


def _liger_ce(ctx) -> dict:
    """Liger's cross-entropy installed process-wide: SSFT's chunked head computes with it (status `kept`)."""
    import torch.nn.functional as F
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    from trl_ssft.recipe_options import KEPT, OPTIONS

    original = F.cross_entropy
    ref_model, tok, ids = small_model(ctx)
    prompts, traces = questions(ctx, len(tok) - len(FORKS), seed=2)
    ref = ssft_passes(ref_model, ids, prompts, traces, grad=True)
    try:
        _apply_liger_kernel_to_instance(model=copy.deepcopy(ref_model), rope=False, rms_norm=False, swiglu=False,
                                        cross_entropy=True, fused_linear_cross_entropy=False)
        row = next(o for o in OPTIONS if o.key == "liger_cross_entropy")
        assert row.resolve()[0] == KEPT, "Liger did not replace torch's cross_entropy"
        got = ssft_passes(ref_model, ids, prompts, traces, grad=True)
    finally:
        F.cross_entropy = original
    return agree(ref, got, 0.02, 0.01)


def importlib_ok(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def lora_kernels(ctx) -> dict:
    """Axolotl's LoRA kernels with the forking rows as PEFT trainable tokens (GPU: QKV, O and the Triton MLP)."""
    need("axolotl", "peft")
    from axolotl.monkeypatch.lora_kernels import (apply_lora_kernel_patches, get_attention_cls_from_config,
                                                  patch_self_attn_lora)
    from axolotl.utils.dict import DictDefault
    from peft import LoraConfig, get_peft_model

    from trl_ssft.tokens import add_trainable_tokens_to_peft_config

    base, tok, ids = small_model(ctx, tied=False)
    path = os.path.join(ctx.work_dir, "lora-base")
    base.save_pretrained(path)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM", init_lora_weights=False,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    lora = add_trainable_tokens_to_peft_config(lora, base, ids)
    ref = get_peft_model(copy.deepcopy(base), copy.deepcopy(lora))
    model = get_peft_model(base, lora)
    ref.load_state_dict(model.state_dict())
    cfg = DictDefault(base_model=path, lora_qkv_kernel=True, lora_o_kernel=True, lora_mlp_kernel=ctx.cuda)
    cls = get_attention_cls_from_config(cfg)
    saved = cls.forward
    try:
        patch_self_attn_lora(cfg)
        apply_lora_kernel_patches(model, cfg)
        apply_lora_kernel_patches(ref, DictDefault(base_model=path))
        prompts, traces = questions(ctx, len(tok) - len(FORKS), seed=3)
        r, g = ssft_passes(ref, ids, prompts, traces, grad=True), ssft_passes(model, ids, prompts, traces, grad=True)
        rows = {k: p for k, p in model.named_parameters() if "trainable_tokens_delta" in k}
        before = {k: p.detach().clone() for k, p in rows.items()}
        torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
        moved = {k: bool((p.detach() - before[k]).abs().amax(dim=1).gt(0).all()) for k, p in rows.items()}
    finally:
        cls.forward = saved
        if "_original_forward" in cls.__dict__:
            del cls._original_forward
    assert len(rows) == 2 and all(moved.values()), f"forking rows did not all move: {moved}"
    return {"mlp_kernel": ctx.cuda, **agree(r, g, *((0.08, 0.02) if ctx.cuda else (1e-4, 1e-5)))}


def offload(ctx) -> dict:
    """TRL's activation offloading around SSFT steps (two slices per step): same losses, peak memory."""
    if not ctx.cuda:
        raise Skip("TRL's activation offloading needs an accelerator")
    need("trl", "datasets")
    from datasets import Dataset

    from trl_ssft import SSFTConfig, SSFTTrainer

    model, tok, ids = small_model(ctx)
    prompts, traces = questions(ctx, len(tok) - len(FORKS), n_q=2)
    data = Dataset.from_list([{"prompt_ids": p, "trace_ids": t} for p, t in zip(prompts, traces)])
    out = {}
    for off in (False, True):
        args = SSFTConfig(output_dir=os.path.join(ctx.work_dir, f"offload{off}"), report_to=[], bf16=True,
                          max_steps=2, per_device_train_batch_size=1, logging_steps=1, save_strategy="no",
                          activation_offloading=off, max_length=4096, ssft_loss_slice_tokens=1, seed=0,
                          disable_tqdm=True)
        torch.cuda.reset_peak_memory_stats()
        trainer = SSFTTrainer(model=copy.deepcopy(model), args=args, train_dataset=data, processing_class=tok)
        trainer.train()
        out[f"offload={off}"] = {"losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
                                 "peak_gb": torch.cuda.max_memory_allocated() / 1e9}
    a, b = out["offload=False"]["losses"], out["offload=True"]["losses"]
    assert len(b) == 2 and np.allclose(a, b, rtol=1e-2), f"losses differ: {a} vs {b}"
    return out


def _save_for_vllm(ctx, name: str) -> str:
    from trl_ssft.demo.tiny import spread_weights

    model, tok, _ = small_model(ctx)
    model = model.float()
    spread_weights(model, 0.2)
    path = os.path.join(ctx.work_dir, name)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def vllm_parity(ctx) -> dict:
    """Greedy vLLM (tests/scripts/vllm_run.py) against transformers' greedy generation, after each forking token."""
    if not ctx.cuda:
        raise Skip("GPU only (vLLM's CPU build is tested by tests/e2e/test_vllm.py)")
    need("vllm")
    from trl_ssft.eval.inference import generate_ids, load_ssft_model

    path = _save_for_vllm(ctx, "vllm-model")
    sm = load_ssft_model(path, device="cuda")
    fork_ids = sm.tokenizer.convert_tokens_to_ids(FORKS)
    prompts = [p + [f] for p in questions(ctx, 1000, n_q=4)[0] for f in fork_ids]
    hf = generate_ids(sm.model, sm.tokenizer, prompts, max_new_tokens=32, greedy=True, batch_size=64)
    spec, out = os.path.join(ctx.work_dir, "vllm_spec.json"), os.path.join(ctx.work_dir, "vllm_out.json")
    job = dict(name="greedy", model=path, prompts=prompts, n=1, max_new_tokens=32, greedy=True, dtype="float32")
    json.dump({"jobs": [job]}, open(spec, "w"))
    subprocess.run([sys.executable, os.path.join(REPO, "tests", "scripts", "vllm_run.py"), spec, out], check=True,
                   timeout=300, env={**os.environ, "PYTHONPATH": REPO})
    res = json.load(open(out))
    assert not res["errors"], res["errors"]
    got = [o[0] for o in res["results"]["greedy"]]
    same = sum(a == b for a, b in zip(got, hf)) / len(hf)
    assert same >= 0.9, f"only {same:.0%} of greedy continuations equal"
    return {"identical_share": same, "prompts": len(prompts)}


def gfpo_vllm_sync(ctx) -> dict:
    """GFPO with TRL's vLLM colocate generation: TRL's own weight sync must work on a GPU build (no fallback)."""
    if not ctx.cuda:
        raise Skip("GPU only (the CPU build needs a reload fallback: tests/e2e/test_gfpo_vllm.py)")
    need("vllm", "trl", "datasets")
    path = _save_for_vllm(ctx, "gfpo-model")
    rows = [{"prompt": f"What is {a} plus {b}?", "answer": str(a + b)} for a, b in [(3, 4), (2, 5), (1, 6), (0, 7)]]
    config = dict(output_dir=os.path.join(ctx.work_dir, "gfpo"), bf16=True, report_to=[], seed=0, disable_tqdm=True,
                  use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.3, num_generations=4,
                  per_device_train_batch_size=8, max_completion_length=8, max_steps=2, gfpo_token_choice="enumerate",
                  learning_rate=1e-2, logging_steps=1, save_strategy="no")
    spec, out = os.path.join(ctx.work_dir, "gfpo_spec.json"), os.path.join(ctx.work_dir, "gfpo_out.json")
    json.dump({"model": path, "rows": rows, "config": config}, open(spec, "w"))
    subprocess.run([sys.executable, os.path.join(REPO, "tests", "scripts", "gfpo_vllm_run.py"), spec, out],
                   check=True, timeout=300, env={**os.environ, "PYTHONPATH": REPO})
    res = json.load(open(out))
    assert res["sync"] == "trl" and res["trl_sync_error"] is None, res.get("trl_sync_error")
    steps = [h for h in res["log_history"] if "loss" in h]
    assert len(steps) == 2, res["log_history"]
    return {"sync": res["sync"], "requests": len(res["vllm_requests"]), "seconds": res.get("seconds")}


def packing(ctx) -> dict:
    """The padding-free set loss: packed rows through flash-attention's variable-length kernel (--dry-run: sdpa's
    packed-sequence masks) against the padded sdpa rows on the same weights: loss and gradients close; the time
    of each (one forward + backward of the same matched rows)."""
    import time

    from trl_ssft.output_head import OutputHead
    from trl_ssft.rows import build_rows, sliced_set_loss

    impl, kind = ("flash_attention_2", "flash") if ctx.cuda else ("sdpa", "sdpa")
    if ctx.cuda:
        need("flash_attn")
    model, tok, ids = small_model(ctx, attn="sdpa")
    prompts, traces = questions(ctx, len(tok) - len(FORKS), seed=2)
    rows = [x.to(ctx.device) for x in build_rows(prompts, traces, [list(range(len(t))) for t in traces], ids, False, 0)]
    denom = float((rows[2][:, 1:] != -100).sum())
    budget = 4 * int(rows[1].sum(1).max())  # several rows per slice: padding in the padded slices
    model.train()
    out = {}
    for name, attn, packed in (("padded", "sdpa", None), ("packed", impl, kind)):
        model.set_attn_implementation(attn)
        model.zero_grad(set_to_none=True)
        stats: dict = {}
        if ctx.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = sliced_set_loss(model, OutputHead(model), *rows, denom=denom, slice_tokens=budget, chunk_tokens=256,
                               backward=lambda x: x.backward(), packing=packed, stats=stats)
        loss.backward()
        if ctx.cuda:
            torch.cuda.synchronize()
        grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
        out[name] = (float(loss), grads, time.perf_counter() - t0, stats)
    (ref, g_ref, t_ref, s_ref), (got, g, t, s_got) = out["padded"], out["packed"]
    rel = abs(got - ref) / abs(ref)
    cos = float(torch.nn.functional.cosine_similarity(g, g_ref, dim=0))
    tol = (0.01, 0.999) if ctx.cuda else (1e-5, 0.999999)
    assert rel <= tol[0], f"set loss differs by {rel:.2%}"
    assert cos >= tol[1], f"gradients' cosine similarity {cos:.6f} < {tol[1]}"
    assert s_got["fed"] == s_got["tokens"], s_got  # no padding fed
    return {"kernel": impl, "loss_rel_diff": rel, "grad_cosine": cos, "seconds_padded": t_ref, "seconds_packed": t,
            "tokens": s_ref["tokens"], "fed_padded": s_ref["fed"], "fed_packed": s_got["fed"]}


CHECKS = {"qlora_7b": qlora_7b, "attention": attention, "packing": packing, "fused_losses": fused_losses,
          "lora_kernels": lora_kernels,
          "offload": offload, "vllm_parity": vllm_parity, "gfpo_vllm_sync": gfpo_vllm_sync}
