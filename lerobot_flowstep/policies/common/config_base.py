"""Configuration shared by the flowstep policies: action chunking, the encoder, the chunk network, the
point-cloud step and the optimizer presets. Each policy adds only what is its own."""

from __future__ import annotations

from dataclasses import dataclass, field

from lerobot.configs import FeatureType, NormalizationMode, PolicyFeature, PreTrainedConfig
from lerobot.optim import AdamWConfig, CosineDecayWithWarmupSchedulerConfig
from lerobot.utils.constants import ACTION

from lerobot_flowstep.constants import OBS_POINTCLOUD, depth_key, extrinsics_key, intrinsics_key, rgb_key
from lerobot_flowstep.core.config_errors import command_line_errors
from lerobot_flowstep.core.configuration_encoder import EncoderConfig, check_encoder_inputs
from lerobot_flowstep.core.configuration_network import NetworkConfig
from lerobot_flowstep.processor.pointcloud import PointCloudConfig


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
                        f"pointcloud.cameras names '{camera}' but '{depth_key(camera)}' is not an input feature "
                        f"(inputs: {sorted(self.input_features)})."
                    )
                for key in (intrinsics_key(camera), extrinsics_key(camera)):
                    if key not in self.input_features and camera not in self.pointcloud.fixed_cameras:
                        raise ValueError(
                            f"No camera parameters for '{depth_key(camera)}': '{key}' is not an input feature "
                            f"and pointcloud.fixed_cameras has no entry for '{camera}'."
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
