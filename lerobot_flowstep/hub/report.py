"""The measurement section of a model card, read from the `report.json` of a `lerobot-flowstep demo` run."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lerobot_flowstep.hub.checkpoint import read_json
from lerobot_flowstep.hub.templates import table_cell

# The keys of a report's result that are measurements; any other key is a setting the method ran with.
_REPORT_STATS = {
    "success_rate",
    "modes_covered",
    "num_modes",
    "mode_entropy",
    "off_manifold",
    "mode_histogram",
    "latency",
    "checkpoint",
    "bare_forward_latency",
}
# The `lerobot-flowstep demo` flag of each setting a report records, in the order `demo_command` writes them.
_DEMO_FLAGS = (
    ("output_dir", "--output-dir"),
    ("num_modes", "--num-modes"),
    ("num_episodes", "--episodes"),
    ("teacher_steps", "--teacher-steps"),
    ("student_steps", "--student-steps"),
    ("regression_steps", "--regression-steps"),
    ("eval_episodes", "--eval-episodes"),
    ("seed", "--seed"),
    ("threads", "--threads"),
)


def load_report(path: Path, checkpoint: Path) -> dict[str, Any]:
    """The card's measurement section from a `lerobot-flowstep demo` report: every method of the run, the rows of
    `checkpoint` marked. Fails when the report did not measure this checkpoint: numbers of another model must
    never end up on its card."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No report at {path}; `lerobot-flowstep demo` writes report.json in its output dir.")
    report = read_json(path)
    results = report.get("results")
    if not isinstance(results, dict):
        raise ValueError(f"{path} is not a `lerobot-flowstep demo` report (no 'results').")
    target = Path(checkpoint).resolve()
    measured = {Path(r["checkpoint"]).resolve() for r in results.values() if isinstance(r, dict) and "checkpoint" in r}
    if target not in measured:
        raise ValueError(
            f"{path} has no measurements of {checkpoint}; it measured {', '.join(sorted(map(str, measured)))}. "
            "Attach the report of the run that produced this checkpoint."
        )
    rows = []
    for name, r in results.items():
        if not isinstance(r, dict) or "success_rate" not in r:
            continue
        latency = r.get("latency")
        overrides = ", ".join(f"{k}={v}" for k, v in r.items() if k not in _REPORT_STATS)
        this_model = "checkpoint" in r and Path(r["checkpoint"]).resolve() == target
        marker = ["**this model**"] if this_model else []
        marker += [f"({overrides})"] if overrides else []
        rows.append(
            {
                "name": table_cell(name if "checkpoint" in r else f"{name} (uniformly random actions)"),
                "marker": table_cell(" ".join(marker)),
                "success": f"{r['success_rate']:.1%}",
                "modes": f"{r['modes_covered']}/{r['num_modes']}" if "modes_covered" in r else "-",
                "off_manifold": f"{r['off_manifold']:.1%}" if "off_manifold" in r else "-",
                "latency": (
                    f"{latency['median_ms']:.3f} ms ({latency['p10_ms']:.3f}-{latency['p90_ms']:.3f})"
                    if latency
                    else "-"
                ),
                "hz": f"{latency['hz']:.0f}" if latency else "-",
            }
        )
    settings = report.get("settings", {})
    repeats = {r["latency"]["repeats"] for r in results.values() if isinstance(r, dict) and r.get("latency")}
    scalar = {k: v for k, v in settings.items() if isinstance(v, (int, float, str)) and k != "output_dir"}
    return {
        "command": report.get("command") or demo_command(settings),
        "machine": report.get("machine") or "a machine the report does not describe",
        "episodes": settings.get("eval_episodes", "?"),
        "repeats": ", ".join(map(str, sorted(repeats))) or "?",
        "settings": table_cell(", ".join(f"`{k}={v}`" for k, v in scalar.items())),
        "rows": rows,
        "path": str(path),
    }


def demo_command(settings: Mapping[str, Any]) -> str:
    """The `lerobot-flowstep demo` command line that reproduces a report's settings."""
    args = [f"{flag} {settings[key]}" for key, flag in _DEMO_FLAGS if key in settings]
    return " ".join(["lerobot-flowstep demo", *args])
