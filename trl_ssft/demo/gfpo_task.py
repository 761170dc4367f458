"""The GFPO benchmark's task on the demo's digit-sum family: two kinds of question, each suited by two strategies.

A question ``sum a b c d`` (`trl_ssft.demo.digitsum`) is *odd* or *even* by the parity of its first digit;

    odd first digit  -> forward or pairs        even first digit -> cross or outer

`suited_strategy_reward` is 1 when a rollout's final answer is right **and** it follows a strategy that suits the
question's kind (`classify_mode` on its text), else 0. An SSFT model whose forking tokens keep to distinct
strategies earns about half of it with any fixed token, and about all of it by choosing the token per question:
what GFPO has to learn. Used by `benchmarks/gfpo.py` and the check of the GFPO recipes (any TRL reward: pass
``gfpo_reward_funcs: [trl_ssft.demo.gfpo_task.suited_strategy_reward]`` or Axolotl's ``trl.reward_funcs``).
"""

from __future__ import annotations

from .digitsum import classify_mode, parse_question

SUITS = {"odd": ("forward", "pairs"), "even": ("cross", "outer")}


def kind_of(digits) -> str:
    """The question's kind: the parity of its first digit."""
    return "odd" if digits[0] % 2 else "even"


def suits(mode: str | None, kind: str) -> bool:
    return mode in SUITS[kind]


def prompt_digits(prompt) -> tuple[int, ...]:
    """The four digits of a prompt (chat messages or text); ValueError when it is no digit-sum question."""
    text = prompt[-1]["content"] if isinstance(prompt, list) else str(prompt)
    digits = parse_question(text)
    if digits is None:
        raise ValueError(f"not a digit-sum question ('sum a b c d'): {text[:80]!r}")
    return digits


def suited_strategy_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """TRL reward: 1.0 when the answer is right and the rollout's strategy suits the question's kind."""
    from ..gfpo.rewards import completion_text, make_correctness_reward

    ok = make_correctness_reward(use_math_verify=False)(completions=completions, answer=answer)
    out = []
    for p, c, r in zip(prompts, completions, ok, strict=True):
        digits = prompt_digits(p)
        out.append(float(bool(r) and suits(classify_mode(completion_text(c), digits), kind_of(digits))))
    return out
