"""`GFPOConfig`: TRL's `GRPOConfig` plus the `gfpo_*` fields of Global Forking Policy Optimization (`fields.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from .fields import GFPO_FIELD_NAMES, GFPOFields, validate_gfpo_fields  # noqa: F401


@dataclass
class GFPOConfig(GFPOFields, GRPOConfig):
    """Configuration of `GFPOTrainer`: every `GRPOConfig` option plus the `gfpo_*` options.

    GRPO's own options keep their meaning and TRL's defaults (group size `num_generations=8`, `beta=0.0`
    (no KL), `epsilon=0.2` clipping, `loss_type="dapo"`, `learning_rate=1e-6`); they act on the single
    forking-token position. One default differs: `vllm_importance_sampling_correction=False` (the forking
    token is chosen by the training model, not by vLLM; the rollouts' own log-probabilities are not used).
    """

    vllm_importance_sampling_correction: bool = field(
        default=False,
        metadata={"help": "Must stay off for GFPO: the one trained token is not sampled by vLLM."},
    )

    def __post_init__(self):
        super().__post_init__()
        validate_gfpo_fields(self)
