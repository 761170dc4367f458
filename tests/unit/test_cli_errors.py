"""`trl-ssft train` argument errors that stop before any model is loaded."""

import json

import pytest

from trl_ssft.cli import main


def test_eval_without_a_test_split_is_a_usage_error(tmp_path, rows, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows[:4]))
    with pytest.raises(SystemExit) as e:
        main(["train", "--model_name_or_path", str(tmp_path / "never-loaded"), "--dataset_name", str(data),
              "--output_dir", str(tmp_path / "out"), "--eval_strategy", "steps", "--use_cpu",
              "--bf16", "False", "--report_to", "none"])
    assert e.value.code == 2
    assert "has no split 'test'" in capsys.readouterr().err


def test_model_and_dataset_are_required(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--output_dir", "/tmp/x", "--use_cpu", "--bf16", "False"])
    assert e.value.code == 2
    assert "--model_name_or_path is required" in capsys.readouterr().err
