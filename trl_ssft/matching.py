"""Cost matrix -> assignment of forking tokens to traces, for each `ssft_assignment` mode.

Shapes: ``cost`` is ``[N, M]`` (forking token i, trace j), float, N >= M. An assignment is an
integer array ``[M]``: the token index (0-based) given to each trace, all distinct.

- ``hungarian``: sigma = argmin over injective maps of sum_j C[sigma(j), j]
  (`scipy.optimize.linear_sum_assignment`; exact ties are broken deterministically by scipy, so every
  process picks the same optimum).
- ``random``: M distinct tokens drawn uniformly, from an RNG the caller seeds.
- ``fixed``: trace j gets token j.
- ``none``: SFT-mixed, no token (returns None).

Non-finite costs (NaN, +-inf) are never passed to scipy: they are replaced by a value larger than
every finite cost of the matrix (so such a pair is chosen only when nothing else is possible) and
counted by the caller through `sanitize_cost`.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def sanitize_cost(cost: np.ndarray) -> tuple[np.ndarray, int]:
    """Replace non-finite entries of `cost` [N, M] by (max finite + 1); returns (clean copy, #replaced)."""
    cost = np.asarray(cost, dtype=np.float64)
    bad = ~np.isfinite(cost)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return cost, 0
    finite = cost[~bad]
    worst = (finite.max() + 1.0) if finite.size else 0.0
    clean = cost.copy()
    clean[bad] = worst
    return clean, n_bad


def hungarian(cost: np.ndarray) -> np.ndarray:
    """Minimum-cost assignment of the M columns (traces) of `cost` [N, M] to distinct rows (tokens) -> [M]."""
    n, m = cost.shape
    if m > n:
        raise ValueError(f"cannot assign {m} traces to {n} forking tokens (M > N)")
    rows, cols = linear_sum_assignment(cost)
    assignment = np.empty(m, dtype=np.int64)
    assignment[cols] = rows
    return assignment


def second_best_total(cost: np.ndarray, best: np.ndarray) -> float | None:
    """Total cost of the best assignment that differs from `best` [M] in at least one pair.

    The second-best assignment avoids at least one pair of the best one, so it is the minimum over
    pairs (best[j], j) of the optimum with that single pair forbidden. None when no other
    assignment exists (N = M = 1).
    """
    n, m = cost.shape
    if n == 1 and m == 1:
        return None
    big = np.abs(cost).max() * 4 + 1e6
    out = None
    for j in range(m):
        c = cost.copy()
        c[best[j], j] = big
        a = hungarian(c)
        if a[j] == best[j]:  # only possible if every alternative is also forbidden
            continue
        total = float(cost[a, np.arange(m)].sum())
        out = total if out is None else min(out, total)
    return out


def assign(cost: np.ndarray | None, mode: str, num_tokens: int, num_traces: int,
           rng: np.random.Generator | None = None) -> np.ndarray | None:
    """Token index per trace ([M] int array) for `mode`; `cost` [N, M] is needed only for ``hungarian``."""
    if mode == "none":
        return None
    if num_traces > num_tokens:
        raise ValueError(f"cannot assign {num_traces} traces to {num_tokens} forking tokens (M > N)")
    if mode == "hungarian":
        if cost is None:
            raise ValueError("hungarian assignment needs the cost matrix")
        return hungarian(np.asarray(cost, dtype=np.float64))
    if mode == "random":
        rng = rng if rng is not None else np.random.default_rng()
        return rng.permutation(num_tokens)[:num_traces].astype(np.int64)
    if mode == "fixed":
        return np.arange(num_traces, dtype=np.int64)
    raise ValueError(f"unknown ssft_assignment {mode!r}")


def brute_force(cost: np.ndarray) -> tuple[np.ndarray, float]:
    """Reference: enumerate every injective map (small N, M only). Returns (assignment [M], total)."""
    from itertools import permutations

    n, m = cost.shape
    best, best_total = None, np.inf
    for perm in permutations(range(n), m):
        total = float(sum(cost[perm[j], j] for j in range(m)))
        if total < best_total:
            best, best_total = np.array(perm, dtype=np.int64), total
    return best, best_total
