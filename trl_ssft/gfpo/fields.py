"""`GFPOFields`: every `gfpo_*` option of Global Forking Policy Optimization with its help string, shared
verbatim by the TRL config (`gfpo.config.GFPOConfig`) and the Axolotl plugin's schema; their checks. No trl import.

GFPO here always means *Global Forking Policy Optimization* (stage 2 of arXiv 2510.05132 v3), not TRL's
removed "Group Filtered Policy Optimization".
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..fields import option

TOKEN_CHOICES = ("sample", "enumerate", "free")
TRAINABLE = ("all", "adapter", "fork_rows")
EXTRACT_MODES = ("boxed", "fallback")


@dataclass
class GFPOFields:
    """The `gfpo_*` options, shared by the TRL config and the Axolotl plugin's schema."""

    gfpo_token_choice: str = option(
        "enumerate",
        "How each rollout gets its forking token. `enumerate` (the default): rollout k of a question's group "
        "gets token k mod N, so every token is tried on every question (needs num_generations >= N; a "
        "multiple of N is even); this is what learnt a per-question choice in the benchmark "
        "(docs/gfpo.md). `sample`: drawn from the model's own distribution restricted to the N forking "
        "tokens (on-policy, the paper's description; it cannot explore from a peaked SSFT model, which the "
        "run says at start). `free`: the model's own first generated token; a rollout that does not start "
        "with a forking token gets no reward (advantage 0). In every mode the policy gradient is taken at "
        "the forking-token position only.",
    )
    gfpo_token_temperature: float = option(
        1.0,
        "Temperature of the forking-token draw in `sample` mode (over the N-way distribution).",
    )
    gfpo_trainable: str = option(
        "all",
        "Which parameters GFPO trains. `all`: whatever the model trains (every weight of a full model, "
        "the adapter of a PEFT model). `adapter`: the same, but require a PEFT (LoRA/QLoRA) model. "
        "`fork_rows`: only the forking-token rows of the output layer (an untied output layer, or a PEFT "
        "adapter's trainable output-layer rows): a cheap per-question router on the last hidden state; "
        "the rollouts' behaviour after a forced token cannot change. Needs weight_decay 0.",
    )
    gfpo_suppress_fork_tokens: bool = option(
        True,
        "Forbid the forking tokens in the generated continuation of a rollout (`sample` and `enumerate`: the "
        "token is chosen before generation, so the continuation never needs one; SSFT never trains one "
        "there). transformers generation: `suppress_tokens`; vLLM: a logit bias of -100, vLLM's limit. "
        "Without it, training the forking tokens' rows (`fork_rows` above all) raises their logits at every "
        "position and rollouts fill with forking tokens. Recorded in ssft_state.json, so that evaluation "
        "suppresses them too. Not applied in `free` mode (the first generated token must be free).",
    )
    gfpo_fork_mass_coef: float = option(
        0.0,
        "Weight of an extra loss term -log(sum of the N forking tokens' probabilities) after the prompt, "
        "so that plain samplers emit a forking token (models trained with ssft_fork_token_loss false put "
        "little mass on them). 0 turns it off (no extra forward pass).",
    )
    gfpo_anchor_coef: float = option(
        3.0,
        "Weight of a KL anchor on the rollouts' continuations: TRL's k3 estimate of KL(policy || starting model) "
        "on the generated tokens after the forking token, mean over those tokens. The policy gradient stays at "
        "the forking token; this term only pulls the reasoning after it back to the starting (SSFT) model's, so "
        "that training all weights moves the token choice without blurring what each token does (the "
        "benchmark's setting, 3). The starting model: a full model's frozen copy (TRL's reference model when "
        "beta > 0, which FSDP / DeepSpeed need); a fresh PEFT adapter disabled; a continued PEFT adapter's "
        "frozen copy as a second adapter. Costs a forward and backward over the continuations. 0 turns it off "
        "(the paper's description: no extra passes).",
    )
    gfpo_fork_tokens: list[str] | None = option(
        None,
        "The forking-token names. Default: `fork_tokens` of the model's ssft_state.json, else "
        "`gfpo_fork_token_template` with i = 1, 2, ... while the tokenizer has it.",
    )
    gfpo_fork_token_template: str = option(
        "<think{i}>",
        "Name of forking token i (1-based), used when neither gfpo_fork_tokens nor a state file name "
        "them.",
    )
    gfpo_fork_layout: str | None = option(
        None,
        "Text around the forking token in the rollouts (`trl_ssft.layout`: `bare`, `released` or a JSON object "
        "`{\"before\": ..., \"after\": ...}`). Default: `fork_layout` of the model's ssft_state.json (the "
        "layout it was trained with), else `bare`. Recorded in the GFPO model's ssft_state.json.",
    )
    gfpo_reward_funcs: list[str] | None = option(
        None,
        "Reward functions as dotted paths (`module.function`), used by `trl-ssft gfpo` and when the "
        "trainer gets no `reward_funcs`. Default: `trl_ssft.gfpo.rewards.correctness_reward` (1 when the "
        "final answer equals the dataset's answer column). Every reward function also receives "
        "`gfpo_fork_token`, `gfpo_fork_index` and `gfpo_continuation_ids` per rollout.",
    )
    gfpo_answer_column: str = option(
        "answer",
        "Dataset column with the reference answer, read by the correctness reward.",
    )
    gfpo_answer_extract: str = option(
        "boxed",
        "Answer extraction of the correctness reward (`trl_ssft.eval.answers`): `boxed` (the last "
        "\boxed{}) or `fallback` (the authors' order: boxed, 'final answer is', 'Answer:', last number).",
    )
    gfpo_math_verify: bool | None = option(
        None,
        "Use math-verify for answer equality (None: when installed), after string/number equality.",
    )


