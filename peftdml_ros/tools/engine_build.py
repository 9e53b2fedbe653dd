"""`peftdml export --build-engine`: the TensorRT engine built ahead of time, with progress.

    peftdml export --checkpoint C --out model.onnx --build-engine [--precision fp16]
    peftdml export --checkpoint C --out model.onnx --build-engine --precision int8 \\
        --calib-data DATAROOT --calib-version v1.0-trainval --calib-split train [--calib-frames N]

The engine goes beside the ONNX file (`model.<precision>.engine` and its key in
`model.<precision>.engine.json`, see core/backends/engine_cache.py), where the node looks for it:
a node on the same GPU and TensorRT with the same detector.precision then loads it at start
instead of spending minutes building it (a `--dynamic-batch` export's profile covers batches 1
to engine_cache.DEFAULT_MAX_BATCH, as the node's). Progress: TensorRT's
build phases (IProgressMonitor) and the elapsed time, on one line rewritten in place on a
terminal (a spinner), one line every 10 s otherwise.

INT8 calibration reads keyframes of a nuScenes-format dataset (real or generated) with the
dataset reader, built with the frame settings the model was trained with (recorded in the
checkpoint; the node's otherwise), through the node's Preprocessor: the engine is calibrated on
exactly what it will be fed. The frames are spread evenly over the split; the calibration table
is cached as `model.int8.calib`, so a rebuild (another GPU, TensorRT version) needs no dataset.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from peftdml_ros.core.backends.engine_cache import (
    DEFAULT_PRECISION,
    PRECISIONS,
    calibration_cache_path,
)
from peftdml_ros.core.backends.tensorrt_backend import BuildStatus, EngineResult, ensure_engine
from peftdml_ros.core.errors import ConfigError
from peftdml_ros.core.model.config import ModelConfig
from peftdml_ros.core.preprocess import Inputs, PreprocessConfig, Preprocessor

DEFAULT_CALIBRATION_FRAMES = 128
_SPINNER = "|/-\\"
TTY_INTERVAL_S = 0.25
LOG_INTERVAL_S = 10.0


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The engine options of `peftdml export`."""
    group = parser.add_argument_group("TensorRT engine (needs TensorRT 10 and a CUDA GPU)")
    group.add_argument(
        "--build-engine", action="store_true", help="also build the TensorRT engine beside --out"
    )
    group.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=DEFAULT_PRECISION,
        help="engine precision (fp16 keeps the GMM/normality and pillar-sum layers in fp32)",
    )
    group.add_argument("--engine-device", default="cuda", help="cuda or cuda:N")
    group.add_argument("--rebuild", action="store_true", help="rebuild even if cached")
    group.add_argument("--calib-data", type=Path, help="int8: nuScenes-format dataroot")
    group.add_argument("--calib-version", default="v1.0-trainval", help="int8: dataset version")
    group.add_argument("--calib-split", default=None, help="int8: split (default: every scene)")
    group.add_argument(
        "--calib-frames",
        type=int,
        default=DEFAULT_CALIBRATION_FRAMES,
        help="int8: keyframes to calibrate on, spread evenly over the split",
    )


def check_engine_arguments(args: argparse.Namespace) -> None:
    """ConfigError for engine options that cannot work, before any export work is done."""
    if not args.build_engine:
        if args.calib_data is not None:
            raise ConfigError("--calib-data only applies with --build-engine --precision int8")
        return
    if args.precision == "int8":
        if args.calib_frames < 1:
            raise ConfigError(f"--calib-frames {args.calib_frames} must be at least 1")
        table = calibration_cache_path(Path(args.out))
        if args.calib_data is None and not table.is_file():
            raise ConfigError(
                f"--precision int8 needs a calibration: give --calib-data DATAROOT (with "
                f"--calib-version and --calib-split), or keep the table {table} of an earlier "
                "calibration beside --out"
            )
    elif args.calib_data is not None:
        raise ConfigError(f"--calib-data only applies to --precision int8, not {args.precision}")


# ------------------------------------------------------------------------------ calibration


