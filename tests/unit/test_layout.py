"""The forking-token layout (`trl_ssft.layout`): presets, the one span function, loss tokens, token boundaries of a
byte-level BPE tokenizer (the demo's), and the matching pass's exactness with text around the token."""

from __future__ import annotations

import json

import pytest
import torch

from trl_ssft.layout import (
    LAYOUTS, check_boundary, check_template_boundary, fork_loss_tokens, fork_span, layout_from_state, resolve_layout,
    tokenize_layout,
)

NAMES = ["<think1>", "<think2>", "<think3>"]


@pytest.fixture(scope="module")
def tok():
    from trl_ssft.demo.synthetic import corpus, make_rows
    from trl_ssft.demo.tiny import build_tiny_tokenizer
    from trl_ssft.tokens import add_fork_tokens

    t = build_tiny_tokenizer(corpus(make_rows(40, seed=1)), vocab_size=400)
    add_fork_tokens(t, NAMES)
    return t


def test_presets_json_and_errors():
    assert resolve_layout(None) is LAYOUTS["bare"] and resolve_layout("bare").is_bare
    rel = resolve_layout("released")
    assert (rel.before, rel.after) == ("<|im_start|>", "\n")
    assert resolve_layout('{"before": "<|im_start|>", "after": "\\n"}') is rel  # the same text is the preset
    custom = resolve_layout({"before": "[", "after": "]\n"})
    assert custom.name == "custom" and custom.render("<think2>") == "[<think2>]\n"
    assert layout_from_state({}) is LAYOUTS["bare"]
    assert layout_from_state({"fork_layout": rel.describe()}) is rel
    for bad, msg in (("fancy", "neither a preset"), ('{"before": 1, "colour": 2}', "unknown keys"), ("[1]", "mapping")):
        with pytest.raises(ValueError, match=msg):
            resolve_layout(bad)


def test_option_is_validated_by_both_front_ends():
    from trl_ssft import SSFTConfig
    from trl_ssft.fields import SSFTFields, validate_ssft_fields

    assert SSFTFields().ssft_fork_layout == "bare"
    with pytest.raises(ValueError, match="neither a preset"):
        validate_ssft_fields(SSFTFields(ssft_fork_layout="qwen"))
    with pytest.raises(ValueError, match="neither a preset"):
        SSFTConfig(output_dir="/tmp/x", ssft_fork_layout="qwen", use_cpu=True, bf16=False, report_to=[])
    from axolotl_ssft.args import SSFTArgs  # the Axolotl schema reads the same field

    assert "ssft_fork_layout" in SSFTArgs.model_fields


def test_span_labels_and_loss_tokens(tok):
    rel = tokenize_layout(tok, "released")
    im_start, nl = tok.convert_tokens_to_ids("<|im_start|>"), tok("\n", add_special_tokens=False)["input_ids"]
    assert rel.before == (im_start,) and list(rel.after) == nl and rel.span_len == 3
    fid = tok.convert_tokens_to_ids("<think2>")
    assert fork_span(fid, rel) == ([im_start, fid, *nl], [-100, -100, -100])
    assert fork_span(fid, rel, fork_loss=True) == ([im_start, fid, *nl], [im_start, fid, *nl])
    assert fork_span(fid) == ([fid], [-100]) and fork_span(fid, None, True) == ([fid], [fid])
    assert fork_loss_tokens(rel, True) == 3 and fork_loss_tokens(rel, False) == 0 and fork_loss_tokens(None, True) == 1
    with pytest.raises(ValueError, match="one token"):
        tokenize_layout(tok, LAYOUTS["released"].__class__("x", "<|not special|>", "", ("<|not special|>",)))


@pytest.mark.parametrize("fork_loss", [False, True])
def test_rows_collator_and_counts_agree(tok, fork_loss):
    """build_rows puts the span between prompt and trace; the collator's and the trainer's loss-token counts equal the
    labelled positions (the span counts only with ssft_fork_token_loss)."""
    from trl_ssft.collator import SSFTCollator
    from trl_ssft.rows import build_rows, loss_tokens

    rel = tokenize_layout(tok, "released")
    fids = tok.convert_tokens_to_ids(NAMES)
    prompts, traces = [[5, 6, 7], [8]], [[[10, 11, 2], [12, 2]], [[13, 14, 15, 2]]]
    ids, mask, labels = build_rows(prompts, traces, [[2, 0], [1]], fids, fork_loss, 0, layout=rel)
    span0 = fork_span(fids[2], rel)[0]
    assert ids[0, :8].tolist() == [5, 6, 7, *span0, 10, 11]
    assert ids[2, :8].tolist() == [8, *fork_span(fids[1], rel)[0], 13, 14, 15, 2]
    counted = int((labels != -100).sum())
    coll = SSFTCollator(pad_token_id=0, num_fork_tokens=3, fork_token_loss=fork_loss, layout=rel)
    batch = coll([{"prompt_ids": p, "trace_ids": t} for p, t in zip(prompts, traces)])
    assert int(batch["ssft_num_loss_tokens"].sum()) == counted == loss_tokens(traces, fork_loss, True, rel)
    assert counted == 9 + (3 * 3 if fork_loss else 0)


