"""Where the forking token sits: the text placed before and after it (`ssft_fork_layout`).

Every producer of forking-token ids continues a rendered prompt with the same span, built by ONE function,
`fork_span`::

    prompt_ids + before_ids + [fork_id] + after_ids + (trace | generated continuation)

Producers: the set-loss rows (`rows.build_rows`), the matching pass (`scoring.cost_matrices`: ``before`` joins the
shared prompt, the token and ``after`` are fed but never scored), evaluation prompts for HF and vLLM
(`eval.inference.fork_prompt_ids`; `fork_prompt_strings` renders the same span as text, ``fork_token_probs``
reads p(token | prompt + before)), and GFPO rollouts (`gfpo.mixin`). Tokenized rows never contain it: it is
inserted when batches are built, so cached rows stay independent of N and of the layout.

Presets (`LAYOUTS`; or a JSON object ``{"before": ..., "after": ...}``):

- ``bare`` (default): the forking token alone, right after the chat template's generation prompt;
- ``released``: the released SSFT-32B checkpoints' layout on Qwen chat templates, ``<|im_start|>`` before the token
  and a newline after, so the assistant turn starts ``<|im_start|>assistant\\n<|im_start|><think1>\\n`` (the authors'
  lighteval fork, ``lighteval/src/lighteval/models/vllm/vllm_model.py`` in Sheng-J/SSFT, appends
  ``f"<|im_start|><think{i}>\\n"`` to the rendered prompt).

Loss: the span is one unit. Without ``ssft_fork_token_loss`` none of it carries loss (it is given context, as in
every consumer). With it, every token of the span does (before, token, after): the model then writes its whole
header itself when it picks its own token from the bare generation prompt (plain serving, GFPO ``free``). Loss
tokens per trace: ``len(trace)``, plus ``len(before) + 1 + len(after)`` with ``ssft_fork_token_loss``
(`fork_loss_tokens`); SFT-mixed (``ssft_assignment: none``) has no token and no layout.

Token boundaries: the pieces are tokenized separately (``before`` and ``after`` without special tokens) and the
ids are concatenated. `check_boundary` verifies that this equals the tokenization of the rendered string
``prompt + before + token + after`` (what a serving engine fed text would see, and what the authors' evaluation
tokenizes): a byte-level BPE may merge text across a boundary (e.g. ``after`` "ing" after a token that is not
special, or ``before`` merging with the end of the generation prompt), and then training and a text prompt would
disagree; such a layout is refused with an error that names the boundary.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

IGNORE_INDEX = -100


@dataclass(frozen=True)
class ForkLayout:
    """The text around the forking token. `single_tokens`: pieces that must each be one token (a preset's
    special tokens, e.g. ``<|im_start|>`` for ``released``)."""

    name: str = "bare"
    before: str = ""
    after: str = ""
    single_tokens: tuple[str, ...] = ()

    def describe(self) -> dict:
        """The layout as ssft_state.json and reports record it."""
        return {"name": self.name, "before": self.before, "after": self.after}

    def render(self, fork_token: str) -> str:
        """The span as text: ``before + fork_token + after``."""
        return self.before + fork_token + self.after

    @property
    def is_bare(self) -> bool:
        return not self.before and not self.after


LAYOUTS: dict[str, ForkLayout] = {
    "bare": ForkLayout(),
    "released": ForkLayout("released", "<|im_start|>", "\n", ("<|im_start|>",)),
}


def resolve_layout(spec: str | Mapping | ForkLayout | None) -> ForkLayout:
    """A `ForkLayout` from a preset name, a JSON object string / mapping ``{"before", "after"[, "name"]}``, a
    `ForkLayout`, or None (``bare``). A mapping equal to a preset's text resolves to that preset."""
    if spec is None or spec == "":
        return LAYOUTS["bare"]
    if isinstance(spec, ForkLayout):
        return spec
    if isinstance(spec, str):
        if spec in LAYOUTS:
            return LAYOUTS[spec]
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError:
            raise ValueError(f"fork layout {spec!r} is neither a preset ({', '.join(LAYOUTS)}) nor a JSON object "
                             '{"before": ..., "after": ...}') from None
    if not isinstance(spec, Mapping):
        raise ValueError(f"fork layout must be a preset name or a mapping with 'before'/'after', got {spec!r}")
    unknown = set(spec) - {"name", "before", "after"}
    if unknown:
        raise ValueError(f"fork layout: unknown keys {sorted(unknown)} (allowed: name, before, after)")
    before, after = str(spec.get("before") or ""), str(spec.get("after") or "")
    for preset in LAYOUTS.values():
        if (preset.before, preset.after) == (before, after):
            return preset
    return ForkLayout(str(spec.get("name") or "custom"), before, after)


def layout_from_state(state: Mapping | None) -> ForkLayout:
    """The layout a model was trained with: ``fork_layout`` of its ssft_state.json (``bare`` when absent)."""
    return resolve_layout((state or {}).get("fork_layout"))


@dataclass(frozen=True)
class LayoutIds:
    """A layout tokenized for one tokenizer: the ids of its text before and after the forking token."""

    layout: ForkLayout
    before: tuple[int, ...] = ()
    after: tuple[int, ...] = ()

    @property
    def span_len(self) -> int:
        """Tokens of the span around one forking token: ``len(before) + 1 + len(after)``."""
        return len(self.before) + 1 + len(self.after)


BARE_IDS = LayoutIds(LAYOUTS["bare"])


