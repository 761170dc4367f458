"""GFPO (Global Forking Policy Optimization): the gradient sits at the forking token only, TRL's advantages,
token choice modes, the toy convergence run, the refusals. CPU, offline, tiny models; trl 1.9 and 1.16."""

from __future__ import annotations

import math

import pytest
import torch

from trl_ssft.demo.synthetic import corpus, make_rows

N = 4
NAMES = [f"<think{i}>" for i in range(1, N + 1)]
GOOD = {"a": "<think1>", "b": "<think3>"}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """{"untied": dir, "tied": dir} of tiny models with N forking tokens, and plain-text rows of two kinds."""
    from trl_ssft.demo.tiny import build_tiny_model, build_tiny_tokenizer
    from trl_ssft.tokens import prepare_fork_tokens

    rows = make_rows(16, seed=0)
    base = tmp_path_factory.mktemp("gfpo")
    out = {}
    for name, arch, tie in (("untied", "llama", False), ("tied", "qwen2", True)):
        tok = build_tiny_tokenizer(corpus(rows))
        model = build_tiny_model(tok, arch=arch, tie_word_embeddings=tie)
        prepare_fork_tokens(model, tok, NAMES)
        model.save_pretrained(base / name)
        tok.save_pretrained(base / name)
        out[name] = str(base / name)
    data = [{"prompt": r["prompt"][0]["content"] + f" kind {'ab'[i % 2]}", "kind": "ab"[i % 2], "answer": r["answer"]}
            for i, r in enumerate(rows)]
    return out, data


def token_reward(completions, kind, gfpo_fork_token, **kwargs):
    """Reward that depends only on the forking token and the question's kind."""
    return [1.0 if GOOD[k] == t else 0.0 for k, t in zip(kind, gfpo_fork_token, strict=True)]


def make_args(tmp_path, **kw):
    from trl_ssft import GFPOConfig

    base = dict(output_dir=str(tmp_path / "out"), bf16=False, use_cpu=True, report_to=[], per_device_train_batch_size=8,
                num_generations=4, max_completion_length=4, learning_rate=1e-2, logging_steps=1, save_strategy="no",
                max_steps=2, seed=0, disable_tqdm=True, gfpo_anchor_coef=0.0)  # tests of the anchor set it
    base.update(kw)
    return GFPOConfig(**base)


def make_trainer(toy, tmp_path, which="untied", reward=token_reward, fork_tokens=None, peft_config=None, **kw):
    from datasets import Dataset

    from trl_ssft import GFPOTrainer

    paths, data = toy
    return GFPOTrainer(model=paths[which], reward_funcs=reward, args=make_args(tmp_path, **kw),
                       train_dataset=Dataset.from_list(data), fork_tokens=fork_tokens, peft_config=peft_config)


def fake_generation(trainer, continuation):
    """Replace TRL's generation by `continuation(prompt_ids, k) -> ids` (same signature on trl 1.9 and 1.16)."""

    def gen(prompt_ids, *args, **kwargs):
        return [continuation(list(p), k) for k, p in enumerate(prompt_ids)], None

    trainer._generate_single_turn = gen


def group_inputs(data, kinds=("a", "b"), g=4):
    rows = [next(r for r in data if r["kind"] == k) for k in kinds]
    return [dict(r) for r in rows for _ in range(g)]


def loss_and_grads(trainer, batch):
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    trainer.model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def test_only_the_forking_token_carries_gradient(toy, tmp_path):
    """Changing the continuation tokens changes neither the loss nor the gradient, and the gradient equals
    an independent -(1/B) sum_k A_k grad log pi_N(g_k | x) over the N-way distribution."""
    trainer = make_trainer(toy, tmp_path, gfpo_token_choice="enumerate")
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop in trl 1.16
    inputs = group_inputs(toy[1])
    batches = []
    for fill in (7, 11):
        fake_generation(trainer, lambda p, k, fill=fill: [fill + k % 3] * 3)
        trainer._gfpo_gen.manual_seed(0)
        batches.append(trainer._generate_and_score_completions([dict(x) for x in inputs]))
    b0, b1 = batches
    assert b0["completion_ids"].shape[1] == 1
    assert torch.equal(b0["completion_ids"], b1["completion_ids"]) and torch.equal(b0["prompt_ids"], b1["prompt_ids"])
    assert b0["advantages"].abs().sum() > 0
    (l0, g0), (l1, g1) = loss_and_grads(trainer, b0), loss_and_grads(trainer, b1)
    assert torch.equal(l0, l1) and g0.keys() == g1.keys()
    assert all(torch.equal(g0[n], g1[n]) for n in g0)

    # independent computation over the N-way distribution, one unpadded prompt at a time
    model, ids = trainer.model, trainer.gfpo_fork_ids
    model.zero_grad(set_to_none=True)
    prompts = [b0["prompt_ids"][k][b0["prompt_mask"][k].bool()] for k in range(len(inputs))]
    total = 0.0
    for k, p in enumerate(prompts):
        logp_n = torch.log_softmax(model(input_ids=p[None]).logits[0, -1, ids].float(), dim=-1)
        g = ids.index(int(b0["completion_ids"][k, 0]))
        total = total - b0["advantages"][k] * logp_n[g]
    (total / len(prompts)).backward()
    ref = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    assert ref.keys() == g0.keys()
    for n in ref:
        torch.testing.assert_close(g0[n], ref[n], rtol=1e-4, atol=1e-6)


