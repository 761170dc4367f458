"""A trace from its parts: thinking text + final answer text, in the student model's reasoning layout.

Every SSFT trace must end with the answer the model has to learn to give, so a source that keeps the
reasoning and the final answer apart (s1K-1.1's ``*_thinking_trajectory`` / ``*_attempt`` columns, a
server's ``reasoning_content`` / ``content``) is joined by a template. Presets (`PRESETS`):

- ``think``: ``<think>\\n{thinking}\\n</think>\\n\\n{answer}``, the layout of DeepSeek-R1 and Qwen3 reasoning
  models (their chat templates put the reasoning between ``<think>`` and ``</think>`` before the answer).
- ``s1``: ``<|im_start|>think\\n{thinking}\\n<|im_start|>answer\\n{answer}`` with ``Answer: `` put before the
  answer unless it already contains ``Answer:``, exactly the assistant text s1 trains on
  (simplescaling/s1, ``data/tokenization.py::process_cot_example``, commit 4344aca).
- ``plain``: the non-empty parts joined by a blank line (``{thinking}\\n\\n{answer}``); the thinking may be empty.

Any other value is a format string with ``{thinking}`` and ``{answer}`` (e.g. the s1 layout without its
opening ``<|im_start|>think\\n`` marker: ``"{thinking}\\n<|im_start|>answer\\nAnswer: {answer}"``).

A source that gives a trace as one text (no separate thinking and no ``<think>`` tags) is already a
complete trace: it is kept as it is, whatever the template (`render` is called with ``thinking=None``).
"""

from __future__ import annotations

import string
from dataclasses import dataclass

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass(frozen=True)
class TraceTemplate:
    """How (thinking, answer) become one trace.

    `fmt`: a format string with ``{thinking}`` and ``{answer}`` (None: `plain` joining).
    `answer_prefix`: put before the answer unless the answer already contains it (s1's ``Answer: ``).
    `needs_thinking`: a trace whose thinking part is empty is dropped (``empty_thinking``).
    """

    name: str
    fmt: str | None
    answer_prefix: str = ""
    needs_thinking: bool = True

    def render(self, thinking: str | None, answer: str) -> str:
        """The trace text. `thinking=None`: the source gave one complete text (`answer`), kept as it is."""
        answer = answer.strip()
        if thinking is None:
            return answer
        thinking = thinking.strip()
        if self.answer_prefix and self.answer_prefix.strip() not in answer:
            answer = self.answer_prefix + answer
        if self.fmt is None:
            return "\n\n".join(p for p in (thinking, answer) if p)
        return self.fmt.format(thinking=thinking, answer=answer)


PRESETS: dict[str, TraceTemplate] = {
    "think": TraceTemplate("think", "<think>\n{thinking}\n</think>\n\n{answer}"),
    "s1": TraceTemplate("s1", "<|im_start|>think\n{thinking}\n<|im_start|>answer\n{answer}", answer_prefix="Answer: "),
    "plain": TraceTemplate("plain", None, needs_thinking=False),
}


def get_template(spec: str | TraceTemplate | None) -> TraceTemplate:
    """A preset name (`PRESETS`), a format string with ``{thinking}`` and ``{answer}``, or a `TraceTemplate`.

    None means ``think``. Raises `ValueError` for a format string without both fields or with others.
    """
    if isinstance(spec, TraceTemplate):
        return spec
    if spec is None:
        return PRESETS["think"]
    if spec in PRESETS:
        return PRESETS[spec]
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(spec) if name is not None}
    except ValueError:  # unbalanced braces
        fields = set()
    if fields != {"thinking", "answer"}:
        raise ValueError(
            f"trace template {spec!r}: give a preset ({', '.join(PRESETS)}) or a format string with exactly the "
            f"fields {{thinking}} and {{answer}} (found {sorted(fields) or 'none'}); write literal braces as {{{{ }}}}."
        )
    return TraceTemplate("custom", spec)


def split_thinking(text: str | None) -> tuple[str | None, str]:
    """(thinking, answer) of a response that may carry its reasoning inline as ``<think>...</think>``.

    - ``[<think>] R </think> A`` -> ``(R, A)`` (the opening tag is optional: some chat templates put it in
      the prompt);
    - ``<think> R`` with no closing tag (reasoning cut off) -> ``(R, "")``: no final answer;
    - no tags -> ``(None, text)``: one complete text.
    """
    text = text or ""
    close = text.rfind(THINK_CLOSE)
    if close != -1:
        head, answer = text[:close], text[close + len(THINK_CLOSE):]
        open_at = head.find(THINK_OPEN)
        thinking = head[open_at + len(THINK_OPEN):] if open_at != -1 else head
        return thinking.strip(), answer.strip()
    open_at = text.find(THINK_OPEN)
    if open_at != -1:
        return text[open_at + len(THINK_OPEN):].strip(), ""
    return None, text.strip()


__all__ = ["PRESETS", "TraceTemplate", "get_template", "split_thinking"]
