"""`AxolotlSSFTTrainer`: the core's SSFT set loss (`trl_ssft.set_loss.SSFTLossMixin`) on Axolotl's trainer.

Batches come from `SSFTAxolotlCollator` (= `trl_ssft.collator.SSFTCollator`), see that module for
their layout: ``ssft_prompt_ids [B, P]``, ``ssft_trace_ids [B, M, L]``, lengths and loss-token counts.
"""

from __future__ import annotations

from typing import Any

from axolotl.core.trainers.base import AxolotlTrainer

from trl_ssft.collator import SSFTCollator
from trl_ssft.data import TOKENIZED_COLUMNS
from trl_ssft.checkpointing import AtomicCheckpointMixin
from trl_ssft.set_loss import SSFTLossMixin
from trl_ssft.tokens import fork_token_ids, pad_token_id

from .args import ssft_settings


def SSFTAxolotlCollator(tokenizer=None, *, num_fork_tokens: int, assignment: str = "hungarian",  # noqa: N802
                        fork_token_loss: bool = False, max_traces_policy: str = "error", fork_layout: str | None = None,
                        **_axolotl_kwargs: Any) -> SSFTCollator:
    """Build the core collator the way Axolotl's builder calls a collator class: ``cls(tokenizer, **kwargs)``.

    Axolotl's own padding arguments (`padding`, `pad_to_multiple_of`, `return_tensors`) are ignored: the
    collator keeps questions as prompt + trace lists, and the trainer pads the rows it builds.
    """
    from trl_ssft.layout import tokenize_layout

    return SSFTCollator(pad_token_id=pad_token_id(tokenizer), num_fork_tokens=num_fork_tokens,
                        assignment=assignment, fork_token_loss=fork_token_loss, max_traces_policy=max_traces_policy,
                        layout=tokenize_layout(tokenizer, fork_layout))


class AxolotlSSFTTrainer(SSFTLossMixin, AtomicCheckpointMixin, AxolotlTrainer):
    """Axolotl's trainer with the SSFT loss; the plugin calls `setup_ssft_from_axolotl(cfg)` after creation."""

    tag_names = ["axolotl", "ssft"]

    def setup_ssft_from_axolotl(self, cfg, packing_request: str = "", packing_notes: tuple[str, ...] = ()) -> None:
        """Attach the SSFT settings of an Axolotl cfg (forking tokens looked up in the trainer's tokenizer); the
        packing arguments are `packing.map_packing_options`' answer (for the start-of-run line)."""
        from trl_ssft.config import fork_token_names

        settings = ssft_settings(cfg)
        names = fork_token_names(settings)
        tok = self.processing_class
        tok = getattr(tok, "tokenizer", tok)
        self.setup_ssft(settings, fork_token_ids(tok, names), names, pad_token_id(tok),
                        packing_request=packing_request, packing_notes=packing_notes)

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = list(TOKENIZED_COLUMNS)
