"""What the unified perception encoder uses and how big it is, apart from the encoder itself, so that a
policy config parses without importing torchvision or diffusers."""

from __future__ import annotations

from dataclasses import dataclass

from lerobot.configs import FeatureType, PolicyFeature
from lerobot.utils.constants import OBS_ENV_STATE, OBS_STATE

from lerobot_flowstep.constants import OBS_POINTCLOUD, is_depth_key
from lerobot_flowstep.core.config_errors import command_line_errors

VISION_BACKBONES = ("resnet18", "conv")


@command_line_errors
@dataclass
class EncoderConfig:
    """Which modalities the encoder uses and how big it is. Defaults train on a CPU."""

    vision_backbone: str = "resnet18"
    # Local path to a torchvision ResNet-18 state dict; nothing is ever downloaded.
    pretrained_backbone_path: str | None = None
    spatial_softmax_num_keypoints: int = 32
    use_separate_rgb_encoder_per_camera: bool = False
    # Feed depth maps to a CNN as images. Off by default: depth usually reaches the encoder as a point
    # cloud through the point-cloud processor step.
    depth_as_image: bool = False
    pointnet_hidden_dims: tuple[int, ...] = (64, 128, 256)
    pointnet_out_dim: int = 128
    cond_dim: int = 256

    def __post_init__(self) -> None:
        if self.vision_backbone not in VISION_BACKBONES:
            raise ValueError(
                f"encoder.vision_backbone must be one of {VISION_BACKBONES}, got '{self.vision_backbone}'."
            )


def select_encoder_features(
    cfg: EncoderConfig, input_features: dict[str, PolicyFeature]
) -> dict[str, dict[str, PolicyFeature]]:
    """Split the input features into the modalities the encoder consumes; everything else is ignored."""
    groups: dict[str, dict[str, PolicyFeature]] = {"vector": {}, "rgb": {}, "depth": {}, "pointcloud": {}}
    for key, ft in input_features.items():
        if ft.type is FeatureType.VISUAL:
            groups["rgb"][key] = ft
        elif key in (OBS_STATE, OBS_ENV_STATE) or ft.type is FeatureType.ENV:
            groups["vector"][key] = ft
        elif key == OBS_POINTCLOUD:
            groups["pointcloud"][key] = ft
        elif is_depth_key(key) and cfg.depth_as_image:
            groups["depth"][key] = ft
    return groups


def check_encoder_inputs(cfg: EncoderConfig, input_features: dict[str, PolicyFeature]) -> None:
    """Raise before any training step when the encoder would have nothing to look at."""
    groups = select_encoder_features(cfg, input_features)
    if not any(groups.values()):
        raise ValueError(
            "The policy's input features hold no modality the encoder can use. It needs at least one of "
            f"'{OBS_STATE}', '{OBS_ENV_STATE}', 'observation.images.*', '{OBS_POINTCLOUD}' (made by the "
            "point-cloud processor step from depth), or 'observation.depth.*' with encoder.depth_as_image="
            f"true. Got: {sorted(input_features) or 'no input features'}."
        )
    for key, ft in groups["rgb"].items():
        if len(ft.shape) != 3:
            raise ValueError(f"Image feature '{key}' must have shape (C, H, W), got {ft.shape}.")
    for key, ft in groups["pointcloud"].items():
        if len(ft.shape) != 2 or ft.shape[-1] not in (3, 6):
            raise ValueError(f"Point-cloud feature '{key}' must have shape (N, 3) or (N, 6), got {ft.shape}.")
