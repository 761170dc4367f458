"""Selection of a question's verified traces: duplicates out, then up to M diverse ones.

The rule, per question, on the traces that passed verification (in source order):

1. **Exact duplicates**: a trace whose text equals an earlier one's (whitespace collapsed) is dropped
   (``duplicate``).
2. **Near-duplicates**: each trace's set of word `shingle`-grams (lower case; words and punctuation
   marks are tokens; `shingle_hashes`) is sketched with a MinHash of `num_perm` permutations
   (datasketch, fixed permutation seed). A trace whose estimated Jaccard similarity to an earlier kept trace is at least
   `near_duplicate` is dropped (``near_duplicate``). ``near_duplicate: 1.0`` turns this step off.
3. **Diverse choice of M**: with d(i, j) = 1 - estimated Jaccard similarity, if more than
   `max_traces` (M) are left, pick greedily: first the trace with the largest sum of distances to all
   others; then, repeatedly, the trace that maximises, in this order, (a) whether its teacher is not yet
   chosen (teacher coverage), (b) its minimum distance to the chosen ones (max-min diversity), (c) its
   sum of distances to them. Ties go to the earlier trace in a permutation seeded by (`seed`,
   question id), so a run is identical for a seed, whatever `num_proc`. The others are
   ``not_selected``; the chosen ones keep their source order (so `fixed` assignment sees teachers in
   a stable order).
4. **Minimum**: a question left with fewer than `min_traces` traces is dropped (``too_few_traces``).

`similarity` is also the report's diversity measure (`report.py`).
"""

from __future__ import annotations

import random
import re
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..fields import option

_TOKEN = re.compile(r"\w+|[^\w\s]")
SELECT_REASONS = {
    "duplicate": "the same text as an earlier trace of the question",
    "near_duplicate": "estimated Jaccard similarity to an earlier trace >= near_duplicate",
    "not_selected": "beyond the M most diverse traces of its question",
    "too_few_traces": "its question kept fewer than min_traces traces (the question is dropped)",
}


@dataclass
class SelectOptions:
    """De-duplication and the diverse choice of M traces per question (see the module docstring)."""

    max_traces: int = option(4, "M: at most this many traces per question, chosen for teacher coverage and "
                                "diversity (the paper: 4, one per teacher).")
    min_traces: int = option(1, "Drop a question left with fewer traces than this (counted).")
    near_duplicate: float = option(0.8, "Drop a trace whose estimated Jaccard similarity (word n-gram MinHash) to "
                                        "an earlier trace of its question is at least this; 1.0: exact "
                                        "duplicates only.")
    shingle: int = option(5, "n of the word n-grams compared (near-duplicates and diversity).")
    num_perm: int = option(128, "MinHash permutations (more: a finer similarity estimate, slower).")
    seed: int = option(0, "Seed of the tie-breaking order of the diverse choice.")


def check_select(opts: SelectOptions) -> None:
    """Raise `ValueError` for options that cannot work."""
    if opts.max_traces < 1 or opts.min_traces < 1 or opts.min_traces > opts.max_traces:
        raise ValueError(f"need 1 <= min_traces <= max_traces, got {opts.min_traces} and {opts.max_traces}")
    if not 0.0 < opts.near_duplicate <= 1.0:
        raise ValueError(f"near_duplicate must be in (0, 1], got {opts.near_duplicate}")
    if opts.shingle < 1 or opts.num_perm < 1:
        raise ValueError("shingle and num_perm must be >= 1")


@lru_cache(maxsize=4)
def _permutations(num_perm: int):
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=1).permutations


def shingle_hashes(text: str, shingle: int = 5) -> np.ndarray:
    """The set of 32-bit hashes of the word `shingle`-grams of `text` (lower case; words and punctuation marks
    are tokens): each token hashed with CRC32, each n-gram by a polynomial over its tokens' hashes (numpy)."""
    words = _TOKEN.findall(text.lower()) or [""]
    wh = np.fromiter((zlib.crc32(w.encode()) for w in words), dtype=np.uint64, count=len(words))
    n = min(shingle, len(words))
    h = np.zeros(len(words) - n + 1, dtype=np.uint64)
    for k in range(n):
        h = (h * np.uint64(1_000_003) + wh[k: len(words) - n + 1 + k]) & np.uint64(0xFFFFFFFF)
    return np.unique(h)


