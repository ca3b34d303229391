"""What the scripted operators share: `ScriptedOperator`, a teleoperator driving a simulated robot of the same
process, and its config."""

from lerobot_flowstep.teleoperators.common.scripted_operator import ScriptedOperator, ScriptedOperatorConfig

__all__ = ["ScriptedOperator", "ScriptedOperatorConfig"]
