"""Parallel inference with global forking tokens: loading, per-token prompts, batched generation, token choice.

The sequence layout matches training: the prompt (chat template with the generation prompt for a
message list, the raw string otherwise), then ONE forking token with the text of the model's forking-token
layout around it (`trl_ssft.layout`: nothing by default; ``<|im_start|>`` before and a newline after for the
released SSFT-32B checkpoints), then the model's continuation::

    prompts = fork_prompt_ids(tok, [{"role": "user", "content": q}], ["<think1>", ..., "<thinkN>"])
    # N lists of ids; with the bare layout prompts[i][-1] == id of "<think{i+1}>"
    texts = generate(model, tok, prompts, temperature=0.7, top_p=0.95)   # N continuations
    vote = majority_vote([extract_answer(t) for t in texts], equal=make_equal())   # eval.metrics, eval.answers

`fork_prompt_strings` gives the same prompts as text, for serving engines (vLLM etc.). A model
trained with `ssft_fork_token_loss` can pick its own token: `choose_fork_token`. Answers and their
equality live in `trl_ssft.eval.answers`, votes and scores in `trl_ssft.eval.metrics`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..data import encode_prompt, render_prompt
from ..layout import BARE_IDS, LayoutIds, check_boundary, fork_span, model_layout
from ..state import STATE_FILE, read_ssft_state  # noqa: F401  (read_ssft_state re-exported)
from ..tokens import fork_token_ids, pad_token_id  # fork_token_ids: the one names -> ids rule

logger = logging.getLogger(__name__)

Prompt = str | list[dict]


# ---------------------------------------------------------------- loading
@dataclass
class SSFTModel:
    """A loaded model with its tokenizer and the training record of its forking tokens."""

    model: object
    tokenizer: object
    fork_tokens: list[str]
    fork_token_ids: list[int]
    pass1_token: str | None = None
    state: dict = field(default_factory=dict)
    layout: LayoutIds = BARE_IDS  # the forking-token layout (from ssft_state.json unless overridden)


def find_fork_tokens(tokenizer, template: str = "<think{i}>") -> list[str]:
    """Forking tokens present in the vocabulary: ``template`` with i = 1, 2, ... until one is missing."""
    vocab = tokenizer.get_vocab()
    out, i = [], 1
    while template.format(i=i) in vocab:
        out.append(template.format(i=i))
        i += 1
    return out


def _load_weights(path: str, device, dtype):
    """The model of a full-model or PEFT adapter dir, in eval mode on `device`."""
    from transformers import AutoModelForCausalLM

    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    kwargs = {} if dtype is None else {"dtype": dtype}
    if os.path.exists(os.path.join(path, "adapter_config.json")):
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return model.to(device).eval()


def load_ssft_model(path: str, device: str | torch.device | None = None, dtype: torch.dtype | str | None = None,
                    fork_tokens: Sequence[str] | None = None, load_model: bool = True,
                    fork_layout=None) -> SSFTModel:
    """Load a saved SSFT model dir (full model, or a PEFT adapter dir with `adapter_config.json`).

    The forking tokens come from `fork_tokens`, else from the dir's `ssft_state.json` (written by
    the trainer), else from the tokenizer's `<think1>`, `<think2>`, ... The Pass@1 token defaults to
    the state's `pass1_token` (the token matched to the most traces in training). The model is put
    in eval mode on `device` (default: CUDA when available, else CPU). ``load_model=False`` reads only
    the tokenizer and the state (``model`` is None), e.g. for a serving engine that loads the weights.
    `fork_layout` (a preset name, JSON object or `layout.ForkLayout`) overrides the layout the state records
    (``fork_layout``; ``bare`` when absent).
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = _load_weights(path, device, dtype) if load_model else None
    state = read_ssft_state(path)
    names = list(fork_tokens or state.get("fork_tokens") or find_fork_tokens(tokenizer))
    if not names:
        raise ValueError(f"{path}: no forking tokens found (no {STATE_FILE}, no <think1> in the tokenizer); "
                         "pass fork_tokens=[...]")
    ids = fork_token_ids(tokenizer, names)
    layout = model_layout(tokenizer, fork_layout, state, names[0])
    return SSFTModel(model, tokenizer, names, ids, state.get("pass1_token"), state, layout)


