"""The Axolotl plugin end to end: the real `axolotl train` CLI in subprocesses on tiny local models.

Slow tests (marked `axolotl`) run Axolotl 0.19 on CPU: full fine-tuning (with eval, save, reload,
resume, and step-1 parity with the TRL `SSFTTrainer`), LoRA on a tied model, QLoRA (bitsandbytes NF4
on CPU) on an untied model from an Axolotl-example-style recipe. The configuration and data errors
run Axolotl's real config loader and dataset pipeline in-process (seconds each).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from axolotl_helpers import (
    CPU_SWITCHES,
    base_recipe,
    log_history,
    run_cli,
    run_ok,
    ssft_state,
    write_jsonl,
    write_yaml,
)

pytest.importorskip("axolotl")

FORKS6 = [f"<think{i}>" for i in range(1, 7)]


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Tiny tied Qwen2 and untied Llama (each with 8 train / 4 eval rows of the `synthetic` family, M=4 traces;
    its "columns" trace is the long one that the trace-policy test drops)."""
    from trl_ssft.demo.assets import build_demo_assets

    base = tmp_path_factory.mktemp("axolotl_assets")
    tied = build_demo_assets(str(base / "tied"), num_train=8, num_eval=4, family="synthetic")
    untied = build_demo_assets(str(base / "untied"), num_train=8, num_eval=4, arch="llama", tied=False,
                               family="synthetic")
    return {"tied": tied, "untied": untied, "base": base}


