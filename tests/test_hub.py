"""Publishing on the Hub without reaching it: cards, dry runs, validation before any request, and loading by repo id
from a Hub cache laid out exactly as huggingface_hub lays out its downloads.

The real upload path runs against a local HTTP server that records requests and answers 401: bad input must fail
before the first request, good input must get as far as `create_repo`.
"""

import hashlib
import json
import shutil
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard, constants
from huggingface_hub.errors import HfHubHTTPError
from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
from lerobot.policies.factory import make_pre_post_processors
from safetensors import safe_open

from lerobot_flowstep.cli import main
from lerobot_flowstep.core.configuration_encoder import EncoderConfig
from lerobot_flowstep.core.configuration_network import NetworkConfig
from lerobot_flowstep.datasets.obstacle_dataset import generate_obstacle_dataset
from lerobot_flowstep.envs.obstacle import ObstacleLayout
from lerobot_flowstep.hub.cards import OBSTACLE_SCENE_MODES
from lerobot_flowstep.hub.datasets import push_dataset
from lerobot_flowstep.hub.publish import push_policy, stage_policy_upload
from lerobot_flowstep.hub.templates import load_template
from lerobot_flowstep.policies.flowstep_teacher.configuration_flowstep_teacher import FlowstepTeacherConfig
from lerobot_flowstep.policies.flowstep_teacher.modeling_flowstep_teacher import FlowstepTeacherPolicy
from lerobot_flowstep.policies.imle_student.configuration_imle_student import ImleStudentConfig
from lerobot_flowstep.policies.imle_student.modeling_imle_student import ImleStudentPolicy
from lerobot_flowstep.tools.lerobot_commands import eval_args, lerobot_eval
from lerobot_flowstep.tools.training import load_samples, train_policy_on_dataset

REPO = Path(__file__).resolve().parents[1]
DATA_REPO_ID = "local/flowstep_obstacle_hub"
STUDENT = "org/flowstep-student"
TEACHER = "org/flowstep-teacher"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny teacher and the student distilled from it, trained on 4 episodes, saved as checkpoints."""
    tmp = tmp_path_factory.mktemp("hub")
    data = generate_obstacle_dataset(tmp / "data", repo_id=DATA_REPO_ID, num_episodes=4, seed=0)
    small = {"network": NetworkConfig(hidden_dim=32, num_blocks=1), "encoder": EncoderConfig(cond_dim=32)}
    teacher_cfg = FlowstepTeacherConfig(device="cpu", horizon=8, n_action_steps=4, num_inference_steps=2, **small)
    meta = LeRobotDatasetMetadata(DATA_REPO_ID, root=data)
    samples = load_samples(DATA_REPO_ID, data, teacher_cfg, meta)
    _, teacher, _ = train_policy_on_dataset(teacher_cfg, DATA_REPO_ID, data, tmp / "teacher", 2, 8, samples=samples)
    student_cfg = ImleStudentConfig(
        device="cpu",
        teacher_path=str(teacher),
        num_teacher_samples=2,
        num_student_samples=2,
        teacher_num_inference_steps=1,
        num_inference_candidates=2,
    )
    _, student, _ = train_policy_on_dataset(student_cfg, DATA_REPO_ID, data, tmp / "student", 2, 8, samples=samples)
    return {"data": data, "teacher": teacher, "student": student, "tmp": tmp}


def _copy(checkpoint: Path, dest: Path, **config_changes) -> Path:
    shutil.copytree(checkpoint, dest)
    if config_changes:
        config = json.loads((dest / "config.json").read_text())
        for key, value in config_changes.items():
            node = config
            *parents, last = key.split(".")
            for parent in parents:
                node = node[parent]
            node[last] = value
        (dest / "config.json").write_text(json.dumps(config, indent=4))
    return dest


def _front_matter(card_text: str) -> dict:
    assert card_text.startswith("---\n")
    return yaml.safe_load(card_text.split("---\n")[1])


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # conftest sets HF_HUB_OFFLINE after huggingface_hub was imported (and read it); make it true here.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


# --- the Hub cache ------------------------------------------------------------------------------------------


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def install_in_hub_cache(cache: Path, repo_id: str, folder: Path) -> Path:
    """Lay `folder` into the Hub cache `cache` as `hf_hub_download` leaves a model repo after downloading it:
    `models--<org>--<name>/blobs/<etag>` (sha256 for LFS files such as safetensors, the git blob sha1 otherwise),
    `snapshots/<commit>/<file>` relative symlinks to the blobs and `refs/main` holding the commit hash."""
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    etags = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        lfs = path.suffix == ".safetensors"
        etags[path.relative_to(folder).as_posix()] = hashlib.sha256(data).hexdigest() if lfs else _git_blob_sha1(data)
        blob = storage / "blobs" / etags[path.relative_to(folder).as_posix()]
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
    commit = hashlib.sha1(json.dumps(etags, sort_keys=True).encode()).hexdigest()
    for name, etag in etags.items():
        pointer = storage / "snapshots" / commit / name
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.symlink_to(Path("../" * (name.count("/") + 2)) / "blobs" / etag)
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / "main").write_text(commit)  # no newline, as huggingface_hub writes it
    return storage / "snapshots" / commit


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hub cache that this process's huggingface_hub reads, offline."""
    cache = tmp_path / "hf_cache" / "hub"
    cache.mkdir(parents=True)
    # huggingface_hub reads these module attributes on every call (its environment variables only at import).
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _published(trained, tmp_path, checkpoint_name: str, repo_id: str, **kwargs) -> Path:
    """What `lerobot-flowstep push` would upload for a checkpoint, staged in a folder."""
    return stage_policy_upload(trained[checkpoint_name], repo_id, tmp_path / f"up_{checkpoint_name}", **kwargs).folder