def _encode(tokenizer, text: str) -> list[int]:
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    return list(tok(text, add_special_tokens=False)["input_ids"]) if text else []


def tokenize_layout(tokenizer, layout: str | Mapping | ForkLayout | None) -> LayoutIds:
    """`layout` (anything `resolve_layout` takes) tokenized with `tokenizer` (pieces without special tokens).

    Raises `ValueError` when a preset's special token is not one token of this tokenizer (``released`` needs a
    Qwen-style tokenizer with ``<|im_start|>``)."""
    layout = resolve_layout(layout)
    for piece in layout.single_tokens:
        ids = _encode(tokenizer, piece)
        if len(ids) != 1:
            raise ValueError(f"fork layout {layout.name!r} needs {piece!r} to be one token of the tokenizer (it "
                             f"encodes to {ids}); it is meant for Qwen chat templates. Use another layout")
    return LayoutIds(layout, tuple(_encode(tokenizer, layout.before)), tuple(_encode(tokenizer, layout.after)))


def fork_span(fork_id: int, layout: LayoutIds | None = None, fork_loss: bool = False) -> tuple[list[int], list[int]]:
    """THE forking-token span: ``(ids, labels)`` of ``before + [fork_id] + after``.

    Labels are the ids themselves when `fork_loss` (``ssft_fork_token_loss``: the whole span carries loss), else
    -100 (given context). `layout` None is the bare layout (the token alone)."""
    layout = layout or BARE_IDS
    ids = list(layout.before) + [int(fork_id)] + list(layout.after)
    return ids, (list(ids) if fork_loss else [IGNORE_INDEX] * len(ids))


def fork_loss_tokens(layout: LayoutIds | None, fork_loss: bool) -> int:
    """Loss tokens the span adds to one trace: its length with ``ssft_fork_token_loss``, else 0."""
    return (layout or BARE_IDS).span_len if fork_loss else 0


def layout_extra_tokens(tokenizer, layout: str | Mapping | ForkLayout | None) -> int:
    """Tokens the layout's text adds to every row beyond the forking token itself (count against max_length)."""
    ids = tokenize_layout(tokenizer, layout)
    return len(ids.before) + len(ids.after)


def check_boundary(tokenizer, layout: LayoutIds, prompt_text: str, prompt_ids: Sequence[int], fork_token: str,
                   where: str = "prompt") -> None:
    """Refuse a layout whose pieces merge across a token boundary: the ids ``prompt_ids + fork_span`` must equal the
    tokenization of the rendered string ``prompt_text + before + fork_token + after`` (without special tokens;
    `prompt_ids` may start with a BOS the string lacks, which is ignored). `ValueError` names the boundary."""
    if layout.layout.is_bare:
        return
    fork_id = _encode(tokenizer, fork_token)
    if len(fork_id) != 1:
        raise ValueError(f"forking token {fork_token!r} is not one token of this tokenizer")
    ours = list(prompt_ids) + fork_span(fork_id[0], layout)[0]
    text = _encode(tokenizer, prompt_text + layout.layout.render(fork_token))
    if ours == text or (ours[1:] == text and len(ours) == len(text) + 1):
        return
    k = next((i for i, (a, b) in enumerate(zip(ours, text)) if a != b), min(len(ours), len(text)))
    side = "before the token (with the end of the prompt)" if k <= len(prompt_ids) + len(layout.before) else \
        "after the token"
    raise ValueError(
        f"fork layout {layout.layout.name!r} ({layout.layout.describe()}): its text merges with its neighbours "
        f"{side} under this tokenizer ({where}): the ids of prompt + layout pieces differ from the tokenization of the "
        f"rendered string at position {k}, so training rows and a text prompt would disagree. Start and end the "
        "layout's text at token boundaries (e.g. with a special token or a newline)")


def _probe_text(tokenizer) -> tuple[str, list[int]] | None:
    from .data import encode_prompt, render_prompt

    if getattr(getattr(tokenizer, "tokenizer", tokenizer), "chat_template", None) is None:
        return None
    probe = [{"role": "user", "content": "probe"}]
    return render_prompt(tokenizer, probe), encode_prompt(tokenizer, probe)


def check_template_boundary(tokenizer, layout: LayoutIds, fork_token: str) -> None:
    """`check_boundary` on the chat template's generation prompt (a probe question): the end every chat prompt
    shares. Skipped for a tokenizer without a chat template (string prompts are checked where they are rendered)."""
    if layout.layout.is_bare:
        return
    probe = _probe_text(getattr(tokenizer, "tokenizer", tokenizer))
    if probe is not None:
        check_boundary(tokenizer, layout, probe[0], probe[1], fork_token, "the chat template's generation prompt")


def model_layout(tokenizer, override=None, state: Mapping | None = None, fork_token: str | None = None) -> LayoutIds:
    """The tokenized layout a consumer of a trained model uses: `override` (anything `resolve_layout` takes), else
    the ``fork_layout`` of the model's ssft_state.json (`state`), else bare; with `fork_token`, refused when its
    text merges with the chat template's generation prompt (`check_template_boundary`)."""
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    layout = tokenize_layout(tok, layout_from_state(state) if override is None else override)
    if fork_token is not None:
        check_template_boundary(tok, layout, fork_token)
    return layout


__all__ = ["BARE_IDS", "ForkLayout", "LAYOUTS", "LayoutIds", "check_boundary", "check_template_boundary",
           "fork_loss_tokens", "fork_span", "layout_extra_tokens", "layout_from_state", "model_layout", "resolve_layout",
           "tokenize_layout"]