# ---------------------------------------------------------------- prompts
def fork_prompt_ids(tokenizer, prompt: Prompt, fork_tokens: Sequence[str] | None,
                    layout: LayoutIds | None = None) -> list[list[int]]:
    """The N prompts of one question as token ids: ``encode_prompt(prompt) + fork_span(fork_tokens[i], layout)``.

    A message list is rendered with the chat template and its generation prompt (as in training); `layout`
    (`layout.tokenize_layout`; None: the token alone) puts its text around the token, as training did, and is
    refused when its text would tokenize differently inside the rendered string (`layout.check_boundary`).
    ``fork_tokens=None`` or ``[]`` gives the single prompt without a forking token (SFT-mixed models).
    Returns N lists (1 without tokens).
    """
    base = encode_prompt(tokenizer, prompt)
    if not fork_tokens:
        return [list(base)]
    if layout is not None and not layout.layout.is_bare:
        check_boundary(tokenizer, layout, render_prompt(tokenizer, prompt), base, fork_tokens[0])
    return [list(base) + fork_span(i, layout)[0] for i in fork_token_ids(tokenizer, fork_tokens)]


def fork_prompt_strings(tokenizer, prompt: Prompt, fork_tokens: Sequence[str] | None,
                        layout: LayoutIds | None = None) -> list[str]:
    """The N prompts as text (for vLLM-like engines): rendered prompt + the layout's span as text.

    Tokenized without adding special tokens, a string encodes to the ids of `fork_prompt_ids` for
    chat prompts (a BOS that `encode_prompt` adds to a plain-string prompt is not in the string).
    """
    base = render_prompt(tokenizer, prompt)
    render = (layout or BARE_IDS).layout.render
    return [base + render(t) for t in fork_tokens] if fork_tokens else [base]


# ---------------------------------------------------------------- generation
def _eos_ids(model, tokenizer) -> list[int]:
    ids = set()
    gc = getattr(model, "generation_config", None)
    eos = getattr(gc, "eos_token_id", None) if gc is not None else None
    for e in ([eos] if isinstance(eos, int) else list(eos or [])) + [tokenizer.eos_token_id]:
        if e is not None:
            ids.add(int(e))
    return sorted(ids)


def _left_pad(batch: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    s = max(len(x) for x in batch)
    ids = torch.full((len(batch), s), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), s), dtype=torch.long)
    for r, x in enumerate(batch):
        ids[r, s - len(x):] = torch.tensor(list(x), dtype=torch.long)
        mask[r, s - len(x):] = 1
    return ids, mask


