"""Recipes users already have (`examples/yaml/recipes/`, each shaped after one of Axolotl's examples, with the SSFT
plugin lines added), on tiny local models: what Axolotl's own config loader makes of them, the start-of-run lines
the plugin prints, and one real `axolotl train` run (the Llama LoRA recipe with `special_tokens` / `tokens:`).

Only what a CPU cannot run is changed (`CPU`); the recipes' `sample_packing: true` stays on (the set loss runs
padding-free). docs/recipes.md records what happens with each recipe.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from axolotl_helpers import run_ok, write_jsonl, write_yaml

pytestmark = pytest.mark.axolotl

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "examples" / "yaml" / "recipes"
NAMES = {"qwen3_qlora_packing_liger": "qwen3", "llama3_lora_tokens": "llama", "llama3_fft_fsdp2_liger": "llama",
         "llama3_fft_zero3": "llama"}
# what a CPU cannot run: flash-attention 2, 8-bit optimizers, the Triton MLP kernel (the QKV and O kernels are
# plain torch and stay on), bf16 (`auto` would pick fp32 here anyway)
CPU = {"attn_implementation": "sdpa", "optimizer": "adamw_torch", "lora_mlp_kernel": False, "lora_qkv_kernel": True,
       "lora_o_kernel": True, "bf16": False, "tf32": False}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from trl_ssft.demo.synthetic import corpus, make_rows
    from trl_ssft.demo.tiny import save_tiny_model

    base = tmp_path_factory.mktemp("recipes")
    rows = make_rows(16, seed=0)
    return {"train": write_jsonl(base / "train.jsonl", rows),
            "qwen3": save_tiny_model(base / "qwen3", corpus(rows), arch="qwen3", tie_word_embeddings=True),
            "llama": save_tiny_model(base / "llama", corpus(rows), arch="llama", tie_word_embeddings=False)}


def _recipe(name: str, assets: dict, tmp_path: Path, **overrides) -> str:
    """The recipe with a tiny local model, the tiny data and temporary output paths (and `overrides`)."""
    cfg = yaml.safe_load(open(RECIPES / f"{name}.yaml"))
    cfg.update(base_model=assets[NAMES[name]], output_dir=str(tmp_path / "out"),
               dataset_prepared_path=str(tmp_path / "prepared"))
    cfg["datasets"][0]["path"] = assets["train"]
    if cfg.get("deepspeed"):
        cfg["deepspeed"] = str(REPO / cfg["deepspeed"])
    cfg.update(overrides)
    return write_yaml(tmp_path / f"{name}.yaml", cfg)


@pytest.fixture()
def environ():
    """Axolotl's loader sets process environment variables (ZeRO-3: ACCELERATE_USE_DEEPSPEED): undo them, or a
    later test's `axolotl train` subprocess inherits them."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _validated(path: str):
    """Axolotl's own loader (plugins registered, schema validated, config normalised); ZeRO-3's environment set-up
    needs the deepspeed package, which this machine lacks: then the validated config before that step."""
    from axolotl.cli.config import load_cfg

    try:
        return load_cfg(path), None
    except ModuleNotFoundError as e:
        from axolotl.utils.config import validate_config
        from axolotl.utils.dict import DictDefault

        return validate_config(DictDefault(yaml.safe_load(open(path)))), str(e)


EXPECT = {  # kept (in the first line) / not applied (one line each) / what else the loader says
    "qwen3_qlora_packing_liger": ({"liger_rope", "liger_rms_norm", "liger_glu_activation", "liger_layer_norm",
                                   "lora_qkv_kernel", "lora_o_kernel", "lora_mlp_kernel", "chat_template=qwen3",
                                   "attn_implementation=flash_attention_2", "gradient_checkpointing",
                                   "activation_offloading"},  # Axolotl turns `gradient_checkpointing: offload` into both
                                  {"cut_cross_entropy"}, None),
    "llama3_lora_tokens": ({"special_tokens", "tokens", "lora_qkv_kernel", "lora_o_kernel", "lora_mlp_kernel",
                            "lora_embedding_kernel"}, set(), None),
    "llama3_fft_fsdp2_liger": ({"liger_rope", "liger_rms_norm", "liger_glu_activation", "fsdp_config",
                                "chat_template=llama3"}, {"liger_fused_linear_cross_entropy"}, None),
    # validated without the plugin's packing map (deepspeed missing), so Axolotl's own packing default
    # pad_to_sequence_len is set and gets its line
    "llama3_fft_zero3": ({"deepspeed", "activation_offloading"}, {"cut_cross_entropy", "pad_to_sequence_len"},
                         "No module named 'deepspeed'"),
}


@pytest.mark.parametrize("name", sorted(NAMES))
def test_recipe_validates_and_says_what_applies(name, assets, tmp_path, environ):
    from trl_ssft.recipe_options import AXOLOTL, recipe_lines

    cfg, missing = _validated(_recipe(name, assets, tmp_path))
    kept, not_applied, loader_error = EXPECT[name]
    assert missing == loader_error
    lines = recipe_lines(cfg, AXOLOTL)
    head = lines[0].split("kept: ", 1)[1].split("; mapped: ")[0].split(", ")
    absent = {k for k in kept if k not in head and not any(h.startswith(k + "=") for h in head)}
    assert not absent, (absent, head)
    assert {line.split("`")[1].split(":")[0] for line in lines[1:]} == not_applied
    assert cfg.sequence_len and "mapped: sequence_len=" in lines[0]


def test_llama_lora_tokens_recipe_trains(assets, tmp_path):
    """The real CLI on CPU: the QKV/O LoRA kernels on, the user's own new token and pad token added, the forking
    rows training as part of the full embed_tokens / lm_head copies that `tokens:` requires."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    path = _recipe("llama3_lora_tokens", assets, tmp_path, **CPU, max_steps=2, save_steps=2,
                   evals_per_epoch=None, saves_per_epoch=None, val_set_size=0.0, sequence_len=256)
    log = run_ok(path, timeout=600)
    assert "SSFT recipe options (axolotl): kept: " in log and "lora_qkv_kernel, lora_o_kernel" in log
    assert "SSFT packing (sample_packing: True): the set loss runs padding-free" in log
    assert "SSFT packing: first micro-batch:" in log
    out = tmp_path / "out"
    tok = AutoTokenizer.from_pretrained(out)
    names = [f"<think{i}>" for i in range(1, 5)]
    ids = tok.convert_tokens_to_ids(["<|tool|>", "<|end_of_text|>", *names])
    assert tok.unk_token_id not in ids and tok.pad_token == "<|end_of_text|>"
    saved = load_file(os.path.join(out, "adapter_model.safetensors"))
    emb = next(v for k, v in saved.items() if k.endswith("embed_tokens.weight"))
    head = next(v for k, v in saved.items() if k.endswith("lm_head.weight"))
    assert emb.shape[0] == len(tok) and head.shape[0] == len(tok)
    from transformers import AutoModelForCausalLM

    start = AutoModelForCausalLM.from_pretrained(assets["llama"]).get_input_embeddings().weight
    fork = torch.tensor(ids[2:])
    assert not torch.isnan(emb[fork]).any() and (emb[: start.shape[0]] - start).abs().amax() > 0  # trained
    assert "ssft/matched_cost" in log
