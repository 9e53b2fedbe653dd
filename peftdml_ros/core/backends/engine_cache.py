"""TensorRT engine cache: what an engine is valid for, where it lives, and atomic writes.

Nothing here imports TensorRT, so the rules are testable on any machine.

An engine built from `model.onnx` is `model.<precision>.engine`, with a sidecar
`model.<precision>.engine.json` holding its `EngineKey`: the ONNX file's sha256, the TensorRT
version, the GPU name and compute capability, the precision, the optimization profile's input
shapes (min, opt, max per input), for int8 the sha256 of the calibration cache it was built
from, and `BUILDER_REVISION` (the build recipe: flags and fp32-pinned layers). An engine is used
only when every component matches; otherwise it is rebuilt, and the message says which
component changed. INT8 calibration is cached in `model.int8.calib`.

Every file is written atomically (`atomic_write`): a temporary file in the same directory,
fsync, then `os.replace`, so a reader sees the old file or the complete new one, never a
partial one, even when the writer crashes or two processes build at once (the last one wins).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftdml_ros.core import model_io
from peftdml_ros.core.errors import ConfigError, ModelArtifactError

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
DEFAULT_PRECISION = "fp16"
# Bump when the build recipe changes what an engine computes (flags, pinned layers): every
# cached engine is then rebuilt once.
BUILDER_REVISION = 1
DEFAULT_MAX_BATCH = 4
ENGINE_SUFFIXES: tuple[str, ...] = (".engine", ".plan")

# (min, opt, max) shape of one input in the optimization profile.
ShapeRange = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


def check_precision(value: str) -> str:
    """`value` if it is one of PRECISIONS, else ConfigError saying what each one needs."""
    if value not in PRECISIONS:
        raise ConfigError(
            f"precision {value!r} is not one of {list(PRECISIONS)}: fp16 is the usual choice on "
            "a GPU (the GMM/normality and pillar-sum layers stay fp32), fp32 the reference, "
            "int8 needs a calibration (`peftdml export --build-engine --precision int8 "
            "--calib-data DATAROOT ...`)"
        )
    return value


@dataclass(frozen=True)
class EngineEnvironment:
    """The build machine as far as an engine cares: TensorRT version and GPU."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized engine depends on; see the module docstring."""

    onnx_sha256: str
    environment: EngineEnvironment
    precision: str
    input_shapes: Mapping[str, ShapeRange]
    calibration_sha256: str = ""
    builder_revision: int = BUILDER_REVISION

    def __post_init__(self) -> None:
        check_precision(self.precision)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what the sidecar stores)."""
        env = self.environment
        return {
            "onnx_sha256": self.onnx_sha256,
            "tensorrt_version": env.tensorrt_version,
            "gpu_name": env.gpu_name,
            "compute_capability": f"{env.compute_capability[0]}.{env.compute_capability[1]}",
            "precision": self.precision,
            "input_shapes": {
                name: {"min": _ints(rng[0]), "opt": _ints(rng[1]), "max": _ints(rng[2])}
                for name, rng in self.input_shapes.items()
            },
            "calibration_sha256": self.calibration_sha256,
            "builder_revision": self.builder_revision,
        }

    def digest(self) -> str:
        """sha256 of the canonical JSON of `to_dict` (changes with every component)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _ints(shape: tuple[int, ...]) -> list[int]:
    return [int(d) for d in shape]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------- paths


def engine_path(onnx_path: Path, precision: str) -> Path:
    """model.onnx -> model.<precision>.engine (beside it)."""
    return onnx_path.with_suffix(f".{check_precision(precision)}.engine")


def stamp_path(engine: Path) -> Path:
    """model.fp16.engine -> model.fp16.engine.json (the key it was built for)."""
    return engine.with_name(engine.name + ".json")


def calibration_cache_path(onnx_path: Path) -> Path:
    """model.onnx -> model.int8.calib (TensorRT's INT8 calibration table)."""
    return onnx_path.with_suffix(".int8.calib")


# ---------------------------------------------------------------------------- input shapes


def profile_shapes(onnx_path: Path, max_batch: int = DEFAULT_MAX_BATCH) -> dict[str, ShapeRange]:
    """(min, opt, max) of every model_io input for the optimization profile, read from the
    ONNX graph: fixed dimensions as they are, a symbolic one (the batch of a
    `--dynamic-batch` export) from 1 (min and opt: the node runs single frames) to max_batch."""
    import onnx

    if max_batch < 1:
        raise ConfigError(f"max_batch {max_batch} must be at least 1")
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    shapes: dict[str, ShapeRange] = {}
    for value in graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        low = tuple(d.dim_value if d.dim_value > 0 else 1 for d in dims)
        high = tuple(d.dim_value if d.dim_value > 0 else max_batch for d in dims)
        shapes[value.name] = (low, low, high)
    if set(shapes) != set(model_io.INPUT_NAMES):
        raise ModelArtifactError(
            f"{onnx_path} has inputs {sorted(shapes)}, this version needs "
            f"{list(model_io.INPUT_NAMES)}: re-export it with `peftdml export`"
        )
    return {name: shapes[name] for name in model_io.INPUT_NAMES}


