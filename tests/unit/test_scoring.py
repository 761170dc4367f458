"""Each optimisation of the matching pass leaves the cost matrix and the chosen matching unchanged.

Reference ("plain"): one unpadded forward per row ``prompt + fork_i + trace_j[:T]`` with full logits,
the mean NLL of the trace tokens. Every `ScoringOptions` setting (shared prompt through the key/value
cache, length sorting, logits only at scored positions, small chunks from a token or byte budget,
sliced logits and fp32 log-softmax, eval mode) must give the same costs within float tolerance and the
same Hungarian matching, on a tied Qwen2, an untied Llama, and both with LoRA on the output layer.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_ssft.matching import hungarian
from trl_ssft.scoring import (
    ScoringOptions,
    ScoringStats,
    cost_matrices,
    estimate_bytes,
    plan_chunks,
    score_continuations,
    supports_prefix_cache,
)

N_FORK, T_MAX = 4, 9

VARIANTS = {
    "default": {},
    "no_share": dict(share_prefix=False),
    "share_required": dict(share_prefix=True),
    "no_sort": dict(sort_rows=False),
    "no_sort_no_share": dict(sort_rows=False, share_prefix=False),
    "full_logits": dict(keep_only_scored=False, share_prefix=False),
    "tiny_token_budget": dict(max_tokens=24),  # many chunks, one row each where a row is longer
    "byte_budget": dict(max_bytes=1),  # one row per chunk
    "sliced_fp32": dict(nll_chunk_bytes=1),  # the fp32 log-softmax one position at a time
    "sliced_fp32_full_logits": dict(nll_chunk_bytes=1, keep_only_scored=False),  # ... of the model's own logits
    "logit_slices_of_1": dict(logits_chunk_tokens=1),  # the output layer on one position at a time
}


def _load(path, lora: bool):
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    if lora:
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "lm_head"], lora_dropout=0.0,
                         init_lora_weights=False)  # random B: the adapter really changes the output layer
        model = get_peft_model(model, cfg)
    return model.eval(), tok


def _rows(tok, seed=0):
    """3 questions (different prompt lengths) x 4 forking ids x 2-4 traces of different lengths."""
    rng = np.random.default_rng(seed)
    vocab = len(tok)
    fork = list(range(vocab - N_FORK, vocab))  # stand-ins for the forking tokens: the last ids
    questions = []
    for b, (p_len, m) in enumerate([(5, 3), (11, 4), (8, 2)]):
        prompt = rng.integers(4, vocab - N_FORK, size=p_len).tolist()
        traces = [rng.integers(4, vocab - N_FORK, size=int(rng.integers(2, 16))).tolist() for _ in range(m)]
        questions.append((prompt, traces))
    prefixes, conts, where = [], [], []
    for b, (p, ts) in enumerate(questions):  # the layout of SSFTLossMixin.ssft_cost_matrices
        for i, fid in enumerate(fork):
            for j, t in enumerate(ts):
                prefixes.append(p + [fid])
                conts.append(t[:T_MAX])
                where.append((b, i, j))
    return questions, prefixes, conts, where


def _plain(model, prefixes, conts):
    out = []
    with torch.no_grad():
        for p, c in zip(prefixes, conts):
            logits = model(input_ids=torch.tensor([p + c])).logits[0].float()
            pred = logits[len(p) - 1: len(p) - 1 + len(c)]
            out.append(F.cross_entropy(pred, torch.tensor(c)).item())
    return np.array(out)


def _matrices(flat, questions, where):
    costs = [np.zeros((N_FORK, len(ts))) for _, ts in questions]
    for (b, i, j), c in zip(where, flat):
        costs[b][i, j] = c
    return costs


@pytest.fixture(scope="module", params=["tied", "untied", "tied+lora", "untied+lora"])
def setup(request, tiny_models):
    kind = request.param
    model, tok = _load(tiny_models[kind.split("+")[0]], lora=kind.endswith("+lora"))
    questions, prefixes, conts, where = _rows(tok)
    ref = _plain(model, prefixes, conts)
    return model, tok, questions, prefixes, conts, where, ref


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_costs_and_matching_equal_plain(setup, variant):
    model, tok, questions, prefixes, conts, where, ref = setup
    kw = dict(VARIANTS[variant])
    max_tokens = kw.pop("max_tokens", 4096)
    got, stats = score_continuations(model, prefixes, conts, max_tokens=max_tokens, pad_token_id=tok.pad_token_id,
                                     options=ScoringOptions(**kw))
    got = got.numpy()
    stats = vars(stats)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    for c_got, c_ref in zip(_matrices(got, questions, where), _matrices(ref, questions, where)):
        a_got, a_ref = hungarian(c_got), hungarian(c_ref)
        m = c_ref.shape[1]
        assert c_ref[a_got, np.arange(m)].sum() == pytest.approx(c_ref[a_ref, np.arange(m)].sum(), abs=1e-6)
    # the option did what it says (so the comparison above is not vacuous)
    shared = kw.get("share_prefix", None) is not False
    assert stats["shared_prefix"] == shared
    real = sum(len(p) + len(c) - 1 for p, c in zip(prefixes, conts))
    if shared:  # each distinct prompt once, then fork + trace[:-1] per row
        assert stats["tokens"] == sum(len(p) for p, _ in questions) + sum(len(c) for c in conts)
    else:
        assert stats["tokens"] == real
    if variant == "full_logits":
        assert stats["logit_positions"] == stats["padded_tokens"]
    elif not shared:
        assert stats["logit_positions"] < stats["padded_tokens"]
    if variant in ("byte_budget",):
        n_ctx = len(questions) if shared else 0
        assert stats["forward_calls"] == len(prefixes) + n_ctx


def test_options_reach_the_call_and_stats_come_back(setup):
    model, tok, _, prefixes, conts, _, ref = setup
    got, stats = score_continuations(model, prefixes, conts, 4096, tok.pad_token_id,
                                     options=ScoringOptions(share_prefix=False, sort_rows=False))
    assert isinstance(stats, ScoringStats)
    assert stats.tokens == sum(len(p) + len(c) - 1 for p, c in zip(prefixes, conts))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(TypeError):
        ScoringOptions(no_such_option=1)
    with pytest.raises(AttributeError):  # frozen: options are values, not shared state
        ScoringOptions().share_prefix = False


def test_cost_matrices_equal_plain(setup):
    model, tok, questions, prefixes, conts, where, ref = setup
    prompts = [p for p, _ in questions]
    traces = [ts for _, ts in questions]
    fork = sorted({p[-1] for p in prefixes})
    costs, stats = cost_matrices(model, prompts, traces, fork, match_tokens=T_MAX, max_tokens=4096,
                                 pad_token_id=tok.pad_token_id)
    assert [c.shape for c in costs] == [(N_FORK, len(ts)) for ts in traces]
    for c_got, c_ref in zip(costs, _matrices(ref, questions, where)):
        np.testing.assert_allclose(c_got, c_ref, rtol=1e-4, atol=1e-5)
    assert stats.shared_prefix and stats.forward_calls >= 2


def test_options_from_fields():
    from types import SimpleNamespace

    assert ScoringOptions.from_fields(SimpleNamespace()) == ScoringOptions()
    got = ScoringOptions.from_fields(SimpleNamespace(ssft_match_max_memory_mb=3, ssft_match_share_prompt=False,
                                                     ssft_logits_chunk_tokens=7))
    assert got == ScoringOptions(share_prefix=False, max_bytes=3 * 2**20, logits_chunk_tokens=7)
    assert ScoringOptions.from_fields(SimpleNamespace(ssft_match_share_prompt=True)).share_prefix is None
    with pytest.raises(ValueError):
        ScoringOptions(logits_chunk_tokens=0)


def test_eval_mode_removes_dropout_and_restores_training(tiny_models):
    model = AutoModelForCausalLM.from_pretrained(tiny_models["tied"], attention_dropout=0.5)
    tok = AutoTokenizer.from_pretrained(tiny_models["tied"])
    questions, prefixes, conts, where = _rows(tok, seed=1)
    ref = _plain(model.eval(), prefixes, conts)
    model.train()
    got = score_continuations(model, prefixes, conts, 4096, tok.pad_token_id)[0].numpy()
    assert model.training
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    torch.manual_seed(0)
    noisy = score_continuations(model, prefixes, conts, 4096, tok.pad_token_id,
                                options=ScoringOptions(eval_mode=False))[0].numpy()
    assert np.abs(noisy - ref).max() > 1e-3  # dropout is active in train mode: the test can fail


def test_prefix_cache_only_for_full_attention(tiny_models, monkeypatch):
    import copy

    import trl_ssft.scoring_plan as scoring_plan  # plan_rows decides sharing there

    model = AutoModelForCausalLM.from_pretrained(tiny_models["tied"])
    assert supports_prefix_cache(model)
    sliding = copy.deepcopy(model)
    sliding.config.layer_types = ["sliding_attention"] + list(model.config.layer_types[1:])
    assert not supports_prefix_cache(sliding)
    monkeypatch.setattr(scoring_plan, "supports_prefix_cache", lambda m: False)
    tok = AutoTokenizer.from_pretrained(tiny_models["tied"])
    _, prefixes, conts, _ = _rows(tok)
    _, stats = score_continuations(model, prefixes, conts, 4096, tok.pad_token_id)
    assert stats.shared_prefix is False  # falls back to the exact uncached path
    with pytest.raises(ValueError, match="share_prefix"):
        score_continuations(model, prefixes, conts, 4096, tok.pad_token_id, options=ScoringOptions(share_prefix=True))


def test_budgets(tiny_models):
    lengths = [5, 30, 7, 12, 29, 3]
    for budget in (1, 30, 40, 64, 1000):
        chunks = plan_chunks(lengths, budget)
        assert sorted(r for c in chunks for r in c) == list(range(len(lengths)))
        for c in chunks:
            assert len(c) == 1 or len(c) * max(lengths[r] for r in c) <= budget
    model = AutoModelForCausalLM.from_pretrained(tiny_models["untied"])
    est = estimate_bytes(model)
    cfg = model.config
    assert est["logit"] == cfg.vocab_size * 4
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    assert est["ctx"] == 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * 4
    assert est["new"] > est["ctx"]


def test_sorting_reduces_padding(tiny_models):
    model = AutoModelForCausalLM.from_pretrained(tiny_models["tied"])
    tok = AutoTokenizer.from_pretrained(tiny_models["tied"])
    _, prefixes, conts, _ = _rows(tok)
    padded = {}
    for sort in (True, False):
        _, stats = score_continuations(model, prefixes, conts, 64, tok.pad_token_id,
                                       options=ScoringOptions(sort_rows=sort))
        padded[sort] = stats.padded_tokens - stats.tokens
    assert padded[True] < padded[False]
