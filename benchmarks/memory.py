"""Peak memory of one training step: TRL's default SFT step on ONE trace against an SSFT step on one question.

    .venv/bin/python benchmarks/memory.py            # CPU grid -> docs/memory.json, docs/memory.png, tables
    .venv/bin/python benchmarks/memory.py --predict  # the peak model only: 7B QLoRA recipe, 24 GB limits

Every measurement runs in a fresh subprocess (``--one SPEC``), so the peaks of different steps never mix
and no allocator cache carries over. A measurement:

1. builds a random-weight Qwen2 model from a config (Qwen2.5's vocabulary of 151,936 and a hidden size of
   256 or 896 (Qwen2.5-0.5B's), 2 layers, fp32) and a word-level tokenizer of exactly that vocabulary
   (no hub, no training corpus), and a tokenized dataset of random token ids: for TRL ``input_ids`` +
   ``labels`` of ``[prompt, trace]`` (loss on the trace), for SSFT ``prompt_ids`` + ``trace_ids``;
2. builds the trainer with its defaults (TRL ``SFTTrainer``: ``loss_type=chunked_nll``, gradient
   checkpointing on, fused AdamW; ``SSFTTrainer``: the same plus ``ssft_*`` defaults:
   ``ssft_logits_chunk_tokens=256``, ``ssft_loss_slice_tokens=None``, ``ssft_match_max_tokens=16384``),
   full fine-tuning, LoRA (r=16 on every linear layer) or QLoRA (NF4 via bitsandbytes on CPU);
3. creates the optimizer and its states (one update with zero gradients), so the measured step is a
   steady-state step, not the first one (which also allocates the optimizer states);
4. measures ONE step: ``trainer.training_step`` (SSFT: matching pass + assignment + set loss forward and
   backward; SFT: forward + backward) + ``optimizer.step()`` + ``zero_grad(set_to_none=True)``.

Peak memory = peak resident set size during the step minus the resident size just before it. The
peak is the kernel's ``VmHWM`` (reset through ``/proc/self/clear_refs`` = 5 just before the step), so
no sampling thread can miss a short spike. glibc malloc would otherwise keep freed blocks below its
(dynamic) mmap threshold in the heap, which makes RSS lag behind the live allocations; each child runs
with ``MALLOC_MMAP_THRESHOLD_=65536`` (fixed: large tensors are mmap'ed and returned to the kernel at
free) and ``malloc_trim(0)`` before the baseline, so RSS follows live tensor bytes closely, the CPU
analogue of ``torch.cuda.max_memory_allocated``. The figure includes the gradients (allocated during
the step, freed at its end) and any temporary of the optimizer update; the weights and optimizer
states exist before the step (the baseline), and are added back by the peak model below.

The peak model (`predict_peak`) adds up: static memory (weights, trainable-parameter optimizer states)
+ gradients + max over the step's phases of (activations kept for the backward + the transient of the
phase): the set-loss / SFT forward+backward over one slice (per-token activations with or without
gradient checkpointing, plus ``chunk x V`` fp32 logits, log-softmax and gradient), and the no-grad
matching pass (one chunk of N x M rows: key/value cache of all layers, one layer's transients, the
shared prompt's cache, ``logits_chunk x V`` fp32 logits). It is checked against the CPU measurements
(`--check` prints predicted vs measured) and predicts the 7B QLoRA recipe (Qwen2.5-7B, NF4, bf16).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

MiB = 2**20
GiB = 2**30
GB = 1e9  # the GPU figures are in decimal GB (the 24 GB cap is 24e9 bytes)

ARCHS = {
    # Qwen2 architecture with Qwen2.5's vocabulary, 2 layers (random weights)
    "h256": dict(hidden_size=256, intermediate_size=1376, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=151936),
    # Qwen2.5-0.5B's hidden size / MLP / heads, 2 layers
    "h896": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=2, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936),
    # Qwen2.5-7B (for the prediction and benchmarks/memory_gpu.py)
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936),
    "qwen2.5-32b": dict(hidden_size=5120, intermediate_size=27648, num_hidden_layers=64, num_attention_heads=40,
                        num_key_value_heads=8, vocab_size=152064),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064),
}

N_FORK, PROMPT, MATCH_T = 6, 64, 256  # N = max(6, M): every trace of the question gets a token (no subsampling)


# ============================================================================= one measurement (child process)
def build_tokenizer(vocab_size: int):
    """`trl_ssft.demo.tiny.build_word_tokenizer`: exactly `vocab_size` entries."""
    from trl_ssft.demo.tiny import build_word_tokenizer

    return build_word_tokenizer(vocab_size)


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(key)


def _trim():
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def measure_one(spec: dict) -> dict:
    import random

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.set_num_threads(spec.get("threads", 2))
    torch.manual_seed(0)
    arch = dict(ARCHS[spec["arch"]])
    vocab = arch["vocab_size"]
    tok = build_tokenizer(vocab)
    config = Qwen2Config(**arch, tie_word_embeddings=spec["tied"], pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, bos_token_id=None, max_position_embeddings=32768,
                         rope_theta=1000000.0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    method, work = spec["method"], spec.get("work_dir", "/tmp/ssft_memory")
    peft_config = quant = None
    if method in ("lora", "qlora"):
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                 "down_proj"])
    if method == "qlora":  # 4-bit weights need from_pretrained: save the random model, reload it quantised
        from transformers import BitsAndBytesConfig

        path = os.path.join(work, f"model_{spec['arch']}_{'tied' if spec['tied'] else 'untied'}_{os.getpid()}")
        model.save_pretrained(path)
        del model
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                   bnb_4bit_compute_dtype=torch.float32)
        model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, dtype=torch.float32)
        import shutil

        shutil.rmtree(path, ignore_errors=True)

    rng = random.Random(spec.get("seed", 0))
    L, M = spec["L"], spec["M"]
    prompt = [rng.randrange(4, vocab) for _ in range(PROMPT)]
    traces = [[rng.randrange(4, vocab) for _ in range(L)] for _ in range(M)]
    common = dict(output_dir=os.path.join(work, "out"), report_to=[], use_cpu=True, bf16=False,
                  per_device_train_batch_size=1, save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
                  seed=0, max_length=PROMPT + 1 + L, gradient_checkpointing=spec.get("gc", True))
    if spec["trainer"] == "sft":
        from trl import SFTConfig, SFTTrainer

        ds = Dataset.from_list([{"input_ids": prompt + traces[0], "labels": [-100] * PROMPT + traces[0]}])
        trainer = SFTTrainer(model=model, args=SFTConfig(**common), train_dataset=ds, processing_class=tok,
                             peft_config=peft_config)
        loss_type = trainer.args.loss_type
    else:
        from trl_ssft import SSFTConfig, SSFTTrainer

        extra = {k: v for k, v in spec.get("ssft", {}).items()}
        cfg = SSFTConfig(**common, ssft_num_fork_tokens=max(N_FORK, M), ssft_match_tokens=MATCH_T,
                         ssft_assignment=spec["trainer"], **extra)
        ds = Dataset.from_list([{"prompt_ids": prompt, "trace_ids": traces}])
        trainer = SSFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=peft_config)
        loss_type = "ssft"
    model = trainer.model
    model.train()
    if trainer.args.gradient_checkpointing and not getattr(model, "is_gradient_checkpointing", False):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    batch = trainer.data_collator([trainer.train_dataset[0]])
    inputs = trainer._prepare_inputs(batch)
    if "ssft_num_loss_tokens" in batch:
        num_items = torch.tensor(int(batch["ssft_num_loss_tokens"].sum()))
    else:
        num_items = torch.tensor(int((batch["labels"][:, 1:] != -100).sum()))
    trainer.create_optimizer()
    opt = trainer.optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:  # optimizer states now, outside the measured step
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    n_train = sum(p.numel() for p in params)
    n_all = sum(p.numel() for p in model.parameters())
    _trim()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status("VmRSS")
    t0 = time.perf_counter()
    trainer.training_step(model, inputs, num_items)
    opt.step()
    opt.zero_grad(set_to_none=True)
    dt = time.perf_counter() - t0
    peak = _status("VmHWM") - base
    return dict(spec=spec, peak_bytes=peak, base_rss_bytes=base, step_s=dt, trainable_params=n_train,
                params=n_all, loss_type=loss_type, gradient_checkpointing=bool(trainer.args.gradient_checkpointing),
                optim=str(trainer.args.optim))


def run_child(spec: dict, python: str, timeout: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="131072",
               PYTHONWARNINGS="ignore", OMP_NUM_THREADS=str(spec.get("threads", 2)))
    cmd = [python, os.path.abspath(__file__), "--one", json.dumps(spec)]
    t0 = time.time()
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(spec=spec, error=f"timeout after {timeout}s")
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("RESULT "):
            out = json.loads(line[7:])
            out["wall_s"] = time.time() - t0
            return out
    return dict(spec=spec, error=(p.stderr or p.stdout)[-2000:])


# ============================================================================= the peak model
def arch_numbers(arch: dict, tied: bool) -> dict:
    h, i, n_l = arch["hidden_size"], arch["intermediate_size"], arch["num_hidden_layers"]
    kv = h // arch["num_attention_heads"] * arch["num_key_value_heads"]
    layer = h * (h + 2 * kv) + (h + 2 * kv) + h * h + 3 * h * i + 2 * h  # attention (+bias) + MLP + 2 norms
    emb = arch["vocab_size"] * h
    return dict(h=h, i=i, layers=n_l, kv=kv, layer_params=layer, emb=emb, vocab=arch["vocab_size"],
                params=n_l * layer + emb * (1 if tied else 2) + h, linear_params=n_l * (layer - 2 * h - h - 2 * kv))


def predict_peak(arch: dict, *, L: int, M: int = 1, kind: str = "sft", method: str = "full", tied: bool = True,
                 gc: bool = True, act_bytes: int = 4, weight_bytes: float = 4.0, lora_r: int = 16,
                 lora_dropout: bool = False, opt_bytes: int = 8, prompt: int = PROMPT, n_fork: int = N_FORK,
                 match_t: int = MATCH_T, match_max_tokens: int = 16384, logits_chunk: int = 256,
                 trl_chunk: int = 256, slice_tokens: int | None = None, shards: int = 1,
                 coef: dict | None = None) -> dict:
    """Peak memory (bytes) of one step, by parts. kind: sft (TRL, one trace), ssft, mixed (SFT-mixed), old
    (SSFT before the memory-bounded set loss: all M rows in one forward, all their logits at once).

    static: weights + optimizer states (exist before the step). step: the peak above them (what
    benchmarks/memory.py measures) = max(train phase, matching phase), where

    - train phase = gradients + activations kept for the backward of one slice (one sequence by default;
      with gradient checkpointing one hidden state per layer and token, else every layer's saved tensors)
      + max(one layer recomputed and back-propagated (checkpointing), one chunk of fp32 logits and their
      gradient);
    - matching phase (SSFT only, no grad) = one chunk of the N x M scoring rows (`match_max_tokens`
      padded tokens): key/value cache of all layers + one layer's transients + one chunk of logits.
    """
    c = dict(DEFAULT_COEF if coef is None else coef)
    a = arch_numbers(arch, tied)
    h, i, n_l, kv = a["h"], a["i"], a["layers"], a["kv"]
    V = a["vocab"] + (n_fork if kind in ("ssft", "old") else 0)
    # ---- static: weights and optimizer states of the trainable parameters
    lora = n_l * lora_r * ((h + h) + (h + kv) * 2 + (h + h) + (h + i) * 2 + (i + h))  # A and B of 7 modules
    if method == "full":
        trainable, grad_bytes = a["params"], weight_bytes
        weights = a["params"] * weight_bytes
    else:
        fork_rows = (n_fork * h * (1 if tied else 2)) if kind in ("ssft", "old") else 0
        trainable, grad_bytes = lora + fork_rows, 4
        linear_bytes = (0.5 + 4 / 64 / 4 + 4 / 64 / 256) if method == "qlora" else weight_bytes  # NF4, nested absmax
        weights = a["linear_params"] * linear_bytes + (a["params"] - a["linear_params"]) * weight_bytes + lora * 4
    static = (weights + trainable * opt_bytes) / shards
    grads = trainable * grad_bytes / shards
    if shards > 1:  # FSDP full-shard: about two decoder layers gathered at once (prefetch)
        static += 2 * a["layer_params"] * weight_bytes
    # ---- the forward + backward of one slice (TRL: its one sequence)
    seq = prompt + L if kind == "sft" else prompt + 1 + L
    rows = 1
    if kind == "old":
        rows = M
    elif kind != "sft":
        if slice_tokens is None and method == "full":  # `rows.auto_slice_tokens`: [V, h] grad vs kept activations
            slice_tokens = V * h // (n_l * (h if gc else 10 * h + 3 * i))
        if slice_tokens is not None:
            rows = max(1, min(M, slice_tokens // seq))
    tok = seq * rows
    layer_elems = c["act_h"] * h + c["act_i"] * i + c["act_kv"] * kv
    if method != "full" and lora_dropout:
        layer_elems += 6 * h + i  # dropout copies of the LoRA inputs
    kept_layer = h if gc else layer_elems
    acts = tok * (n_l * kept_layer + c["act_top"] * h) * act_bytes
    recompute = tok * layer_elems * act_bytes * c["bwd"]  # one layer's activations + their gradients
    if not gc:
        recompute = tok * c["act_i"] * i * act_bytes  # the largest activation gradients of one layer
    chunk = tok if kind == "old" else (trl_chunk if kind == "sft" else logits_chunk)
    # [V, h] temporaries of the output layer's backward: full FT, the chunk's weight gradient before it is
    # accumulated; PEFT trainable forking-token rows (SSFT), the merged weight and its full gradient
    peft_tokens = method != "full" and kind in ("ssft", "old")
    head = V * h * weight_bytes * (c["head_full"] if method == "full" else c["head_peft"] if peft_tokens else 0)
    # full FT, several slices: the output weight's gradient from the earlier slices (.grad) coexists with the
    # current slice's gradient buffer of that weight (measured: +1 [V, h] at h896, see docs/performance.md)
    n_slices = 1 if kind in ("sft", "old") else -(-M // rows)
    if method == "full" and n_slices > 1:
        head += V * h * weight_bytes * c["head_acc"]
    logits = min(chunk, tok) * V * 4 * c["logit_copies"] + head
    train_phase = grads + acts + max(recompute, logits)
    # ---- matching pass (no grad), SSFT only
    match_phase = 0
    if kind in ("ssft", "old"):
        new = match_t  # [fork, trace[:T-1]] after the shared prompt
        r_chunk = max(1, min(n_fork * M, match_max_tokens // (prompt + new)))
        kv_cache = n_l * 2 * kv * r_chunk * (prompt + new) * act_bytes
        layer_tmp = r_chunk * new * (c["match_h"] * h + c["match_i"] * i) * act_bytes
        m_logits = min(logits_chunk if kind == "ssft" else 1024, r_chunk * match_t) * V * 4 * c["match_logit_copies"]
        merged = V * h * weight_bytes if peft_tokens else 0  # PEFT builds the merged output weight per call
        match_phase = kv_cache + layer_tmp + m_logits + merged
    step = max(train_phase, match_phase)
    return dict(static=static, weights=weights, grads=grads, acts=acts, logits=logits, recompute=recompute,
                train_phase=train_phase, match_phase=match_phase, step=step, total=static + step,
                trainable=trainable)


# coefficients, in elements per token (fitted by hand to the CPU measurements; docs/performance.md "Memory"):
# act_h / act_i / act_kv: tensors of one decoder layer saved for the backward (x hidden, x MLP width, x KV
# width); act_top: outside the layers (embedding output, final norm); bwd: recomputed layer + its gradients;
# logit_copies: fp32 [chunk, V] tensors alive at once (logits, log-softmax, their gradients);
# match_*: one layer's no-grad transients and the logits slice of the matching pass.
# head_full / head_peft: [V, h] tensors of the output layer's backward (full FT: the chunk's weight gradient;
# PEFT trainable tokens: the merged weight, whose full gradient is then index-selected).
# head_acc: the same for the gradient accumulated over slices (full FT, more than one slice).
DEFAULT_COEF = dict(act_h=10.0, act_i=4.0, act_kv=3.0, act_top=4.0, bwd=1.5, logit_copies=3.0, head_full=1.0,
                    head_peft=1.0, head_acc=1.0, match_h=4.0, match_i=3.0, match_logit_copies=2.0)


# ============================================================================= the grid, tables, plot
def grid(quick: bool) -> list[dict]:
    specs = []

    def add(trainers, **kw):
        for t in trainers:
            s = dict(dict(arch="h256", tied=True, method="full", gc=True), trainer=t, **kw)
            if t == "sft":
                s["M"] = 1
            if s not in specs:
                specs.append(s)

    # priority order (the shared 2-core CPU is slow: the list is cut where time runs out)
    add(["sft", "hungarian"], L=512, M=4)
    add(["sft", "hungarian"], L=1024, M=4)
    add(["old"], L=512, M=4)
    add(["sft", "hungarian"], L=512, M=4, method="qlora", tied=False)
    add(["none"], L=512, M=4)
    add(["hungarian"], L=512, M=8)
    add(["sft", "hungarian"], L=2048, M=4)
    add(["sft", "hungarian"], L=512, M=4, arch="h896")
    add(["none"], L=512, M=4, arch="h896")  # where SSFT's extra goes at h896: matching pass or set-loss slices?
    add(["hungarian"], L=512, M=4, arch="h896", ssft=dict(ssft_loss_slice_tokens=10**9))  # all M rows, one slice
    add(["sft", "hungarian"], L=512, M=4, gc=False)
    add(["sft", "hungarian"], L=512, M=4, method="lora")
    add(["hungarian"], L=1024, M=8)
    if not quick:
        add(["none"], L=1024, M=4)
        add(["hungarian"], L=2048, M=8)
        add(["sft", "hungarian"], L=4096, M=4)
    for s in specs:
        if s["trainer"] == "old":
            s["trainer"] = "hungarian"
            s["ssft"] = dict(ssft_logits_chunk_tokens=10**9, ssft_loss_slice_tokens=10**9)
            s["old"] = True
    return specs


def label(s: dict) -> str:
    t = {"sft": "TRL SFT (1 trace)", "hungarian": "SSFT hungarian", "none": "SFT-mixed"}[s["trainer"]]
    if s.get("old"):
        return t + " (old: unbounded)"
    if s.get("ssft"):
        t += " (" + ", ".join(f"{k.removeprefix('ssft_')}={v:.0e}" if v >= 10**6 else f"{k.removeprefix('ssft_')}={v}"
                              for k, v in s["ssft"].items()) + ")"
    return t


def key(s: dict) -> tuple:
    return (s["arch"], s["tied"], s["method"], s["gc"], s["L"])


def model_kind(s: dict) -> str:
    return "old" if s.get("old") else {"sft": "sft", "hungarian": "ssft", "none": "mixed"}[s["trainer"]]


def predicted(s: dict) -> dict:
    return predict_peak(ARCHS[s["arch"]], L=s["L"], M=s["M"], kind=model_kind(s), method=s["method"], tied=s["tied"],
                        gc=s["gc"], n_fork=max(N_FORK, s["M"]),
                        slice_tokens=None if s.get("old") else s.get("ssft", {}).get("ssft_loss_slice_tokens"))


def table(results: list[dict]) -> str:
    sft = {key(r["spec"]): r for r in results if "peak_bytes" in r and r["spec"]["trainer"] == "sft"}
    head = ("| model | tied | method | GC | L | M | step | step peak MiB (measured) | / TRL SFT | "
            "with weights + opt. states: / TRL SFT | predicted MiB | step s | / (M x TRL SFT step) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    rank = {"sft": 0, "hungarian": 1, "none": 2}
    order = sorted(results, key=lambda r: (r["spec"]["arch"], r["spec"]["method"] != "full", r["spec"]["method"],
                                           not r["spec"]["tied"], not r["spec"]["gc"], r["spec"]["L"],
                                           bool(r["spec"].get("old")), rank[r["spec"]["trainer"]], r["spec"]["M"]))
    for r in order:
        s = r["spec"]
        if "peak_bytes" not in r:
            lines.append(f"| {s['arch']} | {s['tied']} | {s['method']} | {s['gc']} | {s['L']} | {s['M']} | "
                         f"{label(s)} | failed: {r.get('error', '')[:60]!r} | | | | | |")
            continue
        base = sft.get(key(s))
        ratio = f"{r['peak_bytes'] / base['peak_bytes']:.2f}" if base else "-"
        static = predicted(s)["static"]
        sft_static = predicted(base["spec"])["static"] if base else 0
        tot = f"{(static + r['peak_bytes']) / (sft_static + base['peak_bytes']):.2f}" if base else "-"
        m_eff = 1 if s["trainer"] == "sft" else s["M"]
        tratio = f"{r['step_s'] / (m_eff * base['step_s']):.2f}" if base else "-"
        pred = predicted(s)["step"] / MiB
        lines.append(f"| {s['arch']} | {'tied' if s['tied'] else 'untied'} | {s['method']} | "
                     f"{'on' if s['gc'] else 'off'} | {s['L']} | {s['M'] if s['trainer'] != 'sft' else 1} | "
                     f"{label(s)} | {r['peak_bytes'] / MiB:.0f} | {ratio} | {tot} | {pred:.0f} | {r['step_s']:.1f} | "
                     f"{tratio} |")
    return "\n".join(lines)


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401

    ok = [r for r in results if "peak_bytes" in r]
    base = [r for r in ok if r["spec"]["arch"] == "h256" and r["spec"]["tied"] and r["spec"]["method"] == "full"
            and r["spec"]["gc"] and not r["spec"].get("old")]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw=dict(width_ratios=[1, 1.2]))
    styles = {("sft", 1): ("TRL SFT, 1 trace", "k", "o"), ("hungarian", 4): ("SSFT, M=4", "C0", "s"),
              ("hungarian", 8): ("SSFT, M=8", "C1", "s"), ("none", 4): ("SFT-mixed, M=4", "C0", "x"),
              ("none", 8): ("SFT-mixed, M=8", "C1", "x")}
    sft = {r["spec"]["L"]: r["peak_bytes"] for r in base if r["spec"]["trainer"] == "sft"}
    for (t, m), (name, color, marker) in styles.items():
        pts = sorted((r["spec"]["L"], r["peak_bytes"] / MiB) for r in base
                     if r["spec"]["trainer"] == t and (t == "sft" or r["spec"]["M"] == m))
        if pts:
            ax.plot(*zip(*pts), marker=marker, color=color, ls="-" if t != "none" else ":", label=name)
    if sft:
        ls = sorted(sft)
        ax.plot(ls, [1.25 * sft[x] / MiB for x in ls], color="r", ls="--", label="1.25 x TRL SFT")
        ax.plot(ls, [predict_peak(ARCHS["h256"], L=x, kind="sft")["step"] / MiB for x in ls], color="grey",
                ls="-.", lw=1, label="model: TRL SFT")
    for r in ok:
        if r["spec"].get("old"):
            ax.scatter([r["spec"]["L"]], [r["peak_bytes"] / MiB], color="C3", marker="^", zorder=5,
                       label=f"SSFT before (unbounded), M={r['spec']['M']}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("trace length L (tokens)")
    ax.set_ylabel("peak above the pre-step memory (MiB)")
    ax.set_title("h256: V=151,936, hidden 256, 2 layers, fp32, GC on", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    # right: SSFT / TRL SFT for every measured configuration
    sft_all = {key(r["spec"]): r for r in ok if r["spec"]["trainer"] == "sft"}
    names, vals, cols = [], [], []
    for r in ok:
        s = r["spec"]
        b = sft_all.get(key(s))
        if s["trainer"] == "sft" or b is None:
            continue
        names.append(f"{label(s).replace('SSFT hungarian', 'SSFT')} {s['arch']} "
                     f"{'tied' if s['tied'] else 'untied'} {s['method']} GC {'on' if s['gc'] else 'off'} "
                     f"L={s['L']} M={s['M']}")
        vals.append(r["peak_bytes"] / b["peak_bytes"])
        cols.append("C3" if s.get("old") else ("C2" if s["trainer"] == "none" else "C0"))
    y = list(range(len(names)))
    bx.barh(y, vals, color=cols)
    bx.axvline(1.25, color="r", ls="--", label="goal: 1.25")
    bx.axvline(1.0, color="k", lw=0.8)
    bx.set_yticks(y, names, fontsize=6)
    bx.invert_yaxis()
    bx.set_xscale("log")
    bx.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    bx.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    bx.set_xlabel("step peak / TRL SFT step peak on one trace (log)")
    for yi, v in zip(y, vals):
        bx.text(v, yi, f" {v:.2f}", va="center", fontsize=6)
    bx.legend(fontsize=7)
    fig.suptitle("Peak memory of one training step, CPU (benchmarks/memory.py)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def prediction_7b() -> str:
    arch = ARCHS["qwen2.5-7b"]
    lines = ["| L | step | weights + opt. states GB | grads GB | activations GB | logits / recompute GB | "
             "matching pass GB | predicted peak GB | / TRL SFT | fits 24 GB (<= 21.6 GB allocated) |", "|" + "---|" * 10]
    for L in (2048, 4096, 8192, 16384, 32768):
        sft = None
        for kind, m in (("sft", 1), ("ssft", 4), ("ssft", 6)):
            p = predict_peak(arch, L=L, M=m, kind=kind, **RECIPE_7B)
            tot = p["total"]
            if kind == "sft":
                sft = tot
            name = "TRL SFT (1 trace)" if kind == "sft" else f"SSFT M={m}"
            lines.append(f"| {L} | {name} | {p['static'] / GB:.2f} | {p['grads'] / GB:.2f} | {p['acts'] / GB:.2f} | "
                         f"{max(p['logits'], p['recompute']) / GB:.2f} | {p['match_phase'] / GB:.2f} | "
                         f"{tot / GB:.2f} | {tot / sft:.2f} | {'yes' if tot <= FIT_BUDGET else 'no'} |")
    return "\n".join(lines)


# examples/yaml/axolotl_qlora_8b.yaml / trl_qlora_24gb.yaml: NF4 linear layers, bf16 embeddings and activations,
# LoRA r=32 with dropout on every linear layer, AdamW states in fp32 (8 B per trainable parameter; the
# 8-bit paged AdamW of the Axolotl recipe needs 2), prompt ~200 tokens, T=512, N=6
RECIPE_7B = dict(method="qlora", tied=False, gc=True, act_bytes=2, weight_bytes=2, lora_r=32, lora_dropout=True,
                 opt_bytes=8, prompt=200, match_t=512, match_max_tokens=16384)
# a 24 GB card: torch.cuda.set_per_process_memory_fraction caps the allocator at 24e9 bytes; keep 10% of it
# for fragmentation (reserved - allocated). The CUDA context (~0.5 GB) is outside the allocator.
FIT_BUDGET = 0.9 * 24e9


def longest_fitting(arch=None, budget=None, m=6) -> int:
    budget = FIT_BUDGET if budget is None else budget
    arch = arch or ARCHS["qwen2.5-7b"]
    best = 0
    for L in range(512, 65537, 512):
        p = predict_peak(arch, L=L, M=m, kind="ssft", **RECIPE_7B)
        if p["total"] <= budget:
            best = L
    return best


# the other recipes (examples/yaml): (name, arch, tied, predict_peak arguments)
OTHER_RECIPES = [
    ("axolotl_lora_1.5b.yaml (LoRA r=32, bf16, AdamW fp32 states)", "qwen2.5-1.5b", True,
     dict(method="lora", weight_bytes=2, act_bytes=2, lora_r=32, lora_dropout=True, opt_bytes=8, prompt=200,
          match_t=512, match_max_tokens=32768)),
    ("axolotl_full_32b_fsdp.yaml (full FT, bf16 weights/grads/AdamW states, FSDP over 8 GPUs)", "qwen2.5-32b", False,
     dict(method="full", weight_bytes=2, act_bytes=2, opt_bytes=4, prompt=200, match_t=1000,
          match_max_tokens=32768, shards=8)),
]


def recipe_predictions() -> str:
    lines = ["| recipe | L | step | static GB | step peak GB | predicted peak GB | / TRL SFT |", "|---|---|---|---|---|---|---|"]
    for name, arch, tied, kw in OTHER_RECIPES:
        for L in (4096, 8192, 16384):
            sft = predict_peak(ARCHS[arch], L=L, kind="sft", tied=tied, **kw)["total"]
            for kind, m in (("sft", 1), ("ssft", 4)):
                p = predict_peak(ARCHS[arch], L=L, M=m, kind=kind, tied=tied, **kw)
                lines.append(f"| {name} | {L} | {'TRL SFT (1 trace)' if kind == 'sft' else f'SSFT M={m}'} | "
                             f"{p['static'] / GB:.1f} | {p['step'] / GB:.1f} | {p['total'] / GB:.1f} | "
                             f"{p['total'] / sft:.2f} |")
    return "\n".join(lines)


def machine() -> dict:
    import torch
    import transformers
    import trl

    cpu = ""
    try:
        cpu = next(x.split(":", 1)[1].strip() for x in open("/proc/cpuinfo") if x.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = _status("VmRSS") and next(int(x.split()[1]) for x in open("/proc/meminfo") if x.startswith("MemTotal"))
    return dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), cpu=cpu,
                nproc=os.cpu_count(), mem_total_gib=round(mem / 2**20, 1), torch=torch.__version__,
                transformers=transformers.__version__, trl=trl.__version__, python=platform.python_version())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--one", help="(internal) measure one JSON spec in this process")
    p.add_argument("--quick", action="store_true", help="small grid (L <= 2048, h256 tied full only)")
    p.add_argument("--only", default="", help="run only specs whose label/arch/method contains this")
    p.add_argument("--json", default="docs/memory.json")
    p.add_argument("--plot", default="docs/memory.png")
    p.add_argument("--timeout", type=int, default=1200, help="seconds per measurement")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--resume", action="store_true", help="keep results already in --json, run the missing ones")
    p.add_argument("--report", action="store_true", help="tables and plot from --json, nothing run")
    p.add_argument("--predict", action="store_true", help="print the 7B QLoRA prediction only")
    args = p.parse_args(argv)
    if args.one:
        res = measure_one(json.loads(args.one))
        print("RESULT " + json.dumps(res), flush=True)
        return
    if args.predict:
        print(prediction_7b())
        print()
        print(recipe_predictions())
        print(f"\nlongest trace length (M <= 6) predicted within {FIT_BUDGET / 1e9:.1f} GB: {longest_fitting()}")
        return
    results, meta = [], machine()
    if (args.resume or args.report) and os.path.exists(args.json):
        with open(args.json) as f:
            old = json.load(f)
        results = [r for r in old["results"] if "peak_bytes" in r]
        meta = old.get("machine", meta)
    if not args.report:
        done = [r["spec"] for r in results]
        for spec in grid(args.quick):
            spec["threads"] = args.threads
            if spec in done or (args.only and args.only not in json.dumps(spec)):
                continue
            print(f"measuring {json.dumps(spec)}", file=sys.stderr, flush=True)
            r = run_child(spec, sys.executable, args.timeout)
            msg = (f"{r['peak_bytes'] / MiB:.0f} MiB, {r['step_s']:.1f} s" if "peak_bytes" in r
                   else r["error"][-300:])
            print(f"  -> {msg}", file=sys.stderr, flush=True)
            results.append(r)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(dict(machine=meta, command="python benchmarks/memory.py " + " ".join(argv or sys.argv[1:]),
                                   results=results), f, indent=1)
    print(table(results))
    print()
    print(prediction_7b())
    if args.plot and results:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
