"""`trl-ssft gfpo`: stage 2 (Global Forking Policy Optimization) on top of an SSFT model or adapter.

    trl-ssft gfpo --config examples/yaml/trl_gfpo_tiny_cpu.yaml
    accelerate launch -m trl_ssft.cli gfpo --config recipe.yaml

`TrlParser((ScriptArguments, GFPOConfig, ModelConfig))`: every GRPOConfig / ModelConfig option and every
`gfpo_*` option under its own name. `model_name_or_path` is a full SSFT model dir or an SSFT PEFT adapter dir
(its base is loaded, quantized when `load_in_4bit`, resized to the adapter's tokenizer, and the adapter goes on
training). Rows need `prompt` (messages or text) and the reward's columns (`answer` for the correctness reward).
"""

from __future__ import annotations

import json
import os


def load_policy(path: str, model_args, training_args, quantization_config):
    """(model, tokenizer, peft_config-or-None): a full model dir, or an SSFT adapter dir continued as trainable."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    kwargs = dict(training_args.model_init_kwargs or {})
    if model_args.attn_implementation is not None:
        kwargs.setdefault("attn_implementation", model_args.attn_implementation)
    if model_args.dtype not in (None, "auto"):
        kwargs.setdefault("dtype", getattr(torch, model_args.dtype))
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        if not training_args.use_cpu:
            from trl import get_kbit_device_map

            kwargs.setdefault("device_map", get_kbit_device_map())
    adapter = os.path.exists(os.path.join(path, "adapter_config.json"))
    if not adapter:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs), tokenizer, True
    from peft import PeftModel, prepare_model_for_kbit_training

    with open(os.path.join(path, "adapter_config.json")) as f:
        base_path = json.load(f)["base_model_name_or_path"]
    base = AutoModelForCausalLM.from_pretrained(base_path, **kwargs)
    if len(tokenizer) > base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if quantization_config is not None:
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=training_args.gradient_checkpointing)
    return PeftModel.from_pretrained(base, path, is_trainable=True), tokenizer, False


def main(argv: list[str] | None = None) -> int:
    from trl import get_peft_config, get_quantization_config

    from ..cli import load_ssft_dataset, parse_recipe
    from ..state import read_ssft_state
    from .config import GFPOConfig
    from .trainer import GFPOTrainer

    script_args, args, model_args, _ = parse_recipe(GFPOConfig, "trl-ssft gfpo", argv,
                                                    " (an SSFT model or adapter dir)")
    path = model_args.model_name_or_path
    model, tokenizer, full = load_policy(path, model_args, args, get_quantization_config(model_args))
    data = load_ssft_dataset(script_args.dataset_name, script_args.dataset_config, script_args.dataset_streaming)
    train = data[script_args.dataset_train_split]
    if isinstance(train, list):
        from datasets import Dataset

        train = Dataset.from_list(train)
    state = read_ssft_state(path) if os.path.isdir(path) else {}
    trainer = GFPOTrainer(
        model=model, args=args, train_dataset=train, processing_class=tokenizer,
        peft_config=get_peft_config(model_args) if full else None,
        fork_tokens=args.gfpo_fork_tokens or state.get("fork_tokens"), ssft_state_dir=path,
    )
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model(args.output_dir)
    if trainer.accelerator.is_main_process:
        s = trainer.gfpo_state()
        print(f"GFPO done: {s['global_step']} steps; token counts "
              + ", ".join(f"{t}={c}" for t, c in zip(trainer.gfpo_fork_names, s["token_counts"], strict=True))
              + f"; saved to {args.output_dir} (Pass@1: the model's own token)")
    return 0
