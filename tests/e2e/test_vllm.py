"""The vLLM generation backend, run for real (no mock) on tiny head_dim-64 models (vLLM's CPU attention
refuses head_dim 16): greedy parity with the HF backend for every forking token, n samples per prompt,
reproducible seeds, and both adapter routes (trained forking-token rows -> merged; plain LoRA -> vLLM's
LoRA). vLLM runs in one subprocess (tests/scripts/vllm_run.py) for all jobs, so each served model starts
one engine; HF runs here. Skipped only where vLLM is not installed (the `vllm` test environment has it).
"""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("vllm")

from datasets import Dataset  # noqa: E402

from conftest import cpu_args  # noqa: E402
from scripts.runner import run  # noqa: E402

MAX_NEW = 32
N_SAMPLES = 3


def _spread_weights(path: str, sigma: float = 0.2) -> None:
    """`trl_ssft.demo.tiny.spread_weights` on the saved model at `path` (a parity check on flat logits is vacuous)."""
    from transformers import AutoModelForCausalLM

    from trl_ssft.demo.tiny import spread_weights

    model = AutoModelForCausalLM.from_pretrained(path)
    spread_weights(model, sigma)
    model.save_pretrained(path)


def _train(base: str, rows, out, peft_config=None, **kw) -> str:
    from trl_ssft import SSFTTrainer

    args = cpu_args(out, max_steps=2, per_device_train_batch_size=2, learning_rate=3e-2 if peft_config else 1e-3,
                    gradient_checkpointing=False, **kw)
    trainer = SSFTTrainer(model=base, args=args, train_dataset=Dataset.from_list(rows[:8]), peft_config=peft_config)
    trainer.train()
    trainer.save_model()
    return args.output_dir


def _plain_lora(full: str, out: str) -> str:
    """A LoRA adapter with random (non-zero) factors on a model that already has the forking tokens,
    no trainable token rows: what vLLM's LoRA can serve."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(full)
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
                     lora_dropout=0.0, task_type="CAUSAL_LM", init_lora_weights=False)
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(full).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory, rows):
    from peft import LoraConfig

    from trl_ssft.demo.synthetic import corpus
    from trl_ssft.demo.tiny import save_tiny_model

    d = tmp_path_factory.mktemp("vllm_models")
    base = save_tiny_model(d / "base", corpus(rows), arch="qwen2", tie_word_embeddings=True, hidden_size=128,
                           num_heads=2)
    _spread_weights(base)
    full = _train(base, rows, d / "full")
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], lora_dropout=0.0,
                      task_type="CAUSAL_LM")
    adapter = _train(base, rows, d / "adapter", peft_config=lora)
    plain = _plain_lora(full, str(d / "plain_lora"))
    layout = _train(base, rows, d / "layout", ssft_fork_layout="released")  # the released checkpoints' layout
    return {"full": full, "adapter": adapter, "plain_lora": plain, "layout": layout}


@pytest.fixture(scope="module")
def prompts(models, rows):
    from transformers import AutoTokenizer

    from trl_ssft.eval.inference import find_fork_tokens, fork_prompt_ids

    tok = AutoTokenizer.from_pretrained(models["full"])
    tokens = find_fork_tokens(tok)
    assert len(tokens) >= 2
    out = []
    for row in rows[:2]:
        out += fork_prompt_ids(tok, row["prompt"], tokens)
    return {"ids": out, "fork_ids": [tok.convert_tokens_to_ids(t) for t in tokens]}


@pytest.fixture(scope="module")
def eval_data(rows, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("vllm_data") / "questions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    return str(path)


@pytest.fixture(scope="module")
def aime_file(rows, tmp_path_factory) -> str:
    """A local copy of AIME 2025 in the hub dataset's columns (the questions of the demo family)."""
    path = tmp_path_factory.mktemp("aime") / "aime25.jsonl"
    path.write_text("".join(json.dumps({"id": str(k), "problem": r["prompt"][0]["content"], "answer": r["answer"]})
                            + "\n" for k, r in enumerate(rows[:3])))
    return str(path)


def _task_args(models, aime_file, out, backend):
    return [models["layout"], "--task", "aime25", "--data-files", aime_file, "--backend", backend, "--greedy",
            "--max-new-tokens", str(MAX_NEW), "--output", out, "--no-progress", "--no-plot"]


