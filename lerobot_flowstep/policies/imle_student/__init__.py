from lerobot_flowstep.policies.imle_student.configuration_imle_student import ImleStudentConfig

__all__ = ["ImleStudentConfig"]