class RowSampler:
    """A transformers logits processor that samples each row with a generator of its own (temperature, then top-p as
    transformers' warpers) and sets every other logit to -inf, so that greedy decoding takes the sampled token. A
    row's sample then depends only on its seed and its own logits, not on the rows it is batched with or on the order
    of batches: what a resumable evaluation needs (`eval.sampling`). Rows: [B, V] scores after the built-in
    processors (``suppress_tokens`` included)."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float):
        self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.temperature, self.top_p = float(temperature), float(top_p)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            sorted_p[(sorted_p.cumsum(-1) - sorted_p) > self.top_p] = 0.0  # keep the smallest nucleus >= top_p
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
        probs = probs.cpu()
        picks = torch.stack([torch.multinomial(probs[r], 1, generator=g) for r, g in enumerate(self.gens)])
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, picks.to(scores.device), 0.0)


@torch.no_grad()
def generate_ids(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.7,
    top_p: float = 0.95,
    greedy: bool = False,
    batch_size: int = 32,
    seed: int | None = 0,
    progress: Callable[[int], None] | None = None,
    suppress_ids: Sequence[int] | None = None,
    seeds: Sequence[int] | None = None,
) -> list[list[int]]:
    """Continue each prompt (list of ids) with `model.generate`; returns the new ids of each, EOS cut off.

    Batches of `batch_size` prompts are left-padded with the tokenizer's pad token (EOS when it has
    none) and sent through `generate` with an attention mask, so a batched greedy run gives the same
    output as one prompt at a time. Sampling uses `temperature` and `top_p` (`greedy=True` or
    ``temperature == 0`` decodes greedily). `seed` seeds torch's RNG once before generating (the
    samples then depend on the batch layout). `seeds` (one per prompt) samples each prompt with a generator of
    its own instead (`RowSampler`: the samples no longer depend on batching; `seed` is then unused). Works for
    `PeftModel`s too. `progress(n)` is called after each batch with the number of prompts done in it.
    `suppress_ids`: token ids never generated (transformers' `suppress_tokens`), e.g. the forking tokens after
    the forking position.
    """
    device = next(model.parameters()).device
    pad = pad_token_id(tokenizer)
    eos = _eos_ids(model, tokenizer)
    greedy = greedy or temperature == 0
    if seeds is not None and len(seeds) != len(prompts):
        raise ValueError(f"seeds: {len(seeds)} for {len(prompts)} prompts")
    if seed is not None and seeds is None:
        torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    out: list[list[int]] = []
    try:
        for s in range(0, len(prompts), batch_size):
            chunk = prompts[s: s + batch_size]
            ids, mask = _left_pad(chunk, pad)
            if greedy:
                kw = dict(do_sample=False)
            elif seeds is not None:
                kw = dict(do_sample=False, logits_processor=_as_processors(
                    RowSampler(seeds[s: s + batch_size], temperature, top_p)))
            else:
                kw = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
            if suppress_ids:
                kw["suppress_tokens"] = [int(t) for t in suppress_ids]
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos, **kw)
            new = gen[:, ids.shape[1]:].tolist()
            for row in new:
                cut = next((k for k, t in enumerate(row) if t in eos), len(row))
                out.append(row[:cut])
            if progress is not None:
                progress(len(chunk))
    finally:
        model.train(was_training)
    return out


def _as_processors(sampler: RowSampler):
    """`sampler` as a transformers `LogitsProcessorList` (transformers is imported only when generating)."""
    from transformers import LogitsProcessor, LogitsProcessorList

    class _Processor(LogitsProcessor):
        def __call__(self, input_ids, scores):
            return sampler(input_ids, scores)

    return LogitsProcessorList([_Processor()])


def generate(model, tokenizer, prompts: Sequence[Sequence[int]], **kwargs) -> list[str]:
    """`generate_ids`, decoded to text (special tokens skipped)."""
    return [tokenizer.decode(x, skip_special_tokens=True) for x in generate_ids(model, tokenizer, prompts, **kwargs)]


@torch.no_grad()
def fork_token_probs(model, tokenizer, prompts: Sequence[Prompt], fork_tokens: Sequence[str],
                     batch_size: int = 32, layout: LayoutIds | None = None) -> torch.Tensor:
    """p(forking token i | prompt + the layout's text before it), renormalised over the N forking tokens:
    [len(prompts), N] float on CPU.

    Meaningful for a model trained with `ssft_fork_token_loss` (otherwise close to uniform or arbitrary).
    """
    device = next(model.parameters()).device
    pad = pad_token_id(tokenizer)
    ids_f = torch.tensor(fork_token_ids(tokenizer, fork_tokens))
    before = list((layout or BARE_IDS).before)
    rows = [encode_prompt(tokenizer, p) + before for p in prompts]
    out = []
    for s in range(0, len(rows), batch_size):
        ids, mask = _left_pad(rows[s: s + batch_size], pad)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                       use_cache=False).logits[:, -1, :].float().cpu()
        out.append(torch.softmax(logits[:, ids_f], dim=-1))
    return torch.cat(out) if out else torch.zeros((0, len(fork_tokens)))


def choose_fork_token(model, tokenizer, prompts: Sequence[Prompt], fork_tokens: Sequence[str],
                      strategy: str = "argmax", seed: int = 0, layout: LayoutIds | None = None) -> list[int]:
    """The model's own token for each prompt: index into `fork_tokens` ([len(prompts)] ints).

    ``argmax``: the most probable forking token after the prompt (and the layout's text before the token);
    ``sample``: drawn from the renormalised probabilities (`fork_token_probs`) with a generator seeded by `seed`.
    """
    probs = fork_token_probs(model, tokenizer, prompts, fork_tokens, layout=layout)
    if strategy == "argmax":
        return probs.argmax(-1).tolist()
    if strategy == "sample":
        gen = torch.Generator().manual_seed(seed)
        return torch.multinomial(probs, 1, generator=gen)[:, 0].tolist()
    raise ValueError(f"strategy must be 'argmax' or 'sample', got {strategy!r}")
