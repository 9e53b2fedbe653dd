"""The TensorRT engine cache without TensorRT: key, lookup, messages, atomic writes, precision."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from peftdml_ros.core import model_io
from peftdml_ros.core.backends import create_backend
from peftdml_ros.core.backends import engine_cache as ec
from peftdml_ros.core.detector import manifest_path
from peftdml_ros.core.errors import ConfigError, ModelArtifactError
from peftdml_ros.core.model import build_model, export_onnx, tiny_config

ENV = ec.EngineEnvironment("10.16.1", "NVIDIA H200", (9, 0))
SHAPES: dict[str, ec.ShapeRange] = {
    "lidar_points": ((1, 512, 5), (1, 512, 5), (4, 512, 5)),
    "modality_mask": ((1, 5), (1, 5), (4, 5)),
}


def _key(**changes: object) -> ec.EngineKey:
    key = ec.EngineKey(
        onnx_sha256="a" * 64, environment=ENV, precision="fp16", input_shapes=SHAPES
    )
    return dataclasses.replace(key, **changes)  # type: ignore[arg-type]


def _variants() -> dict[str, ec.EngineKey]:
    """One key per component, each differing from _key() in that component only."""
    wider = {**SHAPES, "lidar_points": ((1, 512, 5), (1, 512, 5), (8, 512, 5))}
    return {
        "onnx_sha256": _key(onnx_sha256="b" * 64),
        "tensorrt_version": _key(environment=dataclasses.replace(ENV, tensorrt_version="10.9")),
        "gpu_name": _key(environment=dataclasses.replace(ENV, gpu_name="NVIDIA A100")),
        "compute_capability": _key(
            environment=dataclasses.replace(ENV, compute_capability=(8, 0))
        ),
        "precision": _key(precision="fp32"),
        "input_shapes": _key(input_shapes=wider),
        "calibration_sha256": _key(calibration_sha256="c" * 64),
        "builder_revision": _key(builder_revision=ec.BUILDER_REVISION + 1),
    }


def test_the_key_changes_with_every_component() -> None:
    base = _key()
    assert base.digest() == _key().digest()  # deterministic
    variants = _variants()
    assert set(variants) == set(base.to_dict())  # every component of the key is covered
    digests = {name: key.digest() for name, key in variants.items()}
    assert base.digest() not in digests.values()
    assert len(set(digests.values())) == len(digests)


def test_lookup_hits_only_a_matching_sidecar(tmp_path: Path) -> None:
    engine = ec.engine_path(tmp_path / "m.onnx", "fp16")
    assert engine.name == "m.fp16.engine"
    found = ec.lookup(engine, _key())
    assert not found.hit and "no engine m.fp16.engine" in found.reason
    engine.write_bytes(b"serialized engine")
    assert "no sidecar" in ec.lookup(engine, _key()).reason
    ec.write_stamp(engine, _key(), build_s=61.23)
    assert ec.stamp_path(engine).name == "m.fp16.engine.json"
    stored = json.loads(ec.stamp_path(engine).read_text())
    assert stored["digest"] == _key().digest() and stored["build_s"] == 61.2
    assert ec.lookup(engine, _key()).hit
    for component, key in _variants().items():
        found = ec.lookup(engine, key)
        assert not found.hit, component
        assert f"built for another {component} " in found.reason, found.reason
    gpu = ec.lookup(engine, _variants()["gpu_name"]).reason
    assert "gpu_name NVIDIA H200 -> NVIDIA A100" in gpu
    ec.stamp_path(engine).write_text("{ not json")
    assert "unreadable" in ec.lookup(engine, _key()).reason


def test_the_node_says_whether_it_loads_or_builds(tmp_path: Path) -> None:
    onnx = tmp_path / "m.onnx"
    engine = ec.engine_path(onnx, "fp16")
    building = ec.announcement(ec.lookup(engine, _key()), onnx, _key())
    assert building.startswith("BUILDING a TensorRT engine from")
    assert "no engine m.fp16.engine yet" in building
    assert "NVIDIA H200 (compute capability 9.0), TensorRT 10.16.1" in building
    assert "takes minutes" in building
    assert "--build-engine --precision fp16" in building
    assert "detector.build_only:=true" in building
    engine.write_bytes(b"x")
    ec.write_stamp(engine, _key(), 1.0)
    loading = ec.announcement(ec.lookup(engine, _key()), onnx, _key())
    assert loading.startswith(f"loading cached TensorRT engine {engine}")
    stale = ec.announcement(ec.lookup(engine, _variants()["tensorrt_version"]), onnx, _key())
    assert "BUILDING" in stale and "tensorrt_version 10.16.1 -> 10.9" in stale


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_replaces_the_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "m.fp16.engine"
    ec.atomic_write(target, b"first")
    assert target.read_bytes() == b"first"
    ec.atomic_write(target, iter([b"sec", b"ond"]))
    assert target.read_bytes() == b"second"
    assert _leftovers(target.parent) == []


def test_a_failing_write_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "m.fp16.engine"

    def chunks_then_crash() -> Iterator[bytes]:
        yield b"half of an engine"
        raise RuntimeError("builder crashed mid-write")

    with pytest.raises(RuntimeError, match="mid-write"):
        ec.atomic_write(target, chunks_then_crash())
    assert not target.exists()  # nothing visible under the name a node loads
    assert _leftovers(tmp_path) == []
    ec.atomic_write(target, b"old engine")
    with pytest.raises(RuntimeError, match="mid-write"):
        ec.atomic_write(target, chunks_then_crash())
    assert target.read_bytes() == b"old engine"  # the previous engine is untouched
    assert _leftovers(tmp_path) == []


def test_a_failing_fsync_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "m.int8.calib"
    ec.atomic_write(target, b"old table")

    def no_space(descriptor: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        ec.atomic_write(target, b"new table")
    monkeypatch.undo()
    assert target.read_bytes() == b"old table"
    assert _leftovers(tmp_path) == []


def test_precision_is_validated_everywhere() -> None:
    assert [ec.check_precision(p) for p in ("fp32", "fp16", "int8")] == ["fp32", "fp16", "int8"]
    for bad in ("FP16", "fp8", "bf16", ""):
        with pytest.raises(ConfigError, match=r"not one of \['fp32', 'fp16', 'int8'\]"):
            ec.check_precision(bad)
    with pytest.raises(ConfigError, match="precision 'fp8'"):
        _key(precision="fp8")
    with pytest.raises(ConfigError, match="precision 'half'"):
        ec.engine_path(Path("m.onnx"), "half")
    with pytest.raises(ConfigError, match="precision 'int4'"):
        create_backend("torch", "", "cpu", precision="int4")  # before any model is built


def test_engine_files_share_the_models_manifest() -> None:
    onnx = Path("models/m.onnx")
    for precision in ec.PRECISIONS:
        assert manifest_path(ec.engine_path(onnx, precision)) == Path("models/m.manifest.json")
    assert ec.calibration_cache_path(onnx) == Path("models/m.int8.calib")


def test_profile_shapes_of_real_exports(tiny_onnx: Path, tmp_path: Path) -> None:
    config = tiny_config()
    shapes = ec.profile_shapes(tiny_onnx, max_batch=3)
    assert tuple(shapes) == model_io.INPUT_NAMES
    low, opt, high = shapes["camera_images"]
    h, w = config.image_size_hw
    assert low == opt == (1, config.num_cameras, 3, h, w)
    assert high == (3, config.num_cameras, 3, h, w)
    assert shapes["lidar_points"][2] == (3, config.max_lidar_points, 5)
    assert ec.calibration_shapes(shapes)["lidar_points"] == ((1, 512, 5),) * 3
    fixed = export_onnx(build_model(config), tmp_path / "fixed.onnx", dynamic_batch=False)
    assert all(rng[0] == rng[2] for rng in ec.profile_shapes(fixed, max_batch=3).values())
    with pytest.raises(ConfigError, match="max_batch"):
        ec.profile_shapes(tiny_onnx, max_batch=0)


def test_profile_shapes_refuse_a_foreign_graph(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("points", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["points"], ["y"])], "g", [x], [y])
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ModelArtifactError, match="re-export"):
        ec.profile_shapes(path)
