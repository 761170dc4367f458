"""`SSFTTrainer`: TRL's `SFTTrainer` with the SSFT set loss (see `loss.py`)."""

from __future__ import annotations

import logging

from trl import SFTTrainer

from .collator import SSFTCollator
from .config import SSFTConfig, fork_token_names
from .data import TOKENIZED_COLUMNS, prepare_ssft_dataset
from .layout import tokenize_layout
from .checkpointing import AtomicCheckpointMixin
from .recipe_options import TRL, check_recipe, recipe_lines
from .set_loss import SSFTLossMixin
from .tokens import add_trainable_tokens_to_peft_config, pad_token_id, prepare_fork_tokens

logger = logging.getLogger(__name__)

# What TRL's packing options mean under SSFT (`SSFTConfig` maps `packing` / `padding_free` to ssft_padding_free).
TRL_PACKING_NOTES = (
    "TRL never packs the dataset here (packing_strategy does not apply: a dataset row is one question with its "
    "traces); per_device_train_batch_size counts questions and max_length bounds each matched row",
)


def load_model_and_tokenizer(model_id: str, args, quantization_config=None):
    """Load a causal LM and its tokenizer from a name or path with `args.model_init_kwargs`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(args.model_init_kwargs or {})
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    dtype = kwargs.pop("dtype", kwargs.pop("torch_dtype", None))
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    if dtype is not None:
        kwargs["dtype"] = dtype
    kwargs.setdefault("trust_remote_code", getattr(args, "trust_remote_code", False))
    if args.distributed_state.distributed_type in ("MULTI_GPU", "DEEPSPEED"):
        kwargs["device_map"] = None
    model = AutoModelForCausalLM.from_pretrained(model_id, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(model_id, trust_remote_code=kwargs["trust_remote_code"])
    return model, tokenizer


class SSFTTrainer(SSFTLossMixin, AtomicCheckpointMixin, SFTTrainer):
    """Set Supervised Fine-Tuning with global forking tokens, on top of `trl.SFTTrainer`.

    Args:
        model: a model name/path (loaded with `args.model_init_kwargs` and `quantization_config`) or a
            `PreTrainedModel`. Not a `PeftModel`: pass `peft_config` instead, so the forking tokens are
            added before the adapter is built.
        args: `SSFTConfig`.
        train_dataset / eval_dataset: datasets (or lists of row dicts) in the ssft format (`prompt`,
            `traces`), or already tokenized ones (`prompt_ids`, `trace_ids`).
        processing_class: the tokenizer (loaded from `model` when omitted). The forking tokens are
            added to it; it is saved with every checkpoint.
        peft_config: e.g. a `LoraConfig`; the forking-token rows are added to its
            `trainable_token_indices` (input embeddings, and the output layer when untied).
    """

    _tag_names = ["trl", "sft", "ssft"]
    _name = "SSFT"

    def __init__(self, model, args: SSFTConfig | None = None, data_collator=None, train_dataset=None,
                 eval_dataset=None, processing_class=None, peft_config=None, quantization_config=None, **kwargs):
        if args is None:
            args = SSFTConfig(output_dir="ssft-output")
        if not isinstance(args, SSFTConfig):
            raise TypeError(f"args must be an SSFTConfig, got {type(args).__name__}")
        check_recipe(args, TRL)
        recipe_report = recipe_lines(args, TRL)
        if args.loss_type == "chunked_nll":  # mapped: SSFT's own chunked head (TRL's would patch the forward)
            args.loss_type = "nll"
        if isinstance(model, str):
            model, tok = load_model_and_tokenizer(model, args, quantization_config)
            processing_class = processing_class or tok
        if processing_class is None:
            from transformers import AutoTokenizer

            processing_class = AutoTokenizer.from_pretrained(model.config._name_or_path)
        if hasattr(model, "peft_config"):
            raise ValueError("pass a base model and `peft_config`, not a PeftModel: the forking tokens are added "
                             "before the adapter is built")
        names = fork_token_names(args)
        ids = prepare_fork_tokens(model, processing_class, names, noise=args.ssft_fork_init_noise, seed=args.seed)
        peft_config = add_trainable_tokens_to_peft_config(peft_config, model, ids)
        pad_id = pad_token_id(processing_class)
        if data_collator is None:
            data_collator = SSFTCollator(
                pad_token_id=pad_id, num_fork_tokens=args.ssft_num_fork_tokens, assignment=args.ssft_assignment,
                fork_token_loss=args.ssft_fork_token_loss, max_traces_policy=args.ssft_max_traces_policy,
                layout=tokenize_layout(getattr(processing_class, "tokenizer", processing_class), args.ssft_fork_layout),
            )
        # Lists of row dicts (e.g. JSON read without Arrow) are validated and tokenized here: SFTTrainer
        # accepts only `datasets` objects, and Arrow cannot hold a column of mixed types.
        self._ssft_prepared = []
        if isinstance(train_dataset, list):
            train_dataset = self._prepare_list(train_dataset, processing_class, args, "train")
        if isinstance(eval_dataset, list):
            eval_dataset = self._prepare_list(eval_dataset, processing_class, args, "eval")
        super().__init__(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, peft_config=peft_config,
                         **kwargs)
        self.setup_ssft(args, ids, names, pad_id, packing_request=args.ssft_packing_request,
                        packing_notes=TRL_PACKING_NOTES if args.ssft_packing_request else ())
        if self.is_world_process_zero():
            for line in recipe_report:
                print(line, flush=True)

    def _prepare_list(self, rows, processing_class, args, name):
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        dataset = prepare_ssft_dataset(rows, tokenizer, args, args.max_length, name)
        self._ssft_prepared.append(dataset)
        return dataset

    def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        if any(dataset is d for d in getattr(self, "_ssft_prepared", [])):
            return dataset
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        return prepare_ssft_dataset(dataset, tokenizer, args, args.max_length, dataset_name)

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = list(TOKENIZED_COLUMNS)
