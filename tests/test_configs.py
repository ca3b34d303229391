"""The lerobot-train configs of `configs/` as a pip user gets them: shipped in the wheel, found in the installed
package (or the source tree), listed, and written out so that README's `--config_path=configs/...` runs as
written. `.ci/pip_install_test.sh` checks the same on a real wheel in a fresh venv."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from lerobot.configs.train import TrainPipelineConfig

from lerobot_flowstep import packaged
from lerobot_flowstep.cli import main
from lerobot_flowstep.policies.flowstep_teacher.configuration_flowstep_teacher import FlowstepTeacherConfig
from lerobot_flowstep.tools.configs import config_names, config_path, write_all_configs, write_config

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "configs"


def test_the_wheel_ships_every_config_under_its_name():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    force_include = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert force_include["configs"] == "lerobot_flowstep/configs"
    on_disk = sorted(p.relative_to(SOURCE).with_suffix("").as_posix() for p in SOURCE.rglob("*.json"))
    assert config_names() == on_disk
    assert {"pusht/teacher_unet", "metaworld/teacher_pc", "rlbench/open_box_student"} <= set(on_disk)
    assert len([n for n in on_disk if n.startswith("rlbench/")]) == 16
    for spelling in ("pusht/teacher", "pusht/teacher.json", "configs/pusht/teacher.json"):
        assert config_path(spelling) == SOURCE / "pusht/teacher.json"


def test_an_installed_package_s_configs_come_first(tmp_path, monkeypatch):
    # A wheel puts configs/ inside the package; that copy wins over any source tree.
    (tmp_path / "configs/pusht").mkdir(parents=True)
    (tmp_path / "configs/pusht/only_installed.json").write_text("{}")
    monkeypatch.setattr(packaged.resources, "files", lambda package: tmp_path)
    assert config_names() == ["pusht/only_installed"]
    assert config_path("pusht/only_installed") == tmp_path / "configs/pusht/only_installed.json"


def test_write_one_config_and_refusals(tmp_path):
    out = write_config("pusht/teacher_unet", tmp_path / "x.json")
    assert out.read_text() == (SOURCE / "pusht/teacher_unet.json").read_text()
    out.write_text("mine")
    with pytest.raises(FileExistsError, match="x.json exists; pass --overwrite"):
        write_config("pusht/teacher_unet", out)
    assert out.read_text() == "mine"
    write_config("pusht/teacher_unet", out, overwrite=True)
    assert json.loads(out.read_text())["policy"]["network"]["type"] == "unet"
    with pytest.raises(ValueError, match="is a folder"):
        write_config("pusht/teacher", tmp_path)
    with pytest.raises(ValueError, match=r"Unknown config 'pusht/nope'.*pusht/teacher_unet"):
        write_config("pusht/nope", tmp_path / "y.json")
    assert not (tmp_path / "y.json").exists()


def test_write_all_is_readme_s_layout_and_writes_nothing_over_a_file(tmp_path):
    (tmp_path / "configs/pusht").mkdir(parents=True)
    (tmp_path / "configs/pusht/student.json").write_text("mine")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        write_all_configs(tmp_path / "configs")
    assert [p.name for p in (tmp_path / "configs").rglob("*.json")] == ["student.json"]  # nothing else written
    written = write_all_configs(tmp_path / "configs", overwrite=True)
    assert len(written) == len(config_names())
    for path in written:
        assert path.read_text() == (SOURCE / path.relative_to(tmp_path / "configs")).read_text()


def test_cli_writes_a_config_lerobot_train_parses(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # validate() refuses an existing output_dir
    assert main(["config", "write", "pusht/teacher_unet", "--output", "x.json"]) == 0
    cfg = TrainPipelineConfig.from_pretrained(tmp_path / "x.json", cli_args=[])
    assert isinstance(cfg.policy, FlowstepTeacherConfig) and cfg.policy.network.type == "unet"
    assert main(["config", "path", "metaworld/teacher_pc"]) == 0
    assert capsys.readouterr().out.strip().endswith("teacher_pc.json")
    assert main(["config", "write", "--all", "--output", "configs"]) == 0
    assert (tmp_path / "configs/rlbench/open_box_teacher.json").is_file()
    assert main(["config", "write", "--output", "z.json"]) == 2
    assert "one config name or --all" in capsys.readouterr().err
