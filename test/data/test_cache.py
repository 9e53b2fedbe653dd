"""On-disk keyframe cache: same items as the uncached path, keyed, atomic, resumable, forkable."""

from __future__ import annotations

import functools
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from torch.utils.data import DataLoader

from peftdml_ros.core import model_io
from peftdml_ros.core.model import tiny_config
from peftdml_ros.core.preprocess import PreprocessConfig
from peftdml_ros.data.cache import (
    ITEMS_DIR,
    CachedKeyframes,
    CacheError,
    _code_closure,
    build_cache,
    build_or_load_cache,
    cache_directory,
    cache_key,
    code_fingerprint,
    dataset_identity,
    reader_settings,
    write_item,
)
from peftdml_ros.data.nuscenes_reader import NuScenesReader
from peftdml_ros.data.synth import VERSION as SYNTH_VERSION
from peftdml_ros.data.training import (
    KeyframeDataset,
    KeyframePairDataset,
    TrainingItem,
    collate_pairs,
)

MODEL = tiny_config()
CONFIG = PreprocessConfig.from_model_config(MODEL)


@pytest.fixture(scope="module")
def reader(synth3_dataroot: Path) -> NuScenesReader:
    return NuScenesReader(synth3_dataroot, SYNTH_VERSION, "synth_train", lidar_sweeps=2)


