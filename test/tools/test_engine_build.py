"""`peftdml export --build-engine`: option checks, the refusal where TensorRT is missing, the
INT8 calibration frames read from a generated dataset, the progress display."""

from __future__ import annotations

import argparse
import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest

from peftdml_ros.core import model_io
from peftdml_ros.core.backends.engine_cache import calibration_cache_path
from peftdml_ros.core.backends.tensorrt_backend import BuildStatus
from peftdml_ros.core.errors import ConfigError
from peftdml_ros.core.model import build_model, save_checkpoint, tiny_config
from peftdml_ros.core.preprocess import PreprocessConfig, Preprocessor, input_shapes
from peftdml_ros.tools import cli, engine_build

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
CONFIG = tiny_config()
VERSION = "v1.0-synth"


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    engine_build.add_engine_arguments(parser)
    return parser.parse_args(list(argv))


def test_engine_options_are_checked_before_any_work(tmp_path: Path) -> None:
    out = str(tmp_path / "m.onnx")
    engine_build.check_engine_arguments(_args("--out", out))
    engine_build.check_engine_arguments(_args("--out", out, "--build-engine"))
    args = _args("--out", out, "--build-engine")
    assert args.precision == "fp16" and args.engine_device == "cuda" and not args.rebuild
    with pytest.raises(ConfigError, match="--precision int8 needs a calibration"):
        engine_build.check_engine_arguments(
            _args("--out", out, "--build-engine", "--precision", "int8")
        )
    calibration_cache_path(Path(out)).write_bytes(b"table of an earlier calibration")
    engine_build.check_engine_arguments(
        _args("--out", out, "--build-engine", "--precision", "int8")
    )
    with pytest.raises(ConfigError, match="only applies to --precision int8"):
        engine_build.check_engine_arguments(
            _args("--out", out, "--build-engine", "--calib-data", str(tmp_path))
        )
    with pytest.raises(ConfigError, match="only applies with --build-engine"):
        engine_build.check_engine_arguments(_args("--out", out, "--calib-data", str(tmp_path)))
    with pytest.raises(SystemExit):
        _args("--out", out, "--precision", "fp8")  # argparse refuses it (exit 2)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.pt", build_model(CONFIG))


def test_int8_without_a_calibration_fails_before_exporting(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.onnx"
    argv = ["export", "--checkpoint", str(checkpoint), "--out", str(out)]
    assert cli.main([*argv, "--build-engine", "--precision", "int8"]) == 1
    assert "--calib-data DATAROOT" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is importable here")
def test_build_engine_where_tensorrt_is_missing_says_so_after_the_export(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.onnx"
    argv = ["export", "--checkpoint", str(checkpoint), "--out", str(out), "--build-engine"]
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    assert "TensorRT is not installed" in captured.err
    assert out.is_file() and (tmp_path / "m.manifest.json").is_file()  # the export stands
    assert not list(tmp_path.glob("*.engine"))


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from peftdml_ros.data.synth import generate_dataset

    root = tmp_path_factory.mktemp("calib_data")
    return Path(generate_dataset(root, scenes=1, seed=4, preset="small", progress=False))


def test_calibration_frames_are_preprocessed_keyframes_spread_over_the_split(
    synth_root: Path,
) -> None:
    from peftdml_ros.data.nuscenes_reader import NuScenesReader
    from peftdml_ros.tools.eval import NODE_FRAME_SETTINGS

    reader = NuScenesReader(synth_root, VERSION, None, **NODE_FRAME_SETTINGS)
    assert len(reader) > 3
    frames = list(engine_build.calibration_frames(synth_root, VERSION, None, CONFIG, None, 3))
    assert len(frames) == 3
    shapes = input_shapes(PreprocessConfig.from_model_config(CONFIG))
    chosen = engine_build.evenly_spaced(len(reader), 3)
    assert chosen[0] == 0 and chosen == sorted(set(chosen))
    preprocessor = Preprocessor(PreprocessConfig.from_model_config(CONFIG))
    for inputs, index in zip(frames, chosen, strict=True):
        assert tuple(inputs) == model_io.INPUT_NAMES
        assert {k: v.shape for k, v in inputs.items()} == shapes
        expected = preprocessor(reader[index].frame)
        for name in model_io.INPUT_NAMES:
            np.testing.assert_array_equal(inputs[name], expected[name], err_msg=name)
    assert inputs["modality_mask"][0, 0] == 1.0  # LiDAR present: real sensor data, not padding
    every = list(engine_build.calibration_frames(synth_root, VERSION, None, CONFIG, None, 999))
    assert len(every) == len(reader)


def test_calibration_on_an_empty_split_is_refused(synth_root: Path) -> None:
    import json

    splits = synth_root / VERSION / "splits.json"
    names = json.loads(splits.read_text())
    try:
        splits.write_text(json.dumps({**names, "nothing": []}))
        with pytest.raises(ConfigError, match="split 'nothing' has no scene"):
            next(engine_build.calibration_frames(synth_root, VERSION, "nothing", CONFIG, None))
    finally:
        splits.write_text(json.dumps(names))


def test_evenly_spaced() -> None:
    assert engine_build.evenly_spaced(3, 10) == [0, 1, 2]
    assert engine_build.evenly_spaced(10, 4) == [0, 2, 5, 7]
    assert engine_build.evenly_spaced(0, 4) == []


def test_progress_is_a_spinner_on_a_terminal_and_lines_in_a_log() -> None:
    log = io.StringIO()
    lines = engine_build.SpinnerProgress(log, tty=False)
    assert lines.interval_s == engine_build.LOG_INTERVAL_S
    lines(BuildStatus(10.0, "Building engine", 1, 3))
    lines(BuildStatus(20.0, done=True))
    assert log.getvalue().splitlines() == [
        "building TensorRT engine: 10 s elapsed - Building engine 1/3",
        "built TensorRT engine: 20 s elapsed",
    ]
    screen = io.StringIO()
    spinner = engine_build.SpinnerProgress(screen, tty=True)
    assert spinner.interval_s == engine_build.TTY_INTERVAL_S
    for second in range(3):
        spinner(BuildStatus(float(second)))
    spinner(BuildStatus(3.0, done=True))
    text = screen.getvalue()
    assert text.count("\r") == 4 and text.endswith("\n") and text.count("\n") == 1
    frames = [part[0] for part in text.split("\r")[1:4]]
    assert frames == ["|", "/", "-"]
    assert "\rbuilt TensorRT engine: 3 s elapsed" in text