def calibration_shapes(shapes: Mapping[str, ShapeRange]) -> dict[str, ShapeRange]:
    """The calibration profile: every input at its minimum shape (batch 1, one frame a batch,
    what the Preprocessor yields)."""
    return {name: (rng[0], rng[0], rng[0]) for name, rng in shapes.items()}


# ---------------------------------------------------------------------------- cache lookup


@dataclass(frozen=True)
class CacheLookup:
    """Whether `engine` may be used for a key, and why (or why not)."""

    engine: Path
    hit: bool
    reason: str


def lookup(engine: Path, key: EngineKey) -> CacheLookup:
    """Compare `engine`'s sidecar with `key`; the reason names every component that differs."""
    stamp = stamp_path(engine)
    if not engine.is_file():
        return CacheLookup(engine, False, f"no engine {engine.name} yet")
    if not stamp.is_file():
        return CacheLookup(engine, False, f"{engine.name} has no sidecar {stamp.name}")
    try:
        stored = json.loads(stamp.read_text(encoding="utf-8")).get("key", {})
    except (OSError, ValueError, AttributeError) as error:
        return CacheLookup(engine, False, f"sidecar {stamp.name} is unreadable ({error})")
    wanted = key.to_dict()
    changed = [name for name in wanted if stored.get(name) != wanted[name]]
    if changed:
        details = ", ".join(
            f"{name} {_short(stored.get(name))} -> {_short(wanted[name])}" for name in changed
        )
        return CacheLookup(engine, False, f"{engine.name} was built for another {details}")
    return CacheLookup(engine, True, f"{engine.name} matches the model, GPU and TensorRT")


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
        return text[:12]  # a sha256: the prefix is enough to tell them apart
    return text if len(text) <= 60 else text[:57] + "..."


def announcement(found: CacheLookup, onnx_path: Path, key: EngineKey) -> str:
    """What a node or tool says before it loads or builds the engine of `onnx_path`."""
    env = key.environment
    target = (
        f"{key.precision}, {env.gpu_name} (compute capability "
        f"{env.compute_capability[0]}.{env.compute_capability[1]}), TensorRT "
        f"{env.tensorrt_version}"
    )
    if found.hit:
        return f"loading cached TensorRT engine {found.engine} ({target})"
    return (
        f"BUILDING a TensorRT engine from {onnx_path} ({target}) because {found.reason}. This "
        "takes minutes and happens once per model, GPU, TensorRT version and precision; build "
        f"it ahead of time with `peftdml export --checkpoint ... --out {onnx_path.name} "
        f"--build-engine --precision {key.precision}` or by running the node once with "
        "detector.build_only:=true"
    )


def write_stamp(engine: Path, key: EngineKey, build_s: float) -> None:
    """The sidecar of a freshly written engine (write the engine first: a crash in between
    leaves an engine without a matching sidecar, which is rebuilt, never trusted)."""
    record = {"key": key.to_dict(), "digest": key.digest(), "build_s": round(build_s, 1)}
    atomic_write(stamp_path(engine), (json.dumps(record, indent=2) + "\n").encode("utf-8"))


# --------------------------------------------------------------------------- atomic writes


def atomic_write(path: Path, data: bytes | Iterable[bytes]) -> None:
    """Write `data` (bytes, or chunks of bytes) to `path` atomically.

    The bytes go to a temporary file in the same directory (so os.replace is a rename on one
    file system), are flushed and fsynced, and replace `path` in one step; the directory is
    fsynced so the rename survives a power loss. If anything fails (an exception in the chunk
    iterator, a full disk), the temporary file is removed and `path` keeps its old content.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    chunks = (data,) if isinstance(data, bytes | bytearray | memoryview) else data
    handle, temp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
    )
    temp = Path(temp_name)
    try:
        with os.fdopen(handle, "wb") as stream:
            for chunk in chunks:
                stream.write(chunk)
            stream.flush()
            os.fsync(stream.fileno())
        temp.replace(target)  # os.replace: atomic on POSIX, replaces an existing file
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    _fsync_directory(target.parent)


def _fsync_directory(directory: Path) -> None:
    # POSIX only: a directory cannot be opened for fsync on Windows (nothing to do there).
    if os.name != "posix":
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
