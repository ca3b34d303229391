"""The Chamfer / IMLE objective against a brute-force reference written with plain loops."""

import pytest
import torch

from lerobot_flowstep.core.imle import (
    chamfer_loss,
    chamfer_terms,
    energy_distance,
    energy_score,
    imle_chamfer_objective,
    paired_distances,
    trajectory_distances,
)


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


@pytest.mark.parametrize("use_mask", [False, True])
def test_paired_distances_are_the_diagonal_of_the_all_pairs_distances(use_mask):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(3, 5, 6, 2, generator=g, dtype=torch.float64)
    b = torch.randn(3, 5, 6, 2, generator=g, dtype=torch.float64)
    mask = torch.rand(3, 6, generator=g) > 0.3 if use_mask else None
    expected = trajectory_distances(a, b, mask).diagonal(dim1=1, dim2=2)
    assert torch.allclose(paired_distances(a, b, mask), expected)
    # Pairing matters: the same set in another order is far, where Chamfer would call it equal.
    assert paired_distances(a, a.flip(1)).mean() > 1.0 and chamfer_loss(a, a.flip(1)).abs().max() < 1e-12


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


def test_energy_distance_matches_a_loop_and_is_not_fooled_by_collapse():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 12, 4, 3, generator=g), torch.randn(2, 9, 4, 3, generator=g) + 0.5
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[1, 3] = False

    def norm(x, y, m):  # root of the mean over real steps of the squared per-step distance
        return (((x - y) ** 2).sum(-1)[m].mean()).sqrt()

    for i in range(2):
        m = mask[i]
        cross = torch.stack([norm(x, y, m) for x in a[i] for y in b[i]]).mean()
        within_a = torch.stack([norm(x, y, m) for j, x in enumerate(a[i]) for k, y in enumerate(a[i]) if j != k]).mean()
        within_b = torch.stack([norm(x, y, m) for j, x in enumerate(b[i]) for k, y in enumerate(b[i]) if j != k]).mean()
        distance, spread_a, spread_b = energy_distance(a, b, mask)
        torch.testing.assert_close(distance[i], 2 * cross - within_a - within_b)
        torch.testing.assert_close(spread_a[i], within_a)
        torch.testing.assert_close(spread_b[i], within_b)

    # In many dimensions Chamfer prefers a collapsed set (every sample at the mean) to a faithful second draw;
    # the energy distance does not.
    reference, copy = torch.randn(2, 1, 32, 16, 2, generator=g)
    collapsed = torch.zeros_like(copy)
    chamfer_copy = sum(t.mean() for t in chamfer_terms(reference, copy))
    chamfer_collapsed = sum(t.mean() for t in chamfer_terms(reference, collapsed))
    assert chamfer_collapsed < chamfer_copy
    collapsed[0, 0, 0] += 1e-3  # distinct samples, so the within-set term is defined
    assert energy_distance(reference, collapsed)[0].mean() > 5 * energy_distance(reference, copy)[0].abs().mean()


def test_energy_term_adds_to_the_objective_and_is_reported():
    g = torch.Generator().manual_seed(1)
    targets = torch.randn(3, 5, 4, 2, generator=g)
    candidates = torch.randn(3, 1, 6, 4, 2, generator=g)
    loss, info = imle_chamfer_objective(targets, candidates, energy_weight=0.5)
    chamfer = chamfer_loss(targets, candidates[:, 0])
    energy = energy_score(targets, candidates[:, 0])
    torch.testing.assert_close(loss, (chamfer + 0.5 * energy).mean())
    torch.testing.assert_close(info["energy_score"], energy.mean())
    torch.testing.assert_close(info["chamfer_loss"], chamfer.mean())  # the Chamfer part alone
    # The energy score is the energy distance less the targets' own spread.
    distance, spread_targets, _ = energy_distance(targets, candidates[:, 0])
    torch.testing.assert_close(energy, distance + spread_targets)


def test_energy_score_has_finite_gradients_when_samples_coincide():
    samples = torch.zeros(1, 4, 3, 2, requires_grad=True)  # every pair at distance zero
    energy_score(torch.randn(1, 5, 3, 2), samples).sum().backward()
    assert torch.isfinite(samples.grad).all()
    with pytest.raises(ValueError, match="at least 2 samples"):
        energy_score(torch.randn(1, 5, 3, 2), torch.randn(1, 1, 3, 2))


def _fitted_spread(coverage_weight, fidelity_weight, energy_weight, steps=300):
    """Fit the scale of a one-parameter generator, samples = scale * z, to a standard normal target in 32
    dimensions with fresh samples every step, as distillation does; returns the learned scale (1 is right)."""
    g = torch.Generator().manual_seed(0)
    log_scale = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.Adam([log_scale], lr=0.05)
    for _ in range(steps):
        targets = torch.randn(8, 16, 16, 2, generator=g)
        samples = log_scale.exp() * torch.randn(8, 1, 16, 16, 2, generator=g)
        loss, _ = imle_chamfer_objective(targets, samples, None, coverage_weight, fidelity_weight, energy_weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return log_scale.exp().item()


def test_chamfer_shrinks_the_spread_and_the_energy_term_holds_it():
    # The finding behind the energy term: Chamfer at 16 samples in 32 dimensions fits a distribution narrower
    # than its targets; the energy score, a proper scoring rule, recovers the targets' scale.
    assert _fitted_spread(1.0, 1.0, 0.0) < 0.8
    assert _fitted_spread(0.0, 0.0, 1.0) == pytest.approx(1.0, abs=0.1)
    assert _fitted_spread(1.0, 1.0, 1.0) > _fitted_spread(1.0, 1.0, 0.0)
