"""On-disk cache of preprocessed keyframes: built once, then read with np.load.

Preprocessing a keyframe (six JPEG decodes and resizes, multi-sweep point merging and packing)
costs far more than a training step's share of data loading should; the cache pays it once per
dataset and settings. `build_or_load_cache(reader, preprocess_config, root)` returns a
`CachedKeyframes`, a torch Dataset of the same `TrainingItem`s KeyframeDataset gives
(bit-identical inputs), so KeyframePairDataset, collate_pairs and the augmentation wrappers work
on it unchanged.

Key. The cache lives in `<root>/<version>-<digest>/`, the digest of a JSON key (kept readable in
the manifest) made of:
  - the dataset: resolved dataroot, version, the split's scene names and sample tokens, the
    size and modification time of every table file, and digests of two listings (name, size,
    modification time; never the contents): the CAN bus directory when the reader reads the
    IMU, and every sensor file (samples/, sweeps/) of the split's scenes. A regenerated or
    re-extracted dataset gets a new key;
  - the reader's settings: every public attribute of the reader (sweeps, camera downscale,
    radar filter, IMU window, ego-motion compensation, GT filter, frame-rule settings, ...),
    taken generically so that a new reader option joins the key by itself, plus can_bus;
  - the PreprocessConfig (ranges, maxima, cameras, image size);
  - the source code of the modules that make the data (reader, synchronizer, preprocessing,
    and this file, found through their import statements, those inside functions included),
    and the versions of the third-party libraries they import (the devkit, OpenCV, numpy,
    ...): a code change rebuilds instead of training on frames the code no longer makes.
    Caches of other keys stay on disk; the builder lists them so they can be deleted.

Layout. `manifest.json` (key, sample tokens, scene names, complete flag) and one directory per
keyframe, `items/<index>/`, holding .npy files: camera images as their uint8 pixels (decoded
with the Preprocessor's own arithmetic, so bit-identical; checked while building), point inputs
as their valid rows only, every other input as is; the radar_sensor_index, the ground truth, the
track ids and ego_to_global; and meta.json (tokens, attributes, row counts, encodings).

Building is atomic per keyframe (written to a temporary directory, then renamed), so an
interrupted build leaves only whole keyframes and the next call continues where it stopped.
Reading holds no open files or caches between items: safe in forked DataLoader workers.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from peftdml_ros.core import model_io
from peftdml_ros.core.errors import ConfigError, InputDataError
from peftdml_ros.core.preprocess import (
    Inputs,
    PreprocessConfig,
    Preprocessor,
    decode_camera_images,
    encode_camera_images,
    input_shapes,
)
from peftdml_ros.core.types import NUSCENES_RADARS, Detections
from peftdml_ros.data.nuscenes_reader import NuScenesReader
from peftdml_ros.data.training import TrainingItem, keyframe_item

_LOG = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
CAN_BUS_DIR = "can_bus"
ITEMS_DIR = "items"
# Reader attributes that are not settings: the dataset identity (keyed apart) and live objects.
# The default cache root inside a dataroot (`peftdml train` and `peftdml eval` share it).
CACHE_DIR_NAME = ".peftdml_cache"
_NOT_SETTINGS = frozenset({"nusc", "dataroot", "version", "scene_names", "sample_tokens"})
# Where the code that decides what a cached keyframe holds starts: these modules and every
# module of this package they use, transitively, except the model's (targets are built from
# the cached ground truth at collate time, so model code never shapes cached data).
_CODE_ROOTS: tuple[str, ...] = ("peftdml_ros.data.cache",)
_NOT_DATA_CODE: tuple[str, ...] = ("peftdml_ros.core.model.",)
# Third-party libraries the data code imports that never shape a tensor (a progress bar).
_NOT_DATA_LIBRARIES = frozenset({"tqdm"})
_NOT_LIBRARIES = sys.stdlib_module_names | _NOT_DATA_LIBRARIES | {"__future__"}
# Ground truth columns of gt_boxes.npy.
_GT_COLUMNS = (("center_m", 3), ("size_wlh_m", 3), ("yaw_rad", 1), ("velocity_mps", 2),
               ("score", 1))  # fmt: skip
_POINT_VALID = {"lidar_points": "lidar_valid", "radar_points": "radar_valid"}


class CacheError(InputDataError):
    """A cache directory is incomplete, of another format, or does not match its key."""


# ------------------------------------------------------------------------------------------ key


def cache_key(reader: NuScenesReader, config: PreprocessConfig) -> dict[str, Any]:
    """The JSON-plain key of the cache of `reader`'s keyframes preprocessed for `config`."""
    return {
        "format": CACHE_FORMAT_VERSION,
        "dataset": dataset_identity(reader),
        "reader": reader_settings(reader),
        "preprocess": _plain(config),
        "code": code_fingerprint(type(reader).__module__),
        "libraries": library_versions(type(reader).__module__),
    }


