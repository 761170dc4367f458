"""Build the README demo's local assets: a tiny model + tokenizer and bundled multi-trace data.

    python -m trl_ssft.demo.assets OUT_DIR [--train 512 --eval 32 --arch qwen2 --untied --family digitsum]

writes ``OUT_DIR/model`` (a randomly initialised tiny Qwen2/Llama with a BPE tokenizer and a chat
template), ``OUT_DIR/train.jsonl`` and ``OUT_DIR/eval.jsonl`` (ssft rows of the question family:
``digitsum``, the default, is `trl_ssft.demo.digitsum` (sum of four digits, four strategies; mode
classifier ``digitsum``); ``synthetic`` is the earlier `trl_ssft.demo.synthetic` (three two-digit
numbers; mode classifier ``synthetic``); ``teachers`` is `trl_ssft.demo.teachers` (digitsum's questions from
four teachers, each wrong on its own fifth of them; mode classifier ``teachers``).
"""

from __future__ import annotations

import argparse
import json
import os

import importlib

from .tiny import save_tiny_model

FAMILIES = ("digitsum", "synthetic", "teachers")


def family_module(family: str):
    """The module of a question family (``make_rows``, ``corpus``, ``MODES``, ``classify_mode``)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    return importlib.import_module(f"trl_ssft.demo.{family}")


def write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def build_demo_assets(out_dir: str, num_train: int = 512, num_eval: int = 32, arch: str = "qwen2",
                      tied: bool = True, seed: int = 0, hidden_size: int = 64, num_layers: int = 2,
                      family: str = "digitsum") -> dict:
    """Write model/, train.jsonl, eval.jsonl under `out_dir`; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    fam = family_module(family)
    make_rows, corpus = fam.make_rows, fam.corpus
    rows = make_rows(num_train + num_eval, seed=seed)
    train, held_out = rows[:num_train], rows[num_train:]
    model_dir = save_tiny_model(os.path.join(out_dir, "model"), corpus(rows), arch=arch,
                                tie_word_embeddings=tied, hidden_size=hidden_size, num_layers=num_layers)
    write_jsonl(os.path.join(out_dir, "train.jsonl"), train)
    write_jsonl(os.path.join(out_dir, "eval.jsonl"), held_out)
    return {"model": model_dir, "train": os.path.join(out_dir, "train.jsonl"),
            "eval": os.path.join(out_dir, "eval.jsonl")}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir")
    p.add_argument("--train", type=int, default=512)
    p.add_argument("--eval", type=int, default=32)
    p.add_argument("--arch", default="qwen2", choices=["qwen2", "llama"])
    p.add_argument("--untied", action="store_true", help="untied input/output embeddings")
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--family", default="digitsum", choices=FAMILIES)
    a = p.parse_args(argv)
    paths = build_demo_assets(a.out_dir, a.train, a.eval, a.arch, not a.untied, a.seed, a.hidden_size, a.layers,
                              a.family)
    print(json.dumps(paths))


if __name__ == "__main__":
    main()
