"""Generate a nuScenes-format dataset (v1.0-synth) from seeded procedural worlds."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from peftdml_ros.data.synth.camera import encode_jpeg, make_camera, render
from peftdml_ros.data.synth.canbus import write_can_bus
from peftdml_ros.data.synth.degrade import (
    Degradation,
    active_effects,
    as_degradations,
    scene_description_tags,
)
from peftdml_ros.data.synth.errors import SynthConfigError
from peftdml_ros.data.synth.geometry import yaw_quaternion
from peftdml_ros.data.synth.ground import build_ground
from peftdml_ros.data.synth.lidar import cast_sweep
from peftdml_ros.data.synth.radar import RadarSweep, simulate_sweep, write_pcd
from peftdml_ros.data.synth.rig import (
    CAMERAS,
    IMAGE_HEIGHT_PX,
    IMAGE_WIDTH_PX,
    RADARS,
    RIG,
    SAMPLE_RATE_HZ,
    spec_of,
)
from peftdml_ros.data.synth.schedule import SensorFrame, build_schedule, sample_times_us
from peftdml_ros.data.synth.tables import VERSION, Tables, make_token, visibility_token
from peftdml_ros.data.synth.world import ANNOTATION_RANGE_M, CLASS_SPECS, World, build_world

TRAIN_SPLIT = "synth_train"
VAL_SPLIT = "synth_val"
# Every scene: evaluating a whole generated dataset (e.g. one made only for testing).
ALL_SPLIT = "synth_all"
MANIFEST_NAME = "synth_manifest.json"
BASE_TIME_US = 1_533_151_603_000_000  # 2018-08-01, as nuScenes-era timestamps
SCENE_SPACING_US = 120_000_000
# The log location of every generated scene: readers map it to a GNSS reference coordinate
# that no real nuScenes map covers (see data/nuscenes_reader.py). Traffic keeps right or left
# (as in Boston or Singapore), drawn per scene.
LOCATION = "synthetic"
# The devkit's NuScenesCanBus refuses these scene numbers (no CAN data in real nuScenes).
_CAN_BLACKLIST = set(range(161, 177)) | set(range(309, 315))
_OUTPUT_PARTS = ("samples", "sweeps", "maps", "can_bus", VERSION, MANIFEST_NAME)


@dataclass(frozen=True)
class Preset:
    name: str
    duration_s: float  # scene length; samples at 2 Hz from 0 to duration
    density: float  # scales the number of optional actors
    default_scenes: int


PRESETS: dict[str, Preset] = {
    "small": Preset("small", 2.0, 0.6, 3),
    "full": Preset("full", 19.5, 1.0, 10),
}


def scene_names(count: int) -> list[str]:
    """scene-0001, scene-0002, ... skipping numbers the CAN bus API refuses."""
    names: list[str] = []
    number = 0
    while len(names) < count:
        number += 1
        if number not in _CAN_BLACKLIST:
            names.append(f"scene-{number:04d}")
    return names


def split_scenes(names: Sequence[str]) -> dict[str, list[str]]:
    """The last quarter of the scenes (at least one) is val; one scene goes to val only.
    ALL_SPLIT holds every scene."""
    if len(names) == 1:
        return {TRAIN_SPLIT: [], VAL_SPLIT: list(names), ALL_SPLIT: list(names)}
    num_val = max(1, round(len(names) * 0.25))
    return {
        TRAIN_SPLIT: list(names[:-num_val]),
        VAL_SPLIT: list(names[-num_val:]),
        ALL_SPLIT: list(names),
    }


@dataclass
class _KeyData:
    """What annotations need from each sample's key frames."""

    lidar_hits: npt.NDArray[np.int64] | None = None
    radar_sources: list[npt.NDArray[np.int64]] = field(default_factory=list)
    visible_px: npt.NDArray[np.int64] | None = None
    total_px: npt.NDArray[np.int64] | None = None


