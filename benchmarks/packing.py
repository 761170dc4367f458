"""Padding-free (packed) against padded set-loss rows: padding share and tokens per second, side by side.

    python benchmarks/packing.py                     # CPU defaults -> docs/packing.json + a table on stdout
    python benchmarks/packing.py --device cuda --dtype bf16 --attn flash_attention_2 --preset qwen2.5-1.5b \\
        --questions 16 --batch-size 4 --gradient-checkpointing --rounds 3 --json docs/packing_gpu.json   # GPU

A step is `trainer.training_step(model, inputs, num_items)` of a real `SSFTTrainer` on one micro-batch of
questions, with ``ssft_assignment: fixed`` (trace j gets token j): the matching pass is left out because
packing does not change it (it stays padded, prompts shared through the key/value cache; its padding share
is reported from its plan, no forward run). The optimizer update is left out too (the weights stay fixed,
so every variant sees the same model). Each variant switches only the set loss's layout on the same
trainer (``trainer.ssft_packing``: None = padded rows, else the model's packed attention) and the slice
budget (``ssft_loss_slice_tokens``: ``auto`` = the trainer's default, or a number). Rounds run every
variant on every micro-batch in turn; the first `--warmup` rounds are dropped. Reported per variant:

- forwards (set-loss slices) per round, real tokens and tokens fed (padding included), padding share;
- attention query-key pairs per round (padded slice [R, W]: R W^2; packed row: L^2, masked across rows with
  sdpa / eager), next to the sum of len^2 over the rows, what flash-attention's variable-length kernel computes;
- seconds per round (median over rounds), real tokens per second, and the packed/padded time ratio
  (median over rounds of the ratio within a round: the pairing cancels slow drifts of a shared machine);
- that the packed loss equals the padded one (relative difference, must be ~1e-6).

The data is a realistic length mix for reasoning traces: M traces per question with lengths drawn
log-uniformly between `--min-trace` and `--max-trace` tokens (200 to 8,000 by default), prompts uniformly
between 50 and 300 tokens, random token ids of a word-level tokenizer; the model is a randomly
initialised Qwen2 (`--preset`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import random
import shlex
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

PRESETS = {
    # CPU: tiny but not trivial (4 layers, head_dim 64), a 16k vocabulary
    "cpu-small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=16384, tie_word_embeddings=True),
    # Qwen2.5-1.5B's architecture (random weights)
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1000000.0),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu-small", choices=sorted(PRESETS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--attn", default="sdpa", help="attn_implementation: sdpa, eager, flash_attention_2")
    p.add_argument("--questions", type=int, default=4, help="questions (micro-batches = questions / batch size)")
    p.add_argument("--batch-size", type=int, default=2, help="questions per micro-batch")
    p.add_argument("--traces", type=int, default=4, help="M, traces per question")
    p.add_argument("--min-trace", type=int, default=200)
    p.add_argument("--max-trace", type=int, default=8000)
    p.add_argument("--budgets", default="auto,16384",
                   help="ssft_loss_slice_tokens values to compare ('auto' = the trainer's default)")
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--match-tokens", type=int, default=1000, help="T of the matching-pass padding share")
    p.add_argument("--json", default="docs/packing.json")
    p.add_argument("--work-dir", default="/tmp/ssft_packing_bench")
    return p.parse_args(argv)


def make_rows(args, vocab: int) -> list[dict]:
    rng = random.Random(args.seed)
    lo, hi = math.log(args.min_trace), math.log(args.max_trace)
    rows = []
    for _ in range(args.questions):
        prompt = [rng.randrange(4, vocab) for _ in range(rng.randint(50, 300))]
        traces = [[rng.randrange(4, vocab) for _ in range(round(math.exp(rng.uniform(lo, hi))))]
                  for _ in range(args.traces)]
        rows.append({"prompt_ids": prompt, "trace_ids": traces})
    return rows


def build_trainer(args):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, Qwen2Config

    from trl_ssft import SSFTConfig, SSFTTrainer
    from trl_ssft.demo.tiny import build_word_tokenizer

    cfg = dict(PRESETS[args.preset])
    tokenizer = build_word_tokenizer(cfg.pop("vocab_size"))
    torch.manual_seed(args.seed)
    config = Qwen2Config(**cfg, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None, max_position_embeddings=32768)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=args.attn).to(args.device)
    rows = make_rows(args, len(tokenizer))
    max_len = max(len(r["prompt_ids"]) + 1 + len(t) for r in rows for t in r["trace_ids"])
    sft = SSFTConfig(
        output_dir=os.path.join(args.work_dir, "out"), report_to=[], use_cpu=args.device == "cpu",
        bf16=args.dtype == "bf16", max_length=max_len, per_device_train_batch_size=args.batch_size,
        ssft_num_fork_tokens=args.traces, ssft_assignment="fixed", ssft_padding_free=True,
        gradient_checkpointing=args.gradient_checkpointing, save_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0, seed=args.seed)
    trainer = SSFTTrainer(model=model, args=sft, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    if args.gradient_checkpointing and not getattr(trainer.model, "is_gradient_checkpointing", False):
        trainer.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainer.model.train()
    return trainer


def matching_padding(trainer, batches, match_tokens: int) -> dict:
    """Tokens and padded tokens the matching pass (N = M forking tokens, T = `match_tokens`) would feed (its plan),
    and the tokens a packed pass would feed without the shared prompt (every row's prompt recomputed)."""
    from trl_ssft.scoring import ScoringOptions, plan_rows

    real = fed = unshared = 0
    for batch in batches:
        prompts, traces = trainer._unpack(batch)
        prefixes, conts = [], []
        for p, ts in zip(prompts, traces):
            for fid in trainer.fork_token_ids:
                for t in ts:
                    prefixes.append(p + [fid])
                    conts.append(t[:match_tokens])
                    unshared += len(p) + 1 + len(conts[-1]) - 1
        plan = plan_rows(trainer.model, prefixes, conts, trainer.ssft_args.ssft_match_max_tokens,
                         ScoringOptions.from_fields(trainer.ssft_args))
        for chunk in plan.ctx_chunks:
            real += sum(len(plan.contexts[i]) for i in chunk)
            fed += len(chunk) * max(len(plan.contexts[i]) for i in chunk)
        for chunk in plan.row_chunks:
            real += sum(len(plan.news[r]) for r in chunk)
            fed += len(chunk) * max(len(plan.news[r]) for r in chunk)
    return {"tokens": real, "fed": fed, "padding_share": 1 - real / fed, "shared_prompt": bool(plan.share),
            "packed_unshared_tokens": unshared}


def attention_pairs(trainer, batches, budget) -> dict:
    """Query-key pairs of the set loss's attention per round, from the layouts the trainer runs (no forward)."""
    from trl_ssft.packed_rows import packed_slices
    from trl_ssft.rows import auto_slice_tokens, padded_slices

    out = {"padded": 0, "packed": 0, "rows": 0}
    low = auto_slice_tokens(trainer.model)
    for batch in batches:
        prompts, traces = trainer._unpack(batch)
        ids, mask, labels = trainer.ssft_build_rows(prompts, traces, trainer.ssft_assignments(prompts, traces)[0])
        pad, _ = padded_slices(ids, mask, labels, budget, low)
        pack, _ = packed_slices(ids, mask, labels, budget, low, trainer.ssft_packing)
        out["padded"] += sum(x["input_ids"].shape[0] * x["input_ids"].shape[1] ** 2 for x in pad)
        out["packed"] += sum(x["input_ids"].shape[1] ** 2 for x in pack)
        out["rows"] += int((mask.sum(-1) ** 2).sum())
    return out


def run(args) -> dict:
    import torch

    trainer = build_trainer(args)
    model, kind = trainer.model, trainer.ssft_packing
    data = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    batches = [trainer.data_collator(data[i: i + args.batch_size]) for i in range(0, len(data), args.batch_size)]
    inputs = [trainer._prepare_inputs(b) for b in batches]
    counts = [torch.tensor(int(b["ssft_num_loss_tokens"].sum()), device=args.device) for b in batches]
    budgets = [None if b == "auto" else int(b) for b in args.budgets.split(",")]
    variants = [(layout, b) for b in budgets for layout in ("padded", "packed")]
    runs = {v: [] for v in variants}
    for r in range(args.warmup + args.rounds):
        for layout, budget in variants:
            trainer.ssft_packing = kind if layout == "packed" else None
            trainer.ssft_args.ssft_loss_slice_tokens = budget
            trainer.ssft_loss_counts.clear()
            t0, losses = time.perf_counter(), []
            for x, n in zip(inputs, counts):
                losses.append(float(trainer.training_step(model, x, n)))
                model.zero_grad(set_to_none=True)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            if r >= args.warmup:
                runs[(layout, budget)].append((dt, dict(trainer.ssft_loss_counts), losses))
            print(f"  round {r} {layout} budget={budget or 'auto'}: {dt:.2f}s {dict(trainer.ssft_loss_counts)}",
                  file=sys.stderr, flush=True)
    out = {"attention": kind, "matching_pass": matching_padding(trainer, batches, args.match_tokens), "variants": []}
    for budget in budgets:
        pad, pack = runs[("padded", budget)], runs[("packed", budget)]
        pairs = attention_pairs(trainer, batches, budget)
        ratios = [b[0] / a[0] for a, b in zip(pad, pack)]
        diff = max(abs(x - y) / abs(x) for a, b in zip(pad, pack) for x, y in zip(a[2], b[2]))
        for layout, recs in (("padded", pad), ("packed", pack)):
            lay = recs[-1][1]
            secs = statistics.median(x[0] for x in recs)
            out["variants"].append({
                "layout": layout, "budget": budget or "auto", "forwards": lay["slices"], "tokens": lay["tokens"],
                "fed": lay["fed"], "padding_share": 1 - lay["tokens"] / lay["fed"], "seconds": secs,
                "attention_pairs": pairs[layout], "attention_pairs_rows_only": pairs["rows"],
                "times_s": [x[0] for x in recs], "tokens_per_s": lay["tokens"] / secs,
                "time_ratio_packed_over_padded": statistics.median(ratios) if layout == "packed" else None,
                "loss_rel_diff": diff if layout == "packed" else None})
    return out


def table(res: dict) -> str:
    head = ("| budget | layout | forwards | real tokens | tokens fed | padding | attention pairs (rows only) | "
            "s / round | tokens / s | packed / padded time | loss rel. diff |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for v in res["variants"]:
        ratio = f"{v['time_ratio_packed_over_padded']:.2f}" if v["time_ratio_packed_over_padded"] else ""
        diff = f"{v['loss_rel_diff']:.1e}" if v["loss_rel_diff"] is not None else ""
        lines.append(f"| {v['budget']} | {v['layout']} | {v['forwards']} | {v['tokens']} | {v['fed']} | "
                     f"{100 * v['padding_share']:.1f} % | {v['attention_pairs'] / 1e6:.0f} M "
                     f"({v['attention_pairs_rows_only'] / 1e6:.0f} M) | {v['seconds']:.1f} | {v['tokens_per_s']:.0f} | "
                     f"{ratio} | {diff} |")
    m = res["matching_pass"]
    lines.append(f"\nMatching pass (unchanged by packing; plan at T = {res['args']['match_tokens']}, prompts shared: "
                 f"{m['shared_prompt']}): {m['tokens']} tokens, {m['fed']} fed, "
                 f"padding {100 * m['padding_share']:.1f} %; "
                 f"packed without the shared prompt it would feed {m['packed_unshared_tokens']} tokens")
    return "\n".join(lines)


def machine() -> dict:
    import torch
    import transformers

    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "platform": platform.platform(), "nproc": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "loadavg_at_end": load}


def main(argv=None):
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    res = run(args)
    res["args"] = vars(args)
    res["command"] = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    res["date"] = datetime.date.today().isoformat()
    res["machine"] = machine()
    print(table(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
