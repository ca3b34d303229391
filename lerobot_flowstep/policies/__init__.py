from lerobot_flowstep.policies.flowstep_regression import FlowstepRegressionConfig
from lerobot_flowstep.policies.flowstep_teacher import FlowstepTeacherConfig
from lerobot_flowstep.policies.imle_student import ImleStudentConfig

__all__ = ["FlowstepRegressionConfig", "FlowstepTeacherConfig", "ImleStudentConfig"]