@pytest.fixture(scope="module")
def vllm_out(models, prompts, eval_data, aime_file, tmp_path_factory):
    d = tmp_path_factory.mktemp("vllm_run")
    ids = prompts["ids"]
    sample = dict(n=N_SAMPLES, temperature=1.0, top_p=0.95, max_new_tokens=MAX_NEW, greedy=False)
    greedy = dict(n=2, temperature=0.7, top_p=0.95, max_new_tokens=MAX_NEW, seed=0, greedy=True)
    jobs = [
        # full model: one engine for all of these
        {"name": "full_greedy", "model": models["full"], "prompts": ids, **greedy},
        {"name": "full_s0", "model": models["full"], "prompts": ids, "seed": 0, **sample},
        {"name": "full_s0_again", "model": models["full"], "prompts": ids, "seed": 0, **sample},
        {"name": "full_s0_prefix", "model": models["full"], "prompts": ids[:3], "seed": 0, **sample},
        {"name": "full_s1", "model": models["full"], "prompts": ids, "seed": 1, **sample},
        {"name": "full_dupes", "model": models["full"], "prompts": [ids[0], ids[0]], "seed": 0, **sample},
        # `trl-ssft eval --backend vllm` on the same engine
        {"name": "cli_vllm", "cli": [models["full"], eval_data, "--backend", "vllm", "--greedy", "--max-new-tokens",
                                     str(MAX_NEW), "--output", str(d / "vllm_report.json"), "--samples-out",
                                     str(d / "vllm_samples.jsonl"), "--no-progress"]},
        # `trl-ssft eval MODEL --task aime25 --backend vllm` on a model trained with the released layout (streamed)
        {"name": "cli_task_layout", "cli": _task_args(models, aime_file, str(d / "layout_vllm.json"), "vllm")},
        # forbidden ids (the forking tokens and each prompt's first greedy token): a -100 logit bias
        {"name": "full_suppress", "model": models["full"], "prompts": ids, "suppress_ids": _banned(models, ids),
         **greedy},
        # adapter with trained forking-token rows: merged, its own engine
        {"name": "adapter_greedy", "model": models["adapter"], "prompts": ids, **greedy},
        {"name": "adapter_native", "model": models["adapter"], "prompts": ids[:1], "lora": "native", **greedy},
        # plain LoRA on the full model: vLLM's LoRA (engine with enable_lora)
        {"name": "plain_greedy", "model": models["plain_lora"], "prompts": ids, **greedy},
    ]
    spec, out = d / "spec.json", d / "out.json"
    spec.write_text(json.dumps({"jobs": jobs}))
    proc = run(["vllm_run.py", str(spec), str(out)], timeout=420)
    assert proc.returncode == 0 and out.exists(), proc.stdout[-6000:]
    result = json.loads(out.read_text())
    result["dir"] = str(d)
    return result


def _hf_greedy(model_dir: str, ids) -> list[list[int]]:
    from trl_ssft.eval.inference import generate_ids, load_ssft_model

    sm = load_ssft_model(model_dir, device="cpu")
    return generate_ids(sm.model, sm.tokenizer, ids, max_new_tokens=MAX_NEW, greedy=True, batch_size=64)


def _banned(models, ids) -> list[int]:
    """Ids to forbid: the forking tokens and the first token of every HF greedy continuation of `ids`."""
    from transformers import AutoTokenizer

    from trl_ssft.eval.inference import find_fork_tokens

    tok = AutoTokenizer.from_pretrained(models["full"])
    firsts = {r[0] for r in _hf_greedy(models["full"], ids) if r}
    return sorted(firsts | set(tok.convert_tokens_to_ids(find_fork_tokens(tok))))


def test_suppressed_ids_are_never_generated_and_match_hf(models, prompts, vllm_out):
    """`suppress_ids` (vLLM: logit bias -100): greedy output avoids them and equals HF's `suppress_tokens` run."""
    from trl_ssft.eval.inference import generate_ids, load_ssft_model

    assert "full_suppress" in vllm_out["results"], vllm_out["errors"]
    banned = _banned(models, prompts["ids"])
    got = [o[0] for o in vllm_out["results"]["full_suppress"]]
    sm = load_ssft_model(models["full"], device="cpu")
    hf = generate_ids(sm.model, sm.tokenizer, prompts["ids"], max_new_tokens=MAX_NEW, greedy=True,
                      suppress_ids=banned)
    assert not any(t in banned for seq in got for t in seq)
    assert got == hf
    assert got != [o[0] for o in vllm_out["results"]["full_greedy"]]