@pytest.fixture(scope="module")
def cache_root(reader: NuScenesReader, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cache")
    build_cache(reader, CONFIG, root, progress=False)
    return root


def assert_same_item(a: TrainingItem, b: TrainingItem) -> None:
    assert tuple(a.inputs) == tuple(b.inputs) == model_io.INPUT_NAMES
    for name in model_io.INPUT_NAMES:
        assert a.inputs[name].dtype == b.inputs[name].dtype == np.float32
        np.testing.assert_array_equal(a.inputs[name], b.inputs[name], err_msg=name)
    for field in ("center_m", "size_wlh_m", "yaw_rad", "velocity_mps", "score", "label"):
        x, y = getattr(a.ground_truth, field), getattr(b.ground_truth, field)
        assert x.dtype == y.dtype, field
        np.testing.assert_array_equal(x, y, err_msg=field)  # NaN velocities compare equal
    assert a.ground_truth.attribute == b.ground_truth.attribute
    np.testing.assert_array_equal(a.instance_ids, b.instance_ids)
    np.testing.assert_array_equal(a.radar_sensor_index, b.radar_sensor_index)
    np.testing.assert_array_equal(a.ego_to_global, b.ego_to_global)
    assert (a.scene_name, a.sample_token) == (b.scene_name, b.sample_token)


def test_cached_items_equal_the_uncached_items(reader: NuScenesReader, cache_root: Path) -> None:
    cached = build_or_load_cache(reader, CONFIG, cache_root, progress=False)
    uncached = KeyframeDataset(reader, MODEL)
    assert len(cached) == len(uncached) == len(reader) > 4
    assert cached.scene_names() == uncached.scene_names()
    assert cached.preprocess_config == CONFIG
    assert cached.reader_settings["lidar_sweeps"] == 2
    for index in range(len(cached)):
        assert_same_item(cached[index], uncached[index])
    assert_same_item(cached[-1], uncached[len(uncached) - 1])
    with pytest.raises(IndexError):
        cached[len(cached)]
    # Radar points are known per sensor: what single-radar dropout needs.
    index = cached[0].radar_sensor_index
    assert index is not None and len(set(index[index >= 0].tolist())) > 1


def test_a_complete_cache_is_read_without_touching_the_data(
    reader: NuScenesReader, cache_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_reading(token: str) -> Any:
        raise AssertionError("a complete cache must not read the dataset")

    monkeypatch.setattr(reader, "record", no_reading)
    cached = build_or_load_cache(reader, CONFIG, cache_root, progress=False)
    assert cached.directory == cache_directory(reader, CONFIG, cache_root)
    assert cached[0].sample_token == reader.sample_tokens[0]


def test_mmap_reads_the_same_items(reader: NuScenesReader, cache_root: Path) -> None:
    mapped = build_or_load_cache(reader, CONFIG, cache_root, mmap=True, progress=False)
    plain = CachedKeyframes(mapped.directory)
    item = mapped[1]
    assert_same_item(item, plain[1])
    assert isinstance(item.inputs["camera_to_ego"], np.memmap)
    assert not item.inputs["camera_to_ego"].flags.writeable


def _finished_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


class InterruptedBuildError(Exception):
    pass


def test_an_interrupted_build_resumes_where_it_stopped(
    reader: NuScenesReader, cache_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read = reader.record
    calls: list[str] = []

    def stop_after_three(token: str) -> Any:
        if len(calls) == 3:
            raise InterruptedBuildError
        calls.append(token)
        return read(token)

    monkeypatch.setattr(reader, "record", stop_after_three)
    with pytest.raises(InterruptedBuildError):
        build_cache(reader, CONFIG, tmp_path, progress=False)
    directory = cache_directory(reader, CONFIG, tmp_path)
    items = directory / ITEMS_DIR
    assert sorted(p.name for p in items.iterdir()) == ["000000", "000001", "000002"]
    with pytest.raises(CacheError, match="partial"):
        CachedKeyframes(directory)
    # A builder killed mid-item leaves a temporary directory; the next build removes it.
    stale = items / f".000004.{_finished_pid()}.x1y2"
    stale.mkdir()
    (stale / "half.npy").write_bytes(b"")

    calls.clear()
    monkeypatch.setattr(reader, "record", lambda token: calls.append(token) or read(token))
    stats = build_cache(reader, CONFIG, tmp_path, progress=False)
    assert (stats.built, stats.found) == (len(reader) - 3, 3)
    assert calls == reader.sample_tokens[3:]
    assert not stale.exists()
    assert stats.mb_per_keyframe > 0 and stats.seconds_per_keyframe > 0
    resumed, whole = (
        CachedKeyframes(directory),
        CachedKeyframes(cache_directory(reader, CONFIG, cache_root)),
    )
    for index in range(len(reader)):
        assert_same_item(resumed[index], whole[index])


@dataclass(frozen=True)
class FrameRule:
    slop_s: float = 0.05
    staleness_s: float = 0.5


def test_the_key_follows_reader_settings_config_and_code_inputs(
    reader: NuScenesReader, synth3_dataroot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = cache_directory(reader, CONFIG, tmp_path)
    again = NuScenesReader(
        synth3_dataroot, SYNTH_VERSION, "synth_train", lidar_sweeps=2, nusc=reader.nusc
    )
    assert cache_directory(again, CONFIG, tmp_path) == base
    other_split = NuScenesReader(
        synth3_dataroot, SYNTH_VERSION, "synth_val", lidar_sweeps=2, nusc=reader.nusc
    )
    more_sweeps = NuScenesReader(
        synth3_dataroot, SYNTH_VERSION, "synth_train", lidar_sweeps=3, nusc=reader.nusc
    )
    no_can = NuScenesReader(
        synth3_dataroot,
        SYNTH_VERSION,
        "synth_train",
        lidar_sweeps=2,
        can_bus=False,
        nusc=reader.nusc,
    )
    bigger = PreprocessConfig.from_model_config(tiny_config(max_radar_points=128))
    keys = {
        base,
        cache_directory(other_split, CONFIG, tmp_path),
        cache_directory(more_sweeps, CONFIG, tmp_path),
        cache_directory(no_can, CONFIG, tmp_path),
        cache_directory(reader, bigger, tmp_path),
    }
    assert len(keys) == 5
    # A reader option added later joins the key without any change here.
    monkeypatch.setattr(again, "frame_rule", FrameRule(), raising=False)
    settings = reader_settings(again)
    assert settings["frame_rule"] == {"slop_s": 0.05, "staleness_s": 0.5}
    public = {name for name in vars(reader) if not name.startswith("_")}
    identity = {"nusc", "dataroot", "version", "scene_names", "sample_tokens"}
    assert set(settings) == (public - identity) | {"can_bus", "frame_rule"}
    assert cache_directory(again, CONFIG, tmp_path) != base
    monkeypatch.setattr(again, "frame_rule", FrameRule(slop_s=0.1))
    assert len({base, cache_directory(again, CONFIG, tmp_path)}) == 2


def _linked_copy(dataroot: Path, dst: Path) -> Path:
    """A copy of the dataset whose tables and CAN files are real files and whose sensor files
    are symlinks (a stat follows them: a rewritten target is seen as rewritten)."""
    for src in dataroot.rglob("*"):
        target = dst / src.relative_to(dataroot)
        if src.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif src.suffix == ".json":
            shutil.copyfile(src, target)
        else:
            target.symlink_to(src)
    return dst


@pytest.fixture
def copied_reader(synth3_dataroot: Path, tmp_path: Path) -> NuScenesReader:
    root = _linked_copy(synth3_dataroot, tmp_path / "copy")
    return NuScenesReader(root, SYNTH_VERSION, "synth_train")


def test_rewritten_tables_change_the_dataset_identity(copied_reader: NuScenesReader) -> None:
    before = dataset_identity(copied_reader)
    assert dataset_identity(copied_reader) == before
    table = copied_reader.dataroot / SYNTH_VERSION / "sample_annotation.json"
    table.write_text(table.read_text())
    assert dataset_identity(copied_reader) != before


def test_changed_can_bus_files_change_the_dataset_identity(
    copied_reader: NuScenesReader,
) -> None:
    before = dataset_identity(copied_reader)
    assert before["can_bus"]["files"] > 0
    imu = sorted((copied_reader.dataroot / "can_bus").glob("*_ms_imu.json"))[0]
    imu.write_text(imu.read_text() + " ")  # what a re-extracted IMU file looks like to a stat
    after = dataset_identity(copied_reader)
    assert after["can_bus"] != before["can_bus"]
    assert after["sensor_files"] == before["sensor_files"]
    # A reader without the CAN bus does not depend on it.
    no_can = NuScenesReader(
        copied_reader.dataroot, SYNTH_VERSION, "synth_train", can_bus=False,
        nusc=copied_reader.nusc,
    )  # fmt: skip
    assert "can_bus" not in dataset_identity(no_can)


def test_changed_sensor_files_change_the_dataset_identity(
    copied_reader: NuScenesReader,
) -> None:
    before = dataset_identity(copied_reader)
    files = copied_reader.sample_data_files()
    assert before["sensor_files"]["files"] == len(files) > 0
    # Every sweep and keyframe file of the split's scenes, and only those.
    by_name = {s["name"]: s["token"] for s in copied_reader.nusc.scene}
    split_scenes = {by_name[name] for name in copied_reader.scene_names}
    scene_of_sample = {s["token"]: s["scene_token"] for s in copied_reader.nusc.sample}
    expected = [
        sd["filename"]
        for sd in copied_reader.nusc.sample_data
        if scene_of_sample[sd["sample_token"]] in split_scenes
    ]
    assert sorted(files) == sorted(expected)
    sweep = copied_reader.dataroot / next(f for f in files if f.startswith("sweeps/"))
    data = sweep.read_bytes()
    sweep.unlink()
    sweep.write_bytes(data[: len(data) // 2])  # a truncated re-download
    after = dataset_identity(copied_reader)
    assert after["sensor_files"] != before["sensor_files"]
    assert after["tables"] == before["tables"] and after["can_bus"] == before["can_bus"]
    sweep.unlink()
    assert dataset_identity(copied_reader)["sensor_files"] != after["sensor_files"]


def test_workers_build_the_same_cache_and_loader_workers_read_it(
    reader: NuScenesReader, cache_root: Path, tmp_path: Path
) -> None:
    parallel = build_or_load_cache(reader, CONFIG, tmp_path, workers=2, progress=False)
    serial = CachedKeyframes(cache_directory(reader, CONFIG, cache_root))
    for index in range(len(serial)):
        assert_same_item(parallel[index], serial[index])

    pairs = KeyframePairDataset(parallel)
    collate = functools.partial(collate_pairs, config=MODEL)

    def batches(workers: int) -> list[Any]:
        return list(DataLoader(pairs, batch_size=2, num_workers=workers, collate_fn=collate))

    for (now_a, later_a), (now_b, later_b) in zip(batches(0), batches(2), strict=True):
        for a, b in ((now_a, now_b), (later_a, later_b)):
            assert a.sample_tokens == b.sample_tokens
            for name in model_io.INPUT_NAMES:
                assert bool((a.inputs[name] == b.inputs[name]).all()), name
            assert bool((a.targets.heatmap == b.targets.heatmap).all())


def test_missing_caches_say_how_to_build_them(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="build_or_load_cache"):
        CachedKeyframes(tmp_path / "nothing")


def test_the_code_fingerprint_covers_the_modules_that_make_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = code_fingerprint("peftdml_ros.data.nuscenes_reader")
    assert base == code_fingerprint("peftdml_ros.data.nuscenes_reader")
    assert code_fingerprint("peftdml_ros.core.pointcloud") != base  # a module it did not reach
    # Imports inside functions count as much as those at module level.
    (tmp_path / "lazy_data_code.py").write_text(
        "def read():\n    from peftdml_ros.core import pointcloud\n    import cv2\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    modules, libraries = _code_closure(("lazy_data_code",))
    assert "peftdml_ros.core.pointcloud" in modules and "cv2" in libraries
    assert set(_code_closure(("peftdml_ros.core.pointcloud",))[0]) < set(modules)


def test_the_key_holds_the_versions_of_the_libraries_that_shape_the_data(
    reader: NuScenesReader,
) -> None:
    from importlib.metadata import version

    key = cache_key(reader, CONFIG)
    libraries = key["libraries"]
    # The devkit (box velocities, classes; imported inside functions), the JPEG decoder, numpy.
    assert libraries["nuscenes-devkit"] == version("nuscenes-devkit")
    assert "numpy" in libraries and any(name.startswith("opencv") for name in libraries)
    assert "tqdm" not in libraries  # a progress bar shapes no tensor


def test_a_keyframe_written_by_another_builder_first_is_kept(
    cache_root: Path, reader: NuScenesReader
) -> None:
    cached = CachedKeyframes(cache_directory(reader, CONFIG, cache_root))
    final = cached.directory / ITEMS_DIR / "000000"
    before = sorted((p.name, p.stat().st_mtime_ns) for p in final.iterdir())
    assert write_item(final, cached[1]) == 0  # lost the race: nothing written
    assert sorted((p.name, p.stat().st_mtime_ns) for p in final.iterdir()) == before
    assert not [p for p in final.parent.iterdir() if p.name.startswith(".")]
    assert_same_item(cached[0], CachedKeyframes(cached.directory)[0])


def test_the_cache_benchmark_measures_the_first_scenes(
    synth3_dataroot: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from peftdml_ros.tools import bench

    argv = ["cache", "--data", str(synth3_dataroot), "--scenes", "1", "--workers", "1"]
    assert bench.main([*argv, "--batches", "1", "--batch-size", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    reader = NuScenesReader(synth3_dataroot, SYNTH_VERSION, None, can_bus=False)
    first = reader.nusc.get(
        "scene", reader.nusc.get("sample", reader.sample_tokens[0])["scene_token"]
    )
    assert result["keyframes"] == first["nbr_samples"] < len(reader)
    assert result["build"]["mb_per_keyframe"] > 0 and result["build"]["s_per_keyframe"] > 0
    assert set(result["keyframe_ms"]) == {"uncached", "cached", "mmap"}
    assert len(result["batch_ms"]) == 3
    assert "| cache size |" in bench.TARGETS["cache"].render(result)
