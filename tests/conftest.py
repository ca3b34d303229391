import os

# Nothing in the suite may reach the Hugging Face Hub. Set before anything imports huggingface_hub, which
# reads these variables once, at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from lerobot.configs import FeatureType, PolicyFeature  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with the reason when it is absent (a user's clone)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared data sets are only beside the repository in CI")
    return path


@pytest.fixture(autouse=True)
def _small_torch():
    torch.set_num_threads(2)


class FakeClock:
    """`time` as the simulated robots read it (`perf_counter`), moved by the test."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    """The simulated robots' clock (`robots.common.sim_robot.time`), under the test's control."""
    from lerobot_flowstep.robots.common import sim_robot

    fake = FakeClock()
    monkeypatch.setattr(sim_robot, "time", fake)
    return fake


def camera_features(size: int = 16, camera: str = "top") -> dict[str, PolicyFeature]:
    return {
        "observation.state": PolicyFeature(FeatureType.STATE, (2,)),
        f"observation.images.{camera}": PolicyFeature(FeatureType.VISUAL, (3, size, size)),
        f"observation.depth.{camera}": PolicyFeature(FeatureType.STATE, (1, size, size)),
        f"observation.camera.{camera}.intrinsics": PolicyFeature(FeatureType.STATE, (3, 3)),
        f"observation.camera.{camera}.extrinsics": PolicyFeature(FeatureType.STATE, (4, 4)),
    }


ACTION_FEATURES = {"action": PolicyFeature(FeatureType.ACTION, (2,))}