def test_advantages_are_trl_group_normalisation_and_enumerate_covers_every_token(toy, tmp_path):
    seen = {}

    def reward(completions, kind, gfpo_fork_token, gfpo_fork_index, gfpo_continuation_ids, **kw):
        seen.update(tokens=list(gfpo_fork_token), index=list(gfpo_fork_index), cont=list(gfpo_continuation_ids),
                    completions=list(completions))
        return [float(i) + (0.5 if k == "a" else 0.0) for i, k in zip(gfpo_fork_index, kind, strict=True)]

    trainer = make_trainer(toy, tmp_path, reward=reward, gfpo_token_choice="enumerate", num_generations=8,
                           per_device_train_batch_size=16)
    fake_generation(trainer, lambda p, k: [5, 6, 7])
    inputs = group_inputs(toy[1], g=8)
    batch = trainer._generate_and_score_completions(inputs)
    assert seen["index"] == [k % N for k in range(8)] * 2  # every token, twice per group of 8
    assert seen["tokens"] == [NAMES[k % N] for k in range(8)] * 2
    assert seen["cont"] == [[5, 6, 7]] * 16  # the full continuation reaches the reward functions
    assert [int(t) for t in batch["completion_ids"][:, 0]] == [trainer.gfpo_fork_ids[k % N] for k in range(8)] * 2
    r = torch.tensor([float(k % N) + (0.5 if j < 8 else 0.0) for j, k in enumerate(list(range(8)) * 2)]).view(2, 8)
    expected = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).flatten()
    torch.testing.assert_close(batch["advantages"].cpu(), expected)


def test_sample_mode_draws_from_the_model_distribution(toy, tmp_path):
    trainer = make_trainer(toy, tmp_path, gfpo_token_choice="sample", num_generations=8, per_device_train_batch_size=16)
    fake_generation(trainer, lambda p, k: [5])
    counts = torch.zeros(N)
    for _ in range(25):
        b = trainer._generate_and_score_completions(group_inputs(toy[1], g=8))
        for t in b["completion_ids"][:, 0].tolist():
            counts[trainer.gfpo_fork_ids.index(t)] += 1
    from trl_ssft.data import encode_prompt

    tok = trainer.processing_class
    p = trainer.gfpo_fork_logprobs([encode_prompt(tok, r["prompt"]) for r in group_inputs(toy[1], g=1)]).softmax(-1)
    freq = counts / counts.sum()
    assert (freq - p.mean(0)).abs().max() < 0.08, (freq, p)


def test_free_mode_rollout_without_forking_token_gets_no_reward(toy, tmp_path):
    got = {}

    def reward(completions, gfpo_fork_token, gfpo_continuation_ids, **kw):
        got.update(tokens=list(gfpo_fork_token), cont=list(gfpo_continuation_ids))
        return [1.0 if k % 2 else 0.0 for k in range(len(completions))]

    trainer = make_trainer(toy, tmp_path, reward=reward, gfpo_token_choice="free")
    ids = trainer.gfpo_fork_ids
    # rollouts 0 and 5 start with an ordinary token; the others with a forking token
    fake_generation(trainer, lambda p, k: ([9] if k in (0, 5) else [ids[k % N]]) + [20, 21])
    batch = trainer._generate_and_score_completions(group_inputs(toy[1]))
    assert got["tokens"][0] is None and got["tokens"][5] is None
    assert got["tokens"][1] == NAMES[1] and got["cont"][1] == [20, 21]
    adv = batch["advantages"].cpu()
    assert adv[0] == 0 and adv[5] == 0
    assert adv[1] != 0
    assert batch["completion_ids"][:, 0].tolist()[1] == ids[1]