def signatures(texts: Sequence[str], num_perm: int = 128, shingle: int = 5) -> np.ndarray:
    """MinHash signatures [K, num_perm] of the word `shingle`-gram sets of `texts` (datasketch `MinHash`,
    affine32 scheme, fixed permutations; the n-gram hashes of `shingle_hashes` are its input)."""
    from datasketch import MinHash

    perms = _permutations(num_perm)
    out = np.zeros((len(texts), num_perm), dtype=np.uint64)
    for k, text in enumerate(texts):
        m = MinHash(num_perm=num_perm, hashfunc=int, permutations=perms, scheme="affine32")
        m.update_batch(shingle_hashes(text, shingle))
        out[k] = m.hashvalues
    return out


def similarity(sigs: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity [K, K] of MinHash signatures (the share of equal slots, as datasketch's)."""
    return (sigs[:, None, :] == sigs[None, :, :]).mean(axis=-1)


def _tie_rank(question_id: str, k: int, seed: int) -> list[int]:
    order = list(range(k))
    random.Random(f"{seed}:{question_id}").shuffle(order)
    rank = [0] * k
    for r, i in enumerate(order):
        rank[i] = r
    return rank


def diverse_choice(dist: np.ndarray, teachers: Sequence[str], m: int, rank: Sequence[int]) -> list[int]:
    """Indices (sorted) of the `m` traces the greedy rule of the module docstring picks from distances [K, K]."""
    k = len(teachers)
    if k <= m:
        return list(range(k))
    chosen = [max(range(k), key=lambda i: (float(dist[i].sum()), -rank[i]))]
    while len(chosen) < m:
        covered = {teachers[i] for i in chosen}
        rest = [i for i in range(k) if i not in chosen]
        chosen.append(max(rest, key=lambda i: (teachers[i] not in covered, float(dist[i, chosen].min()),
                                               float(dist[i, chosen].sum()), -rank[i])))
    return sorted(chosen)


def select_traces(question_id: str, traces: Sequence[str], teachers: Sequence[str],
                  opts: SelectOptions) -> tuple[list[int], Counter]:
    """(indices of the traces kept, in source order; Counter of drop reasons) for one question.

    An empty index list means the question is dropped (``too_few_traces``, all its traces counted).
    """
    drops: Counter = Counter()
    seen, exact = set(), []
    for i, t in enumerate(traces):
        key = " ".join(t.split())
        if key in seen:
            drops["duplicate"] += 1
        else:
            seen.add(key)
            exact.append(i)
    kept = exact
    if len(exact) > 1:
        sim = similarity(signatures([traces[i] for i in exact], opts.num_perm, opts.shingle))
        keep_pos: list[int] = []
        for p in range(len(exact)):
            if opts.near_duplicate < 1.0 and keep_pos and sim[p, keep_pos].max() >= opts.near_duplicate:
                drops["near_duplicate"] += 1
            else:
                keep_pos.append(p)
        kept = [exact[p] for p in keep_pos]
        if len(kept) > opts.max_traces:
            sub = sim[np.ix_(keep_pos, keep_pos)]
            pick = diverse_choice(1.0 - sub, [teachers[i] for i in kept], opts.max_traces,
                                  _tie_rank(question_id, len(kept), opts.seed))
            drops["not_selected"] += len(kept) - len(pick)
            kept = [kept[p] for p in pick]
    if len(kept) < opts.min_traces:
        drops["too_few_traces"] += len(kept)
        return [], drops
    return kept, drops


__all__ = ["SELECT_REASONS", "SelectOptions", "check_select", "diverse_choice", "select_traces", "shingle_hashes", "signatures",
           "similarity"]
