"""Conditional Flow Matching on the linear (rectified) probability path, and ODE solvers to sample it.

The path runs from noise at t = 0 to data at t = 1: x_t = (1 - t) x0 + t x1, whose velocity is the
constant x1 - x0. A network v(x_t, t | obs) regressed onto that target transports N(0, I) to the
conditional action distribution when integrated from t = 0 to t = 1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

# v(x, t): t is a (B,) tensor in training (every sample its own time) and a float in `integrate`, where every
# sample shares the step's time, so that a network can embed each time of the solver's grid once.
VelocityFn = Callable[[Tensor, Tensor | float], Tensor]
SOLVERS = ("euler", "midpoint", "heun")
TIME_SAMPLINGS = ("uniform", "logit_normal")


def interpolate(x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
    """Point x_t on the straight path from x0 (t = 0) to x1 (t = 1). t: (B,), broadcast over the rest."""
    t = t.reshape(-1, *([1] * (x0.ndim - 1)))
    return (1.0 - t) * x0 + t * x1


def target_velocity(x0: Tensor, x1: Tensor) -> Tensor:
    """The conditional velocity of the linear path, d x_t / d t."""
    return x1 - x0


def sample_time(
    batch_size: int,
    device: torch.device | str,
    sampling: str = "uniform",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Flow times for training. `logit_normal` puts more weight mid-path, where the velocity is hardest."""
    if sampling == "uniform":
        return torch.rand(batch_size, device=device, generator=generator)
    if sampling == "logit_normal":
        return torch.sigmoid(torch.randn(batch_size, device=device, generator=generator))
    raise ValueError(f"Unknown time sampling '{sampling}'; expected one of {TIME_SAMPLINGS}.")


def cfm_loss(
    velocity_fn: VelocityFn,
    x1: Tensor,
    t: Tensor,
    x0: Tensor,
    mask: Tensor | None = None,
) -> Tensor:
    """Mean squared error between v(x_t, t) and the path velocity, over unmasked chunk steps.

    x1, x0: (B, H, A); t: (B,); mask: (B, H), True where the step counts (not padding).
    """
    prediction = velocity_fn(interpolate(x0, x1, t), t)
    error = ((prediction - target_velocity(x0, x1)) ** 2).mean(dim=-1)
    if mask is None:
        return error.mean()
    mask = mask.to(error.dtype)
    return (error * mask).sum() / mask.sum().clamp(min=1.0)


def integrate(velocity_fn: VelocityFn, x0: Tensor, num_steps: int, solver: str = "euler") -> Tensor:
    """Integrate dx/dt = v(x, t) from t = 0 to t = 1 with `num_steps` uniform steps.

    `euler` is first order (1 evaluation per step); `midpoint` and `heun` are second order (2 per step).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    if solver not in SOLVERS:
        raise ValueError(f"Unknown ODE solver '{solver}'; expected one of {SOLVERS}.")
    x = x0
    dt = 1.0 / num_steps
    for i in range(num_steps):
        t = i * dt
        v = velocity_fn(x, t)
        if solver == "euler":
            x = x + dt * v
        elif solver == "midpoint":
            x = x + dt * velocity_fn(x + 0.5 * dt * v, t + 0.5 * dt)
        else:
            v_end = velocity_fn(x + dt * v, t + dt)
            x = x + 0.5 * dt * (v + v_end)
    return x