@pytest.mark.parametrize("mode,lr,trainable,steps", [
    ("enumerate", 3e-2, "fork_rows", 30), ("sample", 3e-2, "fork_rows", 30), ("enumerate", 3e-3, "all", 50)])
def test_toy_convergence(toy, tmp_path, mode, lr, trainable, steps):
    """Reward depends only on the token and the question's kind: the right token's probability passes 0.9
    per kind within a few dozen steps (only the forking rows of the output layer, or every weight)."""
    from trl_ssft.data import encode_prompt

    trainer = make_trainer(toy, tmp_path, gfpo_token_choice=mode, gfpo_trainable=trainable,
                           learning_rate=lr, max_steps=steps, logging_steps=10)
    trainer.train()
    data = toy[1]
    for kind, good in GOOD.items():
        ps = [encode_prompt(trainer.processing_class, r["prompt"]) for r in data if r["kind"] == kind]
        probs = trainer.gfpo_fork_logprobs(ps).softmax(-1).mean(0)
        assert probs[NAMES.index(good)] > 0.9, (kind, probs)
    logs = [h for h in trainer.state.log_history if "gfpo/entropy" in h]
    assert logs and all(f"gfpo/prob/{n}" in logs[-1] and f"gfpo/usage/{n}" in logs[-1] for n in NAMES)
    assert "gfpo/chosen_prob" in logs[-1] and "gfpo/fork_mass" in logs[-1]
    trainer.save_model(str(tmp_path / "saved"))
    from trl_ssft.state import read_ssft_state

    state = read_ssft_state(str(tmp_path / "saved"))
    assert state["pass1_choice"] == "self" and state["fork_tokens"] == NAMES
    assert state["gfpo"]["token_choice"] == mode and sum(state["gfpo"]["token_counts"]) == steps * 8


def test_fork_rows_trains_only_the_forking_rows(toy, tmp_path):
    trainer = make_trainer(toy, tmp_path, gfpo_trainable="fork_rows", gfpo_token_choice="enumerate", max_steps=2)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    ids = trainer.gfpo_fork_ids
    for n, p in trainer.model.named_parameters():
        if p.shape == before[n].shape and n.endswith("lm_head.weight"):
            other = [r for r in range(p.shape[0]) if r not in ids]
            assert torch.equal(p[other], before[n][other]) and not torch.equal(p[ids], before[n][ids])
        else:
            assert torch.equal(p, before[n]), n


def test_fork_mass_term_raises_the_forking_tokens_total_probability(toy, tmp_path):
    from trl_ssft.data import encode_prompt

    trainer = make_trainer(toy, tmp_path, gfpo_fork_mass_coef=1.0, gfpo_token_choice="enumerate", max_steps=5)
    ps = [encode_prompt(trainer.processing_class, r["prompt"]) for r in toy[1][:4]]
    m0 = trainer.gfpo_fork_logprobs(ps).logsumexp(-1).exp().mean()
    trainer.train()
    m1 = trainer.gfpo_fork_logprobs(ps).logsumexp(-1).exp().mean()
    assert m1 > m0 + 0.1, (m0, m1)


@pytest.mark.parametrize("kw,msg", [
    (dict(use_vllm=True, vllm_mode="server"), "server mode"),
    (dict(mask_truncated_completions=True), "mask_truncated_completions"),
    (dict(loss_type="dr_grpo"), "loss_type"),
    (dict(top_entropy_quantile=0.5), "top_entropy_quantile"),
    (dict(gfpo_trainable="fork_rows", weight_decay=0.1), "weight_decay"),
])
def test_refusals_before_trl_builds_anything(toy, tmp_path, kw, msg):
    with pytest.raises(ValueError, match=msg):
        make_trainer(toy, tmp_path, **kw)


def test_refusals_after_setup(toy, tmp_path):
    with pytest.raises(ValueError, match="num_generations must be >= 4"):
        make_trainer(toy, tmp_path, gfpo_token_choice="enumerate", num_generations=2)
    with pytest.raises(ValueError, match="untied"):
        make_trainer(toy, tmp_path, which="tied", gfpo_trainable="fork_rows")
    with pytest.raises(ValueError, match="PEFT"):
        make_trainer(toy, tmp_path, gfpo_trainable="adapter")
    with pytest.raises(ValueError, match="gfpo_token_choice"):
        make_args(tmp_path, gfpo_token_choice="greedy")
    with pytest.raises(ValueError, match="not a single token"):
        make_trainer(toy, tmp_path, fork_tokens=["<think1>", "<nope>"])


