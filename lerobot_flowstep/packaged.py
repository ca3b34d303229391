"""Data folders shipped beside the code. `hub_cards/` and `configs/` sit at the top of the repository; the wheel
puts them inside the package (pyproject's force-include). One lookup for both, so a clone (an editable install)
and a pip install read the same files."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def packaged_folder(name: str) -> Path:
    """The data folder `name`: inside the installed package, else at the top of the source tree."""
    packaged = Path(str(resources.files("lerobot_flowstep").joinpath(name)))
    if packaged.is_dir():
        return packaged
    source = Path(__file__).resolve().parents[1] / name
    if source.is_dir():
        return source
    raise FileNotFoundError(f"'{name}' is neither in the installed package ({packaged}) nor at {source}.")
