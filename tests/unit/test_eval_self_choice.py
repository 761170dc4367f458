"""The eval of a GFPO model: self-chosen tokens by default (`pass1_choice: "self"`), Pass@1 of the model's choice,
Cons@N over N self-chosen samples, the per-question token choice in the report JSON and table (tiny model, CPU)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from trl_ssft.demo.synthetic import corpus, make_rows  # noqa: E402

NAMES = [f"<think{i}>" for i in range(1, 5)]


@pytest.fixture(scope="module")
def gfpo_model(tmp_path_factory):
    """A tiny model dir with 4 forking tokens and a GFPO-style ssft_state.json; 3 questions whose answer is 7."""
    from trl_ssft.demo.tiny import build_tiny_model, build_tiny_tokenizer
    from trl_ssft.state import write_ssft_state
    from trl_ssft.tokens import prepare_fork_tokens

    rows = make_rows(12, seed=3)
    tok = build_tiny_tokenizer(corpus(rows), vocab_size=400)
    model = build_tiny_model(tok, hidden_size=32, num_layers=2, seed=0)
    prepare_fork_tokens(model, tok, NAMES, noise=1.0, seed=0)
    path = tmp_path_factory.mktemp("gfpo_eval") / "model"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    write_ssft_state(str(path), {"fork_tokens": NAMES, "pass1_token": NAMES[0], "pass1_choice": "self",
                                 "gfpo": {"method": "Global Forking Policy Optimization"}})
    data = [{"prompt": r["prompt"], "answer": "7"} for r in rows[:3]]
    return str(path), data


def test_gfpo_model_is_evaluated_with_self_chosen_tokens_by_default(gfpo_model):
    from trl_ssft.eval.evaluate import evaluate_model
    from trl_ssft.eval.report import format_report

    path, data = gfpo_model
    kw = dict(rounds=2, max_new_tokens=6, temperature=1.0, mode_classifier="none", progress=False)
    rep = evaluate_model(path, data, **kw)
    sc = rep["self_chosen"]
    assert sc["strategy"] == "sample" and sc["samples_per_question"] == 4 * 2
    assert sum(sc["draw_counts"].values()) == 3 * 8 and sum(sc["token_counts"].values()) == 3
    assert [len(q["tokens"]) for q in sc["per_question"]] == [8, 8, 8]
    assert all(sum(q["probs"].values()) == pytest.approx(1, abs=1e-3) for q in sc["per_question"])
    assert 0 <= sc["pass1"] <= 1 and 0 <= sc["cons_at_n"] <= 1
    assert rep["pass1_per_token"] is not None  # the forced tokens are still reported
    text = format_report(rep)
    assert "self-chosen token (sample, 8 samples per question)" in text and "Cons@4" in text and "q2: " in text
    assert evaluate_model(path, data, self_choose="none", **kw)["self_chosen"] is None
    assert evaluate_model(path, data, self_choose="argmax", **kw)["self_chosen"]["strategy"] == "argmax"


def test_self_chosen_pass1_and_cons_follow_the_choices(gfpo_model, monkeypatch):
    """Generation faked: a sample is correct exactly when its forking token is <think1> or <think2>."""
    from trl_ssft.eval import evaluate as E
    from trl_ssft.eval import self_choice as S
    from trl_ssft.eval.inference import load_ssft_model

    path, data = gfpo_model
    sm = load_ssft_model(path)
    good = set(sm.tokenizer.convert_tokens_to_ids(NAMES[:2]))
    right, wrong = (sm.tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("\\boxed{7}", "\\boxed{3}"))
    from trl_ssft.eval import sampling

    monkeypatch.setattr(sampling, "_generate", lambda sm_, prompts, seeds, on_done, **kw: on_done(
        [(j, list(right if p[-1] in good else wrong)) for j, p in enumerate(prompts)]))
    probs = torch.tensor([[0, 1.0, 0, 0], [0, 0, 0, 1.0], [0.5, 0, 0.5, 0]])
    monkeypatch.setattr(S, "fork_token_probs", lambda *a, **k: probs)
    rep = E.evaluate_model(sm, data, rounds=3, max_new_tokens=4, mode_classifier="none", progress=False)
    sc = rep["self_chosen"]
    q = sc["per_question"]
    assert q[0]["tokens"] == [NAMES[1]] * 12 and q[0]["pass1"] == 1.0
    assert q[1]["tokens"] == [NAMES[3]] * 12 and q[1]["pass1"] == 0.0
    assert set(q[2]["tokens"]) <= {NAMES[0], NAMES[2]}
    assert q[2]["pass1"] == pytest.approx(q[2]["tokens"].count(NAMES[0]) / 12)
    assert sc["pass1"] == pytest.approx((1 + 0 + q[2]["pass1"]) / 3)
    assert sc["pass1_when_chosen"][NAMES[1]] == 1.0 and sc["pass1_when_chosen"][NAMES[3]] == 0.0
    assert sc["token_counts"][NAMES[1]] == 1 and sc["token_counts"][NAMES[3]] == 1
    # Cons@N: one vote per round over that round's 4 self-chosen samples (q0 always right, q1 always wrong)
    votes = [q[2]["tokens"][r * 4:(r + 1) * 4].count(NAMES[0]) for r in range(3)]
    q2_cons = sum(v > 2 for v in votes) / 3  # a 2-2 tie is broken by first appearance: check only clear majorities
    if all(v != 2 for v in votes):
        assert sc["cons_at_n"] == pytest.approx((1 + 0 + q2_cons) / 3)
    assert rep["pass1_per_token"] == {NAMES[0]: 1.0, NAMES[1]: 1.0, NAMES[2]: 0.0, NAMES[3]: 0.0}
    # keep_samples: the self-chosen samples follow the forced ones, each with its drawn token
    kept = E.evaluate_model(sm, data, rounds=3, max_new_tokens=4, mode_classifier="none", progress=False,
                            keep_samples=True)
    forced = [x for x in kept["samples"] if not x["self_chosen"]]
    own = [x for x in kept["samples"] if x["self_chosen"]]
    assert len(forced) == len(own) == 3 * 4 * 3 and "samples" not in kept["self_chosen"]
    assert {x["token"] for x in own if x["question"] == 0} == {NAMES[1]}
    assert all(x["correct"] == (x["token"] in NAMES[:2]) for x in own)
    plain = E.evaluate_model(sm, data, rounds=1, max_new_tokens=4, mode_classifier="none", progress=False,
                             keep_samples=True, self_choose="none")  # no self-choice: only the forced samples
    assert plain["self_chosen"] is None and len(plain["samples"]) == 3 * 4
    assert not any(x["self_chosen"] for x in plain["samples"])
    for qi in range(3):
        drawn = [x["token"] for x in sorted((x for x in own if x["question"] == qi), key=lambda x: (x["round"], x["slot"]))]
        assert drawn == kept["self_chosen"]["per_question"][qi]["tokens"]


def test_draws_follow_the_probabilities_and_plain_models_are_not_self_chosen(tmp_path):
    from trl_ssft.eval.self_choice import draw_tokens, resolve_self_choose

    picks = torch.tensor(draw_tokens(torch.tensor([[0.7, 0.1, 0.2, 0.0]]), "sample", 4000, seed=0)[0])
    freq = torch.bincount(picks, minlength=4).float() / 4000
    assert torch.allclose(freq, torch.tensor([0.7, 0.1, 0.2, 0.0]), atol=0.03)
    assert draw_tokens(torch.tensor([[0.2, 0.8]]), "argmax", 3, seed=0) == [[1, 1, 1]]
    assert resolve_self_choose(str(tmp_path), None) is None  # no state: an SSFT model, forced tokens only
    with pytest.raises(ValueError, match="self_choose"):
        resolve_self_choose(str(tmp_path), "best")
