"""Two processes (`torchrun --nproc_per_node 2`, gloo on CPU) against one process on the same data.

The two ranks hold questions with different numbers of traces and lengths (M = 4, 4, 3, 1), so their
matching passes have different numbers of scoring rows: the run must not hang (every rank makes the
same number of scoring forward calls), each question must get the same matched pairs as in a
one-process run with the same global batch, and the logged metrics and match counts must cover both
processes.
"""

import json
import os

import numpy as np
import pytest

from scripts.runner import read_records, run

TIMEOUT = 300  # generous for a loaded 2-core machine; a hang fails the test instead of blocking it


def _rows():
    from trl_ssft.demo.synthetic import make_rows

    rows = make_rows(4, seed=11)
    for row, m in zip(rows, (4, 4, 3, 1)):
        row["traces"], row["trace_sources"] = row["traces"][:m], row["trace_sources"][:m]
    rows[0]["traces"][0] = rows[0]["traces"][0] + " . check " + rows[0]["traces"][0]  # a much longer trace
    return rows


@pytest.fixture(scope="module")
def runs(tiny_models, tmp_path_factory):
    base = tmp_path_factory.mktemp("dist")
    data = base / "rows.json"
    data.write_text(json.dumps(_rows()))
    common = ["--model", tiny_models["untied"], "--data", str(data), "--max-steps", "2",
              "--match-max-tokens", "96"]
    single = run(["ssft_run.py", *common, "--bs", "4", "--out", str(base / "one"), "--record", str(base / "one")],
                 TIMEOUT)
    assert single.returncode == 0, single.stdout[-6000:]
    double = run(["ssft_run.py", *common, "--bs", "2", "--out", str(base / "two"), "--record", str(base / "two")],
                 TIMEOUT, nproc=2)
    assert double.returncode == 0, double.stdout[-6000:]
    return {
        "one": read_records(str(base / "one"), 1), "two": read_records(str(base / "two"), 2),
        "one_hist": json.load(open(base / "one" / "history.json")),
        "two_hist": json.load(open(base / "two" / "history.json")),
        "two_state": json.load(open(base / "two" / "ssft_state.json")),
    }


def test_two_processes_do_not_hang_with_uneven_work(runs):
    recs = runs["two"]
    assert {r["rank"] for r in recs} == {0, 1}
    for step in (0, 1):
        by_rank = {r["rank"]: r for r in recs if r["step"] == step}
        # different amounts of scoring work on the two ranks ...
        assert by_rank[0]["rows"] != by_rank[1]["rows"], by_rank
        # ... but the same number of forward calls (the short rank pads with dummy calls)
        assert by_rank[0]["calls"] == by_rank[1]["calls"] > 1
    assert runs["two_hist"]["global_step"] == 2


def test_matched_pairs_equal_single_process(runs):
    one = {(r["step"], r["q"]): r for r in runs["one"]}
    two = {(r["step"], r["q"]): r for r in runs["two"]}
    assert set(one) == set(two) and len(one) == 8  # 4 questions x 2 steps, each on exactly one rank
    for key, r in one.items():
        s = two[key]
        assert r["traces"] == s["traces"]
        np.testing.assert_allclose(s["cost"], r["cost"], atol=1e-4, err_msg=str(key))
        assert s["assign"] == r["assign"], (key, r["cost"])


def test_metrics_and_counts_are_aggregated_over_processes(runs):
    recs = runs["two"]
    first = [r for r in recs if r["step"] == 0]
    matched = [r["cost"][a][j] for r in first for j, a in enumerate(r["assign"])]
    assert len(matched) == 12  # 4 + 4 + 3 + 1 traces, spread over both ranks
    log = next(h for h in runs["two_hist"]["log_history"] if h.get("step") == 1 and "loss" in h)
    assert log["ssft/matched_cost"] == pytest.approx(float(np.mean(matched)), rel=1e-6)
    usage = np.zeros(6)
    for r in first:
        np.add.at(usage, r["assign"], 1)
    for i in range(6):
        assert log[f"ssft/usage_{i + 1}"] == pytest.approx(usage[i] / usage.sum(), abs=1e-9)
    assert log["ssft/nonfinite_costs"] == 0
    # cumulative match counts: both ranks, both steps, identical to the one-process run
    total = np.zeros(6, dtype=int)
    for r in recs:
        np.add.at(total, r["assign"], 1)
    assert runs["two_state"]["match_counts"] == total.tolist() == runs["one_hist"]["match_counts"]
    assert sum(total) == 2 * 12
    # the loss is normalised by the global token count: same as one process with the same global batch
    one_log = next(h for h in runs["one_hist"]["log_history"] if h.get("step") == 1 and "loss" in h)
    assert log["loss"] == pytest.approx(one_log["loss"], rel=1e-4)