class _SceneWriter:
    """Generates one scene: sensor files, table records and CAN bus files."""

    def __init__(
        self,
        root: Path,
        tables: Tables,
        seed: int,
        index: int,
        name: str,
        preset: Preset,
        degradations: tuple[Degradation, ...],
        progress: tqdm[Any],
    ) -> None:
        self.root, self.tables, self.seed, self.index, self.name = root, tables, seed, index, name
        self.preset, self.degradations, self.progress = preset, degradations, progress
        rng = np.random.default_rng([seed, index, 0])
        self.location = LOCATION
        drive_sign = 1.0 if rng.random() < 0.5 else -1.0
        self.world: World = build_world(rng, preset.duration_s, preset.density, drive_sign)
        self.ground = build_ground(self.world.road, seed=int(rng.integers(2**31)))
        self.t0_us = BASE_TIME_US + index * SCENE_SPACING_US
        self.num_samples = round(preset.duration_s * SAMPLE_RATE_HZ) + 1
        self.log_name = f"n000-synth-{seed}-{name}"
        # Radars run free: a random phase within their 13 Hz period (76.9 ms).
        phases = {r.channel: int(rng.integers(0, 76_923)) for r in RADARS}
        self.schedule = build_schedule(name, self.t0_us, self.num_samples, phases, degradations)
        self.keys = [_KeyData() for _ in range(self.num_samples)]
        self.sample_tokens = [make_token(seed, name, "sample", k) for k in range(self.num_samples)]

    def rng(self, channel: str) -> np.random.Generator:
        return np.random.default_rng(
            [self.seed, self.index, 1 + [s.channel for s in RIG].index(channel)]
        )

    def effects(self, channel: str, t_us: int) -> dict[str, float]:
        return active_effects(self.degradations, self.name, channel, (t_us - self.t0_us) / 1e6)

    def t_rel(self, t_us: int) -> float:
        return (t_us - self.t0_us) / 1e6

    def filename(self, frame: SensorFrame, ext: str) -> str:
        folder = "samples" if frame.is_key else "sweeps"
        return f"{folder}/{frame.channel}/{self.log_name}__{frame.channel}__{frame.t_us}{ext}"

    # ---- sensors -------------------------------------------------------------------------
    def run_lidar(self) -> None:
        rng = self.rng("LIDAR_TOP")
        for frame in self.schedule["LIDAR_TOP"]:
            path = self.root / self.filename(frame, ".pcd.bin")
            if frame.empty:
                points = np.zeros((0, 5), dtype=np.float32)
                hits = np.zeros(0, dtype=np.int64)
            else:
                sweep = cast_sweep(
                    self.world,
                    self.ground,
                    self.t_rel(frame.t_us),
                    rng,
                    self.effects("LIDAR_TOP", frame.t_us),
                )
                points, hits = sweep.points, sweep.hit
            points.astype(np.float32).tofile(path)
            if frame.is_key:
                self.keys[frame.sample].lidar_hits = hits
            self.progress.update(1)

    def run_radars(self) -> None:
        for spec in RADARS:
            rng = self.rng(spec.channel)
            for frame in self.schedule[spec.channel]:
                sweep: RadarSweep = simulate_sweep(
                    self.world,
                    spec,
                    self.t_rel(frame.t_us),
                    rng,
                    self.effects(spec.channel, frame.t_us),
                )
                write_pcd(self.root / self.filename(frame, ".pcd"), sweep)
                if frame.is_key:
                    kept = sweep.passes_default_filters()[: sweep.source.shape[0]]
                    self.keys[frame.sample].radar_sources.append(sweep.source[kept])
                self.progress.update(1)

    def run_cameras(self) -> None:
        for spec in CAMERAS:
            cam = make_camera(spec)
            rng = self.rng(spec.channel)
            for frame in self.schedule[spec.channel]:
                out = render(
                    cam,
                    self.world,
                    self.ground,
                    self.t_rel(frame.t_us),
                    self.effects(spec.channel, frame.t_us),
                    rng,
                    frame.is_key,
                )
                (self.root / self.filename(frame, ".jpg")).write_bytes(encode_jpeg(out.image))
                if frame.is_key and out.visible_px is not None and out.total_px is not None:
                    key = self.keys[frame.sample]
                    key.visible_px = out.visible_px + (
                        0 if key.visible_px is None else key.visible_px
                    )
                    key.total_px = out.total_px + (0 if key.total_px is None else key.total_px)
                self.progress.update(1)

    # ---- tables --------------------------------------------------------------------------
    def write_records(self) -> None:
        seed, name, t = self.seed, self.name, self.tables
        log_token = make_token(seed, name, "log")
        map_token = make_token(seed, name, "map")
        map_file = f"maps/{map_token}.png"
        cv2.imwrite(str(self.root / map_file), self.ground.map_mask())
        t.add(
            "log",
            {
                "token": log_token,
                "logfile": self.log_name,
                "vehicle": "n000",
                "date_captured": "2018-08-01",
                "location": self.location,
            },
        )
        t.add(
            "map",
            {
                "token": map_token,
                "log_tokens": [log_token],
                "category": "semantic_prior",
                "filename": map_file,
            },
        )
        calib = {}
        for spec in RIG:
            token = make_token(seed, name, "calibrated_sensor", spec.channel)
            calib[spec.channel] = token
            t.add(
                "calibrated_sensor",
                {
                    "token": token,
                    "sensor_token": t.sensor_token[spec.channel],
                    "translation": list(spec.translation_m),
                    "rotation": spec.rotation_wxyz,
                    "camera_intrinsic": spec.intrinsic,
                },
            )
        self._write_samples()
        for channel, frames in self.schedule.items():
            self._write_sample_data(channel, frames, calib[channel])
        self._write_annotations()
        tags = scene_description_tags(self.degradations, name)
        side = "right" if self.world.road.drive_sign > 0 else "left"
        description = f"Synthetic drive, {side}-hand traffic, {len(self.world.actors)} objects"
        description += "".join(f", {tag}" for tag in tags)
        t.add(
            "scene",
            {
                "token": make_token(seed, name, "scene"),
                "log_token": log_token,
                "nbr_samples": self.num_samples,
                "first_sample_token": self.sample_tokens[0],
                "last_sample_token": self.sample_tokens[-1],
                "name": name,
                "description": description,
            },
        )

    def _write_samples(self) -> None:
        scene_token = make_token(self.seed, self.name, "scene")
        times = sample_times_us(self.t0_us, self.num_samples)
        for k, token in enumerate(self.sample_tokens):
            self.tables.add(
                "sample",
                {
                    "token": token,
                    "timestamp": times[k],
                    "prev": self.sample_tokens[k - 1] if k > 0 else "",
                    "next": self.sample_tokens[k + 1] if k + 1 < self.num_samples else "",
                    "scene_token": scene_token,
                },
            )

    def _write_sample_data(
        self, channel: str, frames: list[SensorFrame], calib_token: str
    ) -> None:
        spec = spec_of(channel)
        ext = {"lidar": ".pcd.bin", "radar": ".pcd", "camera": ".jpg"}[spec.modality]
        tokens = [make_token(self.seed, self.name, "sample_data", channel, f.t_us) for f in frames]
        for i, frame in enumerate(frames):
            ego_xyz, ego_yaw = self.world.ego_pose(self.t_rel(frame.t_us))
            self.tables.add(
                "ego_pose",
                {
                    "token": tokens[i],
                    "timestamp": frame.t_us,
                    "rotation": yaw_quaternion(ego_yaw),
                    "translation": [float(ego_xyz[0]), float(ego_xyz[1]), 0.0],
                },
            )
            is_cam = spec.modality == "camera"
            self.tables.add(
                "sample_data",
                {
                    "token": tokens[i],
                    "sample_token": self.sample_tokens[frame.sample],
                    "ego_pose_token": tokens[i],
                    "calibrated_sensor_token": calib_token,
                    "timestamp": frame.t_us,
                    "fileformat": "jpg" if is_cam else "pcd",
                    "is_key_frame": frame.is_key,
                    "height": IMAGE_HEIGHT_PX if is_cam else 0,
                    "width": IMAGE_WIDTH_PX if is_cam else 0,
                    "filename": self.filename(frame, ext),
                    "prev": tokens[i - 1] if i > 0 else "",
                    "next": tokens[i + 1] if i + 1 < len(frames) else "",
                },
            )

    def _write_annotations(self) -> None:
        seed, name, actors, t = self.seed, self.name, self.world.actors, self.tables
        chains: dict[int, list[str]] = {}
        records: dict[str, dict[str, Any]] = {}
        times = sample_times_us(self.t0_us, self.num_samples)
        for k, t_us in enumerate(times):
            states = self.world.actor_states(self.t_rel(t_us))
            ego_xyz, _ = self.world.ego_pose(self.t_rel(t_us))
            dist = np.hypot(*(states.center_m[:, :2] - ego_xyz[None, :2]).T)
            key = self.keys[k]
            lidar_counts = _counts(key.lidar_hits, len(actors))
            radar_counts = _counts(
                np.concatenate(key.radar_sources) if key.radar_sources else None, len(actors)
            )
            for j in np.nonzero(dist <= ANNOTATION_RANGE_M)[0]:
                token = make_token(seed, name, "sample_annotation", k, j)
                visible = 0.0
                if key.total_px is not None and key.visible_px is not None and key.total_px[j] > 0:
                    visible = float(key.visible_px[j]) / float(key.total_px[j])
                attribute = actors.attribute[j]
                records[token] = {
                    "token": token,
                    "sample_token": self.sample_tokens[k],
                    "instance_token": make_token(seed, name, "instance", j),
                    "visibility_token": visibility_token(visible),
                    "attribute_tokens": [t.attribute_token[attribute]] if attribute else [],
                    "translation": [float(v) for v in states.center_m[j]],
                    "size": [float(v) for v in states.size_wlh_m[j]],
                    "rotation": yaw_quaternion(float(states.yaw_rad[j])),
                    "prev": "",
                    "next": "",
                    "num_lidar_pts": int(lidar_counts[j]),
                    "num_radar_pts": int(radar_counts[j]),
                }
                chains.setdefault(int(j), []).append(token)
        for j, chain in sorted(chains.items()):
            for i, token in enumerate(chain):
                records[token]["prev"] = chain[i - 1] if i > 0 else ""
                records[token]["next"] = chain[i + 1] if i + 1 < len(chain) else ""
            category = CLASS_SPECS[actors.name[j]].category
            t.add(
                "instance",
                {
                    "token": make_token(seed, name, "instance", j),
                    "category_token": t.category_token[category],
                    "nbr_annotations": len(chain),
                    "first_annotation_token": chain[0],
                    "last_annotation_token": chain[-1],
                },
            )
        for record in records.values():
            t.add("sample_annotation", record)

    def write_can(self) -> None:
        write_can_bus(
            self.root / "can_bus",
            self.name,
            self.world,
            self.t0_us,
            self.preset.duration_s,
            np.random.default_rng([self.seed, self.index, 99]),
            self.degradations,
        )


