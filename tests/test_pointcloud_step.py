import pytest
import torch
from lerobot.processor import PolicyProcessorPipeline, ProcessorStepRegistry

from lerobot_flowstep.constants import OBS_POINTCLOUD
from lerobot_flowstep.processor import PointCloudProcessorStep

K = [[8.0, 0.0, 3.5], [0.0, 8.0, 3.5], [0.0, 0.0, 1.0]]


def _pose(z: float):
    pose = torch.eye(4)
    pose[2, 3] = z
    return pose


def test_step_is_registered_and_round_trips_through_a_saved_pipeline(tmp_path):
    assert ProcessorStepRegistry.get("flowstep_pointcloud") is PointCloudProcessorStep
    step = PointCloudProcessorStep(cameras=["a"], num_points=8, bounds_low=[-5, -5, 0], bounds_high=[5, 5, 5])
    PolicyProcessorPipeline(steps=[step], name="pre").save_pretrained(tmp_path)
    loaded = PolicyProcessorPipeline.from_pretrained(tmp_path, config_filename="pre.json")
    assert loaded.steps[0].get_config() == step.get_config()


def test_two_cameras_fuse_in_the_world_frame_with_per_frame_and_fixed_parameters():
    depth = torch.full((2, 1, 8, 8), 2.0)
    step = PointCloudProcessorStep(
        cameras=["moving", "static"],
        num_points=16,
        fixed_cameras={"static": {"intrinsics": K, "extrinsics": _pose(-1.0).tolist()}},
    )
    obs = {
        "observation.depth.moving": depth,
        "observation.depth.static": depth,
        "observation.camera.moving.intrinsics": torch.tensor(K).expand(2, 3, 3),
        # Per frame: the moving camera sits at z = 0 in frame 0 and z = 1 in frame 1.
        "observation.camera.moving.extrinsics": torch.stack([_pose(0.0), _pose(1.0)]),
    }
    cloud = step.observation(obs)[OBS_POINTCLOUD]
    assert cloud.shape == (2, 16, 3)
    assert set(cloud[0, :, 2].round(decimals=4).tolist()) == {1.0, 2.0}
    assert set(cloud[1, :, 2].round(decimals=4).tolist()) == {1.0, 3.0}


def test_a_video_depth_map_without_time_meets_per_frame_parameters_with_it():
    """n_obs_steps=1: LeRobot gives a video frame queried at one timestamp as (B, 1, H, W) (channel, no time) and
    a parquet column as (B, 1, ...) (time): the step puts the time back, giving what the parquet layout gives."""
    step = PointCloudProcessorStep(cameras=["wrist"], num_points=16, use_rgb=True, sampler="torch")
    depth = 1.0 + torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    rgb = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    params = {
        "observation.camera.wrist.intrinsics": torch.tensor(K).expand(2, 1, 3, 3),
        "observation.camera.wrist.extrinsics": torch.stack([_pose(0.0), _pose(1.0)])[:, None],
    }
    from_video = step.observation({"observation.depth.wrist": depth, "observation.images.wrist": rgb, **params})
    from_parquet = step.observation(
        {"observation.depth.wrist": depth[:, None], "observation.images.wrist": rgb[:, None], **params}
    )
    assert from_video[OBS_POINTCLOUD].shape == (2, 1, 16, 6)
    torch.testing.assert_close(from_video[OBS_POINTCLOUD], from_parquet[OBS_POINTCLOUD])
    # A fixed camera whose colours are PNG in the parquet rows (time kept) and depth a video (time dropped).
    fixed = PointCloudProcessorStep(
        cameras=["top"], num_points=16, use_rgb=True, sampler="torch",
        fixed_cameras={"top": {"intrinsics": K, "extrinsics": _pose(1.0).tolist()}},
    )  # fmt: skip
    cloud = fixed.observation({"observation.depth.top": depth, "observation.images.top": rgb[:, None]})
    assert cloud[OBS_POINTCLOUD].shape == (2, 1, 16, 6)


def test_missing_parameters_and_bad_config_name_the_key():
    step = PointCloudProcessorStep(cameras=["wrist"], num_points=4)
    with pytest.raises(ValueError, match="observation.camera.wrist.intrinsics"):
        step.observation({"observation.depth.wrist": torch.ones(1, 1, 4, 4)})
    with pytest.raises(KeyError, match="observation.depth.wrist"):
        step.observation({"observation.state": torch.zeros(1, 2)})
    with pytest.raises(ValueError, match="at least one camera"):
        PointCloudProcessorStep(cameras=[])
    with pytest.raises(ValueError, match="bounds_low"):
        PointCloudProcessorStep(cameras=["a"], bounds_low=[0, 0], bounds_high=[1, 1])
