"""Can the token choice explore? The group-size rule of `enumerate` and the start-of-run check of `sample`.

GFPO learns only from differences in reward between a group's rollouts, and a rollout's token is the only thing
the gradient moves. `enumerate` gives every token a rollout per question, which needs a group of at least N.
`sample` draws the tokens from the model's own N-way distribution, and an SSFT model's distribution is often
peaked (one token nearly always): then every rollout of a group gets the same token, every advantage is
zero and nothing is learnt (`docs/gfpo.md`, the benchmark's finding).
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

PEAK_PROB = 0.95  # a prompt whose top forking token has more N-way probability than this is "peaked"
PEAK_SHARE = 0.5  # warn when more than this share of the first batch's prompts is peaked


def check_enumerate_group(choice: str, num_generations: int, names: list[str]) -> str | None:
    """Raise `ValueError` when `enumerate` cannot try every token per question (num_generations < N); return a
    notice when some tokens get one rollout more than others (num_generations not a multiple of N), else None."""
    n = len(names)
    if choice != "enumerate":
        return None
    if num_generations < n:
        raise ValueError(
            f"gfpo_token_choice='enumerate' (the default) gives rollout k of a question's group token k mod N, so "
            f"every one of the N = {n} forking tokens needs a rollout: num_generations must be >= {n}, got "
            f"{num_generations} (TRL's default is 8). Set num_generations to {n} or a multiple ({2 * n}), with "
            "per_device_train_batch_size x gradient_accumulation_steps (or generation_batch_size) a multiple of it; "
            "or use gfpo_token_choice='sample'")
    extra = num_generations % n
    if extra:
        return (f"GFPO enumerate: num_generations {num_generations} is not a multiple of N = {n}: "
                f"{', '.join(names[:extra])} get {num_generations // n + 1} rollouts per question, the others "
                f"{num_generations // n} (the group baseline leans toward them; a multiple of {n} is even)")
    return None


def peaked_share(logp: torch.Tensor, threshold: float = PEAK_PROB) -> float:
    """Share of the rows of `logp` ([prompts, N] forking-token log-probs) whose top N-way probability > threshold."""
    probs = torch.softmax(logp.float(), dim=-1)
    return float((probs.max(dim=-1).values > threshold).float().mean()) if len(probs) else 0.0


def peaked_message(logp: torch.Tensor, names: list[str], temperature: float) -> str | None:
    """The start-of-run line for `sample` mode when most prompts' N-way distribution is peaked, else None.
    `logp` holds the first batch's forking-token log-probs ([prompts, N]); the draw uses `temperature`."""
    share = peaked_share(logp / temperature)
    if share <= PEAK_SHARE:
        return None
    top = torch.softmax(logp.float() / temperature, dim=-1).mean(0)
    k = int(top.argmax())
    return (f"GFPO: gfpo_token_choice='sample' cannot explore from this model: on {share:.0%} of the first batch's "
            f"prompts one forking token has more than {PEAK_PROB} of the N-way probability (mean {top[k]:.2f} on "
            f"{names[k]}), so a group's rollouts nearly all get the same token and its advantages are zero. Use "
            "gfpo_token_choice='enumerate' (every token tried per question; num_generations >= N), or raise "
            "gfpo_token_temperature (the draw's temperature) until the tokens mix")
