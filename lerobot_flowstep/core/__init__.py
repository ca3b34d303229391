"""The method's math and networks, free of LeRobot's policy, env and dataset machinery: flow matching and
its ODE solvers, the bi-directional Chamfer / IMLE objective, the chunk networks, the unified perception
encoder, and the geometry (with `fuse_pointcloud`, the one depth-to-cloud fusion)."""
