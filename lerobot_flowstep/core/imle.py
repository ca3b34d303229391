"""Set-level IMLE with a bi-directional Chamfer objective, per observation.

For one observation with teacher (target) trajectories T_1..T_M and student trajectories S_1..S_K:
    coverage = mean_m min_k d(T_m, S_k)   every teacher mode has a student sample near it
    fidelity = mean_k min_m d(S_k, T_m)   every student sample lies near some teacher sample
Coverage alone lets stray student samples sit between modes; fidelity alone lets all samples collapse
onto one mode. The loss is computed per observation and never pooled over the batch, since pooling would
let one observation's samples cover another observation's modes.

At a finite number of samples, Chamfer is not minimized by a copy of the target distribution: a set pulled
towards its modes' means scores better (measured on PushT, where the student's spread shrank to 0.38 of its
targets'). The optional energy-score term, 2 E|S-T| - E|S-S'|, is a strictly proper scoring rule: its
expectation is minimized only by the target distribution, so it holds the spread that Chamfer gives away.
"""

from __future__ import annotations

import torch
from torch import Tensor


def trajectory_distances(a: Tensor, b: Tensor, mask: Tensor | None = None) -> Tensor:
    """Squared distances between every pair of trajectories of one observation, averaged over valid steps.

    a: (B, M, H, A); b: (B, K, H, A); mask: (B, H), True where a chunk step is real (not padding).
    Returns (B, M, K).
    """
    diff = a[:, :, None] - b[:, None, :]  # (B, M, K, H, A)
    per_step = (diff**2).sum(-1)  # (B, M, K, H)
    if mask is None:
        return per_step.mean(-1)
    weights = mask.to(per_step.dtype)[:, None, None, :]
    return (per_step * weights).sum(-1) / weights.sum(-1).clamp(min=1.0)


def paired_distances(a: Tensor, b: Tensor, mask: Tensor | None = None) -> Tensor:
    """Squared distance between a[:, m] and b[:, m], the m-th trajectories of two aligned sets, averaged over
    valid steps as in `trajectory_distances`: (B, M) for a, b (B, M, H, A) and mask (B, H).

    Paired distillation: the teacher's ODE maps each latent to one chunk, so a student fed the same latent
    has one right answer. Regressing on that map keeps the modes with their weights, which a set objective
    only matches up to the pairing it finds."""
    per_step = ((a - b) ** 2).sum(-1)  # (B, M, H)
    if mask is None:
        return per_step.mean(-1)
    weights = mask.to(per_step.dtype)[:, None, :]
    return (per_step * weights).sum(-1) / weights.sum(-1).clamp(min=1.0)


def mean_root(distances: Tensor, distinct_pairs: bool = False) -> Tensor:
    """Mean Euclidean distance per observation, (B,), from squared `trajectory_distances` (B, N, N'). With
    `distinct_pairs` (a set against itself), the diagonal is left out: the unbiased mean distance between two
    different samples of one set."""
    if distinct_pairs:
        n = distances.shape[1]
        if n < 2:
            raise ValueError(f"The spread of a set needs at least 2 samples, got {n}.")
        distances = distances[:, ~torch.eye(n, dtype=torch.bool, device=distances.device)]
    # The root's gradient is infinite at zero (coinciding samples): there the distance is a constant 0.
    positive = distances > 0
    return (torch.where(positive, distances, 1.0).sqrt() * positive).flatten(1).mean(dim=1)


