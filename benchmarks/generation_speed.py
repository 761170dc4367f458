"""Generation speed: HF `generate_ids` against vLLM `generate_ids_vllm`, same token-id prompts, prints a table.

    .venv-vllm/bin/python benchmarks/generation_speed.py [--model DIR] [--questions 4] [--rounds 4]
        [--max-new-tokens 128] [--threads 2] [--json out.json]

Without --model, a tiny Qwen2 (hidden 128, 2 heads of head_dim 64, 2 layers; weights drawn with std 0.2
so continuations are varied and long) with six forking tokens is built in a temporary dir. Prompts:
--questions synthetic questions x every forking token; each is sampled --rounds times (HF: the prompt
repeated, one batch; vLLM: n per prompt), and greedy once. The vLLM engine start (first call) is
timed on its own; the generation rows use a warm engine. Both backends run in this process, HF first
(vLLM's CPU worker freezes torch.set_num_threads). Tokens/s counts generated tokens (EOS cut off).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_model(path: str) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_ssft.demo.synthetic import corpus, make_rows
    from trl_ssft.demo.tiny import save_tiny_model, spread_weights
    from trl_ssft.tokens import prepare_fork_tokens

    save_tiny_model(path, corpus(make_rows(48, seed=0)), arch="qwen2", hidden_size=128, num_heads=2)
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    prepare_fork_tokens(model, tok, [f"<think{i}>" for i in range(1, 7)])
    spread_weights(model, 0.2)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model dir (default: a tiny model built here)")
    ap.add_argument("--questions", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=4, help="samples per (question, token)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the rows as JSON")
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    from trl_ssft.demo.synthetic import make_rows
    from trl_ssft.eval.inference import find_fork_tokens, fork_prompt_ids, generate_ids, load_ssft_model

    tmp = tempfile.TemporaryDirectory(prefix="genspeed-")
    model_dir = a.model or build_model(os.path.join(tmp.name, "tiny"))
    sm = load_ssft_model(model_dir, device="cpu")
    tokens = sm.fork_tokens or find_fork_tokens(sm.tokenizer)
    prompts = [p for row in make_rows(a.questions, seed=1)
               for p in fork_prompt_ids(sm.tokenizer, row["prompt"], tokens)]
    n, m = a.rounds, a.max_new_tokens
    rows = []

    def add(backend, mode, seqs, secs):
        toks = sum(len(s) for s in seqs)
        rows.append({"backend": backend, "mode": mode, "sequences": len(seqs), "new_tokens": toks,
                     "seconds": round(secs, 2), "tokens_per_s": round(toks / secs, 1) if secs > 0 else None})

    # HF: sampling (every prompt repeated n times, one batch), then greedy
    flat = [p for p in prompts for _ in range(n)]
    t = time.perf_counter()
    out = generate_ids(sm.model, sm.tokenizer, flat, max_new_tokens=m, temperature=0.7, top_p=0.95, seed=0,
                       batch_size=len(flat))
    add("hf", f"sample n={n}", out, time.perf_counter() - t)
    t = time.perf_counter()
    hf_greedy = generate_ids(sm.model, sm.tokenizer, prompts, max_new_tokens=m, greedy=True, batch_size=len(prompts))
    add("hf", "greedy", hf_greedy, time.perf_counter() - t)

    t = time.perf_counter()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import vllm  # noqa: F401

    from trl_ssft.eval.vllm_backend import close_engines, generate_ids_vllm

    imp = time.perf_counter() - t
    t = time.perf_counter()
    generate_ids_vllm(model_dir, prompts[:1], n=1, temperature=0.0, top_p=1.0, max_new_tokens=1, seed=0, greedy=True)
    start = time.perf_counter() - t
    t = time.perf_counter()
    out = generate_ids_vllm(model_dir, prompts, n=n, temperature=0.7, top_p=0.95, max_new_tokens=m, seed=0,
                            greedy=False)
    add("vllm", f"sample n={n}", [s for per in out for s in per], time.perf_counter() - t)
    t = time.perf_counter()
    vl_greedy = generate_ids_vllm(model_dir, prompts, n=1, temperature=0.0, top_p=1.0, max_new_tokens=m, seed=0,
                                  greedy=True)
    add("vllm", "greedy", [per[0] for per in vl_greedy], time.perf_counter() - t)
    close_engines()
    same = sum(a_ == b_[0] for a_, b_ in zip(hf_greedy, vl_greedy))

    hf = {r["mode"]: r for r in rows if r["backend"] == "hf"}
    print(f"model: {model_dir if a.model else 'tiny qwen2 (hidden 128, 2 heads, head_dim 64, 2 layers)'}; "
          f"{len(prompts)} prompts ({a.questions} questions x {len(tokens)} forking tokens), max_new_tokens {m}, "
          f"torch threads {a.threads}")
    print(f"import vllm: {imp:.1f} s; vLLM engine start (first call, in-process): {start:.1f} s; "
          f"greedy outputs equal to HF: "
          f"{same}/{len(prompts)}")
    print()
    print("| backend | mode | sequences | new tokens | seconds | tokens/s | speed-up vs HF |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        ref = hf[r["mode"]]
        sp = (ref["seconds"] / r["seconds"]) if r["seconds"] else float("nan")
        print(f"| {r['backend']} | {r['mode']} | {r['sequences']} | {r['new_tokens']} | {r['seconds']:.2f} | "
              f"{r['tokens_per_s']} | {sp:.1f}x |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "import_vllm_s": round(imp, 2), "engine_start_s": round(start, 2),
                       "greedy_equal": same, "prompts": len(prompts), "max_new_tokens": m, "threads": a.threads},
                      f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
