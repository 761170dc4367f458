"""GPU check of the 24 GB QLoRA recipe: Qwen2.5-7B's architecture, random weights, NF4, LoRA + forking tokens.

    python benchmarks/memory_gpu.py                       # M=4, L in {4096, 8192}, SSFT and TRL SFT, 24 GB cap
    python benchmarks/memory_gpu.py --lengths 4096 --cases ssft --cap-gb 24 --json docs/memory_gpu.json

NOT RUN in the session that wrote it (no GPU was lent to that task); docs/performance.md "Memory" gives
the numbers the peak model of `benchmarks/memory.py` predicts for it.

What it does: builds `Qwen2Config` with Qwen2.5-7B's shapes (hidden 3584, 28 layers, 28 heads, 4 KV
heads, MLP 18944, vocabulary 152,064, untied) with random bf16 weights, saves it once to `--work-dir`
(about 15 GB of disk) and reloads it in NF4 through bitsandbytes (`BitsAndBytesConfig(load_in_4bit=True,
bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=bfloat16)`), as the
recipes do. Each case then runs in a fresh subprocess (peaks never mix) under
`torch.cuda.set_per_process_memory_fraction(cap / total)`:

- ``ssft``: `SSFTTrainer`, LoRA r=32 on every linear layer, 6 forking tokens (trainable rows), one question
  of M traces of L tokens after a 200-token prompt, `ssft_match_tokens=512`, the library's memory
  defaults (`ssft_logits_chunk_tokens=256`, `ssft_loss_slice_tokens=None`, `ssft_match_max_tokens=16384`),
  gradient checkpointing, `paged_adamw_8bit`, bf16;
- ``sft``: TRL `SFTTrainer` with its defaults (`chunked_nll`, gradient checkpointing) on ONE trace of the
  same length, same LoRA / optimizer / dtype.

A case runs one warm-up step (creates the optimizer states, cuBLAS workspaces) and then `--steps`
measured steps (`training_step` + `optimizer.step` + `zero_grad`); it prints the peak
`torch.cuda.max_memory_allocated` (total, and above the memory allocated before the step), the peak
reserved memory, and the median step time; an out-of-memory error under the cap is reported as OOM.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from memory import ARCHS, build_tokenizer  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

GiB = 2**30
PROMPT = 200


def ensure_checkpoint(path: str, vocab: int, arch: dict | None = None) -> None:
    """Random-weight checkpoint (bf16; Qwen2.5-7B's shape unless `arch` gives others) and its word-level
    tokenizer at `path`, once."""
    if os.path.exists(os.path.join(path, "config.json")):
        return
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    tok = build_tokenizer(vocab)
    cfg = Qwen2Config(**(arch or ARCHS["qwen2.5-7b"]), tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=None, max_position_embeddings=32768,
                      rope_theta=1000000.0)
    torch.manual_seed(0)
    t0 = time.time()
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init of 7B: seconds on a GPU
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(path, max_shard_size="4GB")
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    tok.save_pretrained(path)
    print(f"checkpoint written to {path} in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)


def run_case(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    cuda = spec.get("device", "cuda") == "cuda"  # "cpu": the same code on a tiny checkpoint (gpu_check --dry-run)
    total = torch.cuda.get_device_properties(0).total_memory if cuda else 0
    cap = spec["cap_gb"] * 1e9
    if cuda:
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), 0)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_storage=torch.bfloat16)
    path = spec["path"]
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, dtype=torch.bfloat16,
                                                 device_map={"": 0 if cuda else "cpu"}, attn_implementation=spec["attn"])
    tok = build_tokenizer(model.config.vocab_size)  # in-process (a saved word-level `qwen2` tokenizer may reload as BPE)
    lora = LoraConfig(r=32, lora_alpha=16, lora_dropout=0.05, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    g = torch.Generator().manual_seed(0)
    V, L, M = model.config.vocab_size, spec["L"], spec["M"]

    def ids(n):
        return torch.randint(4, V, (n,), generator=g).tolist()

    prompt, traces = ids(PROMPT), [ids(L) for _ in range(M)]
    common = dict(output_dir=os.path.join(spec["work_dir"], "out"), report_to=[], bf16=cuda, use_cpu=not cuda,
                  per_device_train_batch_size=1, save_strategy="no", disable_tqdm=True, seed=0,
                  max_length=PROMPT + 1 + L, gradient_checkpointing=True, optim=spec["optim"])
    if spec["case"] == "sft":
        from trl import SFTConfig, SFTTrainer

        ds = Dataset.from_list([{"input_ids": prompt + traces[0], "labels": [-100] * PROMPT + traces[0]}])
        trainer = SFTTrainer(model=model, args=SFTConfig(**common), train_dataset=ds, processing_class=tok,
                             peft_config=lora)
    else:
        from trl_ssft import SSFTConfig, SSFTTrainer

        cfg = SSFTConfig(**common, ssft_num_fork_tokens=6, ssft_assignment=spec["case"],
                         **{"ssft_match_tokens": 512, **spec.get("ssft", {})})
        ds = Dataset.from_list([{"prompt_ids": prompt, "trace_ids": traces}])
        trainer = SSFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=lora)
    model = trainer.model
    model.train()
    batch = trainer.data_collator([trainer.train_dataset[0]])
    inputs = trainer._prepare_inputs(batch)
    dev = "cuda" if cuda else "cpu"
    if "ssft_num_loss_tokens" in batch:
        num_items = torch.tensor(int(batch["ssft_num_loss_tokens"].sum()), device=dev)
    else:
        num_items = torch.tensor(int((batch["labels"][:, 1:] != -100).sum()), device=dev)
    trainer.create_optimizer()
    opt = trainer.optimizer
    out = dict(spec=spec, device=torch.cuda.get_device_name(0) if cuda else "cpu", total_gb=total / 1e9,
               trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad))
    times, peaks = [], []
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    stat = (lambda f: f()) if cuda else (lambda f: 0)
    try:
        for k in range(1 + spec["steps"]):
            sync()
            stat(torch.cuda.reset_peak_memory_stats)
            before = stat(torch.cuda.memory_allocated)
            t0 = time.perf_counter()
            trainer.training_step(model, inputs, num_items)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync()
            if k:
                times.append(time.perf_counter() - t0)
                peaks.append(dict(max_allocated=stat(torch.cuda.max_memory_allocated), before=before,
                                  max_reserved=stat(torch.cuda.max_memory_reserved)))
    except torch.OutOfMemoryError as e:
        out["error"] = f"OOM under {spec['cap_gb']} GB: {str(e)[:300]}"
        return out
    worst = max(peaks, key=lambda x: x["max_allocated"])
    out.update(step_s=statistics.median(times), times_s=times, peak_allocated_gb=worst["max_allocated"] / 1e9,
               peak_above_start_gb=(worst["max_allocated"] - worst["before"]) / 1e9,
               peak_reserved_gb=worst["max_reserved"] / 1e9, static_gb=worst["before"] / 1e9)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--one", help="(internal) run one JSON case in this process")
    p.add_argument("--lengths", default="4096,8192")
    p.add_argument("--m", type=int, default=4)
    p.add_argument("--cases", default="sft,hungarian", help="sft (TRL, one trace), hungarian (SSFT), none (mixed)")
    p.add_argument("--cap-gb", type=float, default=24.0, help="torch.cuda.set_per_process_memory_fraction cap")
    p.add_argument("--steps", type=int, default=2, help="measured steps after one warm-up step")
    p.add_argument("--optim", default="paged_adamw_8bit")
    p.add_argument("--attn", default="sdpa")
    p.add_argument("--work-dir", default="/tmp/ssft_memory_gpu")
    p.add_argument("--json", default="docs/memory_gpu.json")
    args = p.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(run_case(json.loads(args.one))), flush=True)
        return
    path = os.path.join(args.work_dir, "qwen2.5-7b-random")
    ensure_checkpoint(path, ARCHS["qwen2.5-7b"]["vocab_size"])
    results = []
    for L in [int(x) for x in args.lengths.split(",")]:
        for case in args.cases.split(","):
            spec = dict(case=case, L=L, M=1 if case == "sft" else args.m, cap_gb=args.cap_gb, steps=args.steps,
                        optim=args.optim, attn=args.attn, path=path, work_dir=args.work_dir)
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", json.dumps(spec)],
                                  capture_output=True, text=True)
            line = next((x for x in reversed(proc.stdout.splitlines()) if x.startswith("RESULT ")), None)
            r = json.loads(line[7:]) if line else dict(spec=spec, error=proc.stderr[-1500:])
            results.append(r)
            print(json.dumps(r), flush=True)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(results, f, indent=1)
    print("\n| L | case | M | peak allocated GB | above start GB | reserved GB | step s | / TRL SFT peak | / TRL SFT time |")
    print("|---|---|---|---|---|---|---|---|---|")
    sft = {r["spec"]["L"]: r for r in results if r["spec"]["case"] == "sft" and "error" not in r}
    for r in results:
        s = r["spec"]
        if "error" in r:
            print(f"| {s['L']} | {s['case']} | {s['M']} | {r['error'][:80]} | | | | | |")
            continue
        b = sft.get(s["L"])
        rp = f"{r['peak_allocated_gb'] / b['peak_allocated_gb']:.2f}" if b else "-"
        rt = f"{r['step_s'] / b['step_s']:.2f}" if b else "-"
        print(f"| {s['L']} | {s['case']} | {s['M']} | {r['peak_allocated_gb']:.2f} | {r['peak_above_start_gb']:.2f} | "
              f"{r['peak_reserved_gb']:.2f} | {r['step_s']:.2f} | {rp} | {rt} |")


if __name__ == "__main__":
    main()
