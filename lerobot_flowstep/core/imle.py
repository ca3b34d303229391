"""Set-level IMLE with a bi-directional Chamfer objective, per observation.

For one observation with teacher (target) trajectories T_1..T_M and student trajectories S_1..S_K:
    coverage = mean_m min_k d(T_m, S_k)   every teacher mode has a student sample near it
    fidelity = mean_k min_m d(S_k, T_m)   every student sample lies near some teacher sample
Coverage alone lets stray student samples sit between modes; fidelity alone lets all samples collapse
onto one mode. The loss is computed per observation and never pooled over the batch, since pooling would
let one observation's samples cover another observation's modes.
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


def chamfer_terms(targets: Tensor, samples: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(coverage, fidelity), each (B,): see the module docstring."""
    distances = trajectory_distances(targets, samples, mask)
    coverage = distances.min(dim=2).values.mean(dim=1)
    fidelity = distances.min(dim=1).values.mean(dim=1)
    return coverage, fidelity


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
) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean over observations of the Chamfer loss of each observation's best candidate set, and the loss and
    its two directions (detached scalars, left on the device so the caller reads them back in one go).

    targets: (B, M, H, A); candidates: (B, C, K, H, A) (C candidate sets of K samples).
    """
    b, c = candidates.shape[:2]
    flat = candidates.flatten(0, 1)  # (B*C, K, H, A)
    rep_targets = targets.repeat_interleave(c, dim=0)
    rep_mask = mask.repeat_interleave(c, dim=0) if mask is not None else None
    coverage, fidelity = chamfer_terms(rep_targets, flat, rep_mask)
    losses = (coverage_weight * coverage + fidelity_weight * fidelity).reshape(b, c)
    chosen = select_candidate_sets(losses)
    rows = torch.arange(b, device=losses.device)
    loss = losses[rows, chosen].mean()
    info = {
        "chamfer_loss": loss.detach(),
        "coverage": coverage.detach().reshape(b, c)[rows, chosen].mean(),
        "fidelity": fidelity.detach().reshape(b, c)[rows, chosen].mean(),
    }
    return loss, info