def evenly_spaced(count: int, limit: int) -> list[int]:
    """min(count, limit) indices spread evenly over range(count) (deterministic)."""
    if count <= limit:
        return list(range(count))
    return [(k * count) // limit for k in range(limit)]


def calibration_frames(
    dataroot: Path,
    version: str,
    split: str | None,
    model_config: ModelConfig,
    training_data: Mapping[str, Any] | None,
    limit: int = DEFAULT_CALIBRATION_FRAMES,
) -> Iterator[Inputs]:
    """Engine inputs ([1, ...] each) of up to `limit` keyframes spread over the split: the
    dataset reader with the model's recorded training-frame settings (the node's when none
    are recorded), then the Preprocessor of the model's config."""
    from peftdml_ros.data.nuscenes_reader import NuScenesReader
    from peftdml_ros.tools.eval import reader_settings

    settings, notes = reader_settings(training_data)
    for note in notes:
        print(f"calibration: {note}", file=sys.stderr)
    reader = NuScenesReader(dataroot, version, split, **settings)
    if len(reader) == 0:
        raise ConfigError(f"{dataroot} {version} split {split!r} has no keyframes to calibrate on")
    preprocessor = Preprocessor(PreprocessConfig.from_model_config(model_config))
    for index in evenly_spaced(len(reader), limit):
        yield preprocessor(reader[index].frame)


class _Counted:
    """An iterator of inputs that counts what it handed out (reported after the build)."""

    def __init__(self, frames: Iterator[Inputs]) -> None:
        self._frames = frames
        self.count = 0

    def __iter__(self) -> Iterator[Inputs]:
        for inputs in self._frames:
            self.count += 1
            yield {name: np.ascontiguousarray(v, np.float32) for name, v in inputs.items()}


# --------------------------------------------------------------------------------- progress


class SpinnerProgress:
    """A BuildProgress for a terminal: a spinner line rewritten in place (elapsed time, phase)
    on a TTY; plain lines otherwise (logs, CI), where `interval_s` should be longer."""

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self.tty = self._stream.isatty() if tty is None else tty
        self._frames = itertools.cycle(_SPINNER)
        self._width = 0

    @property
    def interval_s(self) -> float:
        return TTY_INTERVAL_S if self.tty else LOG_INTERVAL_S

    def __call__(self, status: BuildStatus) -> None:
        text = status.text()
        if not self.tty:
            self._stream.write(text + "\n")
        else:
            line = text if status.done else f"{next(self._frames)} {text}"
            self._width = max(self._width, len(line))
            self._stream.write("\r" + line.ljust(self._width) + ("\n" if status.done else ""))
        self._stream.flush()


def build_engine(
    args: argparse.Namespace,
    onnx_path: Path,
    model_config: ModelConfig,
    training_data: Mapping[str, Any] | None,
    stream: TextIO | None = None,
) -> EngineResult:
    """Build (or find cached) the engine of `onnx_path` as the options say; prints what it
    did. Raises BackendUnavailableError where TensorRT or a GPU is missing."""
    out = stream if stream is not None else sys.stdout
    frames = None
    if args.precision == "int8" and args.calib_data is not None:
        frames = _Counted(
            calibration_frames(
                args.calib_data,
                args.calib_version,
                args.calib_split,
                model_config,
                training_data,
                args.calib_frames,
            )
        )
    progress = SpinnerProgress()
    result = ensure_engine(
        onnx_path,
        args.precision,
        args.engine_device,
        calibration=frames,
        progress=progress,
        progress_interval_s=progress.interval_s,
        rebuild=args.rebuild,
    )
    if not result.built:
        print(
            f"engine {result.path} is up to date (cached; --rebuild to build it again)", file=out
        )
        return result
    print(f"wrote {result.path} in {result.build_s:.0f} s", file=out)
    if result.pinned:
        kept = ", ".join(f"{rule}: {count}" for rule, count in sorted(result.pinned.items()))
        print(f"  layers kept in fp32: {kept}", file=out)
    if frames is not None:
        print(
            f"  calibrated on {frames.count} frames; table {calibration_cache_path(onnx_path)}",
            file=out,
        )
    return result