def _decode(model_dir, seqs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return [tok.decode(s, skip_special_tokens=True) for s in seqs]


@pytest.mark.parametrize("kind", ["full", "adapter", "plain_lora"])
def test_greedy_parity_with_hf_for_every_forking_token(models, prompts, vllm_out, kind):
    job = {"full": "full_greedy", "adapter": "adapter_greedy", "plain_lora": "plain_greedy"}[kind]
    assert job in vllm_out["results"], vllm_out["errors"]
    got = vllm_out["results"][job]
    hf = _hf_greedy(models[kind], prompts["ids"])
    assert len(got) == len(prompts["ids"])
    # each prompt ends in its forking token, kept as one token id
    assert [p[-1] for p in prompts["ids"]] == prompts["fork_ids"] * 2
    for j, (outs, ref) in enumerate(zip(got, hf)):
        assert len(outs) == 2 and outs[0] == outs[1], "greedy: the n outputs of a prompt are equal"
        assert outs[0] == ref, f"prompt {j} (token id {prompts['ids'][j][-1]}): vLLM {outs[0]} != HF {ref}"
    assert _decode(models[kind], [o[0] for o in got]) == _decode(models[kind], hf)
    assert len({tuple(r) for r in hf}) > len(hf) // 2, "continuations should differ between forking tokens"
    assert sum(len(r) for r in hf) > 4 * len(hf)


def test_adapter_routes(models, vllm_out):
    from trl_ssft.eval.vllm_backend import adapter_plan

    route, why = adapter_plan(models["adapter"])
    assert route == "merge" and "trainable_token_indices" in why
    assert vllm_out["routes"][models["adapter"]][0] == "merge"
    assert "adapter_native" in vllm_out["errors"] and "cannot serve" in vllm_out["errors"]["adapter_native"]
    assert adapter_plan(models["plain_lora"])[0] == "lora"
    assert vllm_out["routes"][models["plain_lora"]][0] == "lora"
    # the plain adapter changes the output (so the LoRA path really applied it)
    assert vllm_out["results"]["plain_greedy"] != vllm_out["results"]["full_greedy"]


def test_n_samples_seeds_and_eos(prompts, vllm_out):
    res = vllm_out["results"]
    s0 = res["full_s0"]
    assert len(s0) == len(prompts["ids"]) and all(len(x) == N_SAMPLES for x in s0)
    assert all(len(seq) <= MAX_NEW for x in s0 for seq in x)
    assert s0 == res["full_s0_again"], "same seed, same samples (engine reused)"
    assert s0[:3] == res["full_s0_prefix"], "a prompt's samples do not depend on the rest of the batch"
    assert s0 != res["full_s1"], "another seed gives other samples"
    assert any(len({tuple(seq) for seq in x}) > 1 for x in s0), "the n samples of a prompt differ"
    a, b = res["full_dupes"]
    assert a != b, "a repeated prompt (rounds) gets its own samples"
    eos = 2  # <|im_end|> of the tiny tokenizer: cut off, as HF does
    assert all(eos not in seq for x in s0 for seq in x)
    assert vllm_out["engines_cached"] <= 2


def test_engine_started_once_per_model(vllm_out):
    secs = vllm_out["seconds"]
    # the first job of a model pays the engine start; reuses are fast
    assert secs["full_s0_again"] < max(5.0, secs["full_greedy"]), secs


def test_cli_backend_vllm_report_equals_hf(models, eval_data, vllm_out, tmp_path):
    """`trl-ssft eval --backend vllm --greedy`: the same report, samples and heat map as the HF backend."""
    from trl_ssft.eval.cli import main

    d = vllm_out["dir"]
    assert vllm_out["results"].get("cli_vllm") == 0, vllm_out["errors"]
    assert main([models["full"], eval_data, "--backend", "hf", "--greedy", "--max-new-tokens", str(MAX_NEW),
                 "--output", str(tmp_path / "hf_report.json"), "--samples-out", str(tmp_path / "hf_samples.jsonl"),
                 "--no-progress"]) == 0
    vr = json.load(open(os.path.join(d, "vllm_report.json")))
    hr = json.load(open(tmp_path / "hf_report.json"))
    assert vr["backend"] == "vllm" and hr["backend"] == "hf"
    assert vr["plot"] and os.path.exists(vr["plot"])
    for k in ("seconds", "backend", "plot", "samples_file"):
        vr.pop(k, None), hr.pop(k, None)
    assert vr == hr
    vs = [json.loads(x) for x in open(os.path.join(d, "vllm_samples.jsonl"))]
    hs = [json.loads(x) for x in open(tmp_path / "hf_samples.jsonl")]
    assert vs[0]["header"]["backend"] == "vllm" and hs[0]["header"]["backend"] == "hf"
    assert vs[1:] == hs[1:] and len(vs) == 1 + 3 * len(vr["tokens"])


def test_task_run_with_the_released_layout_equals_hf(models, aime_file, vllm_out, tmp_path):
    """The one-command benchmark run on vLLM (streamed requests) for a model trained with the released layout: its
    prompts carry `<|im_start|><thinkK>\n` (read from ssft_state.json) and greedy samples equal the HF backend's."""
    from trl_ssft.eval.cli import main

    d = vllm_out["dir"]
    assert vllm_out["results"].get("cli_task_layout") == 0, vllm_out["errors"]
    assert main(_task_args(models, aime_file, str(tmp_path / "layout_hf.json"), "hf")) == 0
    vr = json.load(open(os.path.join(d, "layout_vllm.json")))
    hr = json.load(open(tmp_path / "layout_hf.json"))
    assert vr["fork_layout"]["name"] == "released" == hr["fork_layout"]["name"]
    assert vr["protocol"]["task"] == "aime25" and vr["max_new_tokens"] == MAX_NEW
    for key in ("pass1_per_token", "answered", "mean_new_tokens", "tokens", "distinct_answers_per_question"):
        assert vr[key] == hr[key], key
    vs = open(os.path.join(d, "layout_vllm.samples.jsonl")).read().splitlines()
    hs = open(tmp_path / "layout_hf.samples.jsonl").read().splitlines()
    assert vs[1:] == hs[1:] and len(vs) == 1 + 3 * len(vr["tokens"])
    header = json.loads(vs[0])["header"]
    assert header["layout"]["name"] == "released" and header["prompts_sha256"] == json.loads(hs[0])["header"][
        "prompts_sha256"]  # the same prompt ids went to both backends
