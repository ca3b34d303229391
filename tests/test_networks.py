import pytest
import torch

from lerobot_flowstep.core.configuration_network import NetworkConfig
from lerobot_flowstep.core.networks import ChunkMLP, make_chunk_network


def _reference(net: ChunkMLP, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """The residual FiLM MLP written out directly: each block's FiLM is one linear map of [time features, cond]."""
    film_input = torch.cat([net.time_embed(t * 1000.0), cond], dim=-1)
    h = net.inp(x.flatten(1))
    for block in net.blocks:
        scale, shift = block.film(film_input).chunk(2, dim=-1)
        h = h + block.mlp(block.norm(h) * (1 + scale) + shift)
    return net.out(h).reshape(x.shape)


def test_the_split_film_is_the_film_of_the_concatenation():
    torch.manual_seed(0)
    net = ChunkMLP(NetworkConfig(hidden_dim=32, num_blocks=2, time_embed_dim=16), 8, 2, 12)
    x, cond = torch.randn(5, 8, 2), torch.randn(5, 12)
    for p in net.parameters():  # nonzero biases everywhere, so a dropped bias would show
        torch.nn.init.normal_(p, std=0.3)
    expected = _reference(net, x, torch.full((5,), 0.3), cond)
    # A tensor of times (training), a float time, and the condition computed ahead (a sampler's chunk).
    assert torch.allclose(net(x, torch.full((5,), 0.3), cond), expected, atol=1e-5)
    assert torch.allclose(net(x, 0.3, cond), expected, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(net(x, 0.3, net.condition(cond)), expected, atol=1e-5)
        assert torch.allclose(net(x, 0.3, net.condition(cond)), expected, atol=1e-5)  # from the kept time part
    # Per-sample times still get per-sample FiLMs.
    t = torch.rand(5)
    assert torch.allclose(net(x, t, cond), _reference(net, x, t, cond), atol=1e-5)
    # Gradients reach both column blocks of every FiLM through the split.
    net(x, torch.rand(5), cond).square().sum().backward()
    d = net.time_embed_dim
    for block in net.blocks:
        assert block.film.weight.grad[:, :d].abs().sum() > 0 and block.film.weight.grad[:, d:].abs().sum() > 0


def test_a_network_built_under_inference_mode_runs_without_keeping_parts():
    # Inference tensors keep no version counter, so nothing computed from them can be kept safely: a policy
    # built inside `torch.inference_mode` (benchmarks/latency.py does) computes its parts at every call.
    torch.manual_seed(0)
    with torch.inference_mode():
        net = ChunkMLP(NetworkConfig(hidden_dim=32, num_blocks=2, time_embed_dim=16), 8, 2, 12)
        x, cond = torch.randn(5, 8, 2), torch.randn(5, 12)
        expected = _reference(net, x, torch.full((5,), 0.3), cond)
        assert torch.allclose(net(x, 0.3, net.condition(cond)), expected, atol=1e-5)
        for p in net.parameters():  # changed in place, where no version would tell
            p.add_(0.1)
        assert torch.allclose(net(x, 0.3, cond), _reference(net, x, torch.full((5,), 0.3), cond), atol=1e-5)


def test_the_unet_takes_a_float_time_and_needs_no_precomputed_condition():
    torch.manual_seed(0)
    unet = make_chunk_network(NetworkConfig(type="unet", down_dims=(16, 32), n_groups=4), 8, 2, 12).eval()
    x, cond = torch.randn(3, 8, 2), torch.randn(3, 12)
    assert unet.condition(cond) is cond
    with torch.no_grad():
        assert torch.allclose(unet(x, 0.4, cond), unet(x, torch.full((3,), 0.4), cond))
    with pytest.raises(ValueError, match="horizon divisible by 2"):
        make_chunk_network(NetworkConfig(type="unet", down_dims=(16, 32), n_groups=4), 7, 2, 12)
