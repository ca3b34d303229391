"""Pre/post-processors of the teacher (shared with the student: same inputs, same normalization)."""

from __future__ import annotations

from lerobot_flowstep.policies.common.processor_base import (
    make_flowstep_pre_post_processors as make_flowstep_teacher_pre_post_processors,
)

__all__ = ["make_flowstep_teacher_pre_post_processors"]
