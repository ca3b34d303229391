"""The `lerobot-train` configs of `configs/` (PushT, MetaWorld, RLBench), as shipped in the wheel: named
`<group>/<name>` (`pusht/teacher`), found in the installed package or the source tree, and written out so that
README's `--config_path=configs/...` commands run unchanged after a pip install."""

from __future__ import annotations

from pathlib import Path

from lerobot_flowstep.packaged import packaged_folder
from lerobot_flowstep.tools.timings import write_text_atomic

CONFIG_FOLDER = "configs"


def config_names() -> list[str]:
    """Every shipped config as `<group>/<name>`, sorted."""
    root = packaged_folder(CONFIG_FOLDER)
    return sorted(path.relative_to(root).with_suffix("").as_posix() for path in root.rglob("*.json"))


def config_path(name: str) -> Path:
    """The shipped config `name`: `pusht/teacher`, with or without `.json` and a leading `configs/`."""
    key = name.removeprefix(f"{CONFIG_FOLDER}/").removesuffix(".json")
    names = config_names()
    if key not in names:
        raise ValueError(f"Unknown config '{name}'. The shipped configs are: {', '.join(names)}.")
    return packaged_folder(CONFIG_FOLDER) / f"{key}.json"


def write_config(name: str, output: Path, overwrite: bool = False) -> Path:
    """Copy the shipped config `name` to the file `output` (never half-written; an existing file only with
    `overwrite`)."""
    source = config_path(name)
    output = Path(output)
    if output.is_dir():
        raise ValueError(f"{output} is a folder; give the .json file to write (or write them all with --all).")
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite to replace it.")
    output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output, source.read_text(encoding="utf-8"))
    return output


def write_all_configs(output_dir: Path, overwrite: bool = False) -> list[Path]:
    """Copy every shipped config under `output_dir` as `<group>/<name>.json`, the layout README's commands read.
    Without `overwrite`, an existing file stops the copy before anything is written."""
    output_dir = Path(output_dir)
    targets = {name: output_dir / f"{name}.json" for name in config_names()}
    existing = [str(path) for path in targets.values() if path.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{len(existing)} config(s) exist already ({existing[0]}, ...); pass --overwrite.")
    return [write_config(name, path, overwrite=True) for name, path in targets.items()]
