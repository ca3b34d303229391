"""Serving the plugin's policies with LeRobot's async inference (gRPC `PolicyServer` and `RobotClient`).

`server.py` (`lerobot-flowstep serve`): LeRobot's `PolicyServer`, which also serves `flowstep_teacher`,
`imle_student` and `flowstep_regression`, refusing with a named error what it cannot serve. `client.py`
(`lerobot-flowstep robot-client`): LeRobot's `RobotClient`, which stops the robot and raises when the server refuses
or fails. `features.py`: what a policy needs from a robot's observation. Needs the `serve` extra (`lerobot[async]`).

Nothing is imported here: LeRobot's async modules make a `logs/` folder in the working directory and set up
logging when imported, which only the commands should do.
"""