GFPO_FIELD_NAMES = tuple(f.name for f in fields(GFPOFields))


def validate_gfpo_fields(cfg) -> None:
    """Raise `ValueError` for `gfpo_*` values that cannot work (shared by both front ends)."""
    if cfg.gfpo_token_choice not in TOKEN_CHOICES:
        raise ValueError(f"gfpo_token_choice must be one of {TOKEN_CHOICES}, got {cfg.gfpo_token_choice!r}")
    if cfg.gfpo_trainable not in TRAINABLE:
        raise ValueError(f"gfpo_trainable must be one of {TRAINABLE}, got {cfg.gfpo_trainable!r}")
    if not cfg.gfpo_token_temperature > 0:
        raise ValueError(f"gfpo_token_temperature must be > 0, got {cfg.gfpo_token_temperature!r}")
    if cfg.gfpo_anchor_coef < 0:
        raise ValueError(f"gfpo_anchor_coef must be >= 0, got {cfg.gfpo_anchor_coef!r}")
    if cfg.gfpo_fork_mass_coef < 0:
        raise ValueError(f"gfpo_fork_mass_coef must be >= 0, got {cfg.gfpo_fork_mass_coef!r}")
    if "{i}" not in cfg.gfpo_fork_token_template:
        raise ValueError(f"gfpo_fork_token_template must contain '{{i}}', got {cfg.gfpo_fork_token_template!r}")
    if cfg.gfpo_answer_extract not in EXTRACT_MODES:
        raise ValueError(f"gfpo_answer_extract must be one of {EXTRACT_MODES}, got {cfg.gfpo_answer_extract!r}")
    if getattr(cfg, "gfpo_fork_layout", None) is not None:
        from ..layout import resolve_layout

        resolve_layout(cfg.gfpo_fork_layout)  # ValueError for an unknown preset or a bad object
    if cfg.gfpo_fork_tokens is not None and len(set(cfg.gfpo_fork_tokens)) != len(cfg.gfpo_fork_tokens):
        raise ValueError(f"gfpo_fork_tokens has repeated names: {cfg.gfpo_fork_tokens}")


def gfpo_settings(source) -> GFPOFields:
    """A `GFPOFields` with the `gfpo_*` values of `source` (a config object or a dict); missing ones default."""
    get = source.get if isinstance(source, dict) else (lambda k, d=None: getattr(source, k, d))
    values = {n: get(n) for n in GFPO_FIELD_NAMES if get(n) is not None}
    out = GFPOFields(**values)
    validate_gfpo_fields(out)
    return out
