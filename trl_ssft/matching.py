"""The matching rule: a question's cost matrix -> which forking token starts which trace.

Shapes: ``cost`` is ``[N, M]`` (forking token i, trace j; see `scoring.cost_matrices` for its
definition), float, N >= M. An assignment is an integer array ``[M]``: the token index (0-based) given
to each trace, all distinct; None for a mode without forking tokens.

Modes are entries of `MODES` (`ssft_assignment` takes its choices from it):

- ``hungarian``: sigma = argmin over injective maps of sum_j C[sigma(j), j]
  (`scipy.optimize.linear_sum_assignment`; exact ties are broken deterministically by scipy, so every
  process picks the same optimum). The method.
- ``random``: M distinct tokens drawn uniformly, from an RNG the caller seeds (the paper's ablation).
- ``fixed``: trace j gets token j.
- ``none``: SFT-mixed, no token.

A new mode is one `register_mode` call here plus its test. `match_question` is the one place that turns
a cost matrix into an assignment and its statistics; non-finite costs (NaN, +-inf) are never passed to
scipy: they are replaced by a value larger than every finite cost (such a pair is chosen only when
nothing else is possible) and counted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

AssignFn = Callable[[np.ndarray | None, int, int, np.random.Generator], np.ndarray | None]


@dataclass(frozen=True)
class AssignmentMode:
    """One value of `ssft_assignment`: its rule and what it needs."""

    name: str
    assign: AssignFn  # (cost [N, M] or None, N, M, rng) -> [M] token indices, or None
    needs_cost: bool  # the matching pass (N x M no-grad scoring rows per question) runs only when True
    uses_tokens: bool = True  # False: traces are trained without a forking token (SFT-mixed)
    help: str = ""


MODES: dict[str, AssignmentMode] = {}


def register_mode(name: str, *, needs_cost: bool, uses_tokens: bool = True, help: str = ""):
    """Decorator: register an assignment rule ``fn(cost, n, m, rng) -> [M] | None`` under `name`."""

    def deco(fn: AssignFn) -> AssignFn:
        MODES[name] = AssignmentMode(name, fn, needs_cost, uses_tokens, help)
        return fn

    return deco


def get_mode(name: str) -> AssignmentMode:
    if name not in MODES:
        raise ValueError(f"unknown ssft_assignment {name!r}; choose one of {tuple(MODES)}")
    return MODES[name]


def uses_fork_tokens(name: str) -> bool:
    """Whether mode `name` puts a forking token before each trace (False only for SFT-mixed)."""
    return get_mode(name).uses_tokens


def hungarian(cost: np.ndarray) -> np.ndarray:
    """Minimum-cost assignment of the M columns (traces) of `cost` [N, M] to distinct rows (tokens) -> [M]."""
    n, m = cost.shape
    if m > n:  # a shape precondition; the data rule for M > N is `checks.check_max_traces`
        raise ValueError(f"hungarian needs a cost matrix with N >= M, got shape {cost.shape}")
    rows, cols = linear_sum_assignment(cost)
    assignment = np.empty(m, dtype=np.int64)
    assignment[cols] = rows
    return assignment


@register_mode("hungarian", needs_cost=True, help="SSFT: minimum-cost bipartite matching (the method)")
def _assign_hungarian(cost, n, m, rng):
    if cost is None:
        raise ValueError("hungarian assignment needs the cost matrix")
    return hungarian(np.asarray(cost, dtype=np.float64))


@register_mode("random", needs_cost=False, help="random distinct tokens each step (the paper's ablation)")
def _assign_random(cost, n, m, rng):
    return rng.permutation(n)[:m].astype(np.int64)


@register_mode("fixed", needs_cost=False, help="trace j always gets token j")
def _assign_fixed(cost, n, m, rng):
    return np.arange(m, dtype=np.int64)


@register_mode("none", needs_cost=False, uses_tokens=False, help="SFT-mixed: no forking token")
def _assign_none(cost, n, m, rng):
    return None


def assign(cost: np.ndarray | None, mode: str, num_tokens: int, num_traces: int,
           rng: np.random.Generator | None = None) -> np.ndarray | None:
    """Token index per trace ([M] int array) for `mode`; `cost` [N, M] is needed only by cost-based modes."""
    from .checks import check_max_traces

    rule = get_mode(mode)
    check_max_traces(num_traces, num_tokens, "error", mode)  # M > N: ValueError (the caller subsamples first)
    return rule.assign(cost, num_tokens, num_traces, rng if rng is not None else np.random.default_rng())


def sanitize_cost(cost: np.ndarray) -> tuple[np.ndarray, int]:
    """Replace non-finite entries of `cost` [N, M] by (max finite + 1); returns (clean copy, #replaced)."""
    cost = np.asarray(cost, dtype=np.float64)
    bad = ~np.isfinite(cost)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return cost, 0
    finite = cost[~bad]
    clean = cost.copy()
    clean[bad] = (finite.max() + 1.0) if finite.size else 0.0
    return clean, n_bad


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


@dataclass
class MatchStats:
    """Statistics of one question's matching (lists so that a micro-batch can be concatenated)."""

    matched_cost: list[float] = field(default_factory=list)  # C[sigma(j), j] per trace
    unmatched_cost: list[float] = field(default_factory=list)  # every other entry of C
    margin: list[float] = field(default_factory=list)  # (second-best total - best total) / M
    nonfinite_costs: int = 0  # non-finite entries of C
    nonfinite_matched: int = 0  # traces matched through a non-finite entry


def match_question(cost: np.ndarray | None, mode: str, num_tokens: int, num_traces: int,
                   rng: np.random.Generator) -> tuple[np.ndarray | None, MatchStats]:
    """Assignment [M] (or None) of one question and its statistics; `cost` [N, M] only for cost-based modes."""
    stats = MatchStats()
    if cost is None:
        return assign(None, mode, num_tokens, num_traces, rng), stats
    clean, stats.nonfinite_costs = sanitize_cost(cost)
    a = assign(clean, mode, num_tokens, num_traces, rng)
    cols = np.arange(num_traces)
    if stats.nonfinite_costs:
        stats.nonfinite_matched = int((~np.isfinite(np.asarray(cost, dtype=np.float64)))[a, cols].sum())
    matched = clean[a, cols]
    stats.matched_cost = matched.tolist()
    mask = np.ones_like(clean, dtype=bool)
    mask[a, cols] = False
    stats.unmatched_cost = clean[mask].tolist()
    second = second_best_total(clean, a)
    if second is not None:
        stats.margin = [(second - float(matched.sum())) / num_traces]
    return a, stats


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
