"""The Chamfer / IMLE objective against a brute-force reference written with plain loops."""

import pytest
import torch

from lerobot_flowstep.core.imle import chamfer_loss, chamfer_terms, imle_chamfer_objective, trajectory_distances


def _reference_chamfer(targets, samples, mask, w_cov, w_fid):
    """Per observation, loops over every pair: no broadcasting shared with the implementation."""
    out = []
    for b in range(targets.shape[0]):
        valid = [h for h in range(targets.shape[2]) if mask is None or bool(mask[b, h])]

        def d(x, y, valid=valid):
            return sum(float(((x[h] - y[h]) ** 2).sum()) for h in valid) / max(len(valid), 1)

        t, s = targets[b], samples[b]
        coverage = sum(min(d(t[m], s[k]) for k in range(len(s))) for m in range(len(t))) / len(t)
        fidelity = sum(min(d(s[k], t[m]) for m in range(len(t))) for k in range(len(s))) / len(s)
        out.append(w_cov * coverage + w_fid * fidelity)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("use_mask", [False, True])
def test_chamfer_matches_brute_force(use_mask):
    g = torch.Generator().manual_seed(0)
    targets = torch.randn(3, 5, 6, 2, generator=g, dtype=torch.float64)
    samples = torch.randn(3, 4, 6, 2, generator=g, dtype=torch.float64)
    mask = torch.rand(3, 6, generator=g) > 0.3 if use_mask else None
    got = chamfer_loss(targets, samples, mask, coverage_weight=0.7, fidelity_weight=1.3)
    assert torch.allclose(got, _reference_chamfer(targets, samples, mask, 0.7, 1.3))


def test_chamfer_is_per_observation_not_pooled_over_the_batch():
    # Observation 0's targets sit at +1, observation 1's at -1; each observation's samples sit on the
    # other observation's targets. A batch-pooled Chamfer would be zero; the per-observation one is not.
    targets = torch.stack([torch.ones(2, 4, 2), -torch.ones(2, 4, 2)])
    samples = torch.stack([-torch.ones(2, 4, 2), torch.ones(2, 4, 2)])
    assert torch.allclose(chamfer_loss(targets, samples), torch.full((2,), 16.0))


def test_coverage_sees_a_dropped_mode_and_fidelity_sees_a_stray_sample():
    modes = torch.tensor([[-1.0], [1.0]]).expand(2, 3)[:, :, None]  # two targets: chunks at -1 and +1
    targets = modes[None]  # (1, 2, 3, 1)
    collapsed = torch.ones(1, 2, 3, 1)  # both samples on the +1 mode
    coverage, fidelity = chamfer_terms(targets, collapsed)
    assert coverage.item() == pytest.approx(2.0) and fidelity.item() == pytest.approx(0.0)
    averaged = torch.cat([torch.zeros(1, 1, 3, 1), torch.ones(1, 1, 3, 1)], dim=1)  # one sample between modes
    coverage, fidelity = chamfer_terms(targets, averaged)
    assert coverage.item() == pytest.approx(0.5) and fidelity.item() == pytest.approx(0.5)


def test_padded_steps_do_not_count():
    a = torch.zeros(1, 1, 4, 2)
    b = torch.zeros(1, 1, 4, 2)
    b[..., -1, :] = 100.0
    mask = torch.tensor([[True, True, True, False]])
    assert trajectory_distances(a, b, mask).item() == 0.0


def test_imle_selection_trains_only_the_best_candidate_set():
    targets = torch.zeros(2, 3, 4, 2)
    candidates = torch.stack([torch.full((2, 4, 2), 5.0), torch.full((2, 4, 2), 0.1), torch.full((2, 4, 2), -3.0)])[
        None
    ].repeat(2, 1, 1, 1, 1)
    candidates.requires_grad_(True)
    loss, info = imle_chamfer_objective(targets, candidates)
    loss.backward()
    grad_norm_per_set = candidates.grad.abs().sum(dim=(2, 3, 4))
    assert torch.all(grad_norm_per_set[:, 1] > 0)
    assert torch.all(grad_norm_per_set[:, [0, 2]] == 0)
    assert info["chamfer_loss"] == pytest.approx(2 * 0.1**2 * 2, rel=1e-5)  # coverage + fidelity, 2 dims
    assert set(info) == {"chamfer_loss", "coverage", "fidelity"}
