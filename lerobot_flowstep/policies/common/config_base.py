"""Configuration shared by the flowstep policies: action chunking, the encoder, the chunk network, the
point-cloud step and the optimizer presets. Each policy adds only what is its own."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from lerobot.configs import FeatureType, NormalizationMode, PolicyFeature, PreTrainedConfig
from lerobot.optim import AdamWConfig, CosineDecayWithWarmupSchedulerConfig
from lerobot.utils.constants import ACTION

from lerobot_flowstep.constants import OBS_POINTCLOUD, depth_key, depth_map_key, extrinsics_key, intrinsics_key, rgb_key
from lerobot_flowstep.core.config_errors import command_line_errors
from lerobot_flowstep.core.configuration_encoder import EncoderConfig, check_encoder_inputs
from lerobot_flowstep.core.configuration_network import NetworkConfig
from lerobot_flowstep.processor.depth_maps import check_depth_map_settings, dataset_depth_maps
from lerobot_flowstep.processor.pointcloud import PointCloudConfig

logger = logging.getLogger(__name__)


@command_line_errors
@dataclass
class FlowstepBaseConfig(PreTrainedConfig):
    """Args:
    n_obs_steps: observations of history given to the policy (current step included).
    horizon: length of the predicted action chunk, counted from the oldest observation.
    n_action_steps: actions executed from each chunk before re-planning (receding horizon).
    encoder, network, pointcloud: see `EncoderConfig`, `NetworkConfig`, `PointCloudConfig`.
    stop_on_nonfinite_loss: raise at the first training step whose loss is NaN or inf.
    inference_noise_scale: standard deviation of the latent noise at inference (`select_action`,
        `predict_action_chunk`, `sample`, hence also teacher caches); training always draws unit noise. Below 1
        it pulls samples towards the zero latent's (the truncation trick), which for a one-step map of a
        multi-modal distribution lies between modes: on PushT 0.5 lowered both policies' success (BENCHMARKS.md).
        1 samples the learned distribution.
    depth_maps: the input keys that are LeRobot depth maps (`observation.images.<cam>_depth`, marked
        `is_depth_map` in the dataset), each with the [depth_min, depth_max] metres its video was quantized over
        ([] when stored unquantized). Filled from the dataset when the policy is made (`set_dataset_feature_metadata`);
        the preprocessor turns each into metric `observation.depth.<cam>` (`processor/depth_maps.py`).
    depth_unit: the unit those depth maps reach the policy in: `--dataset.depth_output_unit` for a LeRobotDataset
        (LeRobot's default, "mm"), millimetres from a robot's depth camera.
    """

    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    # Set from the others when left at None: the last frames of an episode that cannot start a full chunk.
    drop_n_last_frames: int | None = None

    normalization_mapping: dict[str, NormalizationMode] = field(
        default_factory=lambda: {
            "VISUAL": NormalizationMode.MEAN_STD,
            "STATE": NormalizationMode.MIN_MAX,
            "ENV": NormalizationMode.MIN_MAX,
            "ACTION": NormalizationMode.MIN_MAX,
        }
    )

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    pointcloud: PointCloudConfig = field(default_factory=PointCloudConfig)

    # Checkpoints stay local unless asked: the Hub is often unreachable where robots run.
    push_to_hub: bool = False

    # A NaN or inf training loss stops training with an error naming the step and the batch keys at fault,
    # before the optimizer writes NaN into the weights; false trains on.
    stop_on_nonfinite_loss: bool = True

    inference_noise_scale: float = 1.0

    depth_maps: dict[str, list[float]] = field(default_factory=dict)
    depth_unit: str = "mm"

    optimizer_lr: float = 1e-4
    optimizer_betas: tuple[float, float] = (0.95, 0.999)
    optimizer_eps: float = 1e-8
    optimizer_weight_decay: float = 1e-6
    optimizer_grad_clip_norm: float = 10.0
    # A run shorter than the decay is fitted to it by LeRobot's scheduler (warm-up scaled by the same factor,
    # the cosine ending at the run's last step), so these matter only for runs longer than 100k steps.
    scheduler_warmup_steps: int = 500
    scheduler_decay_steps: int = 100_000
    scheduler_decay_lr: float = 1e-6

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_action_steps > self.horizon - self.n_obs_steps + 1:
            raise ValueError(
                f"n_action_steps ({self.n_action_steps}) must be <= horizon - n_obs_steps + 1 "
                f"({self.horizon - self.n_obs_steps + 1}): the chunk starts at the oldest observation."
            )
        if not 0.0 <= self.inference_noise_scale < float("inf"):
            raise ValueError(
                f"inference_noise_scale must be a finite number >= 0 (1 samples the learned distribution), "
                f"got {self.inference_noise_scale}."
            )
        check_depth_map_settings(self.depth_maps, self.depth_unit)
        if self.drop_n_last_frames is None:
            self.drop_n_last_frames = self.horizon - self.n_action_steps - self.n_obs_steps + 1

    @property
    def observation_delta_indices(self) -> list[int]:
        return list(range(1 - self.n_obs_steps, 1))

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(1 - self.n_obs_steps, 1 - self.n_obs_steps + self.horizon))

    @property
    def reward_delta_indices(self) -> None:
        return None

    @property
    def action_dim(self) -> int:
        return self.action_feature.shape[0]

    @property
    def normalized_input_features(self) -> dict[str, PolicyFeature]:
        """Inputs the normalizer touches: depth, camera parameters and point clouds stay metric."""
        return {
            k: ft
            for k, ft in self.input_features.items()
            if ft.type in (FeatureType.VISUAL, FeatureType.ENV) or k.startswith("observation.state")
        }

    def get_optimizer_preset(self) -> AdamWConfig:
        return AdamWConfig(
            lr=self.optimizer_lr,
            betas=self.optimizer_betas,
            eps=self.optimizer_eps,
            weight_decay=self.optimizer_weight_decay,
            grad_clip_norm=self.optimizer_grad_clip_norm,
        )

    def get_scheduler_preset(self) -> CosineDecayWithWarmupSchedulerConfig:
        return CosineDecayWithWarmupSchedulerConfig(
            num_warmup_steps=self.scheduler_warmup_steps,
            num_decay_steps=self.scheduler_decay_steps,
            peak_lr=self.optimizer_lr,
            decay_lr=self.scheduler_decay_lr,
        )

    def set_dataset_feature_metadata(self, features: dict[str, dict[str, Any]]) -> None:
        """Called by LeRobot's `make_policy` with the dataset's features: each LeRobot depth map among the inputs
        becomes the camera's metric depth input (`observation.depth.<cam>`, made by the preprocessor, so it is
        never taken for an RGB camera or normalized), and a calibration written into its `info` becomes the
        point-cloud step's `fixed_cameras` entry, saved with the policy for evaluation and deployment. Explicit
        `pointcloud.fixed_cameras` entries and per-frame camera features take precedence."""
        for key, depth_map in dataset_depth_maps(features).items():
            metric = depth_key(depth_map.camera)
            if key in self.input_features:
                if metric in self.input_features:
                    raise ValueError(
                        f"The dataset has both the depth map '{key}' and '{metric}' for camera '{depth_map.camera}'; "
                        "keep one of them."
                    )
                del self.input_features[key]
                self.input_features[metric] = PolicyFeature(type=FeatureType.STATE, shape=depth_map.shape)
            elif metric not in self.input_features:
                continue  # not an input of this policy
            self.depth_maps[key] = depth_map.valid_range
            camera = depth_map.camera
            per_frame = intrinsics_key(camera) in features and extrinsics_key(camera) in features
            if depth_map.calibration is None or per_frame:
                continue
            given = self.pointcloud.fixed_cameras.get(camera)
            if given is None:
                self.pointcloud.fixed_cameras[camera] = depth_map.calibration
                self.pointcloud.__post_init__()  # checks the calibration, naming the camera
            elif given != depth_map.calibration:
                logger.warning(
                    "pointcloud.fixed_cameras['%s'] is given and differs from the calibration in the dataset's "
                    "'%s' info; the given one is used.",
                    camera,
                    key,
                )

    def validate_features(self) -> None:
        """Check the features before any training step; adds the point-cloud feature the step will make."""
        if self.action_feature is None:
            raise ValueError(f"{type(self).__name__} needs an '{ACTION}' output feature.")
        if len(self.action_feature.shape) != 1:
            raise ValueError(f"'{ACTION}' must be a vector, got shape {self.action_feature.shape}.")
        if self.pointcloud.enabled:
            for camera in self.pointcloud.cameras:
                if depth_key(camera) not in self.input_features:
                    raise ValueError(
                        f"pointcloud.cameras names '{camera}' but the inputs hold no depth for it: neither LeRobot's "
                        f"depth map '{depth_map_key(camera)}' nor '{depth_key(camera)}' "
                        f"(inputs: {sorted(self.input_features)})."
                    )
                for key in (intrinsics_key(camera), extrinsics_key(camera)):
                    if key not in self.input_features and camera not in self.pointcloud.fixed_cameras:
                        raise ValueError(
                            f"No calibration for camera '{camera}': a point cloud needs its intrinsics and "
                            f"camera-to-world extrinsics, and LeRobot records none. Provide them in one of three ways: "
                            f"write them into the dataset (`lerobot-flowstep calibrate --dataset-root <root> --camera "
                            f"{camera} --intrinsics ... --extrinsics ...`, or --calibration-file), where the policy "
                            f'picks them up; give --policy.pointcloud.fixed_cameras=\'{{"{camera}": '
                            f'{{"intrinsics": [[...]], "extrinsics": [[...]]}}}}\'; or record per-frame '
                            f"'{intrinsics_key(camera)}' and '{extrinsics_key(camera)}' features (moving cameras)."
                        )
                if self.pointcloud.use_rgb and rgb_key(camera) not in self.input_features:
                    raise ValueError(f"pointcloud.use_rgb needs '{rgb_key(camera)}' as an input feature.")
            stored = self.input_features.get(OBS_POINTCLOUD)
            if stored is not None and tuple(stored.shape) != tuple(self.pointcloud.feature.shape):
                raise ValueError(
                    f"The dataset stores '{OBS_POINTCLOUD}' of shape {tuple(stored.shape)}, but the policy's "
                    f"point-cloud step makes {tuple(self.pointcloud.feature.shape)} (pointcloud.num_points, use_rgb): "
                    "training would read the stored clouds and evaluation would make others. Set the same settings "
                    "as the converter used."
                )
            self.input_features[OBS_POINTCLOUD] = self.pointcloud.feature
        check_encoder_inputs(self.encoder, self.input_features)
