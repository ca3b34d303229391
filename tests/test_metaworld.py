"""The `flowstep_metaworld` env: camera geometry against MuJoCo's own ray casting, the env in `lerobot-eval`,
the demo generator, and its errors. Needs the `metaworld` extra (in the dev group, so CI runs it)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")  # before MuJoCo's first import, which reads it
pytest.importorskip("metaworld", reason="the MetaWorld tests need the `metaworld` extra (pip install '.[metaworld]')")

from lerobot_flowstep.core.geometry import depth_to_world_points  # noqa: E402
from lerobot_flowstep.metaworld.config import KNOWN_CAMERAS, MetaworldEnvConfig  # noqa: E402
from lerobot_flowstep.metaworld.env import MetaworldRGBDEnv  # noqa: E402

TASK = "push-v3"
SIZE = 96


@pytest.fixture(scope="module")
def env():
    env = MetaworldRGBDEnv(TASK, cameras=list(KNOWN_CAMERAS), image_size=SIZE)
    env.reset(seed=7)
    yield env
    env.close()


# behindGripper sits inside the robot's base link: rendering culls the link's faces seen from inside, ray casting
# hits them, so that body is left out of its rays.
INSIDE = {"behindGripper": "right_l0"}


def _ray_cast(env, intrinsics: np.ndarray, extrinsics: np.ndarray, pixels: np.ndarray, camera: str):
    """MuJoCo's `mj_ray` through pixel centres: (distance along the optical axis, hit point, geom id) per pixel,
    built from the camera parameters alone (not from any rendered depth)."""
    import mujoco

    model, data = env.unwrapped_metaworld.model, env.unwrapped_metaworld.data
    rotation, origin = extrinsics[:3, :3].astype(np.float64), extrinsics[:3, 3].astype(np.float64)
    fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]
    z_depth, hits, geoms = [], [], []
    geom = np.zeros(1, dtype=np.int32)
    # Only the geom groups the renderer draws (MuJoCo's default visual options: 0, 1 and 2); the others are
    # collision shapes nobody sees.
    drawn = np.array(mujoco.MjvOption().geomgroup, dtype=np.uint8)
    exclude = model.body(INSIDE[camera]).id if camera in INSIDE else -1
    for v, u in pixels:
        direction = rotation @ np.array([(u - cx) / fx, (v - cy) / fy, 1.0])  # camera z = 1 along the ray
        distance = mujoco.mj_ray(model, data, origin, direction, drawn, 1, exclude, geom)
        z_depth.append(distance)  # in units of `direction`, whose camera z is 1: the hit's depth
        hits.append(origin + distance * direction)
        geoms.append(int(geom[0]))
    return np.array(z_depth), np.array(hits), np.array(geoms)


def _pixels(seed: int, count: int = 300) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, SIZE, size=(count, 2))


@pytest.mark.parametrize("camera", KNOWN_CAMERAS)
def test_rendered_depth_is_mujocos_ray_cast_depth(env, camera):
    obs, _ = env.reset(seed=7)
    depth = obs[f"depth.{camera}"][0]
    pixels = _pixels(1)
    ray_depth, _, geoms = _ray_cast(
        env, obs[f"camera.{camera}.intrinsics"], obs[f"camera.{camera}.extrinsics"], pixels, camera
    )
    hit = geoms >= 0
    assert hit.mean() > 0.5, f"{camera}: most rays should hit the scene"
    error = np.abs(depth[pixels[hit, 0], pixels[hit, 1]] - ray_depth[hit])
    # Pixels on a depth edge may see the other side of it; everywhere else the two agree to the millimetre.
    assert np.median(error) < 1e-4 and (error < 1e-3).mean() > 0.95, (camera, np.percentile(error, [50, 95, 99]))


@pytest.mark.parametrize("camera", KNOWN_CAMERAS)
def test_the_table_top_back_projects_to_z_zero(env, camera):
    model = env.unwrapped_metaworld.model
    # Sites (the green goal marker) are drawn but are no geoms, so rays pass through them: hidden here.
    alpha = model.site_rgba[:, 3].copy()
    model.site_rgba[:, 3] = 0
    try:
        obs, _ = env.reset(seed=7)
    finally:
        model.site_rgba[:, 3] = alpha
    intrinsics, extrinsics = obs[f"camera.{camera}.intrinsics"], obs[f"camera.{camera}.extrinsics"]
    pixels = _pixels(2, 600)

    def on_top(pixels: np.ndarray) -> np.ndarray:
        _, hits, geoms = _ray_cast(env, intrinsics, extrinsics, pixels, camera)
        table = np.array([g >= 0 and model.body(model.geom_bodyid[g]).name == "tablelink" for g in geoms])
        return table & (np.abs(hits[:, 2]) < 1e-3)

    # Pixels inside the visible top face, chosen from the ray cast alone: the pixel and its four neighbours
    # see it, so no object's edge or the slab's side face falls on the pixel.
    top = on_top(pixels)
    for step in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        top &= on_top(np.clip(pixels + np.array(step), 0, SIZE - 1))
    if top.sum() < 10:
        pytest.skip(f"{camera} does not see the table top")
    points, valid = depth_to_world_points(
        torch.from_numpy(obs[f"depth.{camera}"][0]).double(),
        torch.from_numpy(intrinsics).double(),
        torch.from_numpy(extrinsics).double(),
    )
    flat = pixels[top, 0] * SIZE + pixels[top, 1]
    assert bool(valid[flat].all())
    z = points[flat, 2].numpy()
    assert np.abs(z).max() < 2e-3, (camera, np.abs(z).max())


@pytest.mark.parametrize("camera", ["corner2", "gripperPOV"])
def test_one_pass_rgb_and_depth_match_mujocos_renderer(env, camera):
    """Our single pass against `mujoco.Renderer`'s colour pass and its separate depth pass, the reference the
    stored datasets were rendered with: RGB identical, depth identical wherever the scene has geometry."""
    import mujoco

    env.step(env.action_space.sample())
    data, model = env.unwrapped_metaworld.data, env.unwrapped_metaworld.model
    rgb, depth = env.renderer.render(data, camera)
    if env.renderer._turned[camera]:  # the reference is not turned
        rgb, depth = rgb[::-1, ::-1], depth[::-1, ::-1]
    reference = mujoco.Renderer(model, SIZE, SIZE)
    try:
        reference.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        reference.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        reference.update_scene(data, camera=camera)
        expected_rgb = reference.render()
        reference.enable_depth_rendering()
        reference.update_scene(data, camera=camera)
        expected_depth = reference.render()
    finally:
        reference.close()
    assert np.array_equal(rgb, expected_rgb)
    scene = expected_depth < 5.0  # the sky lies at the far plane in the reference and at the skybox here
    assert scene.mean() > 0.5
    assert np.array_equal(depth[scene], expected_depth[scene])
    assert (depth[~scene] > 5.0).all()


def test_upside_down_cameras_are_turned_with_their_extrinsics(env):
    obs, _ = env.reset(seed=7)
    for camera in ("corner", "corner2"):
        rotation = obs[f"camera.{camera}.extrinsics"][:3, :3]
        assert rotation[2, 1] < 0, f"{camera}: image rows must run downwards in the world after the turn"
        assert np.allclose(rotation.T @ rotation, np.eye(3), atol=1e-5)


def test_same_seed_same_scene_and_success_is_reported():
    first = MetaworldRGBDEnv(TASK, image_size=32)
    a, _ = first.reset(seed=3)
    first.step(np.ones(4, dtype=np.float32))  # the arm moves away before the next episode
    b, _ = first.reset(seed=4)
    c, _ = first.reset(seed=3)
    fresh = MetaworldRGBDEnv(TASK, image_size=32)
    d, _ = fresh.reset(seed=3)
    fresh.close()
    for again in (c, d):
        assert np.array_equal(a["depth.corner2"], again["depth.corner2"])
        assert np.array_equal(a["agent_pos"], again["agent_pos"])
    assert not np.array_equal(a["depth.corner2"], b["depth.corner2"])
    success, steps = False, 0
    while not success and steps < 200:
        _, _, success, _, info = first.step(first.expert_action())
        steps += 1
    first.close()
    assert success and info["is_success"]


def test_bad_task_camera_and_gl_backend_are_named():
    with pytest.raises(ValueError, match=r"Unknown MetaWorld task 'pushh'.*push-v3"):
        MetaworldEnvConfig(task="pushh")
    with pytest.raises(ValueError, match=r"\['wrist'\]"):
        MetaworldEnvConfig(cameras=["wrist"])
    with pytest.raises(ValueError, match=r"Camera\(s\) \['nope'\] are not in the MetaWorld model; it has \[.*corner2"):
        MetaworldRGBDEnv(TASK, cameras=["nope"], image_size=16)
    script = "from lerobot_flowstep.metaworld.env import MetaworldRGBDEnv; MetaworldRGBDEnv('push-v3')"
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ, "MUJOCO_GL": "bogus"}
    )
    assert run.returncode != 0
    assert "MUJOCO_GL='bogus' (set by you)" in run.stderr and "egl, osmesa, glfw" in run.stderr


def test_an_env_left_open_prints_nothing_at_exit(tmp_path):
    # Unclosed, the GL context used to be freed by GLContext.__del__ during interpreter shutdown, after EGL's
    # module globals were gone: "Exception ignored in: <function GLContext.__del__ ...> ... 'NoneType' object is
    # not callable" on every run that did not close its env.
    script = (
        "from lerobot_flowstep.metaworld.env import MetaworldRGBDEnv\n"
        "env = MetaworldRGBDEnv('push-v3', image_size=16)\n"
        "env.reset(seed=0)\n"
        "print('exiting')\n"
    )
    # Run as a file, as users run scripts: with `python -c` the interpreter happened to tear down in an order that
    # hid the traceback.
    (tmp_path / "script.py").write_text(script)
    run = subprocess.run([sys.executable, tmp_path / "script.py"], capture_output=True, text=True, env=os.environ)
    assert run.returncode == 0 and run.stdout.strip() == "exiting", run.stderr
    assert "Traceback" not in run.stderr and "Exception ignored" not in run.stderr, run.stderr


def test_a_failed_env_closes_what_it_opened(monkeypatch):
    from lerobot_flowstep.metaworld import env as env_module

    opened = []

    def make_and_watch(task: str, seed: int = 0):
        world = make_metaworld_env(task, seed)
        closes = []
        world.close = lambda: closes.append(True)
        opened.append(closes)
        return world

    make_metaworld_env = env_module.make_metaworld_env
    monkeypatch.setattr(env_module, "make_metaworld_env", make_and_watch)
    with pytest.raises(ValueError, match="not in the MetaWorld model"):
        MetaworldRGBDEnv(TASK, cameras=["nope"], image_size=16)
    assert opened == [[True]]


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    from lerobot_flowstep.metaworld.demos import generate_metaworld_dataset, metaworld_pointcloud_config

    root = tmp_path_factory.mktemp("metaworld") / "push"
    cloud = metaworld_pointcloud_config(num_points=64)
    return generate_metaworld_dataset(root, TASK, num_episodes=2, image_size=32, pointcloud=cloud, seed=5)


def test_generator_writes_successful_episodes_with_the_step_s_cloud(dataset_root):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    dataset = LeRobotDataset("local/metaworld_push", root=dataset_root)
    assert dataset.meta.total_episodes == 2 and dataset.meta.robot_type == "flowstep_metaworld"
    frame = dataset[3]
    assert frame["observation.state"].shape == (13,) and frame["action"].shape == (4,)
    assert frame["observation.images.corner2"].shape == (3, 32, 32)
    # The camera is fixed: its calibration is in the depth map's info, which LeRobot reads back in millimetres.
    info = dataset.meta.features["observation.images.corner2_depth"]["info"]
    assert info["is_depth_map"] and "observation.camera.corner2.intrinsics" not in dataset.meta.features
    depth = frame["observation.images.corner2_depth"][0].double() / 1000
    points, valid = depth_to_world_points(
        depth, torch.tensor(info["camera_intrinsics"]).double(), torch.tensor(info["camera_to_world"]).double()
    )
    # The stored cloud was fused from the env's float depth by the step's own function: every point lies on the
    # surface the stored depth map and calibration give, within the depth codec's millimetres.
    cloud = frame["observation.pointcloud"].double()
    assert cloud.shape == (64, 3)
    nearest = torch.cdist(cloud, points[valid & (depth > 0.02).flatten()]).min(dim=1).values
    assert nearest.max() < 0.01, nearest.max()
    assert list(dataset.meta.tasks.index) == ["Push the puck to a goal"]
    # Every kept episode ends where the expert succeeded: replaying its actions from its seed succeeds.
    episode = dataset.meta.episodes[0]
    actions = [dataset[i]["action"].numpy() for i in range(episode["dataset_from_index"], episode["dataset_to_index"])]
    replay = MetaworldRGBDEnv(TASK, image_size=16)
    replay.reset(seed=5)
    results = [replay.step(a) for a in actions]
    replay.close()
    assert results[-1][2] and not any(r[2] for r in results[:-1])


@pytest.mark.slow
def test_lerobot_eval_runs_the_env_in_a_subprocess(dataset_root, tmp_path):
    """`lerobot-eval --env.type=flowstep_metaworld` for a few steps, with an untrained teacher made for the
    generated dataset (RGB + point cloud + state), as `lerobot-train` would build it."""
    import json

    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
    from lerobot.policies.factory import make_policy, make_pre_post_processors

    from lerobot_flowstep.metaworld.demos import metaworld_pointcloud_config
    from lerobot_flowstep.policies.flowstep_teacher.configuration_flowstep_teacher import FlowstepTeacherConfig
    from lerobot_flowstep.tools.lerobot_commands import eval_args, offline_env

    meta = LeRobotDatasetMetadata("local/metaworld_push", root=dataset_root)
    config = FlowstepTeacherConfig(device="cpu", horizon=8, n_action_steps=4, num_inference_steps=2)
    config.encoder.vision_backbone = "conv"
    config.network.hidden_dim, config.network.num_blocks = 32, 1
    config.pointcloud = metaworld_pointcloud_config(num_points=64)
    policy = make_policy(config, ds_meta=meta)
    pre, post = make_pre_post_processors(config, dataset_stats=meta.stats)
    checkpoint = tmp_path / "policy"
    for part in (policy, pre, post):
        part.save_pretrained(checkpoint)
    output_dir = tmp_path / "eval"
    env_args = [f"--env.task={TASK}", "--env.image_size=32", "--env.episode_length=5"]
    cmd = [sys.executable, "-m", "lerobot.scripts.lerobot_eval", *eval_args(checkpoint, "flowstep_metaworld", 1, 1, 0)]
    cmd += [*env_args, f"--output_dir={output_dir}"]
    result = subprocess.run(cmd, env=offline_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    info = json.loads((output_dir / "eval_info.json").read_text())
    assert info["overall"]["n_episodes"] == 1
    assert info["per_task"][0]["metrics"]["successes"] == [False]  # an untrained policy, five steps


def test_in_memory_samples_keep_only_the_policy_s_inputs(dataset_root):
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    from lerobot_flowstep.policies.flowstep_teacher.configuration_flowstep_teacher import FlowstepTeacherConfig
    from lerobot_flowstep.tools.training import load_samples

    meta = LeRobotDatasetMetadata("local/metaworld_push", root=dataset_root)
    config = FlowstepTeacherConfig(horizon=8, n_action_steps=4)
    with pytest.raises(ValueError, match="holds camera features"):
        load_samples("local/metaworld_push", dataset_root, config, meta)
    keys = {"observation.state", "observation.pointcloud"}
    samples = load_samples("local/metaworld_push", dataset_root, config, meta, observation_keys=keys)
    assert {k for k in samples if k.startswith("observation.")} == keys
    assert samples["observation.pointcloud"].shape == (meta.total_frames, 2, 64, 3)
    assert samples["action"].shape == (meta.total_frames, 8, 4) and "action_is_pad" in samples


def test_a_metaworld_policy_card_says_how_to_evaluate_it(dataset_root):
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
    from lerobot.utils.feature_utils import dataset_to_policy_features

    from lerobot_flowstep.hub.cards import render_policy_card
    from lerobot_flowstep.policies.flowstep_teacher.configuration_flowstep_teacher import FlowstepTeacherConfig

    meta = LeRobotDatasetMetadata("local/metaworld_push", root=dataset_root)
    features = dataset_to_policy_features(meta.features)
    config = FlowstepTeacherConfig(
        input_features={k: v for k, v in features.items() if k != "action"},
        output_features={"action": features["action"]},
    )
    config.set_dataset_feature_metadata(meta.features)  # as make_policy: the depth map becomes metric depth
    card = str(render_policy_card(config, repo_id="org/push", dataset_meta=meta))
    expected = "--env.type=flowstep_metaworld --env.task=<metaworld task> --env.cameras=[corner2] --env.image_size=32"
    assert expected in card
