"""`SSFTFields`: every `ssft_*` option with its help string, shared verbatim by the TRL config
(`config.SSFTConfig`) and the Axolotl plugin's schema (`axolotl_ssft.args`); their checks and the
forking-token names. No trl import here."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from .matching import MODES


def option(default: Any, help: str) -> Any:
    """A dataclass field with its help string (read by `TrlParser`, the Axolotl schema and the README test)."""
    return field(default=default, metadata={"help": help})


MAX_TRACES_POLICIES = ("error", "subsample")
DUPLICATE_POLICIES = ("keep", "warn", "drop")
LONG_TRACE_POLICIES = ("truncate", "drop")


@dataclass
class SSFTFields:
    """The `ssft_*` options, shared verbatim by the TRL config and the Axolotl plugin's schema."""

    ssft_num_fork_tokens: int = option(
        6,
        "N, the number of global forking tokens. The paper uses 6.",
    )
    ssft_fork_token_template: str = option(
        "<think{i}>",
        "Name of forking token i (1-based) as a format string with `{i}`. Names already in the tokenizer "
        "are reused with their trained embeddings; missing ones are added as special tokens.",
    )
    ssft_fork_layout: str = option(
        "bare",
        "Text around the forking token (`trl_ssft.layout`): a preset, `bare` (the token alone right after the "
        "generation prompt) or `released` (the released SSFT-32B checkpoints' layout on Qwen chat templates: "
        "`<|im_start|>` before the token, a newline after), or a JSON object `{\"before\": ..., \"after\": ...}`. "
        "Recorded in ssft_state.json; evaluation and GFPO use it automatically. With `ssft_fork_token_loss` the "
        "whole span (before, token, after) carries loss, else none of it.",
    )
    ssft_assignment: str = option(
        "hungarian",
        "How traces get forking tokens each step. `hungarian`: SSFT, minimum-cost bipartite matching (the "
        "method). `random`: random distinct tokens each step (the paper's ablation). `fixed`: trace j "
        "always gets token j. `none`: SFT-mixed, the traces as separate examples with no forking token.",
    )
    ssft_match_tokens: int | None = option(
        1000,
        "T: only the first T tokens of each trace enter the matching cost (the paper uses 1000). `None` "
        "scores whole traces. The training loss always uses the full trace.",
    )
    ssft_max_traces_policy: str = option(
        "error",
        "What to do with a row that has more traces than forking tokens (M > N). `error`: stop with an "
        "error naming the row. `subsample`: train on a random subset of N traces, redrawn each step.",
    )
    ssft_fork_token_loss: bool = option(
        False,
        "Also train the prediction of the forking token itself after the prompt (off in the paper's "
        "loss). On, the model learns p(token | prompt) and can choose its own token at inference.",
    )
    ssft_match_max_tokens: int = option(
        16384,
        "Memory budget of the no-gradient matching pass, in tokens per forward call (rows x padded "
        "length). The N x M scoring rows of a micro-batch are split into chunks within this budget.",
    )
    ssft_match_max_memory_mb: int | None = option(
        None,
        "Optional memory budget of one matching forward call, in MiB, by a model-aware estimate of "
        "activations, key/value cache and logits (`trl_ssft.scoring.estimate_bytes`). Applied on top of "
        "`ssft_match_max_tokens`. Exact: it only changes how the scoring rows are split into chunks.",
    )
    ssft_match_share_prompt: bool = option(
        True,
        "Compute each question's prompt once in the matching pass and share it across its N x M (forking "
        "token, trace) rows through the key/value cache. Exact; used only for models whose layers are all "
        "full attention (others fall back to the uncached pass). Turn off to compare or debug.",
    )
    ssft_fork_init_noise: float = option(
        0.1,
        "New forking-token embeddings start at the mean of the existing rows plus Gaussian noise of this "
        "many per-dimension standard deviations, so the tokens are near the mean but distinct. 1.0 starts "
        "them as far apart as ordinary vocabulary rows (the demo and the mode-preservation benchmark use 1.0).",
    )
    ssft_duplicate_traces: str = option(
        "warn",
        "Identical traces within one row: `keep` them silently, `warn` (keep, counted and reported) or "
        "`drop` the repeats.",
    )
    ssft_long_traces: str = option(
        "truncate",
        "A trace that does not fit `max_length` after its prompt and forking token: `truncate` it (its "
        "end token is lost) or `drop` it. Counted and reported before training.",
    )
    ssft_max_truncated_share: float = option(
        0.1,
        "Largest share of traces that may lose their end token to truncation (`ssft_long_traces: truncate`, traces "
        "longer than `max_length` after their prompt and forking token). Above it the run stops before training "
        "with the trace-length distribution and the fixes: raise `max_length` (Axolotl: `sequence_len`), set "
        "`ssft_long_traces: drop`, or accept the truncation by raising this share (1.0 accepts any).",
    )
    ssft_seed: int | None = option(
        None,
        "Seed of the `random` assignment and of trace subsampling (default: the training seed). A "
        "`random` draw depends only on this seed, the step and the question, so it is the same on every "
        "process; subsampling (M > N) draws from a stream seeded with it.",
    )
    ssft_logits_chunk_tokens: int = option(
        256,
        "Positions whose vocabulary logits exist at once, in the matching pass and in the set loss: "
        "hidden states are projected through the model's output module in chunks of this many positions "
        "(with grad: under activation checkpointing, as TRL's default `chunked_nll`). Exact; lower it to "
        "save memory with large vocabularies, raise it for speed.",
    )
    ssft_loss_slice_tokens: int | None = option(
        None,
        "Memory budget of the set-loss pass, in padded tokens per forward + backward: the M matched rows "
        "of a micro-batch are processed in slices within it and their gradients accumulated (exact; under "
        "DDP only the last slice synchronises gradients). `None`: automatic: the longest row, so the peak "
        "follows one trace as in SFT, or more rows per slice when the output layer itself trains (full "
        "fine-tuning) and their activations cost less than the extra copy of its gradient that slicing "
        "holds (`trl_ssft.rows.auto_slice_tokens`). Ignored under DeepSpeed (one slice).",
    )
    ssft_padding_free: bool | None = option(
        None,
        "Run the set loss padding-free: the matched rows of a micro-batch are concatenated, with per-row "
        "position ids, into packed rows of up to `ssft_loss_slice_tokens` tokens, kept apart by the attention "
        "kernel (flash-attention's variable-length path; transformers' packed-sequence masks with sdpa / "
        "eager; other implementations are refused). Exact: the same loss and gradients as padded rows. `None`: "
        "on when the recipe asks for packing (TRL `packing` / `padding_free`, Axolotl `sample_packing` / "
        "`batch_flattening`). Each dataset row stays one question; the matching pass stays padded "
        "(`trl_ssft.packed_rows`).",
    )