def test_server_mode_allowed_for_free_choice():
    from trl_ssft.gfpo.fields import GFPOFields
    from trl_ssft.gfpo.mixin import check_grpo_args

    class A:
        use_vllm, vllm_mode = True, "server"

    check_grpo_args(A(), GFPOFields(gfpo_token_choice="free"))
    with pytest.raises(ValueError, match="colocate"):
        check_grpo_args(A(), GFPOFields())


def test_correctness_reward():
    from trl_ssft import correctness_reward
    from trl_ssft.gfpo.rewards import make_correctness_reward

    out = correctness_reward(completions=["so \\boxed{42}", [{"role": "assistant", "content": "\\boxed{7}"}], "42"],
                             answer=["42", "8", "42"])
    assert out == [1.0, 0.0, 0.0]
    assert make_correctness_reward(extract="fallback")(completions=["the answer is 42"], answer=["42"]) == [1.0]
    assert correctness_reward(completions=["x"], answer=[None]) == [None]
    assert not math.isnan(out[0])


@pytest.mark.parametrize("trainable,four_bit", [("adapter", False), ("fork_rows", True), ("adapter", True)])
def test_cli_continues_an_ssft_adapter(toy, tmp_path, capsys, trainable, four_bit):
    """`trl-ssft gfpo` on a trained SSFT LoRA adapter dir (QLoRA: 4-bit base on CPU) with the default settings
    (enumerate, anchor 3): the adapter trains against a frozen copy of itself (a second PEFT adapter), the state is
    written; on trl 1.9 and on trl >= 1.15 (whose fused LM head now scores through the trainable forking rows)."""
    import json

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_ssft.gfpo.cli import main
    from trl_ssft.state import read_ssft_state, write_ssft_state
    from trl_ssft.tokens import add_trainable_tokens_to_peft_config

    paths, data = toy
    tok = AutoTokenizer.from_pretrained(paths["untied"])
    base = AutoModelForCausalLM.from_pretrained(paths["untied"])
    ids = [tok.convert_tokens_to_ids(n) for n in NAMES]
    cfg = add_trainable_tokens_to_peft_config(LoraConfig(r=4, target_modules=["q_proj", "v_proj"]), base, ids)
    adapter = tmp_path / "adapter"
    peft = get_peft_model(base, cfg)
    with torch.no_grad():  # as SSFT training leaves it: LoRA B and the forking-token rows moved
        for p in peft.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    peft.save_pretrained(adapter)
    tok.save_pretrained(adapter)
    write_ssft_state(str(adapter), {"fork_tokens": NAMES, "fork_token_ids": ids, "pass1_token": NAMES[0]})
    ds = tmp_path / "rl.jsonl"
    ds.write_text("".join(json.dumps(r) + "\n" for r in data))
    out = tmp_path / "gfpo"
    argv = ["--model_name_or_path", str(adapter), "--dataset_name", str(ds), "--output_dir", str(out),
            "--num_generations", "4", "--per_device_train_batch_size", "8", "--max_completion_length", "4",
            "--max_steps", "2", "--learning_rate", "1e-2", "--bf16", "false", "--use_cpu", "true", "--report_to", "none",
            "--save_strategy", "no", "--gfpo_trainable", trainable, "--gfpo_reward_funcs", f"{__name__}.token_reward"]
    if four_bit:
        argv += ["--load_in_4bit", "true", "--dtype", "float32"]
    assert main(argv) == 0
    assert "anchor 3 against a frozen copy of the starting adapter as PEFT adapter 'gfpo_ref'" in capsys.readouterr().out
    state = read_ssft_state(str(out))
    assert state["pass1_choice"] == "self" and state["pass1_token"] == NAMES[0]
    assert state["gfpo"]["trainable"] == trainable and sum(state["gfpo"]["token_counts"]) == 16
    assert state["gfpo"]["token_choice"] == "enumerate" and state["gfpo"]["anchor_coef"] == 3.0
    assert (out / "adapter_config.json").exists() and not (out / "gfpo_ref").exists()


def test_readme_documents_every_gfpo_option():
    import os
    from dataclasses import fields

    from trl_ssft.gfpo.fields import GFPOFields

    text = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
    assert "## GFPO (stage 2)" in text and text.index("## GFPO (stage 2)") < text.index("## Options")
    for f in fields(GFPOFields):
        assert f"| `{f.name}` |" in text, f"{f.name} missing from the README's GFPO table"