def _counts(ids: npt.NDArray[np.int64] | None, num_actors: int) -> npt.NDArray[np.int64]:
    if ids is None or ids.size == 0:
        return np.zeros(num_actors, dtype=np.int64)
    ids = ids[(ids >= 0) & (ids < num_actors)]
    return np.bincount(ids, minlength=num_actors).astype(np.int64)


def _prepare(out_dir: Path, overwrite: bool) -> None:
    existing = [p for p in _OUTPUT_PARTS if (out_dir / p).exists()]
    if existing and not overwrite:
        raise SynthConfigError(
            f"{out_dir} already holds a dataset ({', '.join(existing)}); choose an empty "
            "directory or pass --overwrite"
        )
    for part in existing:
        target = out_dir / part
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()
    for folder in ("samples", "sweeps"):
        for spec in RIG:
            (out_dir / folder / spec.channel).mkdir(parents=True, exist_ok=True)
    (out_dir / "maps").mkdir(parents=True, exist_ok=True)
    (out_dir / "can_bus").mkdir(parents=True, exist_ok=True)


_SCENE_TABLES = (
    "log", "map", "calibrated_sensor", "sample", "sample_data", "ego_pose", "sample_annotation",
    "instance", "scene",
)  # fmt: skip


@dataclass(frozen=True)
class _SceneJob:
    root: Path
    seed: int
    index: int
    name: str
    preset: Preset
    degradations: tuple[Degradation, ...]


