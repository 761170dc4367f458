"""`SSFTPlugin`: the Axolotl hooks that turn a recipe into an SSFT run.

Order of the hooks in one `axolotl train` run, and what each does here:

- `register(cfg)` (raw YAML, before validation): check the plugin's own imports, rewrite
  `type: ssft` to this package's strategy, map the packing options to the padding-free set loss and turn
  Axolotl's own packing off (`packing.py`), add the forking tokens to
  `special_tokens.additional_special_tokens` (so every tokenizer Axolotl loads has them, and the saved
  one too), stamp the column mapping into the dataset cache key.
- `get_input_args()`: `SSFTArgs`, whose validator refuses what cannot work.
- `load_datasets(cfg)`: Axolotl's own loading (cached, N-independent rows), then the per-run checks
  of `ssft.finalize_dataset` and the step count.
- `pre_lora_load(cfg, model)` (after Axolotl resized the embeddings): initialise the new forking-token
  rows (mean + noise) and work out the PEFT `trainable_token_indices`, which
  `get_lora_config_kwargs(cfg)` hands to the LoRA/QLoRA config.
- `get_trainer_cls` / `get_collator_cls_and_kwargs` / `post_trainer_create`: the SSFT trainer and
  collator, `setup_ssft` on the trainer (which prints the one line saying what packing does), and the
  start-of-run lines saying what SSFT does with the recipe's other options
  (`trl_ssft.recipe_options.recipe_lines`).

A GFPO config (`rl: grpo`, `gfpo: true`; see `axolotl_ssft.gfpo`) skips every SSFT hook: `register` sets
`trainer_cls` to the GFPO trainer and the default reward, `post_trainer_create` activates GFPO on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import weakref
from typing import Any

from axolotl.integrations.base import BasePlugin

from .args import COLUMN_KEYS, SSFT_DATASET_TYPES, SSFT_STRATEGY, WHOLE_TRACE, gfpo_requested, ssft_settings
from .packing import map_packing_options

LOG = logging.getLogger(__name__)


def is_ssft_config(cfg: Any) -> bool:
    """True when the config trains with ssft datasets (the plugin's hooks act only then)."""
    datasets = (cfg.get("datasets") if hasattr(cfg, "get") else None) or []
    types = [d.get("type") if hasattr(d, "get") else getattr(d, "type", None) for d in datasets]
    return bool(types) and any(t in SSFT_DATASET_TYPES for t in types)


def fork_names(cfg: Any) -> list[str]:
    from trl_ssft.config import fork_token_names

    return fork_token_names(ssft_settings(cfg))


def _check_imports() -> None:
    """Import the heavy parts now: a broken install must stop the run, not be skipped with a log line."""
    try:
        import scipy.optimize  # noqa: F401

        import trl_ssft.set_loss  # noqa: F401
        import trl_ssft.matching  # noqa: F401

        from . import trainer  # noqa: F401
    except ImportError as e:
        raise RuntimeError(
            f"The SSFT plugin (axolotl_ssft.SSFTPlugin) is listed but cannot load: {type(e).__name__}: {e}. "
            "Install it with `pip install 'trl-ssft[axolotl]'` in the environment that runs axolotl."
        ) from e


def _mapping_fingerprint(cfg: dict) -> str | None:
    if not cfg.get("ssft_prompt_column"):  # the ssft format: no mapping
        return None
    vals = {k: cfg.get(k) for k in COLUMN_KEYS if cfg.get(k) is not None}
    if not vals:
        return None
    return "ssft-map-" + hashlib.md5(json.dumps(vals, sort_keys=True).encode()).hexdigest()[:16]


class SSFTPlugin(BasePlugin):
    """Set Supervised Fine-Tuning with global forking tokens, as an Axolotl plugin."""

    def __init__(self):
        super().__init__()
        self._trainable_tokens: dict[str, list[int]] | None = None
        self._fork_ids: list[int] | None = None
        self._trainer = None
        self._summary_printed = False
        self._packing: tuple[str, tuple[str, ...]] = ("", ())

    # ------------------------------------------------------------ config
    def register(self, cfg: dict) -> None:
        if gfpo_requested(cfg):
            from .gfpo import register_gfpo

            register_gfpo(cfg)
            return
        if not is_ssft_config(cfg):
            return
        _check_imports()
        from trl_ssft.config import validate_ssft_fields

        if "ssft_match_tokens" in cfg and cfg["ssft_match_tokens"] is None:
            cfg["ssft_match_tokens"] = WHOLE_TRACE  # Axolotl drops nulls; "whole traces" must survive
        stamp = _mapping_fingerprint(cfg)
        for split in ("datasets", "test_datasets"):
            for ds in cfg.get(split) or []:
                if isinstance(ds, dict) and ds.get("type") == "ssft":
                    ds["type"] = SSFT_STRATEGY
                if isinstance(ds, dict) and ds.get("type") == SSFT_STRATEGY and stamp:
                    # The prepared-dataset cache key ignores plugin keys; `input_format` is hashed and unused.
                    ds["input_format"] = stamp
        self._packing = map_packing_options(cfg)
        settings = ssft_settings(cfg)
        validate_ssft_fields(settings)
        names = fork_names(cfg)
        special = cfg.get("special_tokens") or {}
        extra = list(special.get("additional_special_tokens") or [])
        special["additional_special_tokens"] = extra + [n for n in names if n not in extra]
        cfg["special_tokens"] = special

    def get_input_args(self) -> str:
        return "axolotl_ssft.args.SSFTArgs"

    # ------------------------------------------------------------ data
    def load_datasets(self, cfg, preprocess: bool = False):
        if not is_ssft_config(cfg):
            return None
        from axolotl.common.datasets import TrainDatasetMeta
        from axolotl.common.datasets import load_datasets as axolotl_load_datasets
        from axolotl.loaders import load_tokenizer

        from .ssft import finalize_dataset, supervised_tokens

        # Axolotl's step estimate reads `input_ids`/`labels` unless these are set; fixed below.
        placeholders = [k for k in ("total_num_tokens", "total_supervised_tokens") if not cfg.get(k)]
        for k in placeholders:
            cfg[k] = 1
        meta = axolotl_load_datasets(cfg=cfg)
        from trl_ssft.tokens import fork_token_ids

        tokenizer = load_tokenizer(cfg)
        names = fork_names(cfg)
        ids = fork_token_ids(tokenizer, names)
        settings = ssft_settings(cfg)
        from trl_ssft.layout import layout_extra_tokens

        extra = layout_extra_tokens(tokenizer, settings.ssft_fork_layout)  # the layout's text counts against the length
        train = finalize_dataset(meta.train_dataset, settings, ids, names, cfg.sequence_len - extra, "train")
        eval_ds = finalize_dataset(meta.eval_dataset, settings, ids, names,
                                   (cfg.get("eval_sequence_len") or cfg.sequence_len) - extra, "eval")
        total, sup = supervised_tokens(train)
        if "total_num_tokens" in placeholders:
            cfg["total_num_tokens"] = total
        if "total_supervised_tokens" in placeholders:
            cfg["total_supervised_tokens"] = sup
        steps = meta.total_num_steps
        if steps is not None and steps > 0:
            steps = int(math.ceil(len(train) * cfg.num_epochs / cfg.batch_size))
            if cfg.max_steps:
                steps = min(steps, cfg.max_steps)
        return TrainDatasetMeta(train_dataset=train, eval_dataset=eval_ds, total_num_steps=steps)

    # ------------------------------------------------------------ model
    def pre_lora_load(self, cfg, model) -> None:
        """After the resize to len(tokenizer): initialise new forking-token rows; plan their PEFT rows."""
        if not is_ssft_config(cfg):
            return
        from types import SimpleNamespace

        from axolotl.loaders import load_tokenizer

        from trl_ssft.tokens import add_trainable_tokens_to_peft_config, fork_token_ids

        tokenizer = load_tokenizer(cfg)
        names = fork_names(cfg)
        ids = fork_token_ids(tokenizer, names)
        new_ids = [i for n, i in zip(names, ids) if n not in _base_vocab(cfg)]
        seed = cfg.seed if cfg.seed is not None else 42
        _init_rows(model, new_ids, ssft_settings(cfg).ssft_fork_init_noise, seed)
        self._fork_ids = ids
        LOG.info("SSFT forking tokens %s -> ids %s (%d newly initialised)", names, ids, len(new_ids))
        self._trainable_tokens = None
        if cfg.adapter in ("lora", "qlora"):
            peft_like = SimpleNamespace(trainable_token_indices=cfg.peft_trainable_token_indices,
                                        modules_to_save=cfg.lora_modules_to_save)
            self._trainable_tokens = add_trainable_tokens_to_peft_config(peft_like, model, ids).trainable_token_indices

    def get_lora_config_kwargs(self, cfg) -> dict:
        if not is_ssft_config(cfg) or not self._trainable_tokens:
            return {}
        return {"trainable_token_indices": self._trainable_tokens}

    def post_model_load(self, cfg, model) -> None:
        if not is_ssft_config(cfg) or cfg.adapter not in ("lora", "qlora"):
            return
        saved = set(cfg.lora_modules_to_save or [])
        has_rows = any("trainable_tokens" in n and p.requires_grad for n, p in model.named_parameters())
        if not has_rows and not saved:
            raise RuntimeError(
                "SSFT: the forking-token embedding rows are not trainable under the adapter (PEFT did not "
                "receive trainable_token_indices). Is another plugin building the LoRA config?"
            )

    # ------------------------------------------------------------ trainer
    def get_trainer_cls(self, cfg):
        if not is_ssft_config(cfg):
            return None
        from .trainer import AxolotlSSFTTrainer

        return AxolotlSSFTTrainer

    def get_collator_cls_and_kwargs(self, cfg, is_eval: bool = False):
        if not is_ssft_config(cfg):
            return None
        from .trainer import SSFTAxolotlCollator

        s = ssft_settings(cfg)
        return SSFTAxolotlCollator, {
            "num_fork_tokens": s.ssft_num_fork_tokens, "assignment": s.ssft_assignment,
            "fork_token_loss": s.ssft_fork_token_loss, "max_traces_policy": s.ssft_max_traces_policy,
            "fork_layout": s.ssft_fork_layout,
        }

    def post_trainer_create(self, cfg, trainer) -> None:
        if gfpo_requested(cfg):
            self._trainer, self._summary_printed = _setup_gfpo(cfg, trainer), False
            return
        if not is_ssft_config(cfg):
            return
        from .trainer import AxolotlSSFTTrainer

        if not isinstance(trainer, AxolotlSSFTTrainer):
            raise RuntimeError(
                f"SSFT needs its own trainer, but Axolotl built {type(trainer).__name__} (another plugin or "
                "`trainer_cls` chose the trainer class). Remove the conflicting setting."
            )
        trainer.setup_ssft_from_axolotl(cfg, *self._packing)
        if trainer.is_world_process_zero():
            from trl_ssft.recipe_options import AXOLOTL, recipe_lines

            for line in recipe_lines(cfg, AXOLOTL):
                print(line, flush=True)
        self._trainer = weakref.ref(trainer)
        self._summary_printed = False

    def post_train(self, cfg, model) -> None:
        """Write `ssft_state.json` (match counts, Pass@1 token) next to the final model and print it."""
        trainer = self._trainer() if self._trainer is not None else None
        if not (is_ssft_config(cfg) or gfpo_requested(cfg)) or self._summary_printed or trainer is None:
            return
        self._summary_printed = True  # Axolotl calls post_train twice
        if gfpo_requested(cfg):
            from .gfpo import gfpo_summary

            if trainer.args.should_save:  # Axolotl's final save does not go through trainer.save_model
                trainer.write_gfpo_state(cfg.output_dir)
                print(gfpo_summary(trainer), flush=True)
            return
        state = trainer.ssft_state()
        if trainer.args.should_save:
            trainer.write_ssft_state(cfg.output_dir)
            pairs = ", ".join(f"{t}: {c}" for t, c in zip(state["fork_tokens"], state["match_counts"]))
            print(f"SSFT match counts ({state['assignment']}): {pairs}; Pass@1 token: {state['pass1_token']}",
                  flush=True)


# ------------------------------------------------------------------ helpers
def _setup_gfpo(cfg, trainer):
    """`post_trainer_create` for GFPO: the trainer must be the GFPO one (`trainer_cls` set by `register`)."""
    from trl_ssft.gfpo.mixin import GFPOMixin

    if not isinstance(trainer, GFPOMixin):
        raise RuntimeError(
            f"GFPO needs axolotl_ssft.gfpo.AxolotlGFPOTrainer, but Axolotl built {type(trainer).__name__} "
            f"(`trainer_cls: {cfg.get('trainer_cls')}`); remove `trainer_cls` or subclass AxolotlGFPOTrainer.")
    trainer.gfpo_setup_from_axolotl(cfg)
    return weakref.ref(trainer)


def _base_vocab(cfg) -> set[str]:
    """The base tokenizer's vocabulary, before Axolotl added any token: names in it are reused."""
    from transformers import AutoTokenizer

    path = cfg.tokenizer_config or cfg.base_model_config or cfg.base_model
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=bool(cfg.trust_remote_code))
    return set(tok.get_vocab())


def _init_rows(model, ids: list[int], noise: float, seed: int) -> None:
    """`trl_ssft.tokens.init_fork_embeddings`, gathering ZeRO-3 partitions first; meta params are skipped."""
    import contextlib

    from trl_ssft.tokens import init_fork_embeddings

    if not ids:
        return
    emb = model.get_input_embeddings().weight
    if emb.device.type == "meta":  # FSDP low-memory loading: rank 0 holds the weights and broadcasts them
        return
    params = [emb]
    out = model.get_output_embeddings()
    if out is not None:
        params.append(out.weight)
    ctx = contextlib.nullcontext()
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        ctx = deepspeed.zero.GatheredParameters(params, modifier_rank=0)
    with ctx:
        init_fork_embeddings(model, ids, noise=noise, seed=seed)
