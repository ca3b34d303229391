from .flowstep_teacher import FlowstepTeacherConfig
from .imle_student import ImleStudentConfig

__all__ = ["FlowstepTeacherConfig", "ImleStudentConfig"]
