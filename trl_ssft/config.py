"""`SSFTConfig`: TRL's `SFTConfig` plus the `ssft_*` fields of Set Supervised Fine-Tuning (`fields.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

from .fields import SSFT_FIELD_NAMES, SSFTFields, fork_token_names, validate_ssft_fields  # noqa: F401


@dataclass
class SSFTConfig(SSFTFields, SFTConfig):
    """Configuration of `SSFTTrainer`: every `SFTConfig` option plus the `ssft_*` options.

    Defaults that differ from `SFTConfig`: `loss_type="nll"` (the set loss passes labels to the model
    forward; TRL's chunked head would bypass PEFT's trainable forking-token rows) and
    `remove_unused_columns=False` (the trainer keeps its own columns).
    """

    loss_type: str = field(default="nll", metadata={"help": "`nll` (SSFT's set loss); `chunked_nll` is mapped to "
                                                            "it (SSFT's own chunked output head)."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "SSFT keeps its tokenized columns; leave this off."}
    )

    def __post_init__(self):
        super().__post_init__()
        validate_ssft_fields(self)