def _run_scene(
    job: _SceneJob, progress: tqdm[Any] | None = None
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Generate one scene's files; return its table rows and its manifest entry."""
    tables = Tables(job.seed)
    bar: tqdm[Any] = progress if progress is not None else tqdm(disable=True)
    writer = _SceneWriter(
        job.root, tables, job.seed, job.index, job.name, job.preset, job.degradations, bar
    )
    if progress is not None:
        bar.total += sum(len(f) for f in writer.schedule.values())
        bar.set_description(f"synth {job.name}")
    writer.run_lidar()
    writer.run_radars()
    writer.run_cameras()
    writer.write_records()
    writer.write_can()
    entry = {"location": writer.location, "objects": len(writer.world.actors)}
    return {name: tables.rows[name] for name in _SCENE_TABLES}, entry


def _run_all(
    jobs: list[_SceneJob], workers: int, progress: bool
) -> list[tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]]:
    """Scenes in order; with workers > 1 in a process pool (progress counted in scenes)."""
    if workers <= 1 or len(jobs) == 1:
        with tqdm(total=0, unit="frame", desc="synth", disable=not progress) as bar:
            return [_run_scene(job, bar) for job in jobs]
    results: dict[int, tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]] = {}
    with (
        ProcessPoolExecutor(max_workers=workers) as pool,
        tqdm(total=len(jobs), unit="scene", desc="synth", disable=not progress) as bar,
    ):
        futures = {pool.submit(_run_scene, job): job.index for job in jobs}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            bar.update(1)
    return [results[job.index] for job in jobs]