def test_bpe_boundaries(tok):
    """Pieces tokenized apart equal the rendered string's tokens for the released layout on the chat template; a
    layout whose text merges with the prompt's end is refused, in training set-up and in evaluation prompts."""
    from trl_ssft.eval.inference import fork_prompt_ids, fork_prompt_strings

    rel = tokenize_layout(tok, "released")
    check_template_boundary(tok, rel, "<think1>")
    q = [{"role": "user", "content": "sum 7 7 1 5"}]
    for name, ids, text in zip(NAMES, fork_prompt_ids(tok, q, NAMES, rel), fork_prompt_strings(tok, q, NAMES, rel)):
        assert text.endswith(f"<|im_start|>assistant\n<|im_start|>{name}\n")
        assert tok(text, add_special_tokens=False)["input_ids"] == ids
    merging = tokenize_layout(tok, {"before": "um", "after": ""})
    prompt_ids = tok("total", add_special_tokens=False)["input_ids"]
    with pytest.raises(ValueError, match="before the token"):
        check_boundary(tok, merging, "total", prompt_ids, "<think1>")
    with pytest.raises(ValueError, match="merges"):
        fork_prompt_ids(tok, "total", NAMES, merging)
    check_boundary(tok, merging, "add 12", tok("add 12", add_special_tokens=False)["input_ids"], "<think1>")


def _naive_costs(model, prompt, traces, spans, T):
    """Mean NLL of trace[:T] after prompt + span, one full forward per row (the definition)."""
    out = torch.zeros(len(spans), len(traces), dtype=torch.float64)
    for i, span in enumerate(spans):
        for j, t in enumerate(traces):
            t = t[:T]
            ids = torch.tensor([prompt + span + t])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
            start = len(prompt) + len(span)
            out[i, j] = -sum(logp[start - 1 + k, t[k]] for k in range(len(t))) / len(t)
    return out


@torch.no_grad()
def test_matching_costs_with_layout_are_exact(tok):
    """The matching pass with the released layout: only trace tokens are scored, prompt + before is shared through
    the key/value cache, and the costs equal a naive full forward per row, with and without sharing."""
    from trl_ssft.demo.tiny import build_tiny_model
    from trl_ssft.scoring import ScoringOptions, cost_matrices

    model = build_tiny_model(tok, hidden_size=32, num_layers=2, seed=0).eval()
    rel = tokenize_layout(tok, "released")
    fids = tok.convert_tokens_to_ids(NAMES)
    prompts = [tok("sum 1 2", add_special_tokens=False)["input_ids"], tok("add 9", add_special_tokens=False)["input_ids"]]
    traces = [[tok(" a b c", add_special_tokens=False)["input_ids"] + [2], [3, 4, 2]], [[7, 8, 9, 10, 2]]]
    got = {}
    for share in (None, False):
        costs, stats = cost_matrices(model, prompts, traces, fids, match_tokens=3, max_tokens=4096, pad_token_id=0,
                                     options=ScoringOptions(share_prefix=share), layout=rel)
        got[share] = costs
        assert stats.shared_prefix == (share is None)
    for b, (p, ts) in enumerate(zip(prompts, traces)):
        ref = _naive_costs(model, p, ts, [fork_span(f, rel)[0] for f in fids], 3)
        torch.testing.assert_close(torch.from_numpy(got[None][b]), ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.from_numpy(got[False][b]), ref, rtol=1e-5, atol=1e-6)
    json.dumps(rel.layout.describe())  # what ssft_state.json stores


@pytest.mark.axolotl
def test_axolotl_collator_takes_the_layout(tok):
    """The Axolotl front end: the plugin passes `ssft_fork_layout` to the collator, whose loss-token counts include
    the span with ssft_fork_token_loss (the schema field is generated from the same `SSFTFields`)."""
    pytest.importorskip("axolotl")
    from axolotl_ssft.trainer import SSFTAxolotlCollator

    coll = SSFTAxolotlCollator(tok, num_fork_tokens=3, fork_token_loss=True, fork_layout="released")
    assert coll.layout == tokenize_layout(tok, "released")
    batch = coll([{"prompt_ids": [5, 6], "trace_ids": [[7, 2], [8, 9, 2]]}])
    assert int(batch["ssft_num_loss_tokens"].sum()) == 5 + 2 * 3
