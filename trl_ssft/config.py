"""`SSFTConfig`: TRL's `SFTConfig` plus the `ssft_*` fields of Set Supervised Fine-Tuning (`fields.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

from .fields import SSFT_FIELD_NAMES, SSFTFields, fork_token_names, validate_ssft_fields  # noqa: F401
from .packed_rows import resolve_padding_free


@dataclass
class SSFTConfig(SSFTFields, SFTConfig):
    """Configuration of `SSFTTrainer`: every `SFTConfig` option plus the `ssft_*` options.

    Defaults that differ from `SFTConfig`: `loss_type="nll"` (the set loss passes labels to the model
    forward; TRL's chunked head would bypass PEFT's trainable forking-token rows) and
    `remove_unused_columns=False` (the trainer keeps its own columns).

    `packing` / `padding_free` ask for packed rows: SSFT never packs dataset rows (each is one question with
    its traces); it runs the set loss padding-free instead (`ssft_padding_free`, `packed_rows.py`). Both are
    turned off here once mapped (TRL's own padding-free collator would mix questions), and recorded in
    `ssft_packing_request` for the start-of-run line.
    """

    loss_type: str = field(default="nll", metadata={"help": "`nll` (SSFT's set loss); `chunked_nll` is mapped to "
                                                            "it (SSFT's own chunked output head)."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "SSFT keeps its tokenized columns; leave this off."}
    )
    ssft_packing_request: str = field(default="", init=False, repr=False)

    def __post_init__(self):
        super().__post_init__()
        validate_ssft_fields(self)
        requested = ([f"packing=True (packing_strategy={self.packing_strategy!r})"] if self.packing else []) + (
            ["padding_free=True"] if self.padding_free else [])
        self.ssft_padding_free = resolve_padding_free(self.ssft_padding_free, requested)
        if requested:
            self.ssft_packing_request = ", ".join(requested)
        self.packing = self.padding_free = False
        self.eval_packing = False