def generate_dataset(
    out_dir: Path,
    *,
    scenes: int,
    seed: int,
    preset: str = "small",
    degradations: Sequence[Degradation | str] = (),
    overwrite: bool = False,
    progress: bool = True,
    workers: int = 1,
) -> Path:
    """Write a nuScenes-format dataset (version `v1.0-synth`) under `out_dir`; return it.

    `degradations` are Degradation objects or spec strings (see degrade.py); splits are written
    to `<out_dir>/v1.0-synth/splits.json` as "synth_train", "synth_val" and "synth_all" (every
    scene). `workers` > 1 generates scenes in parallel processes (same files as with one).
    `<out_dir>/synth_manifest.json` records seed, preset, scene count and degradations: with
    them `generate_dataset` writes the same scenes again (e.g. with one more degradation).
    """
    if preset not in PRESETS:
        raise SynthConfigError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    if not 1 <= scenes <= 9000:
        raise SynthConfigError(f"scenes must be between 1 and 9000, got {scenes}")
    if workers < 1:
        raise SynthConfigError(f"workers must be at least 1, got {workers}")
    chosen = PRESETS[preset]
    parsed = as_degradations(degradations)
    out_dir = Path(out_dir)
    names = scene_names(scenes)
    for d in parsed:
        if d.scene is not None and d.scene not in names:
            raise SynthConfigError(
                f"degradation {d} names {d.scene}, but the dataset has {names[0]}.."
                f"{names[-1]}; generate more scenes or change its scope"
            )
    _prepare(out_dir, overwrite)
    jobs = [_SceneJob(out_dir, seed, i, name, chosen, parsed) for i, name in enumerate(names)]
    tables = Tables(seed)
    entries = {}
    for job, (rows, entry) in zip(jobs, _run_all(jobs, workers, progress), strict=True):
        for table, records in rows.items():
            tables.rows[table].extend(records)
        entries[job.name] = entry
    tables.write(out_dir / VERSION)
    splits = split_scenes(names)
    (out_dir / VERSION / "splits.json").write_text(json.dumps(splits, indent=1))
    manifest = {
        "generator": "peftdml synth",
        "format_version": 1,
        "seed": seed,
        "preset": chosen.name,
        "scene_duration_s": chosen.duration_s,
        "scene_count": len(names),
        "scenes": entries,
        "degradations": [str(d) for d in parsed],
        "splits": splits,
    }
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))
    return out_dir
