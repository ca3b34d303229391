"""Pre/post-processors of the teacher (shared with the student: same inputs, same normalization)."""

from __future__ import annotations

from ..processors_common import make_flowstep_pre_post_processors as make_flowstep_teacher_pre_post_processors

__all__ = ["make_flowstep_teacher_pre_post_processors"]
