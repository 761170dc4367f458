"""The model's own forking-token choice in an evaluation (`evaluate_model(self_choose=...)`).

As the authors evaluate their GFPO model: no forced token, the model picks its own. Per question and round,
N tokens are drawn from the model's N-way distribution after the prompt and the layout's text before the token
(``sample``, with a generator seeded by (seed, question); ``argmax`` takes the most probable token N times) and one
sample is generated after each (the token with the layout's text around it): Pass@1 of the model's choice (mean over
all N x R self-chosen samples), Cons@N (one vote per round over its N self-chosen samples, averaged, the
same estimator as the forced tokens' Cons@N), ``token_counts`` (questions whose most-chosen token it is),
``draw_counts`` (all draws), and each question's choices and N-way probabilities (``per_question``).

A model whose ssft_state.json says ``pass1_choice: "self"`` (written by the GFPO trainers) is evaluated
this way by default (`resolve_self_choose`), next to the forced tokens.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from . import metrics as M
from ..state import read_ssft_state
from .inference import SSFTModel, fork_token_probs
from .rules import score_samples
from .sampling import Request, sample_seed

STRATEGIES = ("argmax", "sample")


def resolve_self_choose(model, self_choose: str | None) -> str | None:
    """`self_choose` as given; None: ``sample`` when the model's state has ``pass1_choice: "self"`` (a GFPO
    model), else no self-choice; ``"none"`` turns it off."""
    if self_choose == "none":
        return None
    if self_choose is not None:
        if self_choose not in STRATEGIES:
            raise ValueError(f"self_choose must be one of {STRATEGIES} or 'none', got {self_choose!r}")
        return self_choose
    state = model.state if isinstance(model, SSFTModel) else (read_ssft_state(model) if isinstance(model, str) else {})
    return "sample" if (state or {}).get("pass1_choice") == "self" else None


def draw_tokens(probs: torch.Tensor, strategy: str, draws: int, seed: int) -> list[list[int]]:
    """`draws` token indices per question from N-way probabilities [Q, N]: sampled, or the argmax repeated."""
    if strategy == "argmax":
        return [[int(k)] * draws for k in probs.argmax(-1)]
    gen = torch.Generator().manual_seed(seed)
    return torch.multinomial(probs, draws, replacement=True, generator=gen).tolist()


def _draw_seed(seed: int, question: int) -> int:
    """Seed of question `question`'s token draws (independent of the other questions)."""
    return int(np.random.SeedSequence([int(seed), int(question), 7919]).generate_state(1)[0] & 0x7FFFFFFF)


def self_chosen_requests(sm: SSFTModel, rows: list[dict], forked: list[list[list[int]]], tokens: list[str],
                         rounds: int, strategy: str, seed: int) -> tuple[list[Request], list[list[int]], torch.Tensor]:
    """The N x R self-chosen samples of each question as generation requests, the drawn token indices per question
    ([Q][N * R]: draw d is round d // N, slot d % N) and the N-way probabilities [Q, N].

    `forked[q][k]`: the prompt ids of question q with token k (`inference.fork_prompt_ids`, the model's layout)."""
    n = len(tokens)
    probs = fork_token_probs(sm.model, sm.tokenizer, [r["prompt"] for r in rows], tokens, layout=sm.layout)
    picks = [draw_tokens(probs[q: q + 1], strategy, n * rounds, _draw_seed(seed, q))[0] for q in range(len(rows))]
    requests = [Request((q, d % n, d // n, True), tokens[k], forked[q][k], sample_seed(seed, q, d % n, d // n, True))
                for q in range(len(rows)) for d, k in enumerate(picks[q])]
    return requests, picks, probs


def self_chosen_report(rows: list[dict], tokens: list[str], rounds: int, strategy: str, rules, picks: list[list[int]],
                       probs: torch.Tensor, s: dict, classify, keep_samples: bool = False) -> dict:
    """Score the N x R self-chosen samples per question (texts ``s["texts"]`` [Q, N, R]) and report them (see the
    module docstring).

    keep_samples: also return every sample under ``"samples"`` (question, round, slot, the drawn token, text,
    answer, correctness, mode; ``"self_chosen": True``), in the layout of the forced samples.
    """
    n = len(tokens)
    score_samples(s, rows, rules, classify)
    chosen = np.array([[[picks[q][r * n + i] for r in range(rounds)] for i in range(n)] for q in range(len(rows))])
    gold = [row["answer"] for row in rows]
    has = any(g is not None for g in gold)
    out = {
        "strategy": strategy, "samples_per_question": n * rounds,
        "draw_counts": {t: int((chosen == k).sum()) for k, t in enumerate(tokens)},
        "pass1": float(s["correct"].mean()) if has else None,
        "cons_at_n": M.cons_at_n(s["answers"], gold, rules.equal(), rules.missing) if has else None,
        "pass1_when_chosen": {t: float(s["correct"][chosen == k].mean()) if has and (chosen == k).any() else None
                              for k, t in enumerate(tokens)},
        "per_question": [_question(q, picks[q], probs[q], s["correct"][q], tokens, has) for q in range(len(rows))],
    }
    if keep_samples:
        out["samples"] = [{"question": q, "token": tokens[int(chosen[q, i, r])], "round": r, "slot": i,
                           "self_chosen": True, "text": s["texts"][q, i, r], "answer": s["answers"][q, i, r],
                           "correct": bool(s["correct"][q, i, r]), "mode": s["modes"][q, i, r],
                           "new_tokens": int(s["lengths"][q, i, r])}
                          for q in range(len(rows)) for r in range(rounds) for i in range(n)]
    tops = [p["top_token"] for p in out["per_question"]]
    out["token_counts"] = {t: tops.count(t) for t in tokens}  # questions whose most-chosen token is t
    if classify is not None:
        modes = [m for m in s["modes"].ravel()]
        out["mode_counts"] = {m: modes.count(m) for m in dict.fromkeys(modes)}
    return out


def _question(q: int, picks: list[int], probs: torch.Tensor, correct: np.ndarray, tokens: list[str], has: bool) -> dict:
    counts = Counter(tokens[k] for k in picks)
    return {"question": q, "tokens": [tokens[k] for k in picks], "top_token": counts.most_common(1)[0][0],
            "probs": {t: round(float(p), 4) for t, p in zip(tokens, probs)},
            "pass1": float(correct.mean()) if has else None}