def cache_directory(reader: NuScenesReader, config: PreprocessConfig, root: Path | str) -> Path:
    """`<root>/<version>-<digest of cache_key>`."""
    return Path(root) / f"{reader.version}-{_digest(cache_key(reader, config))}"


def dataset_identity(reader: NuScenesReader) -> dict[str, Any]:
    """Dataroot, version, split content, the (size, mtime) of every table file, a digest of the
    CAN bus directory listing (when the reader reads it) and of the split's sensor files.

    Listings, never contents: names, sizes and modification times cost one stat per file
    (about 0.3 s for 16 scenes, 49k files, with a warm page cache)."""
    root = Path(reader.dataroot)
    table_dir = root / reader.version
    tables = {
        path.name: [path.stat().st_size, path.stat().st_mtime_ns]
        for path in sorted(table_dir.glob("*.json"))
    }
    identity: dict[str, Any] = {
        "dataroot": str(root.resolve()),
        "version": reader.version,
        "scenes": _digest(list(reader.scene_names)),
        "samples": _digest(list(reader.sample_tokens)),
        "keyframes": len(reader.sample_tokens),
        "tables": tables,
    }
    if getattr(reader, "_can", None) is not None:
        identity["can_bus"] = _listing_digest(
            root / CAN_BUS_DIR, sorted(_file_names(root / CAN_BUS_DIR))
        )
    identity["sensor_files"] = _listing_digest(root, sorted(reader.sample_data_files()))
    return identity


def _file_names(directory: Path) -> list[str]:
    """Names of the plain files directly in `directory` (none when it does not exist)."""
    if not directory.is_dir():
        return []
    with os.scandir(directory) as entries:
        return [entry.name for entry in entries if entry.is_file()]


def _listing_digest(directory: Path, names: list[str]) -> dict[str, Any]:
    """Count, total bytes and a digest of (name, size, mtime) of files under `directory`; a
    missing file is listed as such (the reader names it when it gets there)."""
    h = hashlib.blake2b(digest_size=16)
    total = 0
    if not directory.is_dir():
        return {"files": 0, "bytes": 0, "digest": h.hexdigest(), "missing": str(directory)}
    # os.stat relative to an open directory: half the time of Path.stat on 50k files.
    fd = os.open(directory, os.O_RDONLY)
    try:
        for name in names:
            try:
                stat = os.stat(name, dir_fd=fd)
                size, mtime_ns = stat.st_size, stat.st_mtime_ns
            except FileNotFoundError:
                size, mtime_ns = -1, -1
            total += max(size, 0)
            h.update(f"{name}\0{size}\0{mtime_ns}\n".encode())
    finally:
        os.close(fd)
    return {"files": len(names), "bytes": total, "digest": h.hexdigest()}


def reader_settings(reader: object) -> dict[str, Any]:
    """Every public attribute of the reader except the dataset identity and bound functions
    (hooks, not settings), as plain JSON."""
    settings = {
        name: _plain(value, name)
        for name, value in sorted(vars(reader).items())
        if not name.startswith("_")
        and name not in _NOT_SETTINGS
        and not isinstance(value, types.FunctionType | types.MethodType)
    }
    # The reader keeps its CAN-bus option only as the private loader it made (None without).
    if "can_bus" not in settings and hasattr(reader, "_can"):
        settings["can_bus"] = getattr(reader, "_can", None) is not None
    return settings


