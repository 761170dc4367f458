"""The matching pass never builds a whole chunk's logits: the output layer runs on slices of positions.

`score_continuations` intercepts the output module inside the model's forward and projects the scored
positions' hidden states in slices of at most `ScoringOptions.logits_chunk_tokens` positions (fewer when
`nll_chunk_bytes` asks for it). Checked here, on chunks that hold many more positions than a slice:

- the costs do not depend on the slice size (1 position, a few, everything) and equal the model's own
  full logits (``keep_only_scored=False``), with and without LoRA on the output layer;
- every projection that happens (through the output module's ``__call__``, through any submodule of it,
  or through its ``forward`` as `OutputHead.project` calls it) covers at most a slice, the model's own
  returned logits are placeholders, and `ScoringStats.max_logit_positions` reports the largest slice;
- the unsliced reference path does trip the same detector (so the check is not vacuous);
- padding calls that align ranks build no logits either.
"""

from contextlib import contextmanager

import numpy as np
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

import trl_ssft.scoring as scoring
from trl_ssft.scoring import ScoringOptions, score_continuations


def _load(path, lora: bool):
    model = AutoModelForCausalLM.from_pretrained(path)
    if lora:
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"], lora_dropout=0.0,
                         init_lora_weights=False)
        model = get_peft_model(model, cfg)
    return model.eval(), AutoTokenizer.from_pretrained(path)


def _rows(tok, n_questions=2, n_fork=4, m=3, seed=0):
    """n_questions x n_fork x m rows [prompt, fork, trace] with traces of 10-14 tokens: one chunk, ~150 positions."""
    rng = np.random.default_rng(seed)
    vocab = len(tok)
    prefixes, conts = [], []
    for _ in range(n_questions):
        prompt = rng.integers(4, vocab - n_fork, size=int(rng.integers(4, 9))).tolist()
        traces = [rng.integers(4, vocab - n_fork, size=int(rng.integers(10, 15))).tolist() for _ in range(m)]
        for fid in range(vocab - n_fork, vocab):
            for t in traces:
                prefixes.append(prompt + [fid])
                conts.append(t)
    return prefixes, conts


@contextmanager
def projection_log(model):
    """Records the positions of every real projection by the output layer, and the model's returned logits.

    Yields {"projected": [positions per projection], "model_logits": [shape of each forward's logits]}.
    """
    log = {"projected": [], "model_logits": []}
    head = model.get_output_embeddings()

    def on_call(module, args, output):  # any __call__ of the output module or a submodule of it
        if output.shape[-1] > 1:  # a placeholder of the interception has width 1
            log["projected"].append(output.shape[:-1].numel())

    handles = [m.register_forward_hook(on_call) for m in head.modules()]
    handles.append(model.register_forward_hook(lambda m, a, out: log["model_logits"].append(tuple(out.logits.shape))))
    inner = head.forward  # what OutputHead.project calls, bypassing __call__ and its hooks

    def forward(hidden, *args, **kwargs):
        log["projected"].append(hidden.shape[:-1].numel())
        return inner(hidden, *args, **kwargs)

    head.forward = forward
    try:
        yield log
    finally:
        del head.forward
        for h in handles:
            h.remove()


@pytest.fixture(scope="module", params=["tied", "untied+lora"])
def setup(request, tiny_models):
    kind = request.param
    model, tok = _load(tiny_models[kind.split("+")[0]], lora=kind.endswith("+lora"))
    prefixes, conts = _rows(tok)
    ref, _ = score_continuations(model, prefixes, conts, 4096, tok.pad_token_id,
                                 options=ScoringOptions(keep_only_scored=False, share_prefix=False))
    return model, tok, prefixes, conts, ref.numpy()


