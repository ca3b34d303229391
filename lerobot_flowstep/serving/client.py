"""LeRobot's async-inference `RobotClient`, stopped by a server that refuses or fails: `lerobot-flowstep robot-client`.

LeRobot's own client (`python -m lerobot.async_inference.robot_client`) drives this plugin's robot as installed:
its `__main__` calls `register_third_party_plugins()`, which imports `lerobot_policy_flowstep` and so registers
`--robot.type=flowstep_obstacle_sim`. But it only logs what the server answers with an error: a refused policy
ends its run without an error (exit status 0, the robot left connected), and an error while running leaves the
robot executing the chunk it holds, then standing, while the client keeps asking. `FlowstepRobotClient` is that
client, with LeRobot's options and loops, and:

- a refused request, an unreachable server or a failed call raises `PolicyServerError` with the server's message;
  while running, the action queue is dropped at once and the control loop ends, so the robot never goes on with
  the chunk of a server that failed;
- a chunk whose actions are not the robot's size is refused (LeRobot's client would send the first values by
  name and drop the rest);
- `--duration_s` stops the run (LeRobot's runs until Ctrl-C, which also stops this one cleanly);
- each chunk's round trip (observation captured -> its chunk received) is kept, and `summary()` reports it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from queue import Queue
from typing import Any

import grpc
import numpy as np
from lerobot.async_inference.configs import RobotClientConfig
from lerobot.async_inference.helpers import TimedAction
from lerobot.async_inference.robot_client import RobotClient

from lerobot_flowstep.datasets.calibration import write_json_atomic


class PolicyServerError(RuntimeError):
    """The policy server refused a request, could not be reached, or failed while the robot ran."""


@dataclass
class FlowstepRobotClientConfig(RobotClientConfig):
    """LeRobot's client options (`--robot.*`, `--server_address`, `--policy_type`, `--pretrained_name_or_path`,
    `--actions_per_chunk`, `--fps`, `--chunk_size_threshold`, ...), and:"""

    # Stop after this many seconds of running (None: until Ctrl-C).
    duration_s: float | None = None
    # Where to write `summary()` as JSON at the end of the run (also when the server failed).
    summary_path: Path | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.duration_s is not None and not self.duration_s > 0:
            raise ValueError(f"duration_s must be positive (or left out to run until Ctrl-C), got {self.duration_s}.")


class _WatchedStub:
    """LeRobot's client calls the server through `self.stub` and only logs the errors it gets: this stub passes
    each call on and reports an error to the client before the client's own handler sees it."""

    def __init__(self, stub: Any, on_error: Any) -> None:
        self._stub = stub
        self._on_error = on_error

    def __getattr__(self, name: str) -> Any:
        call = getattr(self._stub, name)

        def watched(*args: Any, **kwargs: Any) -> Any:
            try:
                return call(*args, **kwargs)
            except grpc.RpcError as err:
                self._on_error(name, err)
                raise

        return watched


class FlowstepRobotClient(RobotClient):
    """See the module docstring."""

    def __init__(self, config: RobotClientConfig) -> None:
        super().__init__(config)
        self.failure: PolicyServerError | None = None
        self.round_trips_s: list[float] = []
        self.actions_executed = 0
        self.first_state: dict[str, float] | None = None
        self.last_state: dict[str, float] | None = None
        self.stub = _WatchedStub(self.stub, self._server_error)

    def _server_error(self, call: str, err: grpc.RpcError) -> None:
        if self.shutdown_event.is_set():
            return  # a call cut short by the client's stop, or after the failure that stopped it
        address, details = self.server_address, f"{err.code().name}: {err.details()}"
        if call == "Ready":
            message = f"Cannot reach the policy server at {address}: {details}"
        elif call == "SendPolicyInstructions":
            message = f"The policy server at {address} refused the policy: {details}"
        else:
            message = (
                f"The policy server at {address} failed while the robot ran ({call}, {details}); the queued actions "
                "were dropped and the run stopped."
            )
        self._fail(message)

    def _fail(self, message: str) -> None:
        if self.failure is None:
            self.failure = PolicyServerError(message)
            self.logger.error(message)
        self.shutdown_event.set()
        with self.action_queue_lock:
            self.action_queue = Queue()

    def _aggregate_action_queues(self, incoming_actions: list[TimedAction], aggregate_fn: Any = None) -> None:
        if incoming_actions:
            got, names = tuple(incoming_actions[0].get_action().shape), list(self.robot.action_features)
            if got != (len(names),):
                self._fail(
                    f"The policy server at {self.server_address} sent actions of shape {got}; the robot takes "
                    f"{len(names)} ({names}). The policy was trained for another robot."
                )
                return
            self.round_trips_s.append(time.time() - incoming_actions[0].get_timestamp())
        super()._aggregate_action_queues(incoming_actions, aggregate_fn)

    def control_loop_action(self, verbose: bool = False) -> dict[str, Any] | None:
        if not self.running:
            return None  # stopped (or failed) since the loop checked the queue
        performed = super().control_loop_action(verbose)
        self.actions_executed += 1
        return performed

    def control_loop_observation(self, task: str, verbose: bool = False) -> dict[str, Any] | None:
        raw = super().control_loop_observation(task, verbose)
        if raw is not None:
            self.last_state = {key: float(value) for key, value in raw.items() if isinstance(value, float)}
            self.first_state = self.first_state or self.last_state
        return raw

    def summary(self) -> dict[str, Any]:
        """The run: chunks received, actions executed, round trips (ms), first and latest observed state, and the
        server's error if it failed."""
        trips = np.asarray(self.round_trips_s) * 1e3
        summary: dict[str, Any] = {
            "policy_type": self.config.policy_type,
            "server_address": self.server_address,
            "chunks": len(trips),
            "actions_executed": self.actions_executed,
            "first_state": self.first_state,
            "last_state": self.last_state,
            "failure": str(self.failure) if self.failure else None,
        }
        if len(trips):
            summary |= {
                "round_trip_p50_ms": float(np.percentile(trips, 50)),
                "round_trip_p99_ms": float(np.percentile(trips, 99)),
                "round_trip_max_ms": float(trips.max()),
            }
        return summary


def run_robot_client(config: FlowstepRobotClientConfig) -> dict[str, Any]:
    """Connect the robot, load the policy on the server and run LeRobot's control loop until `duration_s`,
    Ctrl-C or a server failure; the robot is disconnected in every case. Returns `summary()`; raises
    `PolicyServerError` when the server refused or failed."""
    client = FlowstepRobotClient(config)
    if not client.start():
        client.stop()
        raise client.failure or PolicyServerError(f"The policy server at {config.server_address} did not start.")
    receiver = threading.Thread(target=client.receive_actions, daemon=True)
    receiver.start()
    timer = threading.Timer(config.duration_s, client.shutdown_event.set) if config.duration_s else None
    if timer is not None:
        timer.start()
    try:
        client.control_loop(task=config.task)
    except KeyboardInterrupt:
        client.logger.info("Stopped by Ctrl-C")
    finally:
        if timer is not None:
            timer.cancel()
        client.stop()
        receiver.join()
    summary = client.summary()
    client.logger.info(f"Run summary: {summary}")
    if config.summary_path is not None:
        config.summary_path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(config.summary_path, summary)
    if client.failure is not None:
        raise client.failure
    return summary
