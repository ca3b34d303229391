from .pointcloud import PointCloudConfig, PointCloudProcessorStep

__all__ = ["PointCloudConfig", "PointCloudProcessorStep"]
