from .configuration_flowstep_teacher import FlowstepTeacherConfig

__all__ = ["FlowstepTeacherConfig"]
