"""`peftdml synth`: write a nuScenes-format dataset (v1.0-synth) from a seeded synthetic world."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from peftdml_ros.data.synth import PRESETS, generate_dataset, parse_degradation
from peftdml_ros.data.synth.degrade import KINDS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peftdml synth",
        description=(
            "Generate a nuScenes-format dataset (version v1.0-synth: 13 tables, samples/, "
            "sweeps/, maps/, can_bus/, splits synth_train/synth_val) that the nuscenes-devkit "
            "loads and scores."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "degradations (repeat --degrade): KIND[:CHANNELS][=STRENGTH][@SCOPE]\n"
            f"  KIND: {', '.join(KINDS)}\n"
            "  CHANNELS: nuScenes channels or CAM, RADAR, LIDAR; outage also IMU\n"
            "  SCOPE: scene-0002 | 2.0-6.0 (s from each scene's start) | scene-0002/2.0-6.0\n"
            "examples: --degrade fog@scene-0002 --degrade outage:RADAR_FRONT@2.0-6.0 "
            "--degrade beam_loss=0.75"
        ),
    )
    parser.add_argument("--out", type=Path, required=True, help="dataset root (the dataroot)")
    parser.add_argument(
        "--scenes", type=int, default=None, help="number of scenes (default: 3 small, 10 full)"
    )
    parser.add_argument("--seed", type=int, default=0, help="world seed (same seed, same files)")
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="small",
        help="small: 2 s scenes for tests; full: 20 s scenes as nuScenes",
    )
    parser.add_argument(
        "--degrade",
        action="append",
        default=[],
        metavar="SPEC",
        help="a degradation (repeatable), see below",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a dataset already in --out"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="scenes generated in parallel processes"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    degradations = [parse_degradation(spec) for spec in args.degrade]
    scenes = args.scenes if args.scenes is not None else PRESETS[args.preset].default_scenes
    start = time.perf_counter()
    root = generate_dataset(
        args.out,
        scenes=scenes,
        seed=args.seed,
        preset=args.preset,
        degradations=degradations,
        overwrite=args.overwrite,
        progress=not args.quiet,
        workers=args.workers,
    )
    elapsed_s = time.perf_counter() - start
    print(
        f"wrote {scenes} scene(s) to {root} (version v1.0-synth, splits synth_train/synth_val) "
        f"in {elapsed_s:.1f} s"
    )
    return 0
