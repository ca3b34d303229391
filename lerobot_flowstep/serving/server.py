"""LeRobot's async-inference `PolicyServer`, serving this plugin's policies too: `lerobot-flowstep serve`.

LeRobot's server (`lerobot.async_inference.policy_server`) refuses every policy type outside its module list
`SUPPORTED_POLICIES` and never loads plugins, so it cannot serve `flowstep_teacher`, `imle_student` or
`flowstep_regression` as installed. `FlowstepPolicyServer` is that server, extended where it falls short:

- Our types join LeRobot's own list (the list object its check reads, extended in place when a server is made);
  importing this module imports the plugin, which registers them with LeRobot's policy factory. LeRobot's own
  types are served as LeRobot serves them.
- A request it cannot serve is refused with `INVALID_ARGUMENT` and a message naming what is wrong: a type it does
  not serve, a checkpoint that does not load or holds another type, or, for our policies, a robot whose observation
  lacks an input of the policy or gives it at another size (`features.py`). LeRobot's server raises for the first
  ones (the client sees `UNKNOWN`, "Exception calling application") and for the last loads the policy and then
  fails at every observation.
- An observation that fails in inference is answered with `INTERNAL` and the error. LeRobot's server logs it and
  answers with no actions, which its client cannot tell from "no observation yet": the robot executes what it
  still holds, then stands, and nothing ends the run.
- For our policies, an observation reaches the preprocessor as `lerobot-rollout` gives it (LeRobot's
  `build_inference_frame`): a depth map as the camera's uint16 millimetres, channel first, where the policy's
  depth-map step turns it into metres. LeRobot's server resizes every camera to the policy's image size, which
  fails on uint16 and would break the calibration of a depth map.
- `observation_similarity_atol`: LeRobot's server skips an observation whose state is within 1 (joint-space
  distance, in the robot's state units) of the last one it predicted from, unless the client's queue is empty;
  tuned for arms in degrees. For state in metres, like the simulated robot's, 1 skips nearly every observation.

Each chunk is predicted from the newest observation alone, which stands for its own history
(`predict_action_chunk`): the client sends observations only when its queue runs low, so no history at the
training spacing exists on the server.
"""

from __future__ import annotations

import logging
import pickle  # nosec: the protocol of LeRobot's async inference, between a robot and its own server
import threading
from concurrent import futures
from dataclasses import asdict, dataclass, field
from pathlib import Path
from pprint import pformat

import grpc
import torch
from lerobot.async_inference import constants as async_constants
from lerobot.async_inference.configs import PolicyServerConfig
from lerobot.async_inference.helpers import RemotePolicyConfig, TimedAction, TimedObservation, observations_similar
from lerobot.async_inference.policy_server import PolicyServer
from lerobot.policies.utils import build_inference_frame
from lerobot.transport import services_pb2, services_pb2_grpc  # type: ignore

from lerobot_flowstep.policies.common.config_base import FlowstepBaseConfig
from lerobot_flowstep.serving.features import robot_feature_problems

PLUGIN_POLICY_TYPES = ("flowstep_teacher", "imle_student", "flowstep_regression")


