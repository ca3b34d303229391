# Importing the package registers the plugin's processor steps, which saved pipelines name.
from lerobot_flowstep.processor.observation_check import ObservationCheckProcessorStep
from lerobot_flowstep.processor.pointcloud import PointCloudConfig, PointCloudProcessorStep

__all__ = ["ObservationCheckProcessorStep", "PointCloudConfig", "PointCloudProcessorStep"]