def code_fingerprint(*extra_modules: str) -> str:
    """Digest of the source of the modules that make cached data: the reader's module, this
    one, and every module of this package they import (see _code_closure)."""
    h = hashlib.blake2b(digest_size=16)
    for name, path in sorted(_code_closure((*_CODE_ROOTS, *extra_modules))[0].items()):
        h.update(name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def library_versions(*extra_modules: str) -> dict[str, str]:
    """Distribution -> version of every third-party library the data code imports (the
    devkit's box velocities and classes, OpenCV's JPEG decoder, numpy, ...): their code shapes
    cached tensors as much as ours, and they are mostly imported inside functions."""
    libraries = _code_closure((*_CODE_ROOTS, *extra_modules))[1]
    providers = _import_names_to_distributions()
    versions: dict[str, str] = {}
    for top in sorted(libraries):
        for distribution in providers.get(top, ()):
            versions[distribution] = importlib.metadata.version(distribution)
    return versions


@functools.cache
def _import_names_to_distributions() -> Mapping[str, list[str]]:
    """importlib.metadata.packages_distributions, once per process (it reads every installed
    distribution's file list: ~0.1 s; installed packages do not change under a running job)."""
    return importlib.metadata.packages_distributions()


def _code_closure(roots: tuple[str, ...]) -> tuple[dict[str, Path], set[str]]:
    """(module name -> source file of the modules of this package that `roots` import,
    transitively; the top-level names of the third-party modules those import).

    Read from the source: imports at module level and inside functions alike (devkit-facing
    code imports lazily). Modules are found, not imported. A module imported by a string name
    (importlib) is not seen: add it to _CODE_ROOTS."""
    package = __name__.split(".")[0]
    seen: dict[str, Path] = {}
    libraries: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen or name.startswith(_NOT_DATA_CODE):
            continue
        path = _source_of(name)
        if path is None:
            continue
        seen[name] = path
        for imported in _imported_modules(path, name):
            top = imported.split(".")[0]
            if top == package:
                todo.append(imported)
            elif top and top not in _NOT_LIBRARIES:
                libraries.add(top)
    return seen, libraries


def _source_of(module: str) -> Path | None:
    """The .py file of a module, or None when `module` names no module with a source file."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # e.g. a class imported from a module: not a module
        return None
    origin = spec.origin if spec is not None else None
    return Path(origin) if origin and origin.endswith(".py") else None


def _imported_modules(path: Path, module: str) -> Iterator[str]:
    """Every module an import statement anywhere in the file names; for `from M import n`
    both M and M.n (only those that are modules are kept by the caller)."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                base = ".".join([*parts[:keep], *([base] if base else [])])
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names if alias.name != "*")