# --- a Hub that records requests -------------------------------------------------------------------------


@pytest.fixture
def hub_server(monkeypatch):
    """A local stand-in for huggingface.co that records every request and refuses it (401)."""
    requests = []

    class Handler(BaseHTTPRequestHandler):
        def _refuse(self):
            size = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(size) if size else b""
            requests.append((self.command, self.path, body))
            self.send_response(401)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error": "recorded by the test"}')

        do_GET = do_HEAD = do_POST = do_PUT = _refuse

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield requests
    server.shutdown()
    server.server_close()


# --- tests ----------------------------------------------------------------------------------------------------


def test_templates_are_found_and_shipped_in_the_wheel():
    for name in ("teacher.md", "student.md", "dataset.md"):
        assert "{{" in load_template(name)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    force_include = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert force_include["hub_cards"] == "lerobot_flowstep/hub_cards"


def test_the_cards_obstacle_scenes_match_the_env_presets():
    # The card writes `--env.num_modes` from this table rather than importing the env.
    assert OBSTACLE_SCENE_MODES == {ObstacleLayout.preset(n).num_obstacles: n for n in (2, 4)}


def test_student_dry_run_prints_the_card_and_the_files_and_names_the_teacher(trained, capsys):
    argv = ["push", str(trained["student"]), STUDENT, "--teacher-repo-id", TEACHER, "--dry-run"]
    assert main([*argv, "--dataset-root", str(trained["data"])]) == 0
    out = capsys.readouterr().out
    card = out.split("----- README.md -----\n")[1].split("----- end of card -----")[0]
    meta = _front_matter(card)
    assert meta["library_name"] == "lerobot" and meta["pipeline_tag"] == "robotics"
    assert {"imle_student", "lerobot", "robotics", "one-step"} <= set(meta["tags"])
    assert meta["teacher_repo_id"] == TEACHER
    assert "datasets" not in meta  # a local/ dataset is not on the Hub: nothing to link
    assert f"[`{TEACHER}`](https://huggingface.co/{TEACHER})" in card
    # Filled from the config and the dataset's metadata.
    assert "| `observation.environment_state` | ENV | `(4,)` | environment state: goal_x, goal_y" in card
    assert "`action`: shape `(2,)`, components `x`, `y`" in card
    assert "**Robot type:** `flowstep_obstacle`" in card and "**Size:** 4 episodes" in card
    assert "chunk spans 0.8 s" in card
    assert "--env.type=flowstep_obstacle" in card
    assert "No measurements are attached" in card and " ms (" not in card
    assert "From Flow to One Step" in card and "year   = {2026}" in card
    files = out.split("----- end of card -----")[1]
    for name in ("README.md", "config.json", "model.safetensors", "policy_preprocessor.json",
                 "policy_postprocessor_step_0_unnormalizer_processor.safetensors"):  # fmt: skip
        assert f"  {name} " in files
    assert f"teacher_path: '{trained['teacher']}' -> '{TEACHER}'" in files
    assert "Dry run: nothing was created or uploaded." in out


