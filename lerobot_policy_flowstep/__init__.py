import lerobot_flowstep  # noqa: F401
