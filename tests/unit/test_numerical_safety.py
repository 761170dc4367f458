"""Non-finite matching costs: the documented rule (worse than every finite cost) and the log count.

A real model whose forking-token embedding row is NaN (or inf) gives non-finite costs for every trace
under that token. Training must go on with the finite pairs (the broken token is never matched while
N > M), the loss must stay finite, and `ssft/nonfinite_costs` must count the bad entries.
"""

import math

import numpy as np
import pytest
import torch
from datasets import Dataset

from conftest import cpu_args
from trl_ssft import SSFTTrainer
from trl_ssft.matching import assign, sanitize_cost


def test_sanitize_rule():
    cost = np.array([[1.0, np.nan], [np.inf, 2.0], [-np.inf, 0.5]])
    clean, n = sanitize_cost(cost)
    assert n == 3 and np.isfinite(clean).all()
    assert (clean[~np.isfinite(cost)] > np.nanmax(np.where(np.isfinite(cost), cost, np.nan))).all()
    np.testing.assert_array_equal(assign(clean, "hungarian", 3, 2), [0, 2])
    clean, n = sanitize_cost(np.full((3, 2), np.nan))  # nothing finite: still a valid assignment
    assert n == 6 and len(set(assign(clean, "hungarian", 3, 2).tolist())) == 2


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_fork_embedding_training_continues(tiny_models, rows, tmp_path, value):
    args = cpu_args(tmp_path, max_steps=3, per_device_train_batch_size=2, gradient_checkpointing=False)
    trainer = SSFTTrainer(model=tiny_models["untied"], args=args, train_dataset=Dataset.from_list(rows[:8]))
    broken = 2  # <think3>
    with torch.no_grad():
        trainer.model.get_input_embeddings().weight[trainer.fork_token_ids[broken]] = value
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3
    for h in logs:
        assert math.isfinite(h["loss"])
        assert h["ssft/nonfinite_costs"] == 2 * 4  # 2 questions x 4 traces, all under the broken token
        assert h["ssft/usage_3"] == 0.0  # never matched: a finite pair always exists (N = 6 > M = 4)
        assert h.get("ssft/nonfinite_matched", 0) == 0
        assert math.isfinite(h["ssft/matched_cost"])
    counts = trainer.ssft_state()["match_counts"]
    assert counts[broken] == 0 and sum(counts) == 3 * 2 * 4
    others = [p for n, p in trainer.model.named_parameters() if "embed_tokens" not in n]
    assert all(torch.isfinite(p).all() for p in others)
