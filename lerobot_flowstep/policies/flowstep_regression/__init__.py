from lerobot_flowstep.policies.flowstep_regression.configuration_flowstep_regression import FlowstepRegressionConfig

__all__ = ["FlowstepRegressionConfig"]