def test_resume_restores_the_token_counts(toy, tmp_path):
    """A run resumed from a checkpoint continues the per-token rollout counts and rewards of ssft_state.json."""
    from trl_ssft.state import read_ssft_state

    first = make_trainer(toy, tmp_path, gfpo_token_choice="enumerate", max_steps=2, save_strategy="steps",
                         save_steps=2)
    first.train()
    saved = read_ssft_state(str(tmp_path / "out" / "checkpoint-2"))["gfpo"]
    assert sum(saved["token_counts"]) == 2 * 8 and saved["token_counts"] == [4, 4, 4, 4]
    second = make_trainer(toy, tmp_path, gfpo_token_choice="enumerate", max_steps=3, save_strategy="steps",
                          save_steps=2)
    second.train(resume_from_checkpoint=True)
    state = second.gfpo_state()
    assert state["global_step"] == 3 and state["token_counts"] == [6, 6, 6, 6]
    assert state["token_reward_sums"][0] >= saved["token_reward_sums"][0]


@pytest.mark.parametrize("suppress", [True, False])
def test_rollouts_never_continue_with_a_forking_token(toy, tmp_path, suppress):
    """gfpo_suppress_fork_tokens (default on): TRL's real transformers generation never emits a forking token
    after the chosen one, even when the model strongly prefers them everywhere (a +30 logit hook on the output
    layer); without it the continuations fill with them. The state file records the setting."""
    seen = []

    def recording_reward(completions, gfpo_continuation_ids, **kwargs):
        seen.extend(gfpo_continuation_ids)
        return [0.0] * len(completions)

    trainer = make_trainer(toy, tmp_path, reward=recording_reward, gfpo_token_choice="enumerate", max_steps=1,
                           gfpo_suppress_fork_tokens=suppress, temperature=1.0)
    ids = trainer.gfpo_fork_ids

    def boost(_module, _inputs, logits):
        logits = logits.clone()
        logits[..., ids] += 30.0
        return logits

    trainer.model.get_output_embeddings().register_forward_hook(boost)
    trainer.train()
    fork_in_continuations = sum(t in ids for c in seen for t in c)
    assert len(seen) == 8 and sum(len(c) for c in seen) > 0
    if suppress:
        assert fork_in_continuations == 0 and set(ids) <= set(trainer.generation_config.suppress_tokens)
    else:
        assert fork_in_continuations > len(seen)  # nearly every generated token is one
    assert trainer.gfpo_state()["suppress_fork_tokens"] is suppress


def test_free_mode_does_not_suppress_the_first_token(toy, tmp_path):
    trainer = make_trainer(toy, tmp_path, gfpo_token_choice="free")
    assert not trainer.gfpo_suppressing and not (trainer.generation_config.suppress_tokens or [])


def test_anchor_pulls_the_continuations_back_to_the_starting_model(toy, tmp_path):
    """gfpo_anchor_coef: with a constant reward (every advantage 0, so TRL's loss has no gradient) the only
    gradient is the anchor's. After the weights are perturbed away from the frozen reference copy, training
    lowers the continuation KL step after step; the policy gradient's token stays untouched by the anchor."""
    def constant(completions, **kwargs):
        return [1.0] * len(completions)

    trainer = make_trainer(toy, tmp_path, reward=constant, gfpo_token_choice="enumerate", gfpo_anchor_coef=1.0,
                           max_steps=10, learning_rate=2e-3, lr_scheduler_type="constant", max_completion_length=8)
    assert trainer._gfpo_ref.kind == "copy"
    ref = trainer._gfpo_ref.model
    assert ref is not trainer.model and not any(p.requires_grad for p in ref.parameters())
    torch.manual_seed(0)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    trainer.train()
    kl = [h["gfpo/anchor_kl"] for h in trainer.state.log_history if "gfpo/anchor_kl" in h]
    assert len(kl) == 10 and kl[0] > 0.01, kl
    assert sum(kl[-3:]) < 0.7 * sum(kl[:3]), kl
    assert trainer.gfpo_state()["anchor_coef"] == 1.0


def test_anchor_refuses_sharded_training_without_trl_reference():
    """Under FSDP / DeepSpeed a plain copy of a full model is not a usable reference: beta > 0 is required."""
    from types import SimpleNamespace

    from trl_ssft.gfpo.anchor import anchor_reference

    def trainer(**kw):
        return SimpleNamespace(accelerator=SimpleNamespace(unwrap_model=lambda m: m), model=torch.nn.Linear(2, 2), **kw)

    for flag in ("is_fsdp_enabled", "is_deepspeed_enabled"):
        with pytest.raises(ValueError, match="FSDP / DeepSpeed needs beta > 0"):
            anchor_reference(trainer(ref_model=None, **{flag: True}))
    ref = object()
    got = anchor_reference(trainer(ref_model=ref, is_fsdp_enabled=True))
    assert got.kind == "trl_ref" and got.model is ref