def test_the_upload_is_the_student_alone_with_local_paths_cleared(trained, tmp_path):
    checkpoint = _copy(
        trained["student"],
        tmp_path / "student",
        teacher_cache_path=str(tmp_path / "teacher_samples.safetensors"),
        **{"encoder.pretrained_backbone_path": "/home/me/resnet18.pt"},
    )
    (checkpoint / "training.log").write_text("step 1\n")
    shutil.copy(trained["teacher"] / "model.safetensors", checkpoint / "teacher_model.safetensors")
    train_config = {
        "dataset": {"repo_id": "org/flowstep-obstacle", "root": str(trained["data"])},
        "policy": json.loads((checkpoint / "config.json").read_text()),
        "steps": 2,
        "batch_size": 8,
        "seed": 0,
        "optimizer": {"type": "adamw", "lr": 0.0003},
    }
    (checkpoint / "train_config.json").write_text(json.dumps(train_config))

    upload = stage_policy_upload(checkpoint, STUDENT, tmp_path / "up", teacher_repo_id=TEACHER)
    assert sorted(upload.left_out) == ["teacher_model.safetensors", "training.log"]
    config = json.loads((upload.folder / "config.json").read_text())
    assert config["teacher_path"] == TEACHER and config["repo_id"] == STUDENT
    assert config["teacher_cache_path"] is None and config["encoder"]["pretrained_backbone_path"] is None
    published_train = json.loads((upload.folder / "train_config.json").read_text())
    assert published_train["policy"]["teacher_path"] == TEACHER and published_train["dataset"]["root"] is None
    assert (upload.folder / "model.safetensors").read_bytes() == (checkpoint / "model.safetensors").read_bytes()
    with safe_open(str(upload.folder / "model.safetensors"), framework="pt") as f:
        assert not any(k.startswith(("teacher", "velocity")) for k in f.keys())  # noqa: SIM118
    # The card comes from train_config.json and the dataset it names.
    card = (upload.folder / "README.md").read_text()
    assert _front_matter(card)["datasets"] == ["org/flowstep-obstacle"]
    assert "`lerobot-train`: 2 steps, batch size 8" in card and "4 episodes" in card
    assert "precomputed once per dataset frame" in card  # the training used a cache; the upload does not name it


def test_measurements_only_from_a_report_of_this_checkpoint(trained, tmp_path, capsys):
    latency = {"median_ms": 4.321, "p10_ms": 4.0, "p90_ms": 5.0, "repeats": 50, "hz": 231.4}
    stats = {"modes_covered": 2, "num_modes": 2, "mode_entropy": 1.0, "off_manifold": 0.05, "mode_histogram": [0.5]}
    teacher, student = str(trained["teacher"]), str(trained["student"])
    report = {
        "settings": {"output_dir": "/tmp/demo", "num_modes": 2, "num_episodes": 200, "eval_episodes": 40, "seed": 3},
        "results": {
            "teacher (2 steps)": {**stats, "success_rate": 0.925, "latency": latency, "checkpoint": teacher},
            "1-step CFM": {
                **stats,
                "success_rate": 0.3,
                "latency": latency,
                "checkpoint": teacher,
                "num_inference_steps": 1,
            },
            "IMLE student": {**stats, "success_rate": 0.875, "latency": latency, "checkpoint": student},
            "random": {"success_rate": 0.0},
        },
        "machine": "x86_64, 1 torch threads, cpu",
    }
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    assert main(["push", str(trained["teacher"]), TEACHER, "--report", str(path), "--dry-run"]) == 0
    card = capsys.readouterr().out.split("----- end of card -----")[0]
    assert "Measured by `lerobot-flowstep demo --output-dir /tmp/demo --num-modes 2 --episodes 200 " in card
    assert "--eval-episodes 40 --seed 3` on x86_64, 1 torch threads, cpu" in card
    assert "| teacher (2 steps) | **this model** | 92.5% | 2/2 | 5.0% | 4.321 ms (4.000-5.000) | 231 |" in card
    assert "| 1-step CFM | **this model** (num_inference_steps=1) | 30.0% |" in card
    assert "| IMLE student |  | 87.5% |" in card

    report["results"] = {"IMLE student": report["results"]["IMLE student"]}
    path.write_text(json.dumps(report))
    assert main(["push", str(trained["teacher"]), TEACHER, "--report", str(path), "--dry-run"]) == 2
    assert "has no measurements of" in capsys.readouterr().err


