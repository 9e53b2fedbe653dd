"""`peftdml`: one command with a subcommand per tool.

Each subcommand lives in its own module under peftdml_ros.tools with `main(argv) -> int`; it is
imported only when used, so `peftdml synth` never pays for torch or rclpy start-up.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from peftdml_ros.core.errors import PeftdmlError

# subcommand -> (module under peftdml_ros.tools, one-line description)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "demo",
        "the main job end to end: synth -> bag -> node with a sensor dropout -> metrics",
    ),
    "bag": ("bag", "nuScenes (real or generated) -> rosbag2 MCAP bag, every sweep"),
    "replay": ("replay", "play a bag over ROS 2 (rate, /clock, loop, remap, sensor dropout)"),
    "info": ("info", "print a model's configuration and parameter report"),
    "bench": (
        "bench",
        "benchmarks: sync, model, dds, cache, pointcloud, pipeline (peftdml bench -h)",
    ),
    "synth": ("synth", "generate a nuScenes-format dataset from a seeded synthetic world"),
    "train": ("train", "train PEFT-DML on a nuScenes-format dataset (checkpoint, metrics.jsonl)"),
    "export": ("export", "checkpoint -> ONNX + manifest, checked against PyTorch with ORT"),
    "eval": (
        "eval",
        "official nuScenes metrics of a model on a split; sensor dropout, degradations",
    ),
    "calibrate": (
        "calibrate",
        "store the clean distribution of a model's normality score with it (sensor health)",
    ),
    "health-eval": (
        "health_eval",
        "ROC AUC of the normality score: clean vs degraded frames and dead sensors",
    ),
    "results": (
        "results",
        "the claims page (docs/results.md) from evaluation and training summaries",
    ),
}


def _usage() -> str:
    lines = ["usage: peftdml <command> [options]   (peftdml <command> --help for details)", ""]
    width = max(len(name) for name in SUBCOMMANDS)
    lines += [f"  {name:<{width}} {summary}" for name, (_, summary) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"peftdml: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"peftdml_ros.tools.{SUBCOMMANDS[name][0]}")
    try:
        return int(module.main(rest))
    except PeftdmlError as error:
        # Known errors carry a message that says what to do; a traceback would only hide it.
        print(f"peftdml {name}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
