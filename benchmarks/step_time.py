"""Step time of SSFT against SFT-mixed on the same model, data and batch, in one process.

    python benchmarks/step_time.py --threads 1           # CPU defaults -> docs/step_time.json + table
    python benchmarks/step_time.py --preset qwen2.5-1.5b --device cuda --dtype bf16 --attn sdpa \\
        --shapes 6,4,200,1000,8000 --batch-size 1 --gradient-checkpointing   # GPU, paper-like shape

A step is `trainer.training_step(model, inputs, num_items_in_batch)` of a real `SSFTTrainer`
(matching pass + assignment + set-loss forward + backward), with `ssft_assignment` switched between
``none`` (SFT-mixed: the same M traces, no forking token, no scoring) and ``hungarian`` (SSFT) on the
same trainer, model and micro-batch. The optimizer update is left out: it costs the same in both
modes and the formula below does not count it; the weights therefore stay fixed, so every step of
every variant sees the same model. Steps alternate SFT, SSFT variant 1, SSFT variant 2, ... in
rounds; the first `--warmup` rounds are dropped. Reported per shape (N, M, P, T, L):

- median step time of each, and the SSFT/SFT ratio (median over rounds of the ratio of a round's
  SSFT step to that round's SFT step: the pairing cancels slow drifts of a shared machine);
- the ideal ratio 1 + N(P+T) / (3(P+L)) of the issue, and the one with the prompt shared
  1 + (P + N M (T+1)) / (3 M (P+L));
- the matching share of the SSFT step (the mixin's `ssft/match_seconds`, i.e. the scoring pass) and
  its ideal (ideal ratio - 1) / ideal ratio;
- peak memory of a step above the memory held before it: on CUDA `torch.cuda.max_memory_allocated`;
  on CPU the peak resident set size (Linux `VmHWM`, reset through `/proc/self/clear_refs` before
  each step) minus the resident size before the step. The CPU figure counts everything the process
  touches (allocator caches included) and is coarser than the CUDA one.

SSFT variants form a ladder, each adding one optimisation of `trl_ssft.scoring` to the previous one,
so each optimisation has a before and an after column (all are exact; `tests/unit/test_scoring.py`):

- ``naive``: the model's own full-vocabulary logits at every position of every row, rows in input order,
  no sharing;
- ``+keep``: only the scored positions reach the output layer, in slices of at most
  `logits_chunk_tokens` positions (`keep_only_scored`);
- ``+sort``: rows sorted by length before chunking (`sort_rows`);
- ``+share``: the prompt computed once per question, shared through the key/value cache
  (`share_prefix`) = the library default.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

VARIANTS = {
    "naive": dict(share_prefix=False, sort_rows=False, keep_only_scored=False),
    "+keep": dict(share_prefix=False, sort_rows=False, keep_only_scored=True),
    "+sort": dict(share_prefix=False, sort_rows=True, keep_only_scored=True),
    "+share": dict(share_prefix=None, sort_rows=True, keep_only_scored=True),
}

PRESETS = {
    # CPU: a small model with a realistic vocabulary (random weights)
    "cpu-small": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=32000, tie_word_embeddings=True),
    # Qwen2.5-1.5B's architecture (random weights)
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1000000.0),
    # Qwen2.5-7B's architecture (random weights)
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False, rope_theta=1000000.0),
}

CPU_SHAPES = "4,4,64,32,192;6,4,96,48,192;6,4,10,48,384"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=CPU_SHAPES,
                   help="';'-separated N,M,P,T,L (forking tokens, traces, prompt, match prefix, trace length)")
    p.add_argument("--preset", default="cpu-small", choices=sorted(PRESETS))
    p.add_argument("--vocab-size", type=int, default=None, help="override the preset's vocabulary size")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--attn", default="sdpa", help="attn_implementation: sdpa, eager, flash_attention_2")
    p.add_argument("--batch-size", type=int, default=1, help="questions per micro-batch")
    p.add_argument("--length-jitter", type=float, default=0.25,
                   help="trace lengths drawn uniformly in L x [1-j, 1+j] (prompts: P x [1-j, 1+j])")
    p.add_argument("--match-max-tokens", type=int, default=2048,
                   help="ssft_match_max_tokens (the CPU default is scaled down with the shapes, so chunks form)")
    p.add_argument("--logits-chunk-tokens", type=int, default=None,
                   help="positions whose logits exist at once in the matching pass (default: the trainer's)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"SSFT variants to run, from {list(VARIANTS)}")
    p.add_argument("--warmup", type=int, default=1, help="rounds dropped")
    p.add_argument("--rounds", type=int, default=4, help="rounds measured")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="docs/step_time.json", help="where the results go ('' for none)")
    p.add_argument("--work-dir", default="/tmp/ssft_step_time")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- model, tokenizer, data
def build_tokenizer(vocab_size: int):
    """`trl_ssft.demo.tiny.build_word_tokenizer`: exactly `vocab_size` entries."""
    from trl_ssft.demo.tiny import build_word_tokenizer

    return build_word_tokenizer(vocab_size)


def build_model(args, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = dict(PRESETS[args.preset])
    cfg["vocab_size"] = len(tokenizer)
    torch.manual_seed(args.seed)
    config = Qwen2Config(**cfg, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None, max_position_embeddings=32768)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=args.attn)
    return model.to(args.device)


def make_rows(n_questions: int, m: int, p: int, length: int, jitter: float, vocab: int, seed: int):
    import random

    rng = random.Random(seed)

    def draw(n):
        return max(1, round(n * rng.uniform(1 - jitter, 1 + jitter)))

    rows = []
    for _ in range(n_questions):
        prompt = [rng.randrange(4, vocab) for _ in range(draw(p))]
        traces = [[rng.randrange(4, vocab) for _ in range(draw(length))] for _ in range(m)]
        rows.append({"prompt_ids": prompt, "trace_ids": traces})
    return rows


# ----------------------------------------------------------------------------- memory probes
class Memory:
    def __init__(self, device: str):
        import torch

        self.cuda = device.startswith("cuda")
        self.torch = torch

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(key)

    def start(self):
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            self.base = self.torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak resident set size (VmHWM)
            self.base = self._status("VmRSS")

    def peak(self) -> int:
        if self.cuda:
            self.torch.cuda.synchronize()
            return self.torch.cuda.max_memory_allocated() - self.base
        return self._status("VmHWM") - self.base


# ----------------------------------------------------------------------------- one shape
def ideal(n, m, p, t_eff, length):
    plain = 1 + n * (p + t_eff) / (3 * (p + length))
    shared = 1 + (p + n * m * (t_eff + 1)) / (3 * m * (p + length))
    return plain, shared


def run_shape(args, shape):
    import torch
    from datasets import Dataset

    from trl_ssft import SSFTConfig, SSFTTrainer
    from trl_ssft.config import SSFT_FIELD_NAMES
    from trl_ssft.scoring import ScoringOptions, ScoringStats, cost_matrices

    n, m, p, t, length = shape
    vocab = args.vocab_size or PRESETS[args.preset]["vocab_size"]
    tokenizer = build_tokenizer(vocab)
    model = build_model(args, tokenizer)
    rows = make_rows(args.batch_size, m, p, length, args.length_jitter, vocab, args.seed)
    max_len = max(len(r["prompt_ids"]) + 1 + max(len(x) for x in r["trace_ids"]) for r in rows)
    cfg = SSFTConfig(
        output_dir=os.path.join(args.work_dir, "out"), report_to=[], use_cpu=args.device == "cpu",
        bf16=args.dtype == "bf16", max_length=max_len, per_device_train_batch_size=args.batch_size,
        ssft_num_fork_tokens=n, ssft_match_tokens=t, ssft_match_max_tokens=args.match_max_tokens,
        gradient_checkpointing=args.gradient_checkpointing, save_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0, seed=args.seed,
    )
    trainer = SSFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    model = trainer.model
    if args.gradient_checkpointing and not getattr(model, "is_gradient_checkpointing", False):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(args.batch_size)])
    inputs = trainer._prepare_inputs(batch)
    num_items = torch.tensor(int(batch["ssft_num_loss_tokens"].sum()), device=args.device)
    base_fields = {f: getattr(cfg, f) for f in SSFT_FIELD_NAMES}
    mem = Memory(args.device)
    variants = [v for v in args.variants.split(",") if v]

    def scorer(options: dict, totals: ScoringStats):
        """The trainer's matching pass with this variant's scoring options; its counters go to `totals`."""
        opts = dataclasses.replace(ScoringOptions.from_fields(trainer.ssft_args), **options)
        if args.logits_chunk_tokens is not None:
            opts = dataclasses.replace(opts, logits_chunk_tokens=args.logits_chunk_tokens)

        def ssft_cost_matrices(prompts, traces):
            fields = trainer.ssft_args
            costs, st = cost_matrices(
                trainer.model, prompts, traces, trainer.fork_token_ids, match_tokens=fields.ssft_match_tokens,
                max_tokens=fields.ssft_match_max_tokens, pad_token_id=trainer.ssft_pad_token_id,
                device=trainer.args.device, options=opts)
            for f in dataclasses.fields(st):
                old, new = getattr(totals, f.name), getattr(st, f.name)
                setattr(totals, f.name, max(old, new) if f.name in ("max_logit_positions", "shared_prefix")
                        else old + new)
            return costs

        return ssft_cost_matrices

    def step(mode: str, options: dict):
        trainer.ssft_args = SimpleNamespace(**{**base_fields, "ssft_assignment": mode})
        buf = trainer._ssft_metrics["train"]
        buf.clear()
        totals = ScoringStats()
        trainer.ssft_cost_matrices = scorer(options, totals)  # instance attribute: this variant only
        mem.start()
        t0 = time.perf_counter()
        try:
            trainer.training_step(model, inputs, num_items)
        finally:
            del trainer.ssft_cost_matrices
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        peak = mem.peak()
        model.zero_grad(set_to_none=True)
        match = float(sum(buf.get("match_seconds", [])))
        buf.clear()
        return dt, match, peak, dataclasses.asdict(totals)

    runs = {"sft": []} | {v: [] for v in variants}
    for r in range(args.warmup + args.rounds):
        rec = {"sft": step("none", {})}
        for v in variants:
            rec[v] = step("hungarian", VARIANTS[v])
        if r >= args.warmup:
            for k, x in rec.items():
                runs[k].append(x)
        print(f"  round {r}: " + " ".join(f"{k}={x[0]:.3f}s" for k, x in rec.items()), file=sys.stderr, flush=True)

    traces = [x for r_ in rows for x in r_["trace_ids"]]
    p_mean = statistics.mean(len(r_["prompt_ids"]) for r_ in rows)
    l_mean = statistics.mean(len(x) for x in traces)
    t_eff = statistics.mean(min(t, len(x)) for x in traces)
    ideal_plain, ideal_shared = ideal(n, m, p_mean, t_eff, l_mean)
    sft_times = [x[0] for x in runs["sft"]]
    sft_peak = max(x[2] for x in runs["sft"])
    out = {"shape": dict(N=n, M=m, P=p, T=t, L=length, P_mean=p_mean, L_mean=l_mean, T_eff=t_eff),
           "ideal_ratio": ideal_plain, "ideal_ratio_shared_prompt": ideal_shared,
           "ideal_match_share": (ideal_plain - 1) / ideal_plain,
           "ideal_match_share_shared_prompt": (ideal_shared - 1) / ideal_shared,
           "sft": {"median_s": statistics.median(sft_times), "times_s": sft_times, "peak_bytes": sft_peak},
           "ssft": {}}
    for v in variants:
        times = [x[0] for x in runs[v]]
        ratios = [a / b for a, b in zip(times, sft_times)]
        shares = [x[1] / x[0] for x in runs[v]]
        peak = max(x[2] for x in runs[v])
        out["ssft"][v] = {
            "options": VARIANTS[v], "median_s": statistics.median(times), "times_s": times,
            "ratio": statistics.median(ratios), "match_share": statistics.median(shares),
            "match_median_s": statistics.median(x[1] for x in runs[v]),
            "peak_bytes": peak, "peak_ratio": peak / sft_peak if sft_peak > 0 else None,
            "scoring_counters_per_step": runs[v][-1][3],
        }
    del trainer, model
    return out


# ----------------------------------------------------------------------------- report
def table(results: list[dict]) -> str:
    head = ("| N | M | P | T | L | variant | step s | SSFT/SFT | ideal | ideal (shared P) | match share | "
            "ideal share | share target met | tokens fed | padding | logit positions | peak MB | peak / SFT |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for res in results:
        s = res["shape"]
        key = f"| {s['N']} | {s['M']} | {s['P']} | {s['T']} | {s['L']} "
        sft = res["sft"]
        lines.append(key + f"| SFT-mixed | {sft['median_s']:.3f} | 1 | | | | | | | | | "
                     f"{sft['peak_bytes'] / 2**20:.0f} | 1 |")
        for v, r in res["ssft"].items():
            c = r["scoring_counters_per_step"]
            met = r["match_share"] <= res["ideal_match_share"] + 0.10
            pad = c["padded_tokens"] - c["tokens"]
            peak_ratio = f"{r['peak_ratio']:.2f}" if r["peak_ratio"] is not None else "-"
            lines.append(
                key + f"| SSFT {v} | {r['median_s']:.3f} | {r['ratio']:.2f} | {res['ideal_ratio']:.2f} | "
                f"{res['ideal_ratio_shared_prompt']:.2f} | {100 * r['match_share']:.0f}% | "
                f"{100 * res['ideal_match_share']:.0f}% | {'yes' if met else 'no'} | {c['tokens']} | {pad} | "
                f"{c['logit_positions']} | {r['peak_bytes'] / 2**20:.0f} | {peak_ratio} |")
    return "\n".join(lines)


def machine() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "nproc": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    try:
        import transformers
        import trl

        info["transformers"] = transformers.__version__
        info["trl"] = trl.__version__
    except ImportError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main(argv=None):
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes.split(";") if s.strip()]
    results = []
    for shape in shapes:
        print(f"shape N,M,P,T,L = {shape}", file=sys.stderr, flush=True)
        results.append(run_shape(args, shape))
    report = {
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0]] + (argv or sys.argv[1:])),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(), "args": vars(args), "results": results,
    }
    print(table(results))
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
