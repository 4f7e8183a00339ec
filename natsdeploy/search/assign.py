"""Exact capacitated assignment (a small transportation problem) for the aligned decode.

Items (search groups) go to bins (genotypes) with fixed capacities summing to the number of items,
maximising the total weight. Solved by successive shortest paths on the residual graph; since
there are few bins, a path is compressed to "a free item enters bin g0, then one item moves from
each bin to the next" and Bellman-Ford runs over the bins only. numpy only, no SciPy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["max_weight_assignment"]


def _move_edges(cost: np.ndarray, assign: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cheapest move of one assigned item from bin g to bin h: (cost[g, h], item[g, h])."""
    n_bins = cost.shape[1]
    edge = np.full((n_bins, n_bins), np.inf)
    item = np.zeros((n_bins, n_bins), dtype=np.int64)
    for g in range(n_bins):
        members = np.flatnonzero(assign == g)
        if members.size:
            delta = cost[members] - cost[members, g][:, None]
            best = delta.argmin(axis=0)
            edge[g] = delta[best, np.arange(n_bins)]
            item[g] = members[best]
        edge[g, g] = np.inf
    return edge, item


def max_weight_assignment(weight: np.ndarray, capacity: Sequence[int]) -> np.ndarray:
    """`bin[i]` for each item maximising `sum_i weight[i, bin[i]]` with exactly `capacity[g]` items per bin.

    `weight` is [items, bins]; capacities are non-negative ints summing to the item count.
    Deterministic: among equal paths the lowest indices win.
    """
    w = np.asarray(weight, dtype=np.float64)
    cap = np.asarray(capacity, dtype=np.int64)
    if w.ndim != 2 or cap.shape != (w.shape[1],) or (cap < 0).any() or int(cap.sum()) != w.shape[0]:
        raise ValueError(f"capacity: got {cap.tolist()} for weights of shape {list(w.shape)}, "
                         "expected one non-negative count per bin summing to the number of items")
    cost = -w
    n, n_bins = w.shape
    assign = np.full(n, -1, dtype=np.int64)
    load = np.zeros(n_bins, dtype=np.int64)
    bins = np.arange(n_bins)
    for _ in range(n):
        free_cost = np.where((assign < 0)[:, None], cost, np.inf)
        start = free_cost.argmin(axis=0)  # best free item entering each bin
        dist = free_cost[start, bins]
        pred = np.full(n_bins, -1, dtype=np.int64)
        via = np.full(n_bins, -1, dtype=np.int64)
        edge, item = _move_edges(cost, assign)
        for _ in range(n_bins - 1):  # Bellman-Ford over bins (no negative cycles: SSP invariant)
            cand = dist[:, None] + edge
            best = cand.argmin(axis=0)
            val = cand[best, bins]
            better = val < dist - 1e-12
            if not better.any():
                break
            dist = np.where(better, val, dist)
            pred = np.where(better, best, pred)
            via = np.where(better, item[best, bins], via)
        end = int(np.flatnonzero(load < cap)[np.argmin(dist[load < cap])])
        h, steps = end, 0
        while pred[h] >= 0:  # move each item one bin along the path, back to the entry bin
            assign[via[h]] = h
            h = int(pred[h])
            steps += 1
            if steps > n_bins:
                raise RuntimeError("assignment: cycle in shortest-path tree (numerical trouble)")
        assign[start[h]] = h
        load[end] += 1
    return assign
