#!/usr/bin/env bash
# The wheel as a pip user installs it (issue 31): in a fresh venv that already holds LeRobot 0.6.1 with its own
# `metaworld` extra, `pip install` resolves both extras together, downgrades nothing (MuJoCo aside, see below),
# LeRobot's plugin discovery finds the policies and env types with no import of ours, the MetaWorld env steps,
# the shipped configs are in the wheel, and `lerobot-train` runs two teacher steps on the embedded task.
#
# LeRobot goes in with uv, at the versions of uv.lock, so that its ~3 GB (torch, CUDA libraries) come from uv's
# cache in seconds; our wheel then goes in with pip and pip's resolver, which is what this test is about.
# Needs PyPI (pip fetches what LeRobot's core install lacks). Run by .ci/run; `bash .ci/pip_install_test.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
start=$(date +%s)
stage() { echo "[pip install test] $1 ($(($(date +%s) - start)) s)"; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
venv="$work/venv"
py="$venv/bin/python"

uv build --wheel --quiet --out-dir "$work/dist"
wheel=$(ls "$work"/dist/lerobot_policy_flowstep-*.whl)
unzip -l "$wheel" | grep -q "lerobot_flowstep/configs/pusht/teacher.json" || { echo "configs/ missing from $wheel"; exit 1; }

stage "wheel built"
uv venv --quiet --seed --python 3.12 "$venv"
# uv.lock's versions, so that uv's cache has them; not MuJoCo's or MetaWorld's, so that LeRobot's extra gets what
# it resolves to for a LeRobot user (MuJoCo 4.x today, with which MetaWorld 3.0 cannot create an env).
uv export --frozen --no-hashes --all-extras --no-dev --no-emit-project --format requirements-txt --quiet \
    | grep -vE '^(mujoco|metaworld)==' >"$work/constraints.txt"
uv pip install --quiet --python "$py" --constraint "$work/constraints.txt" "lerobot[metaworld]==0.6.1"
"$py" -m pip freeze --all >"$work/before.txt"
stage "LeRobot installed (uv)"

# Both requirements in one pip call: pip resolves our extras together with LeRobot's (with only ours named, pip
# would leave LeRobot's pins unchecked), then `pip check` holds every installed package to its requirements.
"$py" -m pip install --quiet "lerobot[metaworld]==0.6.1" "$wheel[metaworld]"
"$py" -m pip check
"$py" -m pip freeze --all >"$work/after.txt"
stage "ours installed (pip)"

"$py" - "$work/before.txt" "$work/after.txt" <<'EOF'
"""Nothing the LeRobot install had goes down, except a MuJoCo of 3.17 or newer: MetaWorld 3 fails at env creation
with it (LeRobot's own `metaworld` env included), so our extra caps it."""
import sys

from packaging.version import Version


def versions(path):
    pins = (line.split("==") for line in open(path) if "==" in line)
    return {name.lower().replace("_", "-"): Version(version.strip()) for name, version in pins}


before, after = versions(sys.argv[1]), versions(sys.argv[2])
down = {n: (str(v), str(after[n])) for n, v in before.items() if n in after and after[n] < v}
if "mujoco" in down and before["mujoco"] >= Version("3.17"):
    print(f"mujoco {down.pop('mujoco')}: LeRobot's MuJoCo fails with MetaWorld 3; our extra caps it below 3.17")
assert not down, f"pip downgraded what the LeRobot install had: {down}"
print(f"no downgrade among {len(before)} packages")
EOF

# A fresh interpreter that imports only LeRobot: its own discovery must register everything.
"$py" - <<'EOF'
import sys

from lerobot.configs.policies import PreTrainedConfig
from lerobot.envs.configs import EnvConfig
from lerobot.envs.factory import make_env
from lerobot.utils.import_utils import register_third_party_plugins

assert "lerobot_flowstep" not in sys.modules
register_third_party_plugins()
policies = {"flowstep_teacher", "imle_student", "flowstep_regression"}
envs = {"flowstep_obstacle", "flowstep_pusht_disturbed", "rlbench", "flowstep_metaworld"}
assert policies <= set(PreTrainedConfig.get_known_choices()), PreTrainedConfig.get_known_choices()
assert envs <= set(EnvConfig.get_known_choices()), EnvConfig.get_known_choices()
config = EnvConfig.get_choice_class("flowstep_metaworld")(task="button-press-v3", image_size=32)
env = make_env(config, n_envs=1)[config.type][0]
try:
    env.reset(seed=0)
    env.step(env.action_space.sample())
finally:
    env.close()
import mujoco

print(f"discovered {sorted(policies)} and {sorted(envs)}; flowstep_metaworld stepped on MuJoCo {mujoco.__version__}")
EOF

stage "discovery and MetaWorld env checked"
configs="$work/configs"
"$venv/bin/lerobot-flowstep" config write --all --output "$configs" >/dev/null
packaged=$("$venv/bin/lerobot-flowstep" config path pusht/teacher)
case "$packaged" in "$venv"/*) ;; *) echo "config path $packaged is not inside the venv"; exit 1 ;; esac
cmp "$configs/pusht/teacher.json" "$packaged"

cd "$work"
"$venv/bin/lerobot-flowstep" generate --output data/obstacle --episodes 4 >/dev/null 2>&1
"$venv/bin/lerobot-train" --policy.type=flowstep_teacher --policy.device=cpu --policy.push_to_hub=false \
    --dataset.repo_id=local/flowstep_obstacle --dataset.root=data/obstacle --dataset.video_backend=pyav \
    --output_dir=outputs/teacher --steps=2 --batch_size=8 --save_freq=2 --env_eval_freq=0 --wandb.enable=false \
    >train.log 2>&1 || { tail -40 train.log; exit 1; }
test -f outputs/teacher/checkpoints/last/pretrained_model/model.safetensors
stage "two lerobot-train steps"
echo "pip install test passed in $(($(date +%s) - start)) s"
