"""Non-dominated sorting and hypervolume against brute-force implementations."""
import itertools
import random

import pytest

from carvelab.dashboards.pareto import hypervolume, hypervolume_trace, non_dominated_ranks, point_front, reference_point


def brute_ranks(points, directions):
    signs = [1 if d == "minimize" else -1 for d in directions]
    pts = [[s * x for s, x in zip(signs, p)] for p in points]

    def dom(a, b):
        return all(x <= y for x, y in zip(a, b)) and a != b

    ranks, remaining, rank = [None] * len(pts), set(range(len(pts))), 0
    while remaining:
        front = {i for i in remaining if not any(dom(pts[j], pts[i]) for j in remaining if j != i)}
        for i in front:
            ranks[i] = rank
        remaining -= front
        rank += 1
    return ranks


def brute_hv(points, ref, directions):
    """Exact volume by coordinate compression: sum the cells covered by some point's box."""
    signs = [1 if d == "minimize" else -1 for d in directions]
    pts = [[s * x for s, x in zip(signs, p)] for p in points]
    r = [s * x for s, x in zip(signs, ref)]
    pts = [p for p in pts if all(x < y for x, y in zip(p, r))]
    if not pts:
        return 0.0
    axes = [sorted({p[k] for p in pts} | {r[k]}) for k in range(len(r))]
    total = 0.0
    for cell in itertools.product(*[range(len(a) - 1) for a in axes]):
        lo = [axes[k][c] for k, c in enumerate(cell)]
        if any(all(p[k] <= lo[k] for k in range(len(r))) for p in pts):
            vol = 1.0
            for k, c in enumerate(cell):
                vol *= axes[k][c + 1] - axes[k][c]
            total += vol
    return total


def random_case(rng, m, n):
    directions = [rng.choice(["maximize", "minimize"]) for _ in range(m)]
    # small integer grids make ties and duplicates common
    points = [[rng.randint(0, 5) for _ in range(m)] for _ in range(n)]
    return points, directions


@pytest.mark.parametrize("m", [2, 3, 4])
def test_ranks_match_brute_force(m):
    rng = random.Random(m)
    for _ in range(60):
        points, directions = random_case(rng, m, rng.randint(1, 25))
        assert non_dominated_ranks(points, directions) == brute_ranks(points, directions)


@pytest.mark.parametrize("m", [2, 3, 4])
def test_hypervolume_matches_brute_force(m):
    rng = random.Random(10 + m)
    for _ in range(40):
        points, directions = random_case(rng, m, rng.randint(1, 12 if m < 4 else 7))
        ref = reference_point(points, directions)
        assert hypervolume(points, ref, directions) == pytest.approx(brute_hv(points, ref, directions), rel=1e-12)


def test_known_two_objective_value():
    # maximise both; ref (0, 0): union of [0,3]x[0,1] and [0,1]x[0,3] = 3 + 3 - 1 = 5
    assert hypervolume([[3, 1], [1, 3]], [0, 0], ["maximize", "maximize"]) == pytest.approx(5.0)


def test_points_not_beyond_the_reference_add_nothing():
    assert hypervolume([[1, 1]], [1, 0], ["maximize", "maximize"]) == 0.0


def test_bad_direction_is_named():
    with pytest.raises(ValueError, match="sideways"):
        non_dominated_ranks([[1, 2]], ["maximize", "sideways"])


def test_point_front_ranks_seed_means_not_single_seeds():
    # (accuracy, params): point "a" has one lucky seed (1.0) and one failed one (0.0): mean 0.5,
    # beaten by "b" (0.6, same params); per trial, a's lucky seed would have been on the front.
    vectors = {"a": [[1.0, 10.0], [0.0, 10.0]], "b": [[0.6, 10.0], [0.6, 10.0]], "c": [[0.2, 5.0]]}
    assert point_front(vectors, ["maximize", "minimize"]) == ["b", "c"]
    assert point_front({"a": [[1.0, 10.0]]}, ["maximize", "minimize"]) == ["a"]


@pytest.mark.parametrize("m", [2, 3])
def test_the_hypervolume_trace_equals_every_prefix_recomputed(m):
    rng = random.Random(7 + m)
    directions = ["maximize", "minimize", "maximize"][:m]
    grid = [round(rng.uniform(0, 1), 1) for _ in range(12)]  # a coarse grid: ties and duplicates
    points = [[rng.choice(grid) for _ in range(m)] for _ in range(120)]
    points += [list(points[5]), list(points[40])]  # exact repeats of earlier points
    reference = [0.2, 0.9, 0.2][:m]  # some points lie beyond it in one objective
    expected = [hypervolume(points[:i + 1], reference, directions) for i in range(len(points))]
    assert hypervolume_trace(points, reference, directions) == expected  # equal, not merely close
    assert len(set(expected)) >= 4  # the front moved several times
