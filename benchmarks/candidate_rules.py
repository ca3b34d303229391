"""The student's candidate-selection rules on the embedded task, one checkpoint, the same seeded episodes.

Each rule (`--policy.candidate_selection`) is evaluated through LeRobot's `eval_policy` on `flowstep_obstacle`
(`lerobot_flowstep.tools.diagnostics.rollout_mode_report`): success, modes, off-manifold share. PushT's
numbers for the same rules come from `benchmarks/pusht.py`.

    uv run python benchmarks/candidate_rules.py --policy-path outputs/demo/student/pretrained_model
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lerobot_flowstep.policies.imle_student.configuration_imle_student import CANDIDATE_RULES
from lerobot_flowstep.tools.checkpoints import load_checkpoint
from lerobot_flowstep.tools.diagnostics import rollout_mode_report
from lerobot_flowstep.tools.statistics import wilson_interval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy-path", required=True, help="an imle_student checkpoint of the embedded task")
    parser.add_argument("--num-modes", type=int, default=2, choices=(2, 4))
    parser.add_argument("--episodes", type=int, default=400)
    parser.add_argument("--seed", type=int, default=300_000, help="first episode seed (the demo evaluates 100000+)")
    parser.add_argument("--rules", nargs="+", choices=CANDIDATE_RULES, default=list(CANDIDATE_RULES))
    parser.add_argument("--output", type=Path, help="also write the results as JSON here")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # the latents of every rollout
    results = {}
    for rule in args.rules:
        policy, pre, post = load_checkpoint(args.policy_path, candidate_selection=rule)
        stats, _ = rollout_mode_report(policy, pre, post, args.num_modes, args.episodes, args.seed)
        results[rule] = stats.as_dict()
    print(f"| rule | success [95% CI] | modes | mode entropy | off-manifold |  ({args.episodes} episodes)")
    print("|---|---|---|---|---|")
    for rule, r in results.items():
        lo, hi = wilson_interval(round(r["success_rate"] * args.episodes), args.episodes)
        print(
            f"| {rule} | {r['success_rate']:.2%} [{lo:.1%}, {hi:.1%}] | {r['modes_covered']}/{r['num_modes']} | "
            f"{r['mode_entropy']:.3f} | {r['off_manifold']:.1%} |"
        )
    if args.output:
        args.output.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
