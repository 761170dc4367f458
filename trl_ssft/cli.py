"""`trl-ssft`: train with SSFT (`trl-ssft train`), evaluate a trained model (`trl-ssft eval`), build training
sets (`trl-ssft data`, `trl_ssft/traces/cli.py`).

    trl-ssft train --config examples/yaml/trl_tiny_cpu.yaml
    accelerate launch -m trl_ssft.cli train --config recipe.yaml
    trl-ssft eval --help

`train` parses TRL's `ScriptArguments`, `SSFTConfig` and `ModelConfig` with `TrlParser` (a YAML
file via `--config`, command-line flags override it), so every `SFTConfig`/`ModelConfig` option
and every `ssft_*` option is available under its own name.
"""

from __future__ import annotations

import os
import sys


def _read_json_rows(path: str) -> list:
    import json

    with open(path) as f:
        if path.lower().endswith(".jsonl"):
            rows = []
            for k, line in enumerate(f):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}, line {k + 1}: not valid JSON ({e})") from e
            return rows
        data = json.load(f)
    if isinstance(data, dict) and "data" in data:
        data = data["data"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of rows (or {{'data': [...]}})")
    return data


def load_ssft_dataset(name: str, config: str | None = None, streaming: bool = False):
    """Splits of a local JSON/JSONL (rows as dicts) or Parquet file or folder, or a hub-style dataset name."""
    from datasets import DatasetDict, load_dataset, load_from_disk

    if streaming:
        raise ValueError("SSFT needs one question per row with all its traces: streaming datasets are not supported")
    if os.path.isfile(name) and name.lower().endswith((".json", ".jsonl")):
        # Read JSON rows ourselves: Arrow would fail on a column of mixed types (e.g. `traces` a string in one
        # row, a list in another) with an error that names no row; the trainer validates each row instead.
        return {"train": _read_json_rows(name)}
    if os.path.isfile(name):
        ext = name.rsplit(".", 1)[-1].lower()
        builder = {"json": "json", "jsonl": "json", "parquet": "parquet", "csv": "csv"}.get(ext)
        if builder is None:
            raise ValueError(f"unsupported dataset file {name!r}: use .json, .jsonl or .parquet")
        return load_dataset(builder, data_files=name)
    if os.path.isdir(name) and os.path.exists(os.path.join(name, "dataset_dict.json")):
        return load_from_disk(name)
    if os.path.isdir(name) and os.path.exists(os.path.join(name, "dataset_info.json")):
        return DatasetDict({"train": load_from_disk(name)})
    return load_dataset(name, config)


def parse_recipe(config_cls, prog: str, argv: list[str] | None, model_help: str = ""):
    """(script args, `config_cls` args, model args, the parser) from the command line and/or
    `--config recipe.yaml` (TrlParser); a model and a dataset are required."""
    from trl import ModelConfig, ScriptArguments, TrlParser

    parser = TrlParser((ScriptArguments, config_cls, ModelConfig), prog=prog)
    script_args, args, model_args = parser.parse_args_and_config(argv)
    if not model_args.model_name_or_path:
        parser.error(f"--model_name_or_path is required{model_help}")
    if not script_args.dataset_name:
        parser.error("--dataset_name is required (a local .jsonl/.json/.parquet file, a saved dataset, or a name)")
    return script_args, args, model_args, parser


def train_main(argv: list[str] | None = None) -> int:
    from trl import get_peft_config, get_quantization_config

    from .config import SSFTConfig
    from .trainer import SSFTTrainer

    script_args, training_args, model_args, parser = parse_recipe(SSFTConfig, "trl-ssft train", argv)
    quantization_config = get_quantization_config(model_args)
    model_kwargs = dict(training_args.model_init_kwargs or {})
    if getattr(model_args, "model_revision", None):
        model_kwargs.setdefault("revision", model_args.model_revision)
    trust = getattr(model_args, "trust_remote_code", None) or getattr(training_args, "trust_remote_code", False)
    model_kwargs.setdefault("trust_remote_code", bool(trust))
    if model_args.attn_implementation is not None:
        model_kwargs.setdefault("attn_implementation", model_args.attn_implementation)
    if model_args.dtype is not None:
        model_kwargs.setdefault("dtype", model_args.dtype)
    if quantization_config is not None and not training_args.use_cpu:
        from trl import get_kbit_device_map

        model_kwargs.setdefault("device_map", get_kbit_device_map())
    training_args.model_init_kwargs = model_kwargs

    data = load_ssft_dataset(script_args.dataset_name, script_args.dataset_config, script_args.dataset_streaming)
    train = data[script_args.dataset_train_split]
    evaluation = None
    if training_args.eval_strategy != "no":
        if script_args.dataset_test_split not in data:
            parser.error(f"eval_strategy={training_args.eval_strategy} but the dataset has no split "
                         f"{script_args.dataset_test_split!r} (has {list(data)})")
        evaluation = data[script_args.dataset_test_split]

    trainer = SSFTTrainer(
        model=model_args.model_name_or_path, args=training_args, train_dataset=train, eval_dataset=evaluation,
        peft_config=get_peft_config(model_args), quantization_config=quantization_config,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        state = trainer.ssft_state()
        print(f"SSFT done: {state['global_step']} steps; match counts "
              + ", ".join(f"{t}={c}" for t, c in zip(state["fork_tokens"], state["match_counts"]))
              + f"; Pass@1 token {state['pass1_token']}; saved to {training_args.output_dir}")
    return 0


USAGE = """usage: trl-ssft {train,gfpo,eval,data} [options]

  train   train with SSFT (TrlParser: --config recipe.yaml, any SFTConfig/ModelConfig/ssft_* flag)
  gfpo    stage 2, Global Forking Policy Optimization after SSFT (--config recipe.yaml, GRPOConfig/gfpo_* flags)
  eval    parallel generation per forking token, Pass@1 / Cons@N / diversity report
  data    training sets: build (convert + verify + select) | report | generate (teacher sampling)

Run `trl-ssft train --help` or `trl-ssft eval --help` for the options.
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd in ("train", "gfpo"):
        from .distributed import shutdown

        if cmd == "train":
            rc = train_main(rest)
        else:
            from .gfpo.cli import main as gfpo_main

            rc = gfpo_main(rest)
        shutdown()  # on success only: after an error a barrier could wait for ranks that are gone
        return rc
    if cmd == "eval":
        from .eval.cli import main as eval_main

        return eval_main(rest)
    if cmd == "data":
        from .traces.cli import main as data_main

        return data_main(rest)
    print(f"trl-ssft: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
