import math

import pytest
import torch

from lerobot_flowstep.core.flow_matching import cfm_loss, integrate, interpolate, sample_time, target_velocity


def test_interpolation_endpoints_and_velocity():
    x0, x1 = torch.randn(5, 4, 2), torch.randn(5, 4, 2)
    assert torch.allclose(interpolate(x0, x1, torch.zeros(5)), x0)
    assert torch.allclose(interpolate(x0, x1, torch.ones(5)), x1)
    # The target is the time derivative of the path, checked by a finite difference.
    t, h = torch.full((5,), 0.3), 1e-3
    finite_diff = (interpolate(x0, x1, t + h) - interpolate(x0, x1, t - h)) / (2 * h)
    assert torch.allclose(finite_diff, target_velocity(x0, x1), atol=1e-3)


def test_cfm_loss_is_zero_for_the_true_conditional_velocity_and_respects_the_mask():
    x0, x1 = torch.randn(3, 4, 2), torch.randn(3, 4, 2)
    t = torch.rand(3)
    assert cfm_loss(lambda x, tt: x1 - x0, x1, t, x0).item() == pytest.approx(0.0, abs=1e-12)
    # A wrong velocity only on masked (padded) steps costs nothing.
    wrong = (x1 - x0).clone()
    wrong[:, -1] += 10.0
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[:, -1] = False
    assert cfm_loss(lambda x, tt: wrong, x1, t, x0, mask).item() == pytest.approx(0.0, abs=1e-12)
    expected = (100.0 * 1) / 4  # mean over steps of per-step mean over 2 action dims of 10**2
    assert cfm_loss(lambda x, tt: wrong, x1, t, x0).item() == pytest.approx(expected, rel=1e-5)


def test_straight_paths_are_integrated_exactly_in_one_step():
    x0 = torch.randn(4, 3, 2)
    shift = torch.randn(1, 3, 2)
    for solver in ("euler", "midpoint", "heun"):
        assert torch.allclose(integrate(lambda x, t: shift.expand_as(x), x0, 1, solver), x0 + shift)


@pytest.mark.parametrize(("solver", "order"), [("euler", 1), ("midpoint", 2), ("heun", 2)])
def test_solver_order_on_a_field_with_known_solution(solver, order):
    # dx/dt = x * cos(t) has the solution x(1) = x(0) * exp(sin(1)).
    x0 = torch.tensor([[[1.0]]], dtype=torch.float64)
    exact = math.exp(math.sin(1.0))

    def field(x, t):
        return x * math.cos(t)  # the solver passes one float time per step

    errors = [abs(integrate(field, x0, n, solver).item() - exact) for n in (16, 32, 64)]
    rates = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(abs(rate - order) < 0.25 for rate in rates), (solver, errors, rates)


def test_time_sampling_and_bad_arguments():
    g = torch.Generator().manual_seed(0)
    for name in ("uniform", "logit_normal"):
        t = sample_time(10_000, "cpu", name, generator=g)
        assert t.min() >= 0 and t.max() <= 1
        assert t.mean().item() == pytest.approx(0.5, abs=0.02)
    with pytest.raises(ValueError, match="beta"):
        sample_time(3, "cpu", "beta")
    with pytest.raises(ValueError, match="rk4"):
        integrate(lambda x, t: x, torch.zeros(1, 1, 1), 2, "rk4")
    with pytest.raises(ValueError, match="num_steps"):
        integrate(lambda x, t: x, torch.zeros(1, 1, 1), 0)
