"""The observation a policy is given, checked against the one it was trained on: the `flowstep_observation_check`
processor step, first in the preprocessor after the batch dimension is added.

A robot that gives other features than the training data (a camera renamed or at another image size, the state
with or without some joints) would otherwise fail deep in a later step (a broadcast error in the normalizer), or
not at all: a depth map of another size is unprojected with the saved calibration of the trained size into a
wrong point cloud, and the policy acts on it. `lerobot-rollout` checks only camera names, and only when neither
set holds the other, so this step refuses the first observation (before any action) with one error that lists
every missing key and every shape that differs, next to the keys the observation does hold.

Keys the policy does not read may be extra (a robot's RGB stream for a depth-only policy), as in LeRobot's own
check. Shapes are compared without touching the values: no device synchronisation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from lerobot.configs import PipelineFeatureType, PolicyFeature
from lerobot.processor import ObservationProcessorStep, ProcessorStepRegistry

from lerobot_flowstep.constants import OBS_POINTCLOUD, depth_key
from lerobot_flowstep.processor.depth_maps import depth_map_camera

REGISTRY_NAME = "flowstep_observation_check"


def required_observation(
    input_features: dict[str, PolicyFeature], depth_maps: dict[str, list[float]], pointcloud_made: bool
) -> tuple[dict[str, list[int]], dict[str, str]]:
    """The step's `features` and `alternatives`: the policy's inputs as they arrive, before its own steps make some
    of them. A depth map becomes `observation.depth.<cam>`, which an env may give directly instead; the point-cloud
    step makes the cloud, which a dataset may also store (the step checks a stored one itself)."""
    from_map = {depth_key(depth_map_camera(key)): key for key in depth_maps}
    features, alternatives = {}, {}
    for key, feature in input_features.items():
        if key == OBS_POINTCLOUD and pointcloud_made:
            continue
        features[from_map.get(key, key)] = list(feature.shape)
        if key in from_map:
            alternatives[from_map[key]] = key
    return features, alternatives


@ProcessorStepRegistry.register(name=REGISTRY_NAME)
@dataclass
class ObservationCheckProcessorStep(ObservationProcessorStep):
    """Raise, naming every missing key and differing shape, when an observation is not shaped as in training.

    Attributes:
        features: {key: per-frame shape}, as `required_observation` gives them. A value may have one leading
            dimension (the batch) or two (batch, history: training batches).
        alternatives: {key: another key it may arrive as} (a LeRobot depth map, or the metric depth it becomes).
    """

    features: dict[str, list[int]] = field(default_factory=dict)
    alternatives: dict[str, str] = field(default_factory=dict)

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        missing, shapes = [], []
        for key, expected in self.features.items():
            name, value = key, observation.get(key)
            other = self.alternatives.get(key)
            if value is None and other is not None:
                name, value = other, observation.get(other)
            if value is None:
                missing.append(f"'{key}'" + (f" (or '{other}')" if other else "") + f" {tuple(expected)}")
                continue
            got = tuple(getattr(value, "shape", ()))
            lead = len(got) - len(expected)
            if not 1 <= lead <= 2 or list(got[lead:]) != expected:
                frame = got[lead:] if 1 <= lead <= 2 else got
                shapes.append(f"'{name}' is {frame} per frame, trained on {tuple(expected)}")
        if missing or shapes:
            given = {k: tuple(getattr(v, "shape", ())) for k, v in observation.items() if k.startswith("observation.")}
            problems = ([f"missing: {', '.join(missing)}"] if missing else []) + (
                [f"other shape: {'; '.join(shapes)}"] if shapes else []
            )
            raise ValueError(
                "The observation does not match the features this policy was trained on (the robot or env gives "
                "other cameras, image sizes or state than the training data):\n  "
                + "\n  ".join(problems)
                + f"\n  the observation holds: {given}\n"
                "Use the robot as it was recorded for training (same camera names, image size and state keys), "
                "or map camera names with lerobot-rollout's --rename_map."
            )
        return observation

    def get_config(self) -> dict[str, Any]:
        return asdict(self)

    def transform_features(
        self, features: dict[PipelineFeatureType, dict[str, PolicyFeature]]
    ) -> dict[PipelineFeatureType, dict[str, PolicyFeature]]:
        return features
