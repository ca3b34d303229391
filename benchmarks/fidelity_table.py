"""One table of the student against its teacher, across tasks: success of each, the gap in points with its 95 %
interval (Newcombe's hybrid score interval of a difference of two rates), and the speed-up per chunk (the
teacher's batch-1 chunk latency over the student's, both as the benchmark that evaluated them measured them).

Rows come from the benchmarks' own reports:
- `--pusht NAME REPORT TEACHER STUDENT`: a `benchmarks/pusht.py` report.json and the names of its two rows
  (the row names as the report's `results` holds them; a prefix is enough when it is unique);
- `--metaworld NAME RESULTS TEACHER STUDENT`: a `benchmarks/metaworld_benchmark.py` results JSON and two rows,
  pooled over its tasks (latency as the report gives it: the first task's);
- `--counts NAME TEACHER_K/N STUDENT_K/N TEACHER_MS STUDENT_MS`: a row whose report is not on this machine,
  entered as the successes, episodes and latencies that run reported (say which in the table's text); `-` for a
  latency not measured.

    uv run python benchmarks/fidelity_table.py \\
        --pusht "PushT, U-Net" outputs/pusht_unet/report.json "teacher (10 Euler" "student [euler10"
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

from lerobot_flowstep.tools.statistics import difference_interval, wilson_interval


@dataclass(frozen=True)
class Arm:
    successes: int
    episodes: int
    latency_ms: float

    @property
    def rate(self) -> float:
        return self.successes / self.episodes


def _find(rows: dict[str, dict], prefix: str, source: Path) -> dict:
    found = [name for name in rows if name.startswith(prefix)]
    if len(found) != 1:
        raise SystemExit(f"{source}: {len(found)} rows start with {prefix!r} (rows: {sorted(rows)}); give one.")
    return rows[found[0]]


def pusht_arm(report: Path, prefix: str) -> Arm:
    row = _find(json.loads(report.read_text())["results"], prefix, report)
    successes = round(row["success_rate"] * row["episodes"])
    return Arm(successes, row["episodes"], row["chunk_latency"]["median_ms"])


def metaworld_arm(results: Path, prefix: str) -> Arm:
    row = _find(json.loads(results.read_text())["summary"], prefix, results)
    tasks = row["tasks"].values()
    successes = sum(round(t["success"] * t["episodes"]) for t in tasks)
    return Arm(successes, sum(t["episodes"] for t in tasks), row["chunk_latency_ms"])


def counts_arm(count: str, latency: str) -> Arm:
    k, n = (int(x) for x in count.split("/"))
    if not 0 <= k <= n or n == 0:
        raise SystemExit(f"Counts must read K/N with 0 <= K <= N and N > 0, got {count!r}.")
    return Arm(k, n, float("nan") if latency == "-" else float(latency))


def table(rows: dict[str, tuple[Arm, Arm]]) -> str:
    lines = [
        "| task | teacher [95 % CI] | student [95 % CI] | gap, student - teacher (points) [95 % CI] "
        "| chunk latency, teacher / student (ms) | speed-up per chunk |",
        "|---|---|---|---|---|---|",
    ]
    for name, (teacher, student) in rows.items():
        cells = []
        for arm in (teacher, student):
            lo, hi = wilson_interval(arm.successes, arm.episodes)
            cells.append(f"{arm.rate:.1%} [{lo:.1%}, {hi:.1%}] of {arm.episodes}")
        lo, hi = difference_interval(student.successes, student.episodes, teacher.successes, teacher.episodes)
        gap = 100 * (student.rate - teacher.rate)
        speed = teacher.latency_ms / student.latency_ms
        latency = f"{teacher.latency_ms:.2f} / {student.latency_ms:.2f}" if math.isfinite(speed) else "not measured"
        lines.append(
            f"| {name} | {cells[0]} | {cells[1]} | {gap:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] "
            f"| {latency} | {f'{speed:.1f}x' if math.isfinite(speed) else '-'} |"
        )
    return "\n".join(lines)


class _Row(argparse.Action):
    """Each row option appends (option, values) to one list: the table keeps the rows in the command's order."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        namespace.rows = [*(namespace.rows or []), (option_string, values)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pusht", nargs=4, action=_Row, dest="rows", metavar=("NAME", "REPORT", "T", "S"))
    parser.add_argument("--metaworld", nargs=4, action=_Row, dest="rows", metavar=("NAME", "RESULTS", "T", "S"))
    parser.add_argument(
        "--counts", nargs=5, action=_Row, dest="rows", metavar=("NAME", "T_K/N", "S_K/N", "T_MS", "S_MS")
    )
    parser.add_argument("--output", type=Path, help="also write the table here (markdown)")
    args = parser.parse_args()
    rows: dict[str, tuple[Arm, Arm]] = {}
    for option, values in args.rows or []:
        name, *fields = values
        if option == "--pusht":
            report, teacher, student = fields
            rows[name] = (pusht_arm(Path(report), teacher), pusht_arm(Path(report), student))
        elif option == "--metaworld":
            results, teacher, student = fields
            rows[name] = (metaworld_arm(Path(results), teacher), metaworld_arm(Path(results), student))
        else:
            teacher_count, student_count, teacher_ms, student_ms = fields
            rows[name] = (counts_arm(teacher_count, teacher_ms), counts_arm(student_count, student_ms))
    if not rows:
        parser.error("give at least one --pusht, --metaworld or --counts row")
    text = table(rows)
    if args.output:
        args.output.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
