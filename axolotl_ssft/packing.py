"""What Axolotl's packing options mean under SSFT, mapped once in the plugin's `register` (raw YAML).

Axolotl packs *dataset rows*: its multipack sampler bin-packs rows into sequences of `sequence_len` tokens
(`sample_packing`, `eval_sample_packing`), or its flattening collator concatenates a micro-batch
(`batch_flattening`). An SSFT dataset row is one question with all its traces, matched to forking tokens
together, so rows are never mixed; what a packing recipe asks for, fewer padded tokens, is done by the set
loss instead: its matched rows are packed (`trl_ssft.packed_rows`, ``ssft_padding_free``).

| option | under SSFT |
|---|---|
| `sample_packing: true` | the set loss runs padding-free; Axolotl's multipack sampler is turned off |
| `batch_flattening: true` (or `auto` with flash attention and micro_batch_size > 1, as Axolotl's rule) | the same |
| `eval_sample_packing` | turned off; evaluation runs the training set loss (padding-free when training is) |
| `micro_batch_size` | questions per micro-batch (not packs of `sequence_len` tokens) |
| `sequence_len` | the longest matched row `[prompt, fork, trace]`, as without packing |
| `pad_to_sequence_len` | no effect: SSFT builds its own rows (its start line comes from `trl_ssft.recipe_options`) |
"""

from __future__ import annotations

from typing import Any

PACKING_NOTES = {
    "packing": "Axolotl's multipack sampler is off (it would put several questions in one row): micro_batch_size "
               "counts questions and sequence_len bounds each matched row",
    "eval_sample_packing": "evaluation runs the training set loss (padding-free when training is)",
}


def _flash_requested(cfg: Any) -> bool:
    impl = str(cfg.get("attn_implementation") or "")
    return "flash" in impl or bool(cfg.get("flash_attention"))


def map_packing_options(cfg: dict) -> tuple[str, tuple[str, ...]]:
    """Turn Axolotl's packing options into ``ssft_padding_free`` and switch Axolotl's own packing off, in place.

    Returns (the options that asked for packing, as written; what the related options mean here), for the
    start-of-run line (`trl_ssft.packed_rows.packing_line`). Raises `ValueError` when `ssft_padding_free:
    false` contradicts a packing option (`trl_ssft.packed_rows.resolve_padding_free`).
    """
    from trl_ssft.packed_rows import resolve_padding_free

    requested = [f"sample_packing: {cfg['sample_packing']}"] if cfg.get("sample_packing") else []
    flatten = cfg.get("batch_flattening")
    if flatten is True or (flatten == "auto" and _flash_requested(cfg) and (cfg.get("micro_batch_size") or 1) > 1):
        requested.append(f"batch_flattening: {flatten}")
    notes = []
    if requested:
        notes.append(PACKING_NOTES["packing"])
    if cfg.get("eval_sample_packing") or (cfg.get("sample_packing") and cfg.get("eval_sample_packing") is None):
        notes.append(PACKING_NOTES["eval_sample_packing"])
    cfg["ssft_padding_free"] = resolve_padding_free(cfg.get("ssft_padding_free"), requested)
    for key in ("sample_packing", "eval_sample_packing", "batch_flattening"):
        if key in cfg:
            cfg[key] = False
    return ", ".join(requested), tuple(notes)
