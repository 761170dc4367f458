"""The trainer's cost matrix, matching and set loss against a brute-force reference.

The reference scores every (forking token, trace) pair with one plain unpadded forward per
sequence, enumerates every injective assignment, and recomputes the loss of the matched full
sequences by hand.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset

from conftest import cpu_args
from trl_ssft import SSFTTrainer
from trl_ssft.matching import brute_force
from trl_ssft.demo.synthetic import MODES, make_rows


def _nll(model, prefix, cont):
    ids = torch.tensor([prefix + cont])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    pred = logits[len(prefix) - 1: len(prefix) - 1 + len(cont)]
    return F.cross_entropy(pred, torch.tensor(cont), reduction="sum").item(), len(cont)


def _trainer(path, tmp_path, n, m, **kw):
    rows = make_rows(6, seed=n * 7 + m, modes=MODES[:m]) if m <= 4 else None
    args = cpu_args(tmp_path, ssft_num_fork_tokens=n, ssft_fork_init_noise=1.0, **kw)
    return SSFTTrainer(model=path, args=args, train_dataset=Dataset.from_list(rows))


def _batch(trainer, k=3):
    feats = [trainer.train_dataset[i] for i in range(k)]
    return trainer.data_collator(feats)


@pytest.mark.parametrize("n,m,t", [(1, 1, None), (3, 1, 4), (3, 3, None), (4, 2, 6), (6, 4, 5), (4, 4, None)])
def test_matching_and_loss_equal_brute_force(tiny_models, tmp_path, n, m, t):
    trainer = _trainer(tiny_models["tied"], tmp_path, n, m, ssft_match_tokens=t, ssft_match_max_tokens=64)
    model = trainer.model
    model.eval()
    batch = _batch(trainer)
    prompts, traces = trainer._unpack(batch)
    costs = trainer.ssft_cost_matrices(prompts, traces)
    assignments, _ = trainer.ssft_assignments(prompts, traces, "hungarian")
    fork = trainer.fork_token_ids
    total_nll, total_tok = 0.0, 0
    for b, (p, ts) in enumerate(zip(prompts, traces)):
        ref = np.zeros((n, len(ts)))
        for i in range(n):
            for j, tr in enumerate(ts):
                s, c = _nll(model, p + [fork[i]], tr if t is None else tr[:t])
                ref[i, j] = s / c
        np.testing.assert_allclose(costs[b], ref, rtol=1e-4, atol=1e-5)
        best, best_total = brute_force(ref)
        chosen_total = ref[assignments[b], np.arange(len(ts))].sum()
        assert chosen_total == pytest.approx(best_total, abs=1e-5)
        totals = [float(ref[list(p_), range(len(ts))].sum())
                  for p_ in __import__("itertools").permutations(range(n), len(ts))]
        if sum(t < best_total + 1e-4 for t in totals) == 1:  # a unique optimum: the very same pairs
            assert assignments[b].tolist() == best.tolist()
        for j, tr in enumerate(ts):  # the matched full sequence
            s, c = _nll(model, p + [fork[int(assignments[b][j])]], tr)
            total_nll += s
            total_tok += c
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch).item()
    assert loss == pytest.approx(total_nll / total_tok, rel=1e-4)


def test_modes_build_documented_sequences(tiny_models, tmp_path):
    for mode in ["fixed", "random", "none"]:
        trainer = _trainer(tiny_models["tied"], tmp_path / mode, 6, 4, ssft_assignment=mode)
        batch = _batch(trainer, 4)
        prompts, traces = trainer._unpack(batch)
        assignments, stats = trainer.ssft_assignments(prompts, traces, mode)
        assert "matched_cost" not in stats  # no scoring pass outside hungarian
        ids, mask, labels = trainer.ssft_build_rows(prompts, traces, assignments)
        fork = set(trainer.fork_token_ids)
        r = 0
        for p, ts, a in zip(prompts, traces, assignments):
            for j, tr in enumerate(ts):
                row = ids[r, : int(mask[r].sum())].tolist()
                if mode == "none":
                    assert a is None and row == p + tr and not fork & set(row)
                else:
                    assert row == p + [trainer.fork_token_ids[int(a[j])]] + tr
                    assert labels[r, len(p)].item() == -100  # forking token not trained by default
                    if mode == "fixed":
                        assert int(a[j]) == j
                assert labels[r, : len(p)].eq(-100).all()
                assert labels[r, len(row) - len(tr): len(row)].tolist() == tr
                r += 1
        if mode == "random":
            assert all(len(set(a.tolist())) == len(a) for a in assignments)
            trainer.state.global_step = 1
            again, _ = trainer.ssft_assignments(prompts, traces, mode)
            assert any(x.tolist() != y.tolist() for x, y in zip(assignments, again))


def test_fork_token_loss_option(tiny_models, tmp_path):
    trainer = _trainer(tiny_models["tied"], tmp_path, 4, 4, ssft_assignment="fixed", ssft_fork_token_loss=True)
    batch = _batch(trainer, 2)
    prompts, traces = trainer._unpack(batch)
    a, _ = trainer.ssft_assignments(prompts, traces, "fixed")
    ids, mask, labels = trainer.ssft_build_rows(prompts, traces, a)
    assert labels[0, len(prompts[0])].item() == trainer.fork_token_ids[0]
    assert int(batch["ssft_num_loss_tokens"].sum()) == int(labels.ne(-100).sum())


def test_every_mode_normalises_identically(tiny_models, tmp_path):
    """Same loss tokens in every mode: the loss-token count of a batch does not depend on the mode."""
    counts = {}
    for mode in ["hungarian", "random", "fixed", "none"]:
        trainer = _trainer(tiny_models["tied"], tmp_path / mode, 6, 4, ssft_assignment=mode)
        batch = _batch(trainer, 4)
        prompts, traces = trainer._unpack(batch)
        a, _ = trainer.ssft_assignments(prompts, traces, mode)
        _, _, labels = trainer.ssft_build_rows(prompts, traces, a)
        counts[mode] = int(labels.ne(-100).sum())
        assert counts[mode] == int(batch["ssft_num_loss_tokens"].sum())
    assert len(set(counts.values())) == 1


def test_match_options_keep_the_costs(tiny_models, tmp_path):
    """ssft_match_share_prompt off and a small ssft_match_max_memory_mb give the same cost matrices."""
    ref = _trainer(tiny_models["untied"], tmp_path / "a", 4, 4)
    alt = _trainer(tiny_models["untied"], tmp_path / "b", 4, 4, ssft_match_share_prompt=False,
                   ssft_match_max_memory_mb=1)
    batch = _batch(ref, 3)
    prompts, traces = ref._unpack(batch)
    for a, b in zip(ref.ssft_cost_matrices(prompts, traces), alt.ssft_cost_matrices(prompts, traces)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