def test_bad_input_fails_before_any_request_and_good_input_reaches_create_repo(trained, tmp_path, hub_server):
    def push(checkpoint, repo_id=TEACHER, **kwargs):
        return push_policy(checkpoint, repo_id, **kwargs)

    for missing in ("model.safetensors", "policy_postprocessor.json", "policy_preprocessor.json"):
        broken = _copy(trained["teacher"], tmp_path / f"no_{missing}")
        (broken / missing).unlink()
        with pytest.raises(FileNotFoundError, match=f"{missing} missing"):
            push(broken)
    no_stats = _copy(trained["teacher"], tmp_path / "no_stats")
    next(no_stats.glob("policy_preprocessor_step_*_normalizer_processor.safetensors")).unlink()
    with pytest.raises(FileNotFoundError, match="normalization statistics are missing"):
        push(no_stats)
    for repo_id in ("flowstep-teacher", "org/sub/flowstep-teacher", "org/bad--name", "local/flowstep-teacher"):
        with pytest.raises(ValueError, match="repo_id|namespace"):
            push(trained["teacher"], repo_id)
    with pytest.raises(ValueError, match="a local checkpoint, not a Hub repo id.*--teacher-repo-id"):
        push(trained["student"], STUDENT)
    no_teacher = _copy(trained["student"], tmp_path / "no_teacher", teacher_path=None)
    with pytest.raises(ValueError, match="no teacher_path"):
        push(no_teacher, STUDENT)
    with pytest.raises(ValueError, match="--teacher-repo-id"):
        push(trained["student"], STUDENT, teacher_repo_id="not a repo id")
    assert hub_server == []

    # A teacher that is not on the Hub is found out by reading it, before anything is created.
    with pytest.raises(ValueError, match=f"Publish the teacher first.*{TEACHER}"):
        push(trained["student"], STUDENT, teacher_repo_id=TEACHER)
    assert hub_server and all(method in ("GET", "HEAD") for method, _, _ in hub_server)
    hub_server.clear()

    # Valid input goes through huggingface_hub's own create_repo (refused here by the stand-in Hub).
    with pytest.raises(HfHubHTTPError):
        push(trained["teacher"], TEACHER)
    creates = [json.loads(body) for method, path, body in hub_server if path == "/api/repos/create"]
    assert creates[0] == {"name": "flowstep-teacher", "organization": "org", "type": "model"}
    # Through the CLI, the same failure is one line and exit code 2.
    assert main(["push", str(trained["teacher"]), TEACHER]) == 2


def test_pushing_offline_says_so(trained):
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE"):
        push_policy(trained["teacher"], TEACHER)


def test_policy_loads_by_repo_id_from_the_hub_cache_without_its_teacher(trained, tmp_path, hub_cache):
    install_in_hub_cache(hub_cache, STUDENT, _published(trained, tmp_path, "student", STUDENT, teacher_repo_id=TEACHER))
    assert not (hub_cache / f"models--{TEACHER.replace('/', '--')}").exists()

    from_hub = ImleStudentPolicy.from_pretrained(STUDENT)
    from_folder = ImleStudentPolicy.from_pretrained(trained["student"])
    assert from_hub.config.teacher_path == TEACHER and from_hub.config.teacher_cache_path is None
    hub_state, folder_state = from_hub.state_dict(), from_folder.state_dict()
    assert hub_state.keys() == folder_state.keys()
    assert all(torch.equal(hub_state[k], folder_state[k]) for k in hub_state)

    pre_hub, post_hub = make_pre_post_processors(from_hub.config, pretrained_path=STUDENT)
    pre_dir, post_dir = make_pre_post_processors(from_folder.config, pretrained_path=str(trained["student"]))
    g = torch.Generator().manual_seed(0)
    raw = {
        "observation.state": torch.rand(3, 2, generator=g),
        "observation.environment_state": torch.rand(3, 4, generator=g),
    }
    noise = torch.randn(3, 8, 2, generator=g)
    actions = []
    for policy, pre, post in ((from_hub, pre_hub, post_hub), (from_folder, pre_dir, post_dir)):
        batch = pre(dict(raw))
        actions.append(post(policy.predict_action_chunk(batch, noise=noise)))
    assert torch.equal(actions[0], actions[1])

    # With the teacher in the cache too, loading the student checks the pair, and a dry run checks it as well.
    install_in_hub_cache(hub_cache, TEACHER, _published(trained, tmp_path, "teacher", TEACHER))
    assert isinstance(FlowstepTeacherPolicy.from_pretrained(TEACHER), FlowstepTeacherPolicy)
    ImleStudentPolicy.from_pretrained(STUDENT)
    upload = push_policy(trained["student"], STUDENT, teacher_repo_id=TEACHER, dry_run=True)
    assert upload.notes == []


