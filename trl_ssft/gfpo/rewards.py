"""Rewards for GFPO: correctness of the final answer, as a TRL reward function.

A TRL reward function is called as ``f(prompts=..., completions=..., completion_ids=..., **columns)`` and
returns one float (or None) per rollout. Under GFPO `completions` are the rollouts' full continuations
(the text after the forking token; TRL skips special tokens, so the forking token is never in it), and
every reward function also receives ``gfpo_fork_token`` (the chosen token's name, None in `free` mode
when the rollout started with no forking token), ``gfpo_fork_index`` and ``gfpo_continuation_ids``.
``completion_ids`` is the one-token completion TRL trains on (the forking token), not the continuation.
"""

from __future__ import annotations

from ..eval.answers import answers_equal, extract_answer


def completion_text(completion) -> str:
    """The text of a TRL completion: a string, or a conversational list of messages (their contents joined)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(m.get("content") or "" if isinstance(m, dict) else str(m) for m in completion)
    return str(completion)


def make_correctness_reward(answer_column: str = "answer", extract: str = "boxed", use_math_verify: bool | None = None,
                            pattern: str | None = None):
    """A reward function: 1.0 when the extracted final answer equals the row's `answer_column`, else 0.0.

    Extraction and equality are the evaluation's (`trl_ssft.eval.answers`): `extract` is ``boxed`` or
    ``fallback`` (or a regex `pattern`); equality is normalised strings / exact numbers, then math-verify
    when `use_math_verify` (None: when installed). A row whose answer is missing gets None (no reward).
    """

    def correctness_reward(completions, **kwargs):
        answers = kwargs.get(answer_column)
        if answers is None:
            raise ValueError(f"correctness_reward needs a dataset column {answer_column!r} with the reference answers")
        out = []
        for completion, gold in zip(completions, answers, strict=True):
            if gold is None:
                out.append(None)
                continue
            pred = extract_answer(completion_text(completion), pattern, extract)
            out.append(1.0 if answers_equal(str(gold), pred, use_math_verify) else 0.0)
        return out

    correctness_reward.__name__ = "correctness_reward"
    return correctness_reward


correctness_reward = make_correctness_reward()
correctness_reward.__doc__ = """1.0 when the last ``\\boxed{}`` of a completion equals the row's ``answer`` (math-verify when
installed), else 0.0. `make_correctness_reward` builds variants (another column, fallback extraction)."""


def load_reward_funcs(paths: list[str] | None, settings=None) -> list:
    """Reward functions from dotted paths (`module.function`); none given: the correctness reward of `settings`."""
    import importlib

    if not paths:
        if settings is None:
            return [correctness_reward]
        return [make_correctness_reward(settings.gfpo_answer_column, settings.gfpo_answer_extract,
                                        settings.gfpo_math_verify)]
    funcs = []
    for p in paths:
        mod, _, name = p.rpartition(".")
        if not mod:
            raise ValueError(f"reward function {p!r} must be a dotted path `module.function`")
        funcs.append(getattr(importlib.import_module(mod), name))
    return funcs
