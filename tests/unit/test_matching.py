"""matching.py against brute force, and the documented pairs of each assignment mode."""

import numpy as np
import pytest

from trl_ssft.matching import assign, brute_force, hungarian, sanitize_cost, second_best_total


@pytest.mark.parametrize("n,m", [(1, 1), (3, 1), (3, 3), (4, 2), (6, 4), (5, 5)])
def test_hungarian_equals_brute_force(n, m):
    rng = np.random.default_rng(n * 10 + m)
    for _ in range(20):
        cost = rng.normal(size=(n, m))
        a = hungarian(cost)
        ref, ref_total = brute_force(cost)
        assert len(set(a.tolist())) == m and a.max() < n
        assert np.isclose(cost[a, np.arange(m)].sum(), ref_total)
        assert a.tolist() == ref.tolist()  # continuous random costs: the optimum is unique


def test_second_best_is_the_runner_up_of_all_assignments():
    from itertools import permutations

    rng = np.random.default_rng(1)
    for n, m in [(3, 2), (4, 4), (6, 3)]:
        cost = rng.normal(size=(n, m))
        totals = sorted(sum(cost[p[j], j] for j in range(m)) for p in permutations(range(n), m))
        best = hungarian(cost)
        assert np.isclose(second_best_total(cost, best), totals[1])
    assert second_best_total(np.zeros((1, 1)), np.array([0])) is None


def test_modes_produce_documented_pairs():
    cost = np.array([[5.0, 0.0], [0.0, 5.0], [9.0, 9.0]])
    assert hungarian(cost).tolist() == [1, 0]
    assert assign(cost, "hungarian", 3, 2).tolist() == [1, 0]
    assert assign(None, "fixed", 3, 2).tolist() == [0, 1]
    assert assign(None, "none", 3, 2) is None
    draws = {tuple(assign(None, "random", 6, 4, np.random.default_rng(s)).tolist()) for s in range(30)}
    assert all(len(set(d)) == 4 and max(d) < 6 for d in draws)
    assert len(draws) > 20  # a fresh draw each seed (step/question)
    same = [assign(None, "random", 6, 4, np.random.default_rng([7, 3, 11])).tolist() for _ in range(3)]
    assert same[0] == same[1] == same[2]  # same (seed, step, question) -> same draw on every process


def test_m_greater_than_n_is_refused():
    with pytest.raises(ValueError, match="M > N"):
        assign(np.zeros((2, 3)), "hungarian", 2, 3)
    with pytest.raises(ValueError, match="M > N"):
        assign(None, "random", 2, 3)


def test_nonfinite_costs_are_sanitised_and_counted():
    cost = np.array([[np.nan, 1.0], [0.5, np.inf], [2.0, -np.inf]])
    clean, bad = sanitize_cost(cost)
    assert bad == 3 and np.isfinite(clean).all()
    assert clean[0, 0] == clean.max() == 3.0
    a = hungarian(clean)
    assert a.tolist() == [1, 0]  # the finite pairs win
    allbad, nbad = sanitize_cost(np.full((2, 2), np.nan))
    assert nbad == 4 and np.isfinite(allbad).all()
