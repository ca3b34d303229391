from .flowstep_teacher import FlowstepTeacherConfig

__all__ = ["FlowstepTeacherConfig"]