def energy_distance(a: Tensor, b: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Energy distance between two sample sets per observation, with the unbiased within-set terms:
    2 E|A-B| - E|A-A'| - E|B-B'|. It is zero in expectation only when both sets come from one distribution,
    so, unlike Chamfer at a finite number of samples, a set shrunk towards its modes' means does not score
    better than a faithful copy.

    a: (B, M, H, A); b: (B, K, H, A); mask: (B, H). Returns (distance, spread of a, spread of b), each (B,),
    where a spread is the mean distance between two distinct samples of the set.
    """
    spread_a = mean_root(trajectory_distances(a, a, mask), distinct_pairs=True)
    spread_b = mean_root(trajectory_distances(b, b, mask), distinct_pairs=True)
    return 2 * mean_root(trajectory_distances(a, b, mask)) - spread_a - spread_b, spread_a, spread_b


def energy_score(
    targets: Tensor, samples: Tensor, mask: Tensor | None = None, distances: Tensor | None = None
) -> Tensor:
    """The energy distance less the targets' own spread, which no student can change: 2 E|S-T| - E|S-S'|,
    (B,). samples needs K >= 2. `distances`: `trajectory_distances(targets, samples, mask)`, when the caller
    already has them (the objective shares them with Chamfer)."""
    if distances is None:
        distances = trajectory_distances(targets, samples, mask)
    return 2 * mean_root(distances) - mean_root(trajectory_distances(samples, samples, mask), distinct_pairs=True)


def chamfer_from_distances(distances: Tensor) -> tuple[Tensor, Tensor]:
    """(coverage, fidelity), each (B,), from `trajectory_distances(targets, samples)` (B, M, K)."""
    return distances.min(dim=2).values.mean(dim=1), distances.min(dim=1).values.mean(dim=1)


def chamfer_terms(targets: Tensor, samples: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(coverage, fidelity), each (B,): see the module docstring."""
    return chamfer_from_distances(trajectory_distances(targets, samples, mask))


def chamfer_loss(
    targets: Tensor,
    samples: Tensor,
    mask: Tensor | None = None,
    coverage_weight: float = 1.0,
    fidelity_weight: float = 1.0,
) -> Tensor:
    """Weighted bi-directional Chamfer loss per observation, (B,)."""
    coverage, fidelity = chamfer_terms(targets, samples, mask)
    return coverage_weight * coverage + fidelity_weight * fidelity


def select_candidate_sets(losses: Tensor) -> Tensor:
    """IMLE selection: for each observation, the index of the candidate set with the lowest loss.

    losses: (B, C). Selection carries no gradient; only the chosen set is trained, which is what lets
    IMLE avoid mode dropping (every target pulls the nearest of many candidates, not an average).
    """
    return losses.detach().argmin(dim=1)


def imle_chamfer_objective(
    targets: Tensor,
    candidates: Tensor,
    mask: Tensor | None = None,
    coverage_weight: float = 1.0,
    fidelity_weight: float = 1.0,
    energy_weight: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean over observations of the loss of each observation's best candidate set, and the loss and its
    terms (detached scalars, left on the device so the caller reads them back in one go). The loss is the
    weighted Chamfer loss, plus `energy_weight` times the energy score when that weight is not zero.

    targets: (B, M, H, A); candidates: (B, C, K, H, A) (C candidate sets of K samples).
    """
    b, c = candidates.shape[:2]
    flat = candidates.flatten(0, 1)  # (B*C, K, H, A)
    rep_targets = targets.repeat_interleave(c, dim=0)
    rep_mask = mask.repeat_interleave(c, dim=0) if mask is not None else None
    # One target-to-sample distance tensor serves both Chamfer directions and the energy score.
    distances = trajectory_distances(rep_targets, flat, rep_mask)
    coverage, fidelity = chamfer_from_distances(distances)
    chamfer = coverage_weight * coverage + fidelity_weight * fidelity
    terms = {"chamfer_loss": chamfer, "coverage": coverage, "fidelity": fidelity}
    losses = chamfer
    if energy_weight:
        terms["energy_score"] = energy_score(rep_targets, flat, rep_mask, distances)
        losses = chamfer + energy_weight * terms["energy_score"]
    losses = losses.reshape(b, c)
    chosen = select_candidate_sets(losses)
    rows = torch.arange(b, device=losses.device)
    loss = losses[rows, chosen].mean()
    info = {name: term.detach().reshape(b, c)[rows, chosen].mean() for name, term in terms.items()}
    return loss, info