def _plain(value: Any, name: str = "") -> Any:
    """JSON-plain form of a setting: scalars, paths, enums, dataclasses, mappings, sequences."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, enum.Enum):
        return _plain(value.value, name)
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name), name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        items = sorted(value.items(), key=lambda kv: str(kv[0]))
        return {str(k): _plain(v, name) for k, v in items}
    if isinstance(value, list | tuple):
        return [_plain(v, name) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(_plain(v, name) for v in value)
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    _LOG.warning(
        "reader attribute %r is a %s, which the cache key records by type only: a change of its "
        "contents does not rebuild the cache (keep reader settings as plain values or "
        "dataclasses)",
        name,
        kind,
    )
    return kind


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


# ---------------------------------------------------------------------------------------- build


@dataclass(frozen=True)
class CacheBuildStats:
    """What one build call did: keyframes written (and found), seconds, bytes written."""

    directory: Path
    built: int
    found: int
    seconds: float
    bytes_written: int

    @property
    def seconds_per_keyframe(self) -> float:
        return self.seconds / self.built if self.built else 0.0

    @property
    def mb_per_keyframe(self) -> float:
        return self.bytes_written / self.built / 1e6 if self.built else 0.0


def build_or_load_cache(
    reader: NuScenesReader,
    preprocess_config: PreprocessConfig,
    root: Path | str,
    *,
    workers: int = 0,
    mmap: bool = False,
    progress: bool = True,
) -> CachedKeyframes:
    """The cached keyframes of `reader` for `preprocess_config` under `root`, built first where
    missing (resuming a partial build). workers: processes preprocessing in parallel (0: this
    one). mmap: read arrays as read-only memory maps."""
    stats = build_cache(reader, preprocess_config, root, workers=workers, progress=progress)
    if stats.built:
        _LOG.info(
            "cache %s: %d keyframes built in %.1f s (%.3f s and %.2f MB per keyframe), %d found",
            stats.directory,
            stats.built,
            stats.seconds,
            stats.seconds_per_keyframe,
            stats.mb_per_keyframe,
            stats.found,
        )
    return CachedKeyframes(stats.directory, mmap=mmap)


def build_cache(
    reader: NuScenesReader,
    preprocess_config: PreprocessConfig,
    root: Path | str,
    *,
    workers: int = 0,
    progress: bool = True,
) -> CacheBuildStats:
    """Write every keyframe of `reader` that its cache directory lacks; mark it complete."""
    if len(reader) == 0:
        raise ConfigError(
            f"the split of {reader.dataroot} ({reader.version}) has no keyframes; check "
            "--version and --split (splits.json for custom splits)"
        )
    if workers < 0:
        raise ConfigError(f"workers {workers} must be >= 0")
    key = cache_key(reader, preprocess_config)
    directory = Path(root) / f"{reader.version}-{_digest(key)}"
    items = directory / ITEMS_DIR
    items.mkdir(parents=True, exist_ok=True)
    manifest = _open_manifest(directory, key, reader)
    if manifest.get("complete"):
        return CacheBuildStats(directory, 0, len(reader), 0.0, 0)
    _list_other_caches(Path(root), directory)
    _remove_stale_temporaries(items)
    missing = [i for i in range(len(reader)) if not (items / _item_name(i)).is_dir()]
    start = time.perf_counter()
    written = done = 0
    bar = tqdm(
        total=len(missing), desc="cache", unit="keyframe", disable=not progress, smoothing=0.1
    )
    with bar:
        for nbytes in _write_items(reader, preprocess_config, items, missing, workers):
            written += nbytes
            done += 1
            bar.update(1)
            bar.set_postfix(mb_per_keyframe=f"{written / done / 1e6:.2f}")
    seconds = time.perf_counter() - start
    _write_json(directory / MANIFEST_NAME, {**manifest, "complete": True})
    return CacheBuildStats(directory, len(missing), len(reader) - len(missing), seconds, written)


def _open_manifest(directory: Path, key: dict[str, Any], reader: NuScenesReader) -> dict[str, Any]:
    path = directory / MANIFEST_NAME
    if path.is_file():
        manifest: dict[str, Any] = json.loads(path.read_text())
        if manifest.get("key") != key:
            raise CacheError(
                f"{path} holds another key than its directory name says; delete {directory}"
            )
        return manifest
    manifest = {
        "key": key,
        "complete": False,
        "sample_tokens": list(reader.sample_tokens),
        "scene_names": _scene_names(reader),
        "radar_names": list(NUSCENES_RADARS),
    }
    _write_json(path, manifest)
    return manifest


def _scene_names(reader: NuScenesReader) -> list[str]:
    nusc = reader.nusc
    names = {scene["token"]: scene["name"] for scene in nusc.scene}
    return [str(names[nusc.get("sample", t)["scene_token"]]) for t in reader.sample_tokens]


def _write_items(
    reader: NuScenesReader,
    config: PreprocessConfig,
    items: Path,
    indices: list[int],
    workers: int,
) -> Iterator[int]:
    """Build and write `indices`; yields the bytes written per keyframe, in completion order."""
    jobs = _BuildJobs(reader, config, items, indices)
    if workers == 0:
        for k in range(len(jobs)):
            yield jobs[k]
        return
    # Workers fork with the reader and write their items themselves; only sizes come back.
    loader: DataLoader[int] = DataLoader(jobs, batch_size=None, num_workers=workers)
    yield from (int(n) for n in loader)


class _BuildJobs(Dataset[int]):
    """Item k: preprocess keyframe indices[k] and write it; returns the bytes written."""

    def __init__(
        self, reader: NuScenesReader, config: PreprocessConfig, items: Path, indices: list[int]
    ) -> None:
        self.reader = reader
        self.preprocessor = Preprocessor(config)
        self.items = items
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> int:
        index = self.indices[k]
        item = keyframe_item(self.reader[index], self.preprocessor)
        return write_item(self.items / _item_name(index), item)


def write_item(final: Path, item: TrainingItem) -> int:
    """Write one item atomically to the directory `final` (kept if it already exists);
    returns the bytes written."""
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.{os.getpid()}."))
    try:
        meta = _write_arrays(tmp, item)
        _write_json(tmp / "meta.json", meta)
        nbytes = sum(p.stat().st_size for p in tmp.iterdir())
        tmp.rename(final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if final.is_dir():  # another builder wrote this keyframe first: same content
            return 0
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return nbytes


def _write_arrays(directory: Path, item: TrainingItem) -> dict[str, Any]:
    inputs = item.inputs
    encoding: dict[str, str] = {}
    counts: dict[str, int] = {}
    for name in model_io.INPUT_NAMES:
        if name in encoding:
            continue
        array = inputs[name]
        if name == "camera_images":
            pixels = encode_camera_images(array, inputs["camera_valid"])
            if pixels is not None:
                np.save(directory / f"{name}.u8.npy", pixels)
                encoding[name] = "u8"
                continue
            _LOG.warning("camera_images are not the Preprocessor's: stored as float32")
        if name in _POINT_VALID:
            valid = inputs[_POINT_VALID[name]][0]
            count = int(valid.sum())
            if (
                (valid[:count] == 1).all()
                and not valid[count:].any()
                and not array[0, count:].any()
            ):
                np.save(directory / f"{name}.rows.npy", array[0, :count])
                encoding[name] = "rows"
                encoding[_POINT_VALID[name]] = "rows"
                counts[name] = count
                continue
        np.save(directory / f"{name}.npy", array)
        encoding[name] = "raw"
    boxes = item.ground_truth
    np.save(
        directory / "gt_boxes.npy",
        np.concatenate(
            [np.asarray(getattr(boxes, f), np.float32).reshape(len(boxes), n)
             for f, n in _GT_COLUMNS], axis=1,
        ),
    )  # fmt: skip
    np.save(directory / "gt_label.npy", boxes.label.astype(np.int64))
    np.save(directory / "instance_ids.npy", item.instance_ids.astype(np.int64))
    if item.radar_sensor_index is not None:
        np.save(directory / "radar_sensor_index.npy", item.radar_sensor_index.astype(np.int8))
    if item.ego_to_global is not None:
        np.save(directory / "ego_to_global.npy", item.ego_to_global.astype(np.float64))
    return {
        "sample_token": item.sample_token,
        "scene_name": item.scene_name,
        "attributes": list(boxes.attribute),
        "encoding": encoding,
        "counts": counts,
    }


def _item_name(index: int) -> str:
    return f"{index:06d}"


def _write_json(path: Path, value: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True))
    tmp.replace(path)


def _remove_stale_temporaries(items: Path) -> None:
    """Delete temporary item directories left by builders that no longer run."""
    for tmp in items.glob(".*.*.*"):
        try:
            pid = int(tmp.name.split(".")[2])
        except (IndexError, ValueError):
            continue
        if not _pid_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _list_other_caches(root: Path, current: Path) -> None:
    others = sorted(p for p in root.iterdir() if p.is_dir() and p != current)
    others = [p for p in others if (p / MANIFEST_NAME).is_file()]
    if others:
        _LOG.info(
            "other caches under %s (other data, settings or code; delete those no longer "
            "needed): %s",
            root,
            ", ".join(p.name for p in others),
        )


# ----------------------------------------------------------------------------------------- read


class CachedKeyframes(Dataset[TrainingItem]):
    """The keyframes of one complete cache directory, as TrainingItems, in scene order.

    Holds only paths and the manifest: DataLoader workers fork it freely. mmap: arrays stored
    as is come back as read-only memory maps (decoded ones are always new arrays).
    """

    def __init__(self, directory: Path | str, *, mmap: bool = False) -> None:
        self.directory = Path(directory)
        path = self.directory / MANIFEST_NAME
        if not path.is_file():
            raise CacheError(f"{path} is missing: build the cache with build_or_load_cache")
        manifest = json.loads(path.read_text())
        if not manifest.get("complete"):
            raise CacheError(
                f"{self.directory} is a partial cache; build_or_load_cache completes it"
            )
        self.key: dict[str, Any] = manifest["key"]
        if self.key.get("format") != CACHE_FORMAT_VERSION:
            raise CacheError(
                f"{self.directory} has cache format {self.key.get('format')}, this code reads "
                f"{CACHE_FORMAT_VERSION}: delete it and build again"
            )
        self.sample_tokens: list[str] = list(manifest["sample_tokens"])
        self._scene_names: list[str] = list(manifest["scene_names"])
        self.radar_names: tuple[str, ...] = tuple(manifest["radar_names"])
        preprocess = {
            k: tuple(v) if isinstance(v, list) else v for k, v in self.key["preprocess"].items()
        }
        self.preprocess_config = PreprocessConfig(**preprocess)  # type: ignore[arg-type]
        self._shapes = input_shapes(self.preprocess_config)
        self._mmap_mode: Any = "r" if mmap else None

    @property
    def reader_settings(self) -> dict[str, Any]:
        """The reader settings the keyframes were made with (part of the key)."""
        settings: dict[str, Any] = self.key["reader"]
        return settings

    def __len__(self) -> int:
        return len(self.sample_tokens)

    def scene_names(self) -> list[str]:
        """The scene name of every index (from the manifest; no item is read)."""
        return list(self._scene_names)

    def __getitem__(self, index: int) -> TrainingItem:
        if not -len(self) <= index < len(self):
            raise IndexError(f"keyframe index {index} out of range for {len(self)} keyframes")
        directory = self.directory / ITEMS_DIR / _item_name(index % len(self))
        meta = json.loads((directory / "meta.json").read_text())
        load = self._loader(directory)
        return TrainingItem(
            inputs=self._inputs(load, meta),
            ground_truth=_ground_truth(load, meta),
            instance_ids=np.asarray(load("instance_ids")),
            scene_name=str(meta["scene_name"]),
            sample_token=str(meta["sample_token"]),
            radar_sensor_index=load("radar_sensor_index", optional=True),
            ego_to_global=load("ego_to_global", optional=True),
        )

    def _loader(self, directory: Path) -> Any:
        def load(stem: str, optional: bool = False) -> Any:
            path = directory / f"{stem}.npy"
            if optional and not path.is_file():
                return None
            return np.load(path, mmap_mode=self._mmap_mode, allow_pickle=False)

        return load

    def _inputs(self, load: Any, meta: dict[str, Any]) -> Inputs:
        encoding: dict[str, str] = meta["encoding"]
        inputs: Inputs = {}
        for name in model_io.INPUT_NAMES:
            if encoding[name] == "raw":
                inputs[name] = load(name)
        for name, valid_name in _POINT_VALID.items():
            if encoding[name] == "rows":
                count = int(meta["counts"][name])
                points = np.zeros(self._shapes[name], np.float32)
                points[0, :count] = load(f"{name}.rows")
                valid = np.zeros(self._shapes[valid_name], np.float32)
                valid[0, :count] = 1.0
                inputs[name], inputs[valid_name] = points, valid
        if encoding["camera_images"] == "u8":
            inputs["camera_images"] = decode_camera_images(
                load("camera_images.u8"), inputs["camera_valid"]
            )
        return {name: inputs[name] for name in model_io.INPUT_NAMES}


def _ground_truth(load: Any, meta: dict[str, Any]) -> Detections:
    table = np.asarray(load("gt_boxes"), np.float32)
    columns: dict[str, npt.NDArray[np.float32]] = {}
    start = 0
    for field, width in _GT_COLUMNS:
        part = table[:, start : start + width]
        columns[field] = part[:, 0].copy() if width == 1 else part.copy()
        start += width
    return Detections(
        **columns,
        label=np.asarray(load("gt_label"), np.int64),
        attribute=tuple(meta["attributes"]),
    )