def _rows(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def full_run(assets, tmp_path_factory):
    """Full fine-tune, 2 questions, micro-batch 1 x GA 2, 2 steps, eval on a test dataset, checkpoint every step."""
    work = tmp_path_factory.mktemp("full")
    train = write_jsonl(work / "train2.jsonl", _rows(assets["tied"]["train"])[:2])
    cfg = base_recipe(
        assets["tied"]["model"], train, work, micro_batch_size=1, gradient_accumulation_steps=2,
        test_datasets=[{"path": assets["tied"]["eval"], "ds_type": "json", "type": "ssft", "split": "train"}],
        eval_strategy="steps", eval_steps=2, ssft_match_max_tokens=100000,
    )
    path = write_yaml(work / "full.yaml", cfg)
    return {"work": work, "cfg": cfg, "yaml": path, "train": train, "out": Path(cfg["output_dir"]),
            "log": run_ok(path)}


# ------------------------------------------------------------------ full fine-tuning
@pytest.mark.axolotl
def test_full_finetune_saves_tokenizer_metrics_and_reloads(full_run):
    out = full_run["out"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.convert_tokens_to_ids(FORKS6)
    assert all(tok(n, add_special_tokens=False)["input_ids"] == [i] for n, i in zip(FORKS6, ids))

    hist = log_history(out / "checkpoint-2")
    train_logs = [h for h in hist if "loss" in h]
    eval_logs = [h for h in hist if "eval_loss" in h]
    assert [h["step"] for h in train_logs] == [1, 2]
    for key in ("ssft/matched_cost", "ssft/unmatched_cost", "ssft/margin", "ssft/usage_1", "ssft/usage_6",
                "ssft/usage_entropy"):
        assert key in train_logs[0], key
    assert eval_logs and "eval_ssft/matched_cost" in eval_logs[-1]
    assert "SSFT match counts (hungarian)" in full_run["log"]

    state = ssft_state(out)
    assert state["fork_tokens"] == FORKS6 and state["fork_token_ids"] == ids
    assert sum(state["match_counts"]) == 2 * 2 * 4  # steps x questions x traces
    assert state["global_step"] == 2

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    import torch

    prompt = tok.apply_chat_template([{"role": "user", "content": "add 1 2 3"}], tokenize=False,
                                     add_generation_prompt=True)
    x = torch.tensor([tok(prompt)["input_ids"] + [ids[0]]])
    assert torch.isfinite(model(x).logits).all()


@pytest.mark.axolotl
def test_step1_matches_trl_trainer(full_run, assets, tmp_path):
    """Same model, rows and seed: TRL's SSFTTrainer gives the step-1 loss, grad norm and match counts Axolotl logged."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_ssft import SSFTConfig, SSFTTrainer

    ax_step1 = next(h for h in log_history(full_run["out"] / "checkpoint-1") if h.get("step") == 1 and "loss" in h)
    ax_counts = ssft_state(full_run["out"] / "checkpoint-1")["match_counts"]

    model_dir = assets["tied"]["model"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = _rows(full_run["train"])
    args = SSFTConfig(
        output_dir=str(tmp_path / "trl"), per_device_train_batch_size=1, gradient_accumulation_steps=2, max_steps=1,
        learning_rate=0.005, lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to=[],
        bf16=False, use_cpu=True, seed=42, max_length=256, ssft_num_fork_tokens=6, ssft_match_tokens=16,
        ssft_match_max_tokens=100000,
    )
    trainer = SSFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(
        [{"prompt": r["prompt"], "traces": r["traces"]} for r in rows]), processing_class=tok)
    trainer.train()
    trl_step1 = next(h for h in trainer.state.log_history if h.get("step") == 1 and "loss" in h)
    assert trainer.ssft_match_counts.tolist() == ax_counts
    assert trl_step1["loss"] == pytest.approx(ax_step1["loss"], rel=1e-4)
    assert trl_step1["grad_norm"] == pytest.approx(ax_step1["grad_norm"], rel=1e-3)
    assert trl_step1["ssft/matched_cost"] == pytest.approx(ax_step1["ssft/matched_cost"], rel=1e-4)


@pytest.mark.axolotl
def test_sample_packing_runs_padding_free_and_equals_the_padded_run(full_run, tmp_path):
    """`sample_packing: true` on the full run's recipe (sdpa): the run says what packing does, its first micro-batch
    ran as packed rows without padding, and its step-1 loss and grad norm and its eval loss equal the padded run's."""
    cfg = dict(full_run["cfg"], sample_packing=True, pad_to_sequence_len=True, attn_implementation="sdpa",
               ssft_loss_slice_tokens=4096, output_dir=str(tmp_path / "out"))
    log = run_ok(write_yaml(tmp_path / "packed.yaml", cfg))
    assert "SSFT packing (sample_packing: True): the set loss runs padding-free" in log
    assert "sdpa with transformers' block-causal packed-sequence masks" in log
    assert "SSFT: `pad_to_sequence_len: True` does not apply to SSFT" in log
    m = re.search(r"first micro-batch: 4 matched rows \((\d+) tokens\) ran as 1 packed rows of (\d+) tokens", log)
    assert m and m.group(1) == m.group(2), log[-3000:]
    packed, padded = (log_history(d / "checkpoint-2") for d in (tmp_path / "out", full_run["out"]))
    for key in ("loss", "grad_norm", "eval_loss"):
        got = [h[key] for h in packed if key in h]
        want = [h[key] for h in padded if key in h]
        assert got == pytest.approx(want, rel=1e-4) and got, key


@pytest.mark.axolotl
def test_resume_from_checkpoint_restores_steps_and_match_counts(full_run):
    out = full_run["out"]
    before = ssft_state(out / "checkpoint-2")
    cfg = dict(full_run["cfg"], max_steps=4, resume_from_checkpoint=str(out / "checkpoint-2"))
    log = run_ok(write_yaml(full_run["work"] / "resume.yaml", cfg))
    assert "Loading model from" in log or "resum" in log.lower()
    after = ssft_state(out / "checkpoint-4")
    assert after["global_step"] == 4
    assert sum(after["match_counts"]) == 4 * 2 * 4  # counts of steps 1-2 restored, steps 3-4 added
    assert all(a >= b for a, b in zip(after["match_counts"], before["match_counts"]))
    steps = [h["step"] for h in log_history(out / "checkpoint-4") if "loss" in h]
    assert steps == [1, 2, 3, 4]
    assert ssft_state(out)["global_step"] == 4


# ------------------------------------------------------------------ adapters
def _merged_embeddings(model_dir: str, adapter_dir: Path, n_rows: int):
    """(input, output) embedding matrices of base model + adapter, merged (base resized to `n_rows`)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.resize_token_embeddings(n_rows, mean_resizing=False)
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    return merged.get_input_embeddings().weight.detach().clone(), merged.get_output_embeddings().weight.detach().clone()


def _check_adapter_rows(model_dir: str, out: Path, first_ckpt: Path, names: list[str], untied: bool):
    """Fork rows move between the first checkpoint and the end; all base-vocabulary rows equal the base model's."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.convert_tokens_to_ids(names)
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["trainable_token_indices"] == {"embed_tokens": ids, **({"lm_head": ids} if untied else {})}
    assert not adapter.get("modules_to_save")
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    base_w = {"in": base.get_input_embeddings().weight.detach(), "out": base.get_output_embeddings().weight.detach()}
    n_base = base_w["in"].shape[0]
    first = dict(zip(("in", "out"), _merged_embeddings(model_dir, first_ckpt, len(tok))))
    final = dict(zip(("in", "out"), _merged_embeddings(model_dir, out, len(tok))))
    for k in ("in", "out") if untied else ("in",):
        assert torch.equal(final[k][:n_base], base_w[k]), f"{k}: base-vocabulary rows moved"
        moved = (final[k][ids] - first[k][ids]).abs().amax(dim=1)
        assert (moved > 0).all(), f"{k}: forking rows did not train ({moved.tolist()})"


@pytest.mark.axolotl
def test_lora_tied_trains_only_forking_rows_and_adapter_reloads(assets, tmp_path):
    m = assets["tied"]
    cfg = base_recipe(m["model"], m["train"], tmp_path, adapter="lora", lora_r=4, lora_alpha=8, lora_dropout=0.0,
                      lora_target_linear=True, max_steps=3, val_set_size=0.25, eval_strategy="steps", eval_steps=3,
                      ssft_num_fork_tokens=4, gradient_checkpointing=True)
    log = run_ok(write_yaml(tmp_path / "lora.yaml", cfg))
    out = Path(cfg["output_dir"])
    assert "ssft/usage_entropy" in log and "eval_ssft/matched_cost" in log
    names = [f"<think{i}>" for i in range(1, 5)]
    _check_adapter_rows(m["model"], out, out / "checkpoint-1", names, untied=False)
    assert ssft_state(out)["fork_tokens"] == names


# Written in the style of Axolotl's own examples (e.g. examples/llama-3/qlora.yml), `sample_packing: true`
# included: SSFT runs its set loss padding-free for it (one question per row stays).
AXOLOTL_STYLE_QLORA = """
base_model: NousResearch/Meta-Llama-3-8B
model_type: AutoModelForCausalLM
tokenizer_type: AutoTokenizer

load_in_8bit: false
load_in_4bit: true
strict: false

datasets:
  - path: tatsu-lab/alpaca
    type: alpaca
dataset_prepared_path:
val_set_size: 0
output_dir: ./outputs/qlora-out

adapter: qlora
lora_model_dir:

sequence_len: 4096
sample_packing: true
pad_to_sequence_len: true

lora_r: 32
lora_alpha: 16
lora_dropout: 0.05
lora_target_modules:
lora_target_linear: true
lora_fan_in_fan_out:

wandb_project:
wandb_entity:
wandb_watch:
wandb_name:
wandb_log_model:

gradient_accumulation_steps: 4
micro_batch_size: 2
num_epochs: 4
optimizer: paged_adamw_32bit
lr_scheduler: cosine
learning_rate: 0.0002

train_on_inputs: false
group_by_length: false
bf16: auto
fp16:
tf32: false

gradient_checkpointing: true
early_stopping_patience:
resume_from_checkpoint:
local_rank:
logging_steps: 1
xformers_attention:
flash_attention: true

warmup_steps: 10
evals_per_epoch: 4
eval_table_size:
saves_per_epoch: 1
debug:
deepspeed:
weight_decay: 0.0
fsdp:
fsdp_config:
special_tokens:
  pad_token: "<|end_of_text|>"
"""


@pytest.mark.axolotl
def test_axolotl_example_qlora_recipe_untied_4bit_cpu(assets, tmp_path):
    """An example-style QLoRA recipe + plugin lines + ssft dataset + local model + CPU switches trains on CPU."""
    import yaml

    m = assets["untied"]
    cfg = yaml.safe_load(AXOLOTL_STYLE_QLORA)
    cfg.update({
        "base_model": m["model"],  # local base model
        "plugins": ["axolotl_ssft.SSFTPlugin"],  # plugin lines
        "ssft_num_fork_tokens": 4,
        "datasets": [{"path": m["train"], "ds_type": "json", "type": "ssft"}],  # the dataset
        "output_dir": str(tmp_path / "out"), "dataset_prepared_path": str(tmp_path / "prepared"),
        "flash_attention": False, **CPU_SWITCHES,  # CPU-only switches
    })
    log = run_ok(write_yaml(tmp_path / "qlora.yaml", cfg))
    assert "ssft/matched_cost" in log
    assert "SSFT packing (sample_packing: True): the set loss runs padding-free" in log
    out = tmp_path / "out"
    names = [f"<think{i}>" for i in range(1, 5)]
    _check_adapter_rows(m["model"], out, out / "checkpoint-1", names, untied=True)
    state = ssft_state(out)
    assert state["global_step"] == 4 and sum(state["match_counts"]) == 4 * 8 * 4


@pytest.mark.axolotl
def test_cli_reports_misspelt_key(assets, tmp_path):
    m = assets["tied"]
    cfg = base_recipe(m["model"], m["train"], tmp_path, ssft_num_fork_token=4)
    proc = run_cli(write_yaml(tmp_path / "bad.yaml", cfg), timeout=180)
    assert proc.returncode != 0
    assert "`ssft_num_fork_token` (did you mean `ssft_num_fork_tokens`?)" in proc.stdout + proc.stderr


# ------------------------------------------------------------------ config and data errors (in-process)
@pytest.fixture()
def load(assets, tmp_path):
    """load(cfg_overrides, data_rows=None) -> validated Axolotl cfg (real loader, plugin registered)."""
    from axolotl.cli.config import load_cfg

    def _load(data_rows=None, **overrides):
        m = assets["tied"]
        train = write_jsonl(tmp_path / "data.jsonl", data_rows) if data_rows is not None else m["train"]
        cfg = base_recipe(m["model"], train, tmp_path, **overrides)
        cfg = {k: v for k, v in cfg.items() if v is not None or k.startswith("ssft_")}
        return load_cfg(write_yaml(tmp_path / "cfg.yaml", cfg))

    return _load


def _datasets(cfg):
    from axolotl.integrations.base import PluginManager

    return PluginManager.get_instance().load_datasets(cfg, preprocess=False)


REFUSED = [
    ({"sample_packing": True, "ssft_padding_free": False}, r"sample_packing: True asks for packed rows"),
    ({"context_parallel_size": 2}, r"context_parallel_size.*context parallelism"),
    ({"streaming": True}, r"streaming.*map-style"),
    ({"pretraining_dataset": [{"path": "x", "type": "pretrain"}]}, r"pretraining"),
    ({"group_by_length": True}, r"group_by_length"),
    ({"ssft_assignment": "hungarain"}, r"ssft_assignment must be one of"),
    ({"ssft_fork_token_template": "<t>"}, r"must contain '\{i\}'"),
    ({"ssft_trace_columns": ["a", "b"]}, r"needs `ssft_prompt_column`"),
    ({"ssft_matchtokens": 5}, r"Unknown SSFT option.*ssft_matchtokens.*did you mean `ssft_match_tokens`"),
]


@pytest.mark.parametrize("overrides,pattern", REFUSED, ids=[next(iter(o)) for o, _ in REFUSED])
def test_refused_options_explain_why(load, overrides, pattern):
    with pytest.raises(Exception, match=pattern):
        load(**overrides)


PACKING = [  # recipe options -> (ssft_padding_free, words of the start-of-run line's notes)
    ({"sample_packing": True}, True, ["multipack sampler is off", "evaluation runs the training set loss"]),
    ({"sample_packing": True, "eval_sample_packing": False, "pad_to_sequence_len": True}, True,
     ["multipack sampler is off"]),  # pad_to_sequence_len: its own line (recipe_options)
    ({"batch_flattening": True, "attn_implementation": "sdpa"}, True, ["multipack sampler is off"]),
    ({"batch_flattening": "auto", "attn_implementation": "flash_attention_2"}, True, ["multipack sampler is off"]),
    ({"batch_flattening": "auto", "attn_implementation": "sdpa"}, False, []),
    ({"eval_sample_packing": True}, False, ["evaluation runs the training set loss"]),
    ({}, False, []),
]


@pytest.mark.parametrize("overrides,padding_free,notes", PACKING, ids=[str(sorted(o)) for o, _, _ in PACKING])
def test_packing_options_map_to_padding_free_set_loss(load, overrides, padding_free, notes):
    """Axolotl's own packing is turned off (it would mix questions); the set loss runs padding-free instead."""
    from axolotl.integrations.base import PluginManager

    cfg = load(**overrides)
    assert cfg.ssft_padding_free is padding_free
    assert not cfg.sample_packing and not cfg.eval_sample_packing and not cfg.batch_flattening
    plugin = next(p for p in PluginManager.get_instance().plugins.values() if type(p).__name__ == "SSFTPlugin")
    request, got = plugin._packing
    assert bool(request) is padding_free
    assert [any(n in g for g in got) for n in notes] == [True] * len(notes) and len(got) == len(notes)


def test_mixed_dataset_types_refused(load, assets):
    with pytest.raises(Exception, match=r"datasets\[1\].*type: alpaca.*every dataset must be `type: ssft`"):
        load(datasets=[{"path": assets["tied"]["train"], "ds_type": "json", "type": "ssft"},
                       {"path": assets["tied"]["train"], "ds_type": "json", "type": "alpaca"}])


def test_ssft_dataset_without_plugin_is_an_error(load, assets):
    cfg = load(plugins=None, datasets=[{"path": assets["tied"]["train"], "ds_type": "json",
                                         "type": "axolotl_ssft.ssft"}])
    from axolotl.common.datasets import load_datasets

    with pytest.raises(ValueError, match=r"SSFT plugin is not active: add `plugins: \[axolotl_ssft.SSFTPlugin\]`"):
        load_datasets(cfg=cfg)


def test_plugin_that_cannot_import_stops_the_run(load, monkeypatch):
    monkeypatch.setitem(sys.modules, "trl_ssft.matching", None)
    with pytest.raises(RuntimeError, match=r"listed but cannot load.*pip install"):
        load()


def test_short_type_is_rewritten_and_tokens_registered(load):
    cfg = load()
    assert cfg.datasets[0]["type"] == "axolotl_ssft.ssft"
    assert cfg.special_tokens["additional_special_tokens"] == FORKS6
    assert cfg.ssft_num_fork_tokens == 6 and cfg.ssft_assignment == "hungarian"


BAD_ROWS = [
    ("missing_traces", lambda r: r.pop("traces"), r"row 3, field 'traces': missing"),
    ("empty_trace", lambda r: r["traces"].__setitem__(1, " "), r"row 3, field 'traces\[1\]': is empty"),
    ("assistant_last", lambda r: r["prompt"].append({"role": "assistant", "content": "x"}),
     r"row 3, field 'prompt[^']*': the last message has role 'assistant'"),
    ("fork_in_trace", lambda r: r["traces"].__setitem__(2, r["traces"][2] + " <think2>"),
     r"row 3, field 'traces\[2\]': contains the forking token '<think2>'"),
    ("fork_in_prompt", lambda r: r["prompt"][0].__setitem__("content", "<think5> add"),
     r"row 3, field 'prompt': contains the forking token '<think5>'"),
]


@pytest.mark.parametrize("name,mutate,pattern", BAD_ROWS, ids=[b[0] for b in BAD_ROWS])
def test_bad_rows_name_row_and_field(load, assets, name, mutate, pattern):
    from trl_ssft.data import SSFTDataError

    rows = _rows(assets["tied"]["train"])
    mutate(rows[3])
    cfg = load(data_rows=rows, shuffle_merged_datasets=False)
    with pytest.raises(SSFTDataError, match=pattern):
        _datasets(cfg)


def test_more_traces_than_tokens_checked_per_run_on_cached_rows(load, assets):
    """M > N is checked at every start on the cached tokenized rows; `subsample` lets it through."""
    from trl_ssft.data import SSFTDataError

    rows = _rows(assets["tied"]["train"])
    with pytest.raises(SSFTDataError, match=r"row \d+, field 'traces': has 4 traces but there are only 3"):
        _datasets(load(data_rows=rows, ssft_num_fork_tokens=3))
    meta = _datasets(load(data_rows=rows, ssft_num_fork_tokens=3, ssft_max_traces_policy="subsample"))
    assert len(meta.train_dataset) == 8
    meta = _datasets(load(data_rows=rows, ssft_num_fork_tokens=3, ssft_assignment="none"))
    assert len(meta.train_dataset) == 8


def _prepared(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "prepared").iterdir() if p.is_dir())


def test_trace_policies_apply_to_cached_rows(load, assets, tmp_path):
    """Long-trace and duplicate policies run per start: the same cache entry serves both settings."""
    rows = _rows(assets["tied"]["train"])
    rows[0]["traces"].append(rows[0]["traces"][0])  # one duplicate -> M = 5
    rows[0]["trace_sources"].append(rows[0]["trace_sources"][0])
    # every row's long trace is cut at sequence_len 70 (8 of 33 traces): accepted explicitly, the mechanics are tested
    kw = dict(data_rows=rows, sequence_len=70, shuffle_merged_datasets=False, ssft_max_traces_policy="subsample",
              ssft_max_truncated_share=1.0)
    trunc = _datasets(load(**kw)).train_dataset
    prepared = _prepared(tmp_path)
    dropped = _datasets(load(ssft_long_traces="drop", ssft_duplicate_traces="drop", **kw)).train_dataset
    assert _prepared(tmp_path) == prepared  # cache reused
    assert len(prepared) == 1
    assert all(len(p) + 1 + len(t) <= 70 for p, ts in zip(trunc["prompt_ids"], trunc["trace_ids"]) for t in ts)
    row0 = trunc["ssft_row"].index(0)
    assert len(trunc["trace_ids"][row0]) == 5
    assert len(dropped) == 8  # each row loses its long ("columns") trace and the duplicate, keeps the rest
    assert sum(map(len, dropped["trace_ids"])) == sum(map(len, trunc["trace_ids"])) - 8 - 1


def test_one_column_per_teacher_mapping(load, assets, tmp_path):
    """`ssft_prompt_column` + `ssft_trace_columns` read a wide layout; changing them re-tokenizes (new cache key)."""
    rows = _rows(assets["tied"]["train"])
    wide = [{"question": r["prompt"][0]["content"], "t_a": r["traces"][0], "t_b": r["traces"][1],
             "t_c": r["traces"][2] if i != 2 else ""} for i, r in enumerate(rows)]
    meta = _datasets(load(data_rows=wide, ssft_prompt_column="question", ssft_trace_columns=["t_a", "t_b", "t_c"],
                          shuffle_merged_datasets=False))
    ds = meta.train_dataset
    assert [len(t) for t in ds["trace_ids"]] == [3, 3, 2, 3, 3, 3, 3, 3]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(assets["tied"]["model"])
    text = tok.apply_chat_template([{"role": "user", "content": wide[0]["question"]}], tokenize=False,
                                   add_generation_prompt=True)
    assert ds["prompt_ids"][0] == tok(text, add_special_tokens=False)["input_ids"]
    meta2 = _datasets(load(data_rows=wide, ssft_prompt_column="question", ssft_trace_columns=["t_a"],
                           shuffle_merged_datasets=False))
    assert [len(t) for t in meta2.train_dataset["trace_ids"]] == [1] * 8
    assert len(_prepared(tmp_path)) == 2
    with pytest.raises(Exception, match=r"field 't_x': column\(s\) not in the dataset"):
        _datasets(load(data_rows=wide, ssft_prompt_column="question", ssft_trace_columns=["t_x"]))


def test_match_tokens_null_means_whole_traces(load):
    from axolotl_ssft.args import WHOLE_TRACE, ssft_settings

    assert ssft_settings(load(ssft_match_tokens=None)).ssft_match_tokens == WHOLE_TRACE
    assert ssft_settings(load()).ssft_match_tokens == 16


def test_schema_mirrors_core_fields():
    from dataclasses import fields

    from axolotl_ssft.args import SSFTArgs
    from trl_ssft.config import SSFTFields

    for f in fields(SSFTFields):
        info = SSFTArgs.model_fields[f.name]
        assert info.default == f.default and info.description == f.metadata["help"]
    assert re.search(r"Axolotl only", SSFTArgs.model_fields["ssft_prompt_column"].description)