@dataclass
class FlowstepPolicyServerConfig(PolicyServerConfig):
    """LeRobot's server options (`--host`, `--port`, `--fps`, `--inference_latency`, `--obs_queue_timeout`), and:"""

    # LeRobot's rule skips an observation whose state lies within this distance of the last one predicted from
    # (unless the client's queue is empty). LeRobot's value, 1, is for joint angles in degrees; 0 predicts from
    # every observation the client sends.
    observation_similarity_atol: float = field(default=1.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.observation_similarity_atol < 0:
            raise ValueError(f"observation_similarity_atol must be at least 0, got {self.observation_similarity_atol}")


def served_policy_types() -> list[str]:
    """LeRobot's own served types and ours, in the list LeRobot's server checks."""
    served = async_constants.SUPPORTED_POLICIES
    served.extend(t for t in PLUGIN_POLICY_TYPES if t not in served)
    return list(served)


class FlowstepPolicyServer(PolicyServer):
    """See the module docstring."""

    def __init__(self, config: PolicyServerConfig) -> None:
        super().__init__(config)
        self.served_types = served_policy_types()
        self.similarity_atol = getattr(config, "observation_similarity_atol", 1.0)
        self._call = threading.local()

    def _unload_policy(self) -> None:
        self.policy = self.preprocessor = self.postprocessor = None
        self.policy_type = self.lerobot_features = None

    def SendPolicyInstructions(self, request, context):  # noqa: N802  (gRPC's method name)
        if not self.running:
            return super().SendPolicyInstructions(request, context)
        # The checks below end the call with `context.abort`, which raises: none is inside a try block.
        self._unload_policy()
        specs = pickle.loads(request.data)  # nosec
        if not isinstance(specs, RemotePolicyConfig):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Policy instructions must be a RemotePolicyConfig, got {type(specs).__name__}.",
            )
        where = f"'{specs.policy_type}' policy from '{specs.pretrained_name_or_path}'"
        if specs.policy_type not in self.served_types:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"This server does not serve the policy type '{specs.policy_type}'; it serves {self.served_types}.",
            )
        error, path = None, Path(specs.pretrained_name_or_path)
        if (path.is_absolute() or specs.pretrained_name_or_path.startswith(".")) and not path.is_dir():
            error = (
                f"Cannot load the {where}: no such folder on the server's machine (the server reads "
                "pretrained_name_or_path itself)."
            )
        else:
            try:
                super().SendPolicyInstructions(request, context)
            except Exception as err:  # what LeRobot's loader raises, reported to the client instead of UNKNOWN
                error = f"Cannot load the {where}: {type(err).__name__}: {err}"
        if error is None and self.policy.config.type != specs.policy_type:
            error = f"Cannot serve the {where}: the checkpoint holds a policy of type '{self.policy.config.type}'."
        if error is None and isinstance(self.policy.config, FlowstepBaseConfig):
            problems = robot_feature_problems(self.policy.config, specs.lerobot_features, specs.rename_map)
            if problems:
                robot = {key: tuple(feature["shape"]) for key, feature in specs.lerobot_features.items()}
                error = (
                    f"The robot's observation cannot drive the {where}: "
                    + "; ".join(problems)
                    + f". The robot gives {robot}. Serve a policy trained on this robot's observation, or give the "
                    "robot the cameras and sizes the policy was trained on."
                )
        if error is not None:
            self._unload_policy()
            self.logger.error(error)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, error)
        return services_pb2.Empty()

    def GetActions(self, request, context):  # noqa: N802  (gRPC's method name)
        if self.policy is None:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "No policy is loaded: send policy instructions first (a refused policy is not kept).",
            )
        self._call.error = None
        answer = super().GetActions(request, context)
        # LeRobot's method logs an inference error and answers with no actions; the client is told instead.
        if self._call.error is not None:
            context.abort(grpc.StatusCode.INTERNAL, self._call.error)
        return answer

    def _obs_sanity_checks(self, obs: TimedObservation, previous_obs: TimedObservation) -> bool:
        with self._predicted_timesteps_lock:
            if obs.get_timestep() in self._predicted_timesteps:
                return False
        if self.similarity_atol > 0 and observations_similar(
            obs, previous_obs, lerobot_features=self.lerobot_features, atol=self.similarity_atol
        ):
            return False
        return True

    def _predict_action_chunk(self, observation_t: TimedObservation) -> list[TimedAction]:
        try:
            if not isinstance(self.policy.config, FlowstepBaseConfig):
                return super()._predict_action_chunk(observation_t)
            return self._predict_flowstep_chunk(observation_t)
        except Exception as err:
            self._call.error = (
                f"Inference of the '{self.policy_type}' policy failed on observation #{observation_t.get_timestep()}: "
                f"{type(err).__name__}: {err}"
            )
            raise

    def _predict_flowstep_chunk(self, observation_t: TimedObservation) -> list[TimedAction]:
        raw = observation_t.get_observation()
        observation = build_inference_frame(
            raw, torch.device(self.device), self.lerobot_features, task=raw.get("task"), robot_type=None
        )
        observation = self.preprocessor(observation)
        self.last_processed_obs = observation_t
        chunk = self._get_action_chunk(observation)  # (1, actions_per_chunk, action_dim), normalized
        actions = self.postprocessor(chunk).squeeze(0).detach().cpu()
        return self._time_action_chunk(observation_t.get_timestamp(), list(actions), observation_t.get_timestep())


def start_server(
    config: PolicyServerConfig, server_class: type[FlowstepPolicyServer] = FlowstepPolicyServer
) -> tuple[grpc.Server, FlowstepPolicyServer, int]:
    """Start a policy server on `config.host:config.port` in this process's threads, as LeRobot's `serve` does.
    Returns the gRPC server (`.stop(None)` ends it), the policy server and the port."""
    policy_server = server_class(config)
    # gRPC binds with SO_REUSEPORT by default: a second server on a port in use would start and share its clients.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=[("grpc.so_reuseport", 0)])
    services_pb2_grpc.add_AsyncInferenceServicer_to_server(policy_server, server)
    address = f"{config.host}:{config.port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as err:
        port, cause = 0, err
    else:
        cause = "is the port in use?"
    if not port:
        raise OSError(f"Cannot listen on {address} ({cause}): give a free --port or another --host.")
    server.start()
    policy_server.logger.info(f"PolicyServer started on {config.host}:{port}, serving {policy_server.served_types}")
    return server, policy_server, port


def serve(config: PolicyServerConfig) -> None:
    """Run the server until it is interrupted (LeRobot's `serve`, with `FlowstepPolicyServer`)."""
    logging.info(pformat(asdict(config)))
    server, policy_server, _ = start_server(config)
    try:
        server.wait_for_termination()
    finally:
        server.stop(grace=None)
        policy_server.stop()
