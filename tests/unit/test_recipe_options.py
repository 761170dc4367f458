"""The recipe-option table (`trl_ssft.recipe_options`): refusals, the start-of-run lines, and the docs table."""

from __future__ import annotations

import os

import pytest

from trl_ssft import recipe_options as ro

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_rows_are_well_formed():
    keys = [(o.key, o.front, o.engaged is None) for o in ro.OPTIONS]
    plain = [k for k in keys if k[2]]
    assert len(plain) == len(set(plain)), "a (key, front) row without its own `engaged` is listed twice"
    for o in ro.OPTIONS:
        assert o.status in ro.STATUSES and o.front in (ro.AXOLOTL, ro.TRL) and len(o.what) > 20 and o.checked
        assert (o.status == ro.REFUSED) == bool(o.fix), o.key


@pytest.mark.parametrize("opt", [o for o in ro.OPTIONS if o.status == ro.REFUSED and o.front == ro.AXOLOTL],
                         ids=lambda o: o.key)
def test_every_axolotl_refusal_names_option_reason_and_fix(opt):
    cfg = {opt.key: 2 if opt.key.endswith(("_size", "_degree")) else True}
    with pytest.raises(ValueError) as e:
        ro.check_recipe(cfg, ro.AXOLOTL)
    assert str(e.value).startswith(f"SSFT cannot run with `{opt.key}: ") and opt.fix in str(e.value)
    ro.check_recipe({opt.key: None}, ro.AXOLOTL)  # unset: fine


def test_axolotl_start_lines():
    cfg = {"plugins": [ro.CCE_PLUGIN, ro.LIGER_PLUGIN, "axolotl_ssft.SSFTPlugin"], "liger_rms_norm": True,
           "liger_glu_activation": True, "liger_fused_linear_cross_entropy": True, "sequence_len": 4096,
           "lora_qkv_kernel": True, "bf16": "auto", "chunked_cross_entropy": True, "train_on_inputs": True,
           "pad_to_sequence_len": True}
    lines = ro.recipe_lines(cfg, ro.AXOLOTL)
    assert lines[0].startswith("SSFT recipe options (axolotl): kept: ")
    for k in ("liger_rms_norm", "liger_glu_activation", "lora_qkv_kernel", "bf16=auto"):
        assert k in lines[0]
    assert "mapped: sequence_len=4096 (-> max_length of the SSFT rows" in lines[0]
    flagged = {line.split("`")[1].split(":")[0] for line in lines[1:]}
    assert flagged == {"cut_cross_entropy", "liger_fused_linear_cross_entropy", "chunked_cross_entropy",
                       "train_on_inputs", "pad_to_sequence_len"}
    assert all(line.startswith("SSFT: `") and "does not apply to SSFT: " in line for line in lines[1:])
    assert "never passes labels" in next(line for line in lines if "cut_cross_entropy" in line)
    # the plugin listed with `cut_cross_entropy: false` turns it off: nothing to report
    assert not any("cut_cross_entropy:" in x for x in ro.recipe_lines(dict(cfg, cut_cross_entropy=False), ro.AXOLOTL))


def test_trl_options_through_the_trainer(tiny_models, rows, tmp_path, capsys):
    from datasets import Dataset

    from conftest import cpu_args
    from trl_ssft import SSFTTrainer

    data = Dataset.from_list(rows[:4])
    with pytest.raises(ValueError, match=r"SSFT cannot run with `loss_type: 'dft'`: SSFT's set loss is plain NLL"):
        SSFTTrainer(model=tiny_models["tied"], args=cpu_args(tmp_path, loss_type="dft"), train_dataset=data)
    with pytest.raises(ValueError, match=r"`train_sampling_strategy: 'group_by_length'`.*Use 'random'"):
        SSFTTrainer(model=tiny_models["tied"], args=cpu_args(tmp_path, train_sampling_strategy="group_by_length"),
                    train_dataset=data)
    args = cpu_args(tmp_path, loss_type="chunked_nll", use_liger_kernel=True, completion_only_loss=True)
    ours = args.loss_type == "chunked_nll"  # trl 1.9; trl >= 1.16 already turns it into 'nll' itself
    trainer = SSFTTrainer(model=tiny_models["tied"], args=args, train_dataset=data)
    out = capsys.readouterr().out
    assert trainer.args.loss_type == "nll"  # mapped: TRL's chunked head never patches the forward
    assert ("mapped: loss_type=chunked_nll ('chunked_nll' -> SSFT's own chunked output head" in out) == ours
    assert "kept: " in out and "use_liger_kernel" in out
    assert "SSFT: `liger_kernel_config.fused_linear_cross_entropy: True` does not apply to SSFT: " in out
    assert "SSFT: `completion_only_loss: True` does not apply to SSFT: " in out
    args = cpu_args(tmp_path, use_liger_kernel=True, liger_kernel_config={"fused_linear_cross_entropy": False},
                    assistant_only_loss=True)
    lines = ro.recipe_lines(args, ro.TRL)
    assert not any("fused_linear" in x for x in lines)
    assert any(x.startswith("SSFT: `assistant_only_loss: True` does not apply") for x in lines)


def test_docs_table_is_the_registry():
    text = open(os.path.join(REPO, "docs", "recipes.md")).read()
    for front in (ro.AXOLOTL, ro.TRL):
        assert ro.docs_table(front) in text, f"docs/recipes.md: regenerate the {front} table (recipe_options.docs_table)"
