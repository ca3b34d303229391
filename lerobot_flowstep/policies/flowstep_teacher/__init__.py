from lerobot_flowstep.policies.flowstep_teacher.configuration_flowstep_teacher import FlowstepTeacherConfig

__all__ = ["FlowstepTeacherConfig"]
