"""Non-dominated sorting and hypervolume over objectives with mixed directions.

Points are rows of a [n, m] list/array; ``directions`` says per objective whether larger
("maximize") or smaller ("minimize") is better. Internally everything is turned into
minimisation (maximised objectives negated).
"""
from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np


def _to_min(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[list[float]]:
    for d in directions:
        if d not in ("maximize", "minimize"):
            raise ValueError(f"direction={d!r} is not allowed; choose 'maximize' or 'minimize'")
    return [[-float(x) if d == "maximize" else float(x) for x, d in zip(p, directions)] for p in points]


def _dominates_min(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


_CHUNK = 512  # rows of the dominance matrix built at once (memory: _CHUNK x n x m booleans)


def non_dominated_ranks(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Pareto rank of every point: 0 = the front, 1 = the front once rank 0 is removed, ...

    Duplicates share a rank; a point with a NaN objective neither dominates nor is dominated
    through that objective (comparisons with NaN are false). Fast non-dominated sorting: the
    dominance relation is built with array comparisons (O(n² m) work, in chunks of rows), then
    the fronts are peeled off by counting each point's dominators.
    """
    pts = np.asarray(_to_min(points, directions), dtype=float)
    n = len(pts)
    if n == 0:
        return []
    pts = pts.reshape(n, -1)
    dominated_by = np.zeros(n, dtype=np.int64)
    dominates: list[np.ndarray] = []
    for start in range(0, n, _CHUNK):
        block = pts[start:start + _CHUNK, None, :]
        d = (block <= pts[None, :, :]).all(axis=-1) & (block < pts[None, :, :]).any(axis=-1)  # row dominates col
        dominated_by += d.sum(axis=0)
        dominates.extend(np.flatnonzero(row) for row in d)
    ranks = np.full(n, -1, dtype=np.int64)
    current, rank = np.flatnonzero(dominated_by == 0), 0
    while current.size:
        ranks[current] = rank
        freed = np.concatenate([dominates[i] for i in current])
        np.subtract.at(dominated_by, freed, 1)
        current, rank = np.unique(freed[dominated_by[freed] == 0]), rank + 1
    return ranks.tolist()


def point_front(vectors: Mapping[Hashable, Sequence[Sequence[float]]], directions: Sequence[str]) -> list:
    """Keys of the points on the Pareto front: each point's objective vectors (one per
    completed seed) are averaged first, then the means are ranked. This is the one
    definition of the front: the driver's live count and the published front both use it."""
    keys = list(vectors)
    means = [[sum(column) / len(column) for column in zip(*vectors[k])] for k in keys]
    return [k for k, rank in zip(keys, non_dominated_ranks(means, directions)) if rank == 0]


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float], directions: Sequence[str]) -> float:
    """Volume of objective space dominated by ``points`` and bounded by ``reference``.

    ``reference`` is given in the objectives' own units (e.g. accuracy 0.0 for a
    maximised accuracy, the largest acceptable parameter count for a minimised one).
    Points that do not strictly improve on the reference in every objective add nothing.
    Exact, by recursive slicing over the first objective (fine for m <= 4, n <= thousands).
    """
    pts = _to_min(points, directions)
    ref = _to_min([reference], directions)[0]
    pts = [p for p in pts if all(x < r for x, r in zip(p, ref))]
    # Only the non-dominated points, in one order: a dominated point added to a set then
    # changes nothing, not even the rounding (hypervolume histories never decrease).
    return _hv(sorted(_nondominated(pts)), ref)


def hypervolume_trace(points: Sequence[Sequence[float]], reference: Sequence[float],
                      directions: Sequence[str]) -> list[float]:
    """``hypervolume(points[:i + 1], ...)`` for every i, equal to it value for value.

    A point weakly dominated by the front so far (or equal to a front point) leaves the
    hypervolume as it was, so it is computed again only when a point enters the front (the
    front's dominated points never count, nor do points outside the reference, which can
    dominate no point inside it)."""
    trace, front, front_min, volume = [], [], [], 0.0
    for p, q in zip(points, _to_min(points, directions)):
        if not any(all(a <= b for a, b in zip(f, q)) for f in front_min):
            keep = [i for i, f in enumerate(front_min) if not _dominates_min(q, f)]
            front = [front[i] for i in keep] + [p]
            front_min = [front_min[i] for i in keep] + [q]
            volume = hypervolume(front, reference, directions)
        trace.append(volume)
    return trace


def _hv(pts: list[list[float]], ref: list[float]) -> float:
    if not pts:
        return 0.0
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in pts)
    pts = sorted(pts)
    volume = 0.0
    for i, p in enumerate(pts):
        upper = pts[i + 1][0] if i + 1 < len(pts) else ref[0]
        width = upper - p[0]
        if width <= 0:
            continue
        slice_pts = [q[1:] for q in pts[: i + 1]]
        volume += width * _hv(_nondominated(slice_pts), ref[1:])
    return volume


def _nondominated(pts: list[list[float]]) -> list[list[float]]:
    unique = [list(p) for p in {tuple(p) for p in pts}]
    return [p for p in unique if not any(_dominates_min(q, p) for q in unique)]


def reference_point(points: Sequence[Sequence[float]], directions: Sequence[str], margin: float = 0.1) -> list[float]:
    """A default reference: the worst value per objective, pushed ``margin`` of the range further."""
    if not points:
        raise ValueError("no points to derive a reference point from")
    ref = []
    for k, d in enumerate(directions):
        col = [float(p[k]) for p in points]
        lo, hi = min(col), max(col)
        pad = margin * (hi - lo) if hi > lo else margin * max(abs(hi), 1.0)
        ref.append(lo - pad if d == "maximize" else hi + pad)
    return ref