@pytest.mark.parametrize("chunk", [1, 5, 10**9])
@pytest.mark.parametrize("share", [None, False])
def test_slice_size_does_not_change_the_costs(setup, chunk, share):
    model, tok, prefixes, conts, ref = setup
    got, stats = score_continuations(model, prefixes, conts, 4096, tok.pad_token_id,
                                     options=ScoringOptions(logits_chunk_tokens=chunk, share_prefix=share))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-6)
    assert stats.shared_prefix == (share is None)
    assert stats.max_logit_positions == min(chunk, sum(len(c) for c in conts))  # all rows fit one chunk


@pytest.mark.parametrize("chunk", [1, 5, 16])
def test_no_projection_exceeds_a_slice(setup, chunk):
    model, tok, prefixes, conts, ref = setup
    scored = sum(len(c) for c in conts)
    with projection_log(model) as log:
        got, stats = score_continuations(model, prefixes, conts, 4096, tok.pad_token_id,
                                         options=ScoringOptions(logits_chunk_tokens=chunk))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-6)
    assert stats.forward_calls <= 3 and scored > 10 * chunk  # a chunk holds many more positions than a slice
    assert log["projected"], "no projection seen: the detector is not wired to the output layer"
    assert max(log["projected"]) <= chunk
    assert sum(log["projected"]) >= scored  # every scored position was projected, in slices
    assert all(shape[-1] == 1 for shape in log["model_logits"])  # the model returned placeholders only
    assert stats.max_logit_positions == max(log["projected"]) == chunk
    assert stats.logit_positions >= scored


def test_nll_chunk_bytes_also_bounds_the_slices(setup):
    model, tok, prefixes, conts, ref = setup
    vocab = model.config.get_text_config().vocab_size
    options = ScoringOptions(logits_chunk_tokens=1000, nll_chunk_bytes=vocab * 8 * 3)  # 3 positions of fp32
    with projection_log(model) as log:
        got, stats = score_continuations(model, prefixes, conts, 4096, tok.pad_token_id, options=options)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-6)
    assert max(log["projected"]) == stats.max_logit_positions == 3


def test_the_unsliced_reference_trips_the_detector(setup):
    """keep_only_scored=False takes the model's own logits: a whole chunk at once, seen by the same check."""
    model, tok, prefixes, conts, ref = setup
    with projection_log(model) as log:
        _, stats = score_continuations(model, prefixes, conts, 4096, tok.pad_token_id,
                                       options=ScoringOptions(keep_only_scored=False, logits_chunk_tokens=5))
    assert max(log["projected"]) > 5 * 10
    assert stats.max_logit_positions == max(log["projected"])


def test_rank_alignment_calls_build_no_logits(setup, monkeypatch):
    model, tok, prefixes, conts, ref = setup
    monkeypatch.setattr(scoring, "max_over_ranks", lambda n, device=None: n + 3)  # another rank has 3 more
    with projection_log(model) as log:
        got, stats = score_continuations(model, prefixes, conts, 4096, tok.pad_token_id,
                                         options=ScoringOptions(logits_chunk_tokens=4))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-6)
    assert len(log["model_logits"]) == stats.forward_calls  # every call is one model forward
    assert all(shape[-1] == 1 for shape in log["model_logits"])
    assert max(log["projected"]) <= 4


def test_byte_budget_counts_one_slice_of_logits(tiny_models):
    """With sliced logits, the per-call byte estimate charges one slice, not rows x positions x V."""
    model, tok = _load(tiny_models["tied"], lora=False)
    est = scoring.estimate_bytes(model)
    vocab = model.config.vocab_size
    options = ScoringOptions(logits_chunk_tokens=2, share_prefix=False, max_bytes=10**12)
    fits = scoring._fits(model, 10**6, options)
    rows, length = 50, 40
    need = rows * length * est["new"] + 2 * (est["logit"] + 8 * vocab)
    assert fits(rows, 0, length) and need <= 10**12
    tight = scoring._fits(model, 10**6, ScoringOptions(logits_chunk_tokens=2, max_bytes=int(need) + 1))
    assert tight(rows, 0, length) and not tight(rows + 1, 0, length)
