"""The matching pass and the set loss under real FSDP2 (`torch.distributed.fsdp.fully_shard`) on CPU / gloo.

Run with ``torchrun --nproc_per_node 2 tests/scripts/fsdp_run.py --out DIR`` (see tests/e2e/test_fsdp.py).

For a tiny tied Qwen2 and a tiny untied Llama (forking tokens added with `prepare_fork_tokens`):

1. reference, one process, unsharded, all questions (rank 0, before the process group exists, so every
   helper of `trl_ssft.distributed` is a no-op): `cost_matrices`, `match_question` (Hungarian), the loss
   ``sum NLL / denom`` from the model's own full logits, and the gradient of every parameter;
2. the process group (gloo); `fully_shard` on every decoder layer and on the root (the layout accelerate
   and Axolotl build for ``TRANSFORMER_BASED_WRAP``); every parameter must be a sharded `DTensor`;
3. uneven work: rank 0 holds three questions (4 + 3 + 4 traces), rank 1 one (2 traces), so rank 0 makes
   more scoring forward calls and more set-loss slices before their counts are aligned;
4. `cost_matrices` on the sharded model (costs and assignments must equal the reference), then
   `rows.sliced_set_loss` with small ``slice_tokens`` / ``chunk_tokens`` (several slices and chunks);
   earlier slices back-propagate through ``backward``, the returned loss through ``.backward()``;
5. the loss summed over ranks and ``DTensor.full_tensor()`` of every gradient against the reference.

Each rank writes ``DIR/<case>.rank<r>.json``; the script itself asserts everything and exits non-zero on
a mismatch.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from trl_ssft.demo.synthetic import corpus, make_rows
from trl_ssft.demo.tiny import build_tiny_model, build_tiny_tokenizer
from trl_ssft.matching import match_question
from trl_ssft.output_head import IGNORE_INDEX, OutputHead
from trl_ssft.packed_rows import packed_slices
from trl_ssft.rows import build_rows, loss_tokens, plan_slices, sliced_set_loss
from trl_ssft.scoring import ScoringOptions, cost_matrices, plan_rows
from trl_ssft.tokens import prepare_fork_tokens

N_FORK = 4
TRACES = (4, 3, 4, 2)  # traces per question
RANK_QUESTIONS = {0: [0, 1, 2], 1: [3]}  # uneven work per rank
MATCH_TOKENS = 12
MATCH_MAX_TOKENS = 128  # padded tokens per scoring forward call: several calls
SLICE_TOKENS = 48  # rows x longest row per set-loss slice: several slices
CHUNK_TOKENS = 7  # positions whose logits exist at once: several chunks per slice


@dataclass(frozen=True)
class Case:
    arch: str
    tied: bool
    reduce: str = "scale"  # "scale": loss x world size, FSDP2 averages; "sum": FSDP2 sums, loss unscaled
    reshard: bool | None = None  # fully_shard(reshard_after_forward=...); None: FSDP2's default (root kept)
    wrap_head: bool = False  # the output module as its own FSDP unit
    layer_ac: bool = False  # activation checkpointing of the decoder layers (fsdp_config.activation_checkpointing)
    no_sync: bool = False  # earlier slices under accelerate's FSDP2 no_sync (set_requires_gradient_sync(False))
    packing: str | None = None  # the padding-free set loss (packed_rows.PACKED_ATTENTION key), else padded rows
    slice_tokens: int = SLICE_TOKENS


CASES = {
    "qwen2": Case("qwen2", True),
    "llama": Case("llama", False, reduce="sum"),
    # what Accelerate / Axolotl build from the 32B recipe (reshard_after_forward: true passed to every unit,
    # the root included; checkpointed layers) and what SSFTTrainer does with it (accelerator.no_sync)
    "qwen2_accelerate": Case("qwen2", True, reshard=True, layer_ac=True, no_sync=True),
    "llama_head": Case("llama", False, reshard=True, wrap_head=True),
    # the padding-free set loss (sdpa, transformers' packed-sequence masks) against the padded reference
    "qwen2_packed": Case("qwen2", True, packing="sdpa", slice_tokens=256),
}


def questions(tok):
    rows = make_rows(len(TRACES), seed=5)
    prompts, traces = [], []
    for row, m in zip(rows, TRACES):
        prompts.append(tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True))
        traces.append(row["traces"][:m])
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    traces = [[tok(t + tok.eos_token, add_special_tokens=False)["input_ids"] for t in ts] for ts in traces]
    traces[0][0] = traces[0][0][:-1] + traces[0][0]  # one much longer trace
    return prompts, traces


def build(case: str):
    arch, tied = CASES[case].arch, CASES[case].tied
    tok = build_tiny_tokenizer(corpus(make_rows(24, seed=0)), vocab_size=400)
    model = build_tiny_model(tok, arch=arch, tie_word_embeddings=tied, hidden_size=32, num_layers=2,
                             num_heads=2, seed=1)
    fork_ids = prepare_fork_tokens(model, tok, [f"<think{i}>" for i in range(1, N_FORK + 1)], seed=0)
    model.config.use_cache = False
    return tok, model.float(), fork_ids


def match(costs, n_traces):
    return [match_question(c, "hungarian", N_FORK, m, np.random.default_rng(0))[0].tolist()
            for c, m in zip(costs, n_traces)]


def reference(model, prompts, traces, fork_ids, pad_id, denom):
    """One process, unsharded, every question: costs, assignments, loss, gradients (plain full logits)."""
    costs, _ = cost_matrices(model, prompts, traces, fork_ids, match_tokens=MATCH_TOKENS,
                             max_tokens=MATCH_MAX_TOKENS, pad_token_id=pad_id)
    assign = match(costs, [len(t) for t in traces])
    ids, mask, labels = build_rows(prompts, traces, assign, fork_ids, True, pad_id)
    model.train()
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
    tgt = torch.full_like(labels, IGNORE_INDEX)
    tgt[:, :-1] = labels[:, 1:]
    loss = F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=IGNORE_INDEX, reduction="sum") / denom
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return costs, assign, float(loss), grads


def shard(model, case: Case) -> None:
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if case.layer_ac:  # as accelerate's fsdp2 path: checkpoint_wrapper (non-reentrant) before fully_shard
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
            CheckpointImpl, apply_activation_checkpointing, checkpoint_wrapper)

        layer_cls = type(model.model.layers[0])
        apply_activation_checkpointing(
            model, checkpoint_wrapper_fn=lambda m: checkpoint_wrapper(m, checkpoint_impl=CheckpointImpl.NO_REENTRANT),
            check_fn=lambda m: isinstance(m, layer_cls))
    for layer in model.model.layers:
        fully_shard(layer, reshard_after_forward=case.reshard)
    if case.wrap_head:  # the output module as its own FSDP unit (resharded after its forward)
        fully_shard(model.lm_head, reshard_after_forward=case.reshard)
    fully_shard(model, reshard_after_forward=case.reshard)
    if case.reduce == "sum":  # reduce-scatter sums the ranks' gradients instead of averaging them
        for m in model.modules():
            if isinstance(m, FSDPModule):  # both setters act on one FSDP unit only
                m.set_gradient_divide_factor(1.0)
                m.set_force_sum_reduction_for_comms(True)  # else PREMUL_SUM(1/1), which gloo lacks


def unsharded_grad_elements(model) -> int | None:
    """Elements of full-size (unsharded) gradients FSDP2 holds between backwards (private API; None if gone)."""
    from torch.distributed.fsdp import FSDPModule

    try:
        n = 0
        for m in model.modules():
            if isinstance(m, FSDPModule):
                for group in m._get_fsdp_state()._fsdp_param_groups:
                    for fp in group.fsdp_params:
                        g = fp.unsharded_accumulated_grad
                        g = fp.unsharded_param.grad if g is None and fp.unsharded_param.grad is not None else g
                        n += 0 if g is None else g.numel()
        return n
    except AttributeError:
        return None


def run_case(case: str, out: str, built, ref) -> None:
    tok, model, fork_ids = built
    pad_id = tok.pad_token_id
    prompts, traces = questions(tok)
    denom = loss_tokens(traces, True, True)  # loss tokens of both ranks (the trainer all-reduces this count)
    rank, world = dist.get_rank(), dist.get_world_size()

    # Two ways to make the summed gradient equal the one-process gradient. FSDP2's reduce-scatter averages
    # the ranks' gradients (divides by the world size) by default; SSFTTrainer multiplies each rank's loss
    # by the world size (``scale``; denom already counts both ranks' tokens), as under DDP. The other way:
    # keep the loss unscaled and make reduce-scatter sum (`set_gradient_divide_factor(1.0)`).
    spec = CASES[case]
    mode = spec.reduce
    shard(model, spec)
    from torch.distributed.tensor import DTensor

    params = {n.replace("._checkpoint_wrapped_module", ""): p for n, p in model.named_parameters()}
    not_sharded = [n for n, p in params.items() if not isinstance(p, DTensor)]
    assert not not_sharded, f"not DTensor after fully_shard: {not_sharded}"
    shard_rows = {n: int(p.to_local().shape[0]) for n, p in params.items()}
    assert all(shard_rows[n] < p.shape[0] for n, p in params.items() if p.shape[0] >= world), shard_rows

    mine = RANK_QUESTIONS[rank]
    my_prompts, my_traces = [prompts[b] for b in mine], [traces[b] for b in mine]
    options = ScoringOptions()
    flat_p = [p + [f] for p, ts in zip(my_prompts, my_traces) for f in fork_ids for _ in ts]
    flat_c = [t[:MATCH_TOKENS] for ts in my_traces for _ in fork_ids for t in ts]
    plan = plan_rows(model, flat_p, flat_c, MATCH_MAX_TOKENS, options)
    own_calls = len(plan.ctx_chunks) + len(plan.row_chunks)
    costs, stats = cost_matrices(model, my_prompts, my_traces, fork_ids, match_tokens=MATCH_TOKENS,
                                 max_tokens=MATCH_MAX_TOKENS, pad_token_id=pad_id, options=options)
    assign = match(costs, [len(t) for t in my_traces])

    ids, mask, labels = build_rows(my_prompts, my_traces, assign, fork_ids, True, pad_id)
    slices = (plan_slices(mask.sum(-1).tolist(), spec.slice_tokens) if spec.packing is None else
              packed_slices(ids, mask, labels, spec.slice_tokens, 0, spec.packing)[0])
    assert spec.packing is None or rank == 1 or len(slices) < len(ids), "rank 0's packed rows hold several rows"
    head = OutputHead(model)
    model.train()
    backward_calls, held = [], []

    def backward(loss):  # an earlier slice, as SSFTTrainer._ssft_slice_backward does it
        backward_calls.append(float(loss.detach()))
        if spec.no_sync:  # accelerate's no_sync under FSDP2: no reduce-scatter, unsharded grads accumulate
            model.set_requires_gradient_sync(False)
        try:
            loss.backward()
        finally:
            model.set_requires_gradient_sync(True)
        held.append(unsharded_grad_elements(model))

    loss = sliced_set_loss(model, head, ids, mask, labels, denom=denom, slice_tokens=spec.slice_tokens,
                           chunk_tokens=CHUNK_TOKENS, scale=float(world) if mode == "scale" else 1.0,
                           backward=backward, packing=spec.packing)
    loss.backward()
    loss_sum = torch.tensor([float(loss)], dtype=torch.float64)
    dist.all_reduce(loss_sum)
    total = float(loss_sum) / (world if mode == "scale" else 1)
    grads = {n: p.grad.full_tensor() for n, p in params.items()}  # collective: every rank calls it

    record = {
        "case": case, "spec": asdict(spec), "rank": rank, "mode": mode, "questions": mine, "rows": len(flat_p),
        "own_scoring_calls": own_calls, "scoring_calls": stats.forward_calls, "shared_prefix": stats.shared_prefix,
        "costs": [c.tolist() for c in costs], "assign": assign, "own_slices": len(slices),
        "slice_backwards": len(backward_calls), "loss_rank": float(loss), "loss_total": total,
        "dtensor_params": len(params), "local_rows": shard_rows,
        "full_rows": {n: int(p.shape[0]) for n, p in params.items()}, "held_unsharded_grad_elements": held,
        "param_elements": sum(p.numel() for p in params.values()),
        "placements": sorted({str(p.placements) for p in params.values()}),
        "max_tokens_per_chunk": CHUNK_TOKENS,
    }
    if rank == 0:
        ref_costs, ref_assign, ref_loss, ref_grads = ref
        record["ref_costs"] = [ref_costs[b].tolist() for b in range(len(prompts))]
        record["ref_assign"] = ref_assign
        record["ref_loss"] = ref_loss
        gdiff = {}
        for n, g in grads.items():
            r = ref_grads[n]
            assert g.shape == r.shape, (n, g.shape, r.shape)
            gdiff[n] = float((g - r).abs().max() / (r.abs().max() + 1e-12))
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6, msg=lambda m, n=n: f"{case} grad {n}: {m}")
        record["grad_rel_diff"] = gdiff
        for b, c in zip(mine, costs):
            np.testing.assert_allclose(c, ref_costs[b], atol=1e-5, rtol=0)
        assert assign == [ref_assign[b] for b in mine]
        assert abs(total - ref_loss) <= 1e-4 * abs(ref_loss), (total, ref_loss)
    with open(os.path.join(out, f"{case}.rank{rank}.json"), "w") as f:
        json.dump(record, f)
    dist.barrier()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", nargs="*", default=list(CASES))
    args = ap.parse_args()
    torch.set_num_threads(1)
    built = {case: build(case) for case in args.cases}  # identical on every rank (fixed seeds)
    refs = {}
    if int(os.environ.get("RANK", "0")) == 0:  # before the process group exists: a true one-process run
        for case, (tok, model, fork_ids) in built.items():
            prompts, traces = questions(tok)
            refs[case] = reference(copy.deepcopy(model), prompts, traces, fork_ids, tok.pad_token_id,
                                   loss_tokens(traces, True, True))
    dist.init_process_group("gloo")
    try:
        for case in args.cases:
            run_case(case, args.out, built[case], refs.get(case))
        print("FSDP2 OK", flush=True)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
