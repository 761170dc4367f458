"""Shared fixtures: tiny offline models (tied Qwen2, untied Llama) and synthetic ssft rows."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def rows():
    from trl_ssft.demo.synthetic import make_rows

    return make_rows(48, seed=0)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, rows):
    """{"tied": path of a tied Qwen2, "untied": path of an untied Llama}, both with a chat tokenizer."""
    from trl_ssft.demo.synthetic import corpus
    from trl_ssft.demo.tiny import save_tiny_model

    base = tmp_path_factory.mktemp("tiny")
    return {
        "tied": save_tiny_model(base / "qwen2_tied", corpus(rows), arch="qwen2", tie_word_embeddings=True),
        "untied": save_tiny_model(base / "llama_untied", corpus(rows), arch="llama", tie_word_embeddings=False),
    }


def cpu_args(tmp_path, **kw):
    """An SSFTConfig for fast deterministic CPU runs."""
    from trl_ssft import SSFTConfig

    base = dict(
        output_dir=str(tmp_path / "out"), bf16=False, use_cpu=True, report_to=[], max_length=256,
        per_device_train_batch_size=2, learning_rate=1e-3, logging_steps=1, save_strategy="no",
        seed=0, dataloader_num_workers=0, disable_tqdm=True,
    )
    base.update(kw)
    return SSFTConfig(**base)


def pytest_collection_modifyitems(config, items):
    """Everything under tests/e2e/ (subprocess CLIs, torchrun, kill-and-resume) is `slow`: `-m "not slow"`
    runs the unit tests only."""
    e2e = os.path.join(os.path.dirname(__file__), "e2e") + os.sep
    for item in items:
        if str(item.fspath).startswith(e2e):
            item.add_marker(pytest.mark.slow)
