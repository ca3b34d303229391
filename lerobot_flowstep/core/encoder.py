"""The unified perception encoder shared by the teacher and the student.

Any subset of these observation features becomes one conditioning vector per sample:
- `observation.state` and `observation.environment_state`: concatenated as they are (already normalized);
- `observation.images.*` (RGB): a ResNet-18-style CNN with GroupNorm and spatial-softmax keypoints, the
  LeRobot diffusion-policy design; a smaller conv net is available for CPU work;
- `observation.depth.*` (optional, `depth_as_image`): the same CNN design on one channel;
- `observation.pointcloud` (N, 3) or (N, 6): a PointNet in the DP3 style (per-point MLP with LayerNorm,
  max-pool), so point clouds are order invariant.
Features of all `n_obs_steps` are concatenated and projected to `cond_dim`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from lerobot.configs import PolicyFeature
from lerobot.policies.diffusion.modeling_diffusion import SpatialSoftmax
from torch import Tensor, nn

from lerobot_flowstep.core.configuration_encoder import EncoderConfig, check_encoder_inputs, select_encoder_features


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=max(1, channels // 16), num_channels=channels)


def _make_backbone(name: str, in_channels: int, pretrained_path: str | None) -> nn.Module:
    if name == "resnet18":
        # GroupNorm instead of BatchNorm: batch statistics are unreliable with small, correlated batches.
        resnet = torchvision.models.resnet18(weights=None, norm_layer=_group_norm)
        if pretrained_path is not None:
            state = torch.load(Path(pretrained_path), map_location="cpu", weights_only=True)
            # Pretrained BatchNorm statistics have no GroupNorm counterpart; conv weights transfer.
            conv_state = {k: v for k, v in state.items() if not k.startswith(("bn", "fc")) and ".bn" not in k}
            conv_state = {k: v for k, v in conv_state.items() if "downsample.1" not in k}
            resnet.load_state_dict(conv_state, strict=False)
        if in_channels != 3:
            resnet.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        return nn.Sequential(*list(resnet.children())[:-2])
    if pretrained_path is not None:
        raise ValueError("encoder.pretrained_backbone_path is only supported with vision_backbone='resnet18'.")
    layers: list[nn.Module] = []
    channels = [in_channels, 32, 64, 64, 128]
    for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2 if c_in != in_channels else 1, padding=1)]
        layers += [_group_norm(c_out), nn.ReLU()]
    return nn.Sequential(*layers)


class ImageEncoder(nn.Module):
    """CNN + spatial-softmax keypoints: (B, C, H, W) -> (B, 2 * num_keypoints)."""

    def __init__(self, cfg: EncoderConfig, image_shape: tuple[int, ...]):
        super().__init__()
        self.backbone = _make_backbone(cfg.vision_backbone, image_shape[0], cfg.pretrained_backbone_path)
        with torch.no_grad():
            feature_shape = self.backbone(torch.zeros(1, *image_shape)).shape[1:]
        self.pool = SpatialSoftmax(feature_shape, num_kp=cfg.spatial_softmax_num_keypoints)
        self.feature_dim = 2 * cfg.spatial_softmax_num_keypoints
        self.out = nn.Sequential(nn.Linear(self.feature_dim, self.feature_dim), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.flatten(self.pool(self.backbone(x)), start_dim=1))


class PointNetEncoder(nn.Module):
    """DP3-style PointNet: per-point MLP with LayerNorm, max-pool over points, projection."""

    def __init__(self, in_dim: int, hidden_dims: tuple[int, ...], out_dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        for h_in, h_out in zip((in_dim, *hidden_dims[:-1]), hidden_dims, strict=True):
            layers += [nn.Linear(h_in, h_out), nn.LayerNorm(h_out), nn.ReLU()]
        self.mlp = nn.Sequential(*layers)
        self.out = nn.Sequential(nn.Linear(hidden_dims[-1], out_dim), nn.LayerNorm(out_dim))
        self.feature_dim = out_dim

    def forward(self, points: Tensor) -> Tensor:
        return self.out(self.mlp(points).max(dim=-2).values)


class UnifiedObservationEncoder(nn.Module):
    """Encodes a batch whose features have shape (B, n_obs_steps, ...) into (B, cond_dim), in two stages that
    can also be called apart: `encode_frames` (each frame on its own) and `fuse_steps` (the history)."""

    def __init__(self, cfg: EncoderConfig, input_features: dict[str, PolicyFeature], n_obs_steps: int):
        super().__init__()
        check_encoder_inputs(cfg, input_features)
        groups = select_encoder_features(cfg, input_features)
        self.vector_keys = sorted(groups["vector"])
        self.rgb_keys = sorted(groups["rgb"])
        self.depth_keys = sorted(groups["depth"])
        self.pointcloud_keys = sorted(groups["pointcloud"])
        self.n_obs_steps = n_obs_steps

        step_dim = sum(groups["vector"][k].shape[0] for k in self.vector_keys)
        self.rgb_encoders = nn.ModuleDict()
        if self.rgb_keys:
            shape = tuple(groups["rgb"][self.rgb_keys[0]].shape)
            mismatched = [k for k in self.rgb_keys if tuple(groups["rgb"][k].shape) != shape]
            shared = not cfg.use_separate_rgb_encoder_per_camera
            if shared and mismatched:
                raise ValueError(
                    f"Cameras {mismatched} differ in shape from '{self.rgb_keys[0]}' {shape}; set "
                    "encoder.use_separate_rgb_encoder_per_camera=true to encode them separately."
                )
            for key in self.rgb_keys:
                name = "shared" if shared else _module_name(key)
                if name not in self.rgb_encoders:
                    self.rgb_encoders[name] = ImageEncoder(cfg, tuple(groups["rgb"][key].shape))
                step_dim += self.rgb_encoders[name].feature_dim
        self.depth_encoders = nn.ModuleDict()
        for key in self.depth_keys:
            self.depth_encoders[_module_name(key)] = ImageEncoder(cfg, tuple(groups["depth"][key].shape))
            step_dim += self.depth_encoders[_module_name(key)].feature_dim
        self.pointnets = nn.ModuleDict()
        for key in self.pointcloud_keys:
            in_dim = groups["pointcloud"][key].shape[-1]
            self.pointnets[_module_name(key)] = PointNetEncoder(in_dim, cfg.pointnet_hidden_dims, cfg.pointnet_out_dim)
            step_dim += cfg.pointnet_out_dim
        self.step_dim = step_dim
        self.fuse = nn.Sequential(nn.Linear(step_dim * n_obs_steps, cfg.cond_dim), nn.Mish())
        self.cond_dim = cfg.cond_dim
        self._shared_rgb = "shared" in self.rgb_encoders

    @property
    def input_keys(self) -> list[str]:
        return self.vector_keys + self.rgb_keys + self.depth_keys + self.pointcloud_keys

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, n_obs_steps, ...) features -> (B, cond_dim): every (sample, step) frame encoded, then fused."""
        self.check_keys(batch)
        b, s = batch[self.input_keys[0]].shape[:2]
        frames = {k: batch[k].flatten(0, 1) for k in self.input_keys}
        return self.fuse_steps(self.encode_frames(frames).reshape(b, s, self.step_dim))

    def encode_frames(self, frames: dict[str, Tensor]) -> Tensor:
        """Per-frame features (N, step_dim) of N frames (no time dimension), in the order vector, RGB, depth,
        point-cloud keys. A rollout caches these so that each frame is encoded once, not at every re-plan."""
        self.check_keys(frames)
        parts = [frames[k] for k in self.vector_keys]
        if self._shared_rgb:
            # One backbone call for all cameras, as LeRobot's diffusion policy does: fewer, larger kernels.
            # GroupNorm normalizes each image on its own, so stacking cameras changes no feature.
            n = frames[self.rgb_keys[0]].shape[0]
            images = [frames[k] for k in self.rgb_keys]
            stacked = images[0] if len(images) == 1 else torch.cat(images, dim=0)
            parts.extend(self.rgb_encoders["shared"](stacked).split(n, dim=0))
        else:
            parts.extend(self.rgb_encoders[_module_name(k)](frames[k]) for k in self.rgb_keys)
        for key in self.depth_keys:
            depth = torch.nan_to_num(frames[key], nan=0.0, posinf=0.0, neginf=0.0)
            parts.append(self.depth_encoders[_module_name(key)](depth))
        for key in self.pointcloud_keys:
            parts.append(self.pointnets[_module_name(key)](frames[key]))
        return torch.cat(parts, dim=-1)

    def fuse_steps(self, step_features: Tensor) -> Tensor:
        """(B, n_obs_steps, step_dim) per-frame features, oldest first -> (B, cond_dim)."""
        return self.fuse(step_features.flatten(start_dim=1))

    def check_keys(self, batch: dict[str, Tensor]) -> None:
        """Raise, naming them, when observation keys the encoder needs are absent."""
        missing = [k for k in self.input_keys if k not in batch]
        if missing:
            raise KeyError(f"The encoder needs observation keys {missing}, absent from the batch.")


def _module_name(key: str) -> str:
    # nn.ModuleDict keys cannot contain dots.
    return key.replace(".", "__")