SSFT_FIELD_NAMES = tuple(f.name for f in fields(SSFTFields))


def validate_ssft_fields(cfg) -> None:
    """Raise `ValueError` for `ssft_*` values that cannot work (shared by both front ends)."""
    n = cfg.ssft_num_fork_tokens
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"ssft_num_fork_tokens must be a positive integer, got {n!r}")
    tmpl = cfg.ssft_fork_token_template
    if "{i}" not in tmpl:
        raise ValueError(f"ssft_fork_token_template must contain '{{i}}', got {tmpl!r}")
    from .layout import resolve_layout

    resolve_layout(getattr(cfg, "ssft_fork_layout", None))  # ValueError for an unknown preset or a bad object
    if cfg.ssft_assignment not in MODES:
        raise ValueError(f"ssft_assignment must be one of {tuple(MODES)}, got {cfg.ssft_assignment!r}")
    if cfg.ssft_match_tokens is not None and cfg.ssft_match_tokens < 1:
        raise ValueError(f"ssft_match_tokens must be >= 1 or None, got {cfg.ssft_match_tokens!r}")
    if cfg.ssft_max_traces_policy not in MAX_TRACES_POLICIES:
        raise ValueError(
            f"ssft_max_traces_policy must be one of {MAX_TRACES_POLICIES}, got {cfg.ssft_max_traces_policy!r}"
        )
    if cfg.ssft_duplicate_traces not in DUPLICATE_POLICIES:
        raise ValueError(
            f"ssft_duplicate_traces must be one of {DUPLICATE_POLICIES}, got {cfg.ssft_duplicate_traces!r}"
        )
    if cfg.ssft_long_traces not in LONG_TRACE_POLICIES:
        raise ValueError(f"ssft_long_traces must be one of {LONG_TRACE_POLICIES}, got {cfg.ssft_long_traces!r}")
    share = getattr(cfg, "ssft_max_truncated_share", 0.1)
    if not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise ValueError(f"ssft_max_truncated_share must be a number in [0, 1], got {share!r}")
    if cfg.ssft_match_max_tokens < 1:
        raise ValueError(f"ssft_match_max_tokens must be >= 1, got {cfg.ssft_match_max_tokens!r}")
    mem = getattr(cfg, "ssft_match_max_memory_mb", None)
    if mem is not None and mem < 1:
        raise ValueError(f"ssft_match_max_memory_mb must be >= 1 or None, got {mem!r}")
    chunk = getattr(cfg, "ssft_logits_chunk_tokens", 1)
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"ssft_logits_chunk_tokens must be a positive integer, got {chunk!r}")
    slice_tokens = getattr(cfg, "ssft_loss_slice_tokens", None)
    if slice_tokens is not None and (not isinstance(slice_tokens, int) or slice_tokens < 1):
        raise ValueError(f"ssft_loss_slice_tokens must be a positive integer or None, got {slice_tokens!r}")
    padding_free = getattr(cfg, "ssft_padding_free", None)
    if padding_free is not None and not isinstance(padding_free, bool):
        raise ValueError(f"ssft_padding_free must be true, false or None, got {padding_free!r}")
    if cfg.ssft_fork_init_noise < 0:
        raise ValueError(f"ssft_fork_init_noise must be >= 0, got {cfg.ssft_fork_init_noise!r}")


def fork_token_names(cfg) -> list[str]:
    """The N forking-token strings, `<think1>` ... `<thinkN>` by default."""
    return [cfg.ssft_fork_token_template.format(i=i) for i in range(1, cfg.ssft_num_fork_tokens + 1)]