@pytest.mark.slow
def test_lerobot_eval_runs_a_policy_by_repo_id_from_the_hub_cache_offline(trained, tmp_path, hub_cache):
    install_in_hub_cache(hub_cache, STUDENT, _published(trained, tmp_path, "student", STUDENT, teacher_repo_id=TEACHER))
    info = lerobot_eval(
        eval_args(STUDENT, "flowstep_obstacle", episodes=1, batch_size=1, seed=0),
        tmp_path / "eval",
        tmp_path / "eval.log",
        env={"HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1"},
    )
    assert info["overall"]["n_episodes"] == 1
    assert f"--policy.path={STUDENT}" in (tmp_path / "eval.log").read_text()


def test_lerobot_train_push_renders_the_plugin_card(trained):
    """`lerobot-train --policy.push_to_hub=true` calls `generate_model_card`, which is the plugin's template."""
    meta = LeRobotDatasetMetadata(DATA_REPO_ID, root=trained["data"])
    student = ImleStudentPolicy.from_pretrained(trained["student"])
    student.config.repo_id = STUDENT
    card = student.generate_model_card(DATA_REPO_ID, "imle_student", None, None, cfg=None, dataset_meta=meta)
    assert isinstance(card, ModelCard) and card.data.library_name == "lerobot"
    assert "one-step IMLE student" in card.text and "**Not on the Hub.**" in card.text
    assert "still names files of the training machine (`teacher_path`)" in card.text
    teacher = FlowstepTeacherPolicy.from_pretrained(trained["teacher"])
    card = teacher.generate_model_card(DATA_REPO_ID, "flowstep_teacher", None, None, cfg=None, dataset_meta=meta)
    assert "Conditional Flow Matching teacher" in card.text and "2 ODE step(s)" in card.text


def test_dataset_card_says_where_the_data_came_from(trained, tmp_path, capsys):
    assert main(["push-dataset", str(trained["data"]), "org/flowstep-obstacle", "--dry-run"]) == 0
    out = capsys.readouterr().out
    card, files = out.split("----- end of card -----")
    meta = _front_matter(card.split("-----\n", 1)[1])
    assert meta["task_categories"] == ["robotics"] and "flowstep_obstacle" in meta["tags"]
    assert "**Where the data came from:** Simulated expert demonstrations of ObstacleReach" in card
    assert "`lerobot-flowstep generate`" in card and "`expert_mode`" in card
    assert "  meta/info.json " in files and "  data/chunk-000/file-000.parquet " in files

    other = tmp_path / "teleop"
    shutil.copytree(trained["data"], other)
    info = json.loads((other / "meta" / "info.json").read_text())
    (other / "meta" / "info.json").write_text(json.dumps({**info, "robot_type": "so100_follower"}))
    assert main(["push-dataset", str(other), "org/teleop", "--dry-run"]) == 2
    assert "--source" in capsys.readouterr().err
    source = "Teleoperated on an SO-100 arm in our lab, May 2026"
    assert main(["push-dataset", str(other), "org/teleop", "--source", source, "--dry-run"]) == 0
    assert f"**Where the data came from:** {source}" in capsys.readouterr().out

    assert main(["push-dataset", str(tmp_path / "nothing"), "org/teleop", "--dry-run"]) == 2
    assert main(["push-dataset", str(other), "teleop", "--dry-run"]) == 2


def test_dataset_push_goes_through_lerobot_push_to_hub(trained, hub_server):
    with pytest.raises(HfHubHTTPError):
        push_dataset(trained["data"], "org/flowstep-obstacle")
    creates = [json.loads(body) for method, path, body in hub_server if path == "/api/repos/create"]
    assert creates[0]["name"] == "flowstep-obstacle" and creates[0]["type"] == "dataset"
