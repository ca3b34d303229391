from lerobot_flowstep.processor.pointcloud import PointCloudConfig, PointCloudProcessorStep

__all__ = ["PointCloudConfig", "PointCloudProcessorStep"]
