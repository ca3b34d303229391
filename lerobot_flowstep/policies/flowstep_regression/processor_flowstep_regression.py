"""Pre/post-processors of the regression baseline: the common pipeline, normalized by the dataset."""

from __future__ import annotations

from lerobot_flowstep.policies.common.processor_base import (
    make_flowstep_pre_post_processors as make_flowstep_regression_pre_post_processors,
)

__all__ = ["make_flowstep_regression_pre_post_processors"]
