"""Forking tokens: names -> ids, add or reuse them, initialise their embeddings, PEFT trainable rows; the pad id."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

logger = logging.getLogger(__name__)


def add_fork_tokens(tokenizer, names: list[str]) -> tuple[list[int], list[str]]:
    """Make every name in `names` a single special token of `tokenizer`.

    Names already in the vocabulary are reused (their ids and trained embeddings are kept).
    Returns ``(ids, new_names)``: the id of each name, and which names were added now.
    """
    vocab = tokenizer.get_vocab()
    new = [n for n in names if n not in vocab]
    if new:
        tokenizer.add_tokens(new, special_tokens=True)
    return fork_token_ids(tokenizer, names), new


def fork_token_ids(tokenizer, names: Sequence[str], *, missing: str = "error") -> list[int | None]:
    """The id of each forking-token name: the one way names become ids (training, data checks, inference).

    A name must be in the vocabulary and encode (without special tokens) to exactly its own id, else
    `ValueError`. ``missing="none"`` gives None for a name not in the vocabulary yet (data checks run
    before `prepare_fork_tokens` may have added it). Returns one entry per name, in order.
    """
    tok = getattr(tokenizer, "tokenizer", tokenizer)  # a processor wraps its tokenizer
    vocab = tok.get_vocab()
    ids: list[int | None] = []
    for n in names:
        i = vocab.get(n)
        if i is None and missing == "none":
            ids.append(None)
            continue
        enc = tok(n, add_special_tokens=False)["input_ids"]
        if i is None or enc != [i]:
            raise ValueError(f"forking token {n!r} is not a single token of this tokenizer (id {i}, encodes to "
                             f"{enc}); add it with prepare_fork_tokens or choose another ssft_fork_token_template")
        ids.append(i)
    return ids


VLLM_MIN_LOGIT_BIAS = -100.0  # vLLM's SamplingParams clamps logit_bias to [-100, 100]


def forbidding_logit_bias(ids: Sequence[int]) -> dict[int, float]:
    """vLLM's way to forbid token `ids` (there is no `suppress_tokens`): the lowest logit bias it accepts, per id.
    Used by evaluation (`eval.vllm_backend`) and by GFPO's colocated rollouts (`gfpo.mixin.suppress_in_rollouts`)."""
    return {int(t): VLLM_MIN_LOGIT_BIAS for t in ids}


def pad_token_id(tokenizer) -> int:
    """The id that pads batches: the tokenizer's pad token, else its EOS token (`ValueError` if neither)."""
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")
    return pad


def embedding_sizes(model) -> int:
    return model.get_input_embeddings().weight.shape[0]


@torch.no_grad()
def init_fork_embeddings(model, token_ids: list[int], noise: float = 0.1, seed: int = 0) -> None:
    """Set the rows `token_ids` of the input (and untied output) embeddings to mean + noise.

    The mean and per-dimension standard deviation are taken over all rows that are not being
    initialised; each new row is the mean plus `noise` standard deviations of Gaussian noise (drawn
    from a fixed `seed`): near the mean of the trained vocabulary, distinct from each other
    (`ssft_fork_init_noise`; docs/mode_preservation.md compares 0.1 with 1.0).
    """
    if not token_ids:
        return
    gen = torch.Generator().manual_seed(seed)
    mats = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != mats[0].data_ptr():
        mats.append(out.weight)
    idx = torch.tensor(token_ids, dtype=torch.long)
    for w in mats:
        if w.dtype in (torch.uint8, torch.int8) or getattr(w, "quant_state", None) is not None:
            raise ValueError("cannot initialise quantised embeddings; add forking tokens before quantising")
        keep = torch.ones(w.shape[0], dtype=torch.bool)
        keep[idx[idx < w.shape[0]]] = False
        ref = w[keep.to(w.device)].float()
        mean, std = ref.mean(0), ref.std(0)
        rnd = torch.randn(len(token_ids), w.shape[1], generator=gen).to(w.device)
        w[idx.to(w.device)] = (mean + noise * std * rnd).to(w.dtype)


def prepare_fork_tokens(model, tokenizer, names: list[str], noise: float = 0.1, seed: int = 0) -> list[int]:
    """Add/reuse the forking tokens, grow the embeddings if needed, initialise new rows. Returns the ids.

    Models whose embedding matrix is larger than the tokenizer (padded vocabularies, e.g. Qwen) are
    not shrunk: the new ids land in the padding rows, which are initialised like appended rows.
    """
    ids, new = add_fork_tokens(tokenizer, names)
    if max(ids) >= embedding_sizes(model):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    new_ids = [i for n, i in zip(names, ids) if n in new]
    init_fork_embeddings(model, new_ids, noise=noise, seed=seed)
    if new:
        logger.info("added forking tokens %s with ids %s", new, new_ids)
    return ids


def _module_name(model, module) -> str | None:
    for name, m in model.named_modules():
        if m is module:
            return name.split(".")[-1]
    return None


def trainable_token_indices(model, token_ids: list[int]) -> dict[str, list[int]]:
    """PEFT `trainable_token_indices` for the forking rows: input embeddings, and the output layer if untied."""
    emb = model.get_input_embeddings()
    out = model.get_output_embeddings()
    result = {_module_name(model, emb): list(token_ids)}
    tied = out is None or out.weight.data_ptr() == emb.weight.data_ptr() or getattr(
        model.config, "tie_word_embeddings", False
    )
    if not tied:
        result[_module_name(model, out)] = list(token_ids)
    return result


def add_trainable_tokens_to_peft_config(peft_config, model, token_ids: list[int]):
    """Return `peft_config` with the forking rows added to its `trainable_token_indices` (LoRA only)."""
    if peft_config is None:
        return None
    if not hasattr(peft_config, "trainable_token_indices"):
        logger.warning("peft config %s has no trainable_token_indices: forking-token rows stay frozen",
                       type(peft_config).__name__)
        return peft_config
    wanted = trainable_token_indices(model, token_ids)
    saved = set(peft_config.modules_to_save or [])
    wanted = {k: v for k, v in wanted.items() if k not in saved}  # a fully trained matrix needs no row list
    current = peft_config.trainable_token_indices
    if current is None:
        merged = wanted
    elif isinstance(current, list):
        merged = {k: sorted(set(v) | set(current)) for k, v in wanted.items()}
    else:
        merged = {k: sorted(set(v) | set(current.get(k, []))) for k, v in wanted.items()}
        merged.update({k: v for k, v in current.items() if k not in merged})
    peft_config.trainable_token_indices = merged or None
    return peft_config
