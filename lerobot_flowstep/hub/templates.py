"""The Markdown card templates in `hub_cards/` and what fills them: finding a template (installed or in the source
tree), rendering it, and formatting values for its tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jinja2

from lerobot_flowstep.packaged import packaged_folder

TEMPLATE_DIR = "hub_cards"
# The regression baseline shares the student's card: same network, one forward pass; the card says what differs.
POLICY_TEMPLATES = {"flowstep_teacher": "teacher.md", "imle_student": "student.md", "flowstep_regression": "student.md"}
DATASET_TEMPLATE = "dataset.md"


def load_template(name: str) -> str:
    """A card template: packaged inside the wheel (`lerobot_flowstep/hub_cards/`), else from the source tree."""
    path = packaged_folder(TEMPLATE_DIR) / name
    if not path.is_file():
        raise FileNotFoundError(f"Card template '{name}' is not in {path.parent}.")
    return path.read_text(encoding="utf-8")


def render_template(name: str, context: Mapping[str, Any]) -> str:
    # StrictUndefined: a field the template names but the context lacks is a bug, not an empty string in a
    # published card.
    env = jinja2.Environment(
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )
    return env.from_string(load_template(name)).render(**context)


def table_cell(value: Any) -> str:
    """A value fit for a Markdown table cell."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def format_shape(shape: Sequence[int]) -> str:
    """A tensor shape written as a Python tuple: `(2,)`, `(3, 64, 64)`."""
    return "(" + ", ".join(str(int(s)) for s in shape) + ("," if len(shape) == 1 else "") + ")"
