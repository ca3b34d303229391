from .configuration_imle_student import ImleStudentConfig

__all__ = ["ImleStudentConfig"]
