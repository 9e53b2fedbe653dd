"""nuScenes (real or generated) -> one typed record per keyframe, built on the official devkit.

The devkit (`nuscenes.nuscenes.NuScenes`) owns the tables; this module adds the multi-sweep
merge, the ego-frame conversion, the camera decode, the CAN-bus IMU window, a GNSS fix derived
from the ego pose, and the ground truth in the shared box convention (`core.types`). Training
and evaluation read through `NuScenesReader`; the bag writer reuses the file loaders below.

Frames and time:
  - The reference of a record is the keyframe's LIDAR_TOP sample_data: its timestamp is the
    record's `timestamp_ns` and its ego pose is the record's ego frame. Every point, camera
    extrinsic and box is expressed in that ego frame (x forward, y left, z up).
  - The other sensors follow the node's frame rule (core.frame_rule) on each channel's whole
    timeline in the scene (keyframes and sweeps): the sweep nearest the reference within slop,
    else the sensor is absent. The sample's own sample_data lists play no part; its
    annotations are the ground truth: by default the boxes with at least one LiDAR or radar
    point, at any distance (data.gt_filter: training targets, not the metric's class ranges).
  - Points of older sweeps (and of radars/cameras, which fire at other times) go through their
    own ego pose into the global frame and back into the reference ego frame, so ego motion is
    compensated. `dt_s` = (reference time - sweep time) in seconds; a radar keyframe taken just
    after the LiDAR has a small negative dt_s.
  - nuScenes timestamps are integer microseconds; the core uses integer nanoseconds (x 1000).

Sensor names in the Frame are the nuScenes channel names (LIDAR_TOP, RADAR_FRONT, CAM_FRONT, ...,
as `core.types.NUSCENES_CAMERAS`), plus "imu" and "gnss" for the derived sensors.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import logging
import math
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from peftdml_ros.core import frame_rule
from peftdml_ros.core import image as core_image
from peftdml_ros.core import radar as core_radar
from peftdml_ros.core.errors import ConfigError, InputDataError
from peftdml_ros.core.geometry import (
    quaternion_wxyz_to_matrix,
    rotate_vectors_f32,
    transform_points_f32,
)
from peftdml_ros.core.preprocess import scale_intrinsics
from peftdml_ros.core.types import (
    EARTH_RADIUS_M,
    LIDAR_POINT_FIELDS,
    NUSCENES_CAMERAS,
    NUSCENES_CLASSES,
    NUSCENES_LIDAR,
    NUSCENES_RADARS,
    RADAR_POINT_FIELDS,
    CameraImage,
    Detections,
    FloatArray,
    Frame,
    GnssFix,
    ImuSample,
    IntArray,
    Modality,
    PointCloud,
)
from peftdml_ros.data.gt_filter import KEEP_ALL_GT, NAMED_GT_FILTERS, GtFilter, keep_annotations

_LOG = logging.getLogger(__name__)

LIDAR_CHANNEL = NUSCENES_LIDAR
RADAR_CHANNELS = NUSCENES_RADARS
CAMERA_CHANNELS = NUSCENES_CAMERAS  # the devkit's camera order, the model's camera slots
KNOWN_CHANNELS: tuple[str, ...] = (LIDAR_CHANNEL, *RADAR_CHANNELS, *CAMERA_CHANNELS)
IMU_SENSOR = "imu"
GNSS_SENSOR = "gnss"

# The 13 tables the devkit loads from <dataroot>/<version>/<table>.json.
NUSCENES_TABLES: tuple[str, ...] = (
    "attribute",
    "calibrated_sensor",
    "category",
    "ego_pose",
    "instance",
    "log",
    "map",
    "sample",
    "sample_annotation",
    "sample_data",
    "scene",
    "sensor",
    "visibility",
)

# Reference WGS-84 coordinate (lat, lon in degrees) of each map's global-frame origin (the map's
# south-western corner). The four nuScenes maps use the values of the devkit's
# nuscenes/scripts/export_poses.py (REFERENCE_COORDINATES). "synthetic" (the location of data
# from peftdml_ros.data.synth) is placed at 48.1351 N, 11.5820 E (Munich), a spot on land that no
# real nuScenes map covers, so a generated log is never mistaken for a real one.
MAP_ORIGINS_LATLON_DEG: dict[str, tuple[float, float]] = {
    "boston-seaport": (42.336849169438615, -71.05785369873047),
    "singapore-onenorth": (1.2882100868743724, 103.78475189208984),
    "singapore-hollandvillage": (1.2993652317780957, 103.78217697143555),
    "singapore-queenstown": (1.2782562240223188, 103.76741409301758),
    "synthetic": (48.1351, 11.5820),
}

# LiDAR .bin: float32 x, y, z, intensity, ring index.
LIDAR_BIN_COLUMNS = 5
US_TO_NS = 1000
# Scenes whose timelines and IMU samples a reader keeps (least recently used go first).
SCENES_KEPT = 4

F64Array = npt.NDArray[np.float64]


# ------------------------------------------------------------------------------------- errors


class NuScenesDataError(InputDataError):
    """A nuScenes dataset file or record cannot be used; the message names the file."""


class MissingTableError(NuScenesDataError):
    """A table file under <dataroot>/<version>/ is missing or is not valid JSON."""


class TruncatedFileError(NuScenesDataError):
    """A LiDAR .bin or radar .pcd file is shorter than its format requires."""


class CorruptImageError(NuScenesDataError):
    """A camera JPEG cannot be decoded."""


class UnknownChannelError(NuScenesDataError):
    """A sample_data record names a sensor channel this package does not know."""


# -------------------------------------------------------------------------------- file loaders


def read_lidar_bin(path: Path) -> npt.NDArray[np.float32]:
    """[N, 5] float32 (x, y, z, intensity, ring) in the LiDAR frame, from a nuScenes .bin."""
    data = _read_bytes(path)
    row_bytes = 4 * LIDAR_BIN_COLUMNS
    if len(data) % row_bytes != 0:
        raise TruncatedFileError(
            f"{path}: {len(data)} bytes is not a multiple of {row_bytes} (5 float32 per point); "
            "the file is truncated or not a nuScenes LiDAR sweep: re-extract it"
        )
    return np.frombuffer(data, dtype="<f4").reshape(-1, LIDAR_BIN_COLUMNS)


@dataclass(frozen=True)
class PcdCloud:
    """A binary PCD file: its fields and the raw point bytes (little endian, packed).

    fields: (name, numpy dtype) in file order; points: structured [N] view of `data`.
    """

    fields: tuple[tuple[str, np.dtype[Any]], ...]
    points: npt.NDArray[np.void]
    data: bytes

    @property
    def point_step(self) -> int:
        return int(self.points.dtype.itemsize)


_PCD_TYPES: dict[tuple[str, int], str] = {
    ("F", 4): "<f4",
    ("F", 8): "<f8",
    ("I", 1): "i1",
    ("I", 2): "<i2",
    ("I", 4): "<i4",
    ("U", 1): "u1",
    ("U", 2): "<u2",
    ("U", 4): "<u4",
}


def read_radar_pcd(path: Path) -> PcdCloud:
    """Parse a nuScenes radar .pcd (PCD v0.7, DATA binary) into its fields and point bytes."""
    raw = _read_bytes(path)
    header, offset = _pcd_header(raw, path)
    names = header.get("FIELDS", [])
    sizes, types = header.get("SIZE", []), header.get("TYPE", [])
    counts = header.get("COUNT", ["1"] * len(names))
    if not names or not (len(names) == len(sizes) == len(types) == len(counts)):
        raise NuScenesDataError(
            f"{path}: PCD header FIELDS/SIZE/TYPE/COUNT disagree in length; the file is corrupt"
        )
    if header.get("DATA", [""])[0] != "binary":
        raise NuScenesDataError(f"{path}: PCD DATA is {header.get('DATA')}, only binary is read")
    fields: list[tuple[str, np.dtype[Any]]] = []
    for name, size, kind, count in zip(names, sizes, types, counts, strict=True):
        code = _PCD_TYPES.get((kind, int(size)))
        if code is None or count != "1":
            raise NuScenesDataError(
                f"{path}: PCD field {name!r} has TYPE {kind} SIZE {size} COUNT {count}, which "
                "this reader does not support"
            )
        fields.append((name, np.dtype(code)))
    num_points = int(header.get("POINTS", ["-1"])[0])
    record = np.dtype(fields)  # packed: PCD binary has no padding between fields
    needed = num_points * record.itemsize
    body = raw[offset:]
    if num_points < 0 or len(body) < needed:
        raise TruncatedFileError(
            f"{path}: PCD header declares {num_points} points ({needed} bytes) but the file has "
            f"{len(body)} bytes of point data; the file is truncated: re-extract it"
        )
    data = bytes(body[:needed])
    return PcdCloud(tuple(fields), np.frombuffer(data, dtype=record), data)


def _pcd_header(raw: bytes, path: Path) -> tuple[dict[str, list[str]], int]:
    header: dict[str, list[str]] = {}
    offset = 0
    while True:
        end = raw.find(b"\n", offset)
        if end < 0:
            raise TruncatedFileError(f"{path}: PCD header ends before its DATA line; truncated")
        line = raw[offset:end].decode("ascii", errors="replace").strip()
        offset = end + 1
        if not line or line.startswith("#"):
            continue
        key, *values = line.split()
        header[key] = values
        if key == "DATA":
            return header, offset


def read_jpeg_bytes(path: Path) -> bytes:
    """The file's bytes, checked to be one whole JPEG (SOI marker first, EOI marker last)."""
    data = _read_bytes(path)
    if not data.startswith(b"\xff\xd8"):
        raise CorruptImageError(f"{path}: not a JPEG (no start-of-image marker); re-extract it")
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise CorruptImageError(
            f"{path}: JPEG has no end-of-image marker; the file is truncated: re-extract it"
        )
    return data


def decode_jpeg(data: bytes, downscale: int, path: Path) -> npt.NDArray[np.uint8]:
    """[H/downscale, W/downscale, 3] uint8 RGB, decoded at reduced scale (libjpeg DCT scaling).

    The node's decode (core.image.decode_compressed), so training sees the node's pixels.
    """
    if downscale not in core_image.REDUCTIONS:
        raise ConfigError(
            f"camera_downscale {downscale} must be one of {list(core_image.REDUCTIONS)}"
        )
    try:
        return core_image.decode_compressed(data, reduction=downscale, fmt="jpeg")
    except InputDataError as error:
        raise CorruptImageError(
            f"{path}: JPEG cannot be decoded ({error}); the file is corrupt"
        ) from error


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise NuScenesDataError(
            f"{path}: file is missing; download/extract the sweeps and samples of this version"
        ) from None
    except OSError as error:
        raise NuScenesDataError(f"{path}: cannot be read ({error})") from error


# ---------------------------------------------------------------------------------- geometry


def pose_matrix(translation: Sequence[float], rotation_wxyz: Sequence[float]) -> F64Array:
    """[4, 4] float64 transform child -> parent of a nuScenes (translation, rotation) record."""
    out = np.eye(4)
    out[:3, :3] = quaternion_wxyz_to_matrix(rotation_wxyz)
    out[:3, 3] = translation
    return out


def yaw_of(rotation: F64Array) -> float:
    """Rotation about +z (rad) of a [3, 3] matrix: the heading of its x axis in the xy plane."""
    return math.atan2(float(rotation[1, 0]), float(rotation[0, 0]))


def transform_points(matrix: F64Array, xyz: F64Array) -> F64Array:
    """[N, 3] points through a [4, 4] transform."""
    return np.asarray(xyz @ matrix[:3, :3].T + matrix[:3, 3])


def latlon_of(location: str, east_m: float, north_m: float) -> tuple[float, float]:
    """WGS-84 (lat, lon) degrees of a global-frame position of a map (equirectangular).

    The nuScenes global frame is a local metric map frame, x east and y north of the map's
    origin; maps span a few km, where this approximation errs by centimeters.
    """
    origin = MAP_ORIGINS_LATLON_DEG.get(location)
    if origin is None:
        raise NuScenesDataError(
            f"log location {location!r} has no reference coordinate; known: "
            f"{sorted(MAP_ORIGINS_LATLON_DEG)} (add it to MAP_ORIGINS_LATLON_DEG)"
        )
    lat0, lon0 = origin
    lat = lat0 + math.degrees(north_m / EARTH_RADIUS_M)
    lon = lon0 + math.degrees(east_m / (EARTH_RADIUS_M * math.cos(math.radians(lat0))))
    return lat, lon


# ----------------------------------------------------------------------------- the dataset


def check_tables(dataroot: Path, version: str) -> None:
    """Raise MissingTableError naming the first table file that is absent or not JSON."""
    table_dir = dataroot / version
    if not table_dir.is_dir():
        raise MissingTableError(
            f"{table_dir}: no such directory; check --dataroot and --version (e.g. v1.0-mini)"
        )
    for table in NUSCENES_TABLES:
        path = table_dir / f"{table}.json"
        if not path.is_file():
            raise MissingTableError(
                f"{path}: table file is missing; the devkit needs all 13 tables "
                f"({', '.join(NUSCENES_TABLES)}) in {table_dir}"
            )
        try:
            with path.open("rb") as stream:
                json.load(stream)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise MissingTableError(f"{path}: table is not valid JSON ({error})") from error


def open_nuscenes(dataroot: Path | str, version: str) -> Any:
    """The devkit's NuScenes object for `version` under `dataroot`, after checking its tables."""
    from nuscenes.nuscenes import NuScenes

    root = Path(dataroot)
    check_tables(root, version)
    try:
        return NuScenes(version=version, dataroot=str(root), verbose=False)
    except (KeyError, AssertionError, TypeError, ValueError) as error:
        raise NuScenesDataError(
            f"{root / version}: the devkit cannot index the tables ({type(error).__name__}: "
            f"{error}); a table refers to a record that does not exist"
        ) from error


def split_scene_names(nusc: Any, split: str | None) -> list[str]:
    """Scene names of `split` that the loaded version holds, in the version's scene order.

    None: every scene. A name in <dataroot>/<version>/splits.json (a custom split) wins over the
    devkit's predefined splits (train, val, mini_train, mini_val, ...).
    """
    present = [scene["name"] for scene in nusc.scene]
    if split is None:
        return present
    wanted = _custom_splits(Path(nusc.dataroot) / nusc.version).get(split)
    if wanted is None:
        from nuscenes.utils.splits import create_splits_scenes

        predefined = create_splits_scenes()
        if split not in predefined:
            raise ConfigError(
                f"split {split!r} is neither in {Path(nusc.dataroot) / nusc.version}/splits.json "
                f"nor a devkit split ({', '.join(sorted(predefined))})"
            )
        wanted = predefined[split]
    chosen = set(wanted)
    names = [name for name in present if name in chosen]
    if not names:
        raise ConfigError(
            f"split {split!r} has no scene in {nusc.version}; pick a split of this version "
            "(mini_train/mini_val for v1.0-mini, train/val for v1.0-trainval)"
        )
    return names


def _custom_splits(version_dir: Path) -> dict[str, list[str]]:
    path = version_dir / "splits.json"
    if not path.is_file():
        return {}
    try:
        splits = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise NuScenesDataError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(splits, dict):
        raise NuScenesDataError(f"{path}: must map split names to lists of scene names")
    return {str(k): [str(s) for s in v] for k, v in splits.items()}


def sensor_channel(nusc: Any, sample_data: dict[str, Any]) -> str:
    """The channel of a sample_data record; UnknownChannelError for one not in KNOWN_CHANNELS."""
    calibrated = nusc.get("calibrated_sensor", sample_data["calibrated_sensor_token"])
    channel = str(nusc.get("sensor", calibrated["sensor_token"])["channel"])
    if channel not in KNOWN_CHANNELS:
        raise UnknownChannelError(
            f"{Path(nusc.dataroot) / nusc.version / 'sensor.json'}: channel {channel!r} (of "
            f"{sample_data['filename']}) is unknown; known channels: {', '.join(KNOWN_CHANNELS)}"
        )
    return channel


def ego_from_sensor(nusc: Any, sample_data: dict[str, Any]) -> F64Array:
    """[4, 4] sensor -> ego transform of a sample_data record (its calibrated_sensor)."""
    cal = nusc.get("calibrated_sensor", sample_data["calibrated_sensor_token"])
    return pose_matrix(cal["translation"], cal["rotation"])


def global_from_ego(nusc: Any, sample_data: dict[str, Any]) -> F64Array:
    """[4, 4] ego -> global transform at the record's time (its ego_pose)."""
    pose = nusc.get("ego_pose", sample_data["ego_pose_token"])
    return pose_matrix(pose["translation"], pose["rotation"])


def camera_intrinsics(nusc: Any, sample_data: dict[str, Any]) -> F64Array:
    """[3, 3] K of a camera sample_data record at full resolution."""
    cal = nusc.get("calibrated_sensor", sample_data["calibrated_sensor_token"])
    k = np.asarray(cal["camera_intrinsic"], dtype=np.float64)
    if k.shape != (3, 3):
        raise NuScenesDataError(
            f"calibrated_sensor {cal['token']}: camera_intrinsic has shape {k.shape}, expected 3x3"
        )
    return k


# ------------------------------------------------------------------------------------ records


@dataclass(frozen=True)
class KeyframeRecord:
    """One nuScenes keyframe (sample): its Frame, ego pose and ground truth.

    ego_to_global: [4, 4] float64 pose of the reference ego frame (LIDAR_TOP's ego pose).
    ground_truth: boxes in the reference ego frame (score 1). Velocity is NaN where the devkit
    cannot estimate it (an instance annotated only once): mask it in velocity losses.
    gt_num_points: [N] int64 lidar + radar points inside each box (the devkit's counts; the
    nuScenes evaluation drops GT boxes with 0).
    gt_instance_tokens: the instance token of each box (stable across keyframes).
    """

    sample_token: str
    scene_name: str
    location: str
    timestamp_ns: int
    frame: Frame
    ego_to_global: npt.NDArray[np.float64]
    ground_truth: Detections
    gt_num_points: IntArray
    gt_instance_tokens: tuple[str, ...]


@dataclass(frozen=True)
class _Timeline:
    """One channel's sample_data records of a scene, sorted by timestamp; stamps_ns alongside."""

    stamps_ns: list[int]
    records: list[dict[str, Any]]


@dataclass(frozen=True)
class _SceneTimelines:
    """Every channel's timeline of one scene, and the scene's IMU samples."""

    channels: dict[str, _Timeline]
    imu: tuple[ImuSample, ...]
    imu_stamps_ns: list[int]


class NuScenesReader:
    """Keyframes of a nuScenes version (one split) as KeyframeRecords, in scene order.

    Frames follow the frame rule the node's synchronizer applies (core.frame_rule), with each
    keyframe's LIDAR_TOP sweep as the trigger: every radar and camera gives the sample_data of
    its channel (keyframes and sweeps, the scene's whole timeline) nearest the LiDAR stamp
    within its slop, or is absent from the frame (presence mask) when none is that near; the
    IMU window and the GNSS fix (one derived per LIDAR_TOP sweep, as the bag writer derives it)
    follow the same rules. Ground truth stays the sample's annotations.

    lidar_sweeps: LiDAR sweeps merged per record, the keyframe's own included (1 = keyframe
    only); radar_sweeps: the same per radar, counted from the chosen sweep backwards.
    camera_downscale: decode JPEGs at 1/1, 1/2, 1/4 or 1/8 size (intrinsics scaled to match).
    slop_s: per modality name ("lidar", "radar", "camera", "gnss"), the largest |stamp - frame
    stamp| in seconds, as the node's sync.slop_s; missing ones take core.frame_rule's defaults.
    imu_window_s: CAN ms_imu samples in (max(t - window, previous LiDAR sweep), t] go with the
    record: exactly what the synchronizer gives a LiDAR-triggered frame (samples since the
    previous frame, capped); only samples within the scene's span (its first to last
    sample_data) exist, as in a recording of the scene. gnss_staleness_s: the oldest fix a frame
    takes. can_bus: read <dataroot>/can_bus for the IMU; False leaves IMU absent in every record
    (for a download without the CAN bus expansion).
    compensate_ego_motion: True moves every radar and camera into the reference (LIDAR_TOP) ego
    pose through the sensors' own ego poses (the physically aligned frame); False places each
    sensor's chosen sweep with its static extrinsics, in the ego frame at its own time, as the
    node does with /tf_static alone (earlier sweeps of a sensor are still moved to its chosen
    one). Points go through core.geometry.transform_points_f32, the node's own function.
    radar_filter: keep only the clusters the devkit keeps by default.
    gt_filter: which ground-truth boxes a record keeps (data.gt_filter). "visible" (default,
    for training and caching): boxes with at least one LiDAR + radar point, at any distance.
    The nuScenes evaluation also drops boxes beyond their class range (40 m for pedestrians
    and bicycles, 30 m for cones and barriers), but their points lie inside the model's BEV
    range and the node reports them there: as targets they must stay objects, not background.
    "devkit": the evaluation's own filter (class range, at least one point, bike racks), to
    see a record's ground truth as the metric counts it; the evaluation (data.evaluation) does
    not depend on this option, it filters with the devkit's loaders. "keep_all": every box of
    the 10 detection classes. Or a GtFilter. gt_min_points, when given, replaces the filter's
    minimum number of points.
    """

    def __init__(
        self,
        dataroot: Path | str,
        version: str,
        split: str | None = None,
        *,
        lidar_sweeps: int = 10,
        radar_sweeps: int = 6,
        camera_downscale: int = 4,
        slop_s: Mapping[str, float] | None = None,
        imu_window_s: float = frame_rule.DEFAULT_IMU_WINDOW_NS / 1e9,
        gnss_staleness_s: float = frame_rule.DEFAULT_GNSS_STALENESS_NS / 1e9,
        can_bus: bool = True,
        radar_filter: bool = True,
        gt_filter: GtFilter | str = "visible",
        gt_min_points: int | None = None,
        compensate_ego_motion: bool = True,
        nusc: Any = None,
    ) -> None:
        if lidar_sweeps < 1 or radar_sweeps < 1:
            raise ConfigError(
                f"lidar_sweeps {lidar_sweeps} and radar_sweeps {radar_sweeps} must be >= 1 "
                "(1 = the keyframe only)"
            )
        if camera_downscale not in core_image.REDUCTIONS:
            raise ConfigError(
                f"camera_downscale {camera_downscale} must be one of {list(core_image.REDUCTIONS)}"
            )
        if not imu_window_s > 0:
            raise ConfigError(f"imu_window_s {imu_window_s} must be > 0")
        if not gnss_staleness_s >= 0:
            raise ConfigError(f"gnss_staleness_s {gnss_staleness_s} must be >= 0")
        self.dataroot = Path(dataroot)
        self.version = version
        self.lidar_sweeps = lidar_sweeps
        self.radar_sweeps = radar_sweeps
        self.camera_downscale = camera_downscale
        self.slop_ns = _slop_ns(slop_s)
        self.imu_window_ns = round(imu_window_s * 1e9)
        self.gnss_staleness_ns = round(gnss_staleness_s * 1e9)
        self.radar_filter = radar_filter
        self.gt_filter = _gt_filter(gt_filter, gt_min_points)
        self.compensate_ego_motion = compensate_ego_motion
        self.nusc = nusc if nusc is not None else open_nuscenes(self.dataroot, version)
        self.scene_names = split_scene_names(self.nusc, split)
        self.sample_tokens = self._sample_tokens()
        self._can = CanImu(self.dataroot) if can_bus else None
        self._sample_data_by_scene: dict[str, list[dict[str, Any]]] | None = None
        self._channel_of_calibration: dict[str, str] = {}
        self._timelines: OrderedDict[str, _SceneTimelines] = OrderedDict()

    @property
    def gt_min_points(self) -> int:
        return self.gt_filter.min_points

    @property
    def slop_s(self) -> dict[str, float]:
        """The frame rule's slop per modality name, in seconds (the node's sync.slop_s)."""
        return {m.value: self.slop_ns[m] / 1e9 for m in Modality if m in _SLOP_SETTING_MODALITIES}

    @property
    def gnss_staleness_s(self) -> float:
        return self.gnss_staleness_ns / 1e9

    def _sample_tokens(self) -> list[str]:
        tokens: list[str] = []
        by_name = {scene["name"]: scene for scene in self.nusc.scene}
        for name in self.scene_names:
            token = by_name[name]["first_sample_token"]
            while token:
                tokens.append(token)
                token = self.nusc.get("sample", token)["next"]
        return tokens

    def __len__(self) -> int:
        return len(self.sample_tokens)

    def __iter__(self) -> Iterator[KeyframeRecord]:
        for index in range(len(self)):
            yield self[index]

    def __getitem__(self, index: int) -> KeyframeRecord:
        if not -len(self) <= index < len(self):
            raise IndexError(f"keyframe index {index} out of range for {len(self)} keyframes")
        return self.record(self.sample_tokens[index])

    def chosen_sample_data(self, sample_token: str) -> dict[str, dict[str, Any]]:
        """Channel -> the sample_data record the frame rule picks for this keyframe (LIDAR_TOP:
        the keyframe sweep itself); a channel with nothing within slop is left out."""
        nusc = self.nusc
        sample = nusc.get("sample", sample_token)
        lidar_token = sample["data"].get(LIDAR_CHANNEL)
        if lidar_token is None:
            raise NuScenesDataError(
                f"sample {sample_token} has no {LIDAR_CHANNEL} sample_data; every keyframe needs "
                "one as its time and ego-frame reference"
            )
        ref_sd = nusc.get("sample_data", lidar_token)
        ref_ns = int(ref_sd["timestamp"]) * US_TO_NS
        timelines = self._scene_timelines(sample["scene_token"]).channels
        chosen: dict[str, dict[str, Any]] = {LIDAR_CHANNEL: ref_sd}
        for channel in (*RADAR_CHANNELS, *CAMERA_CHANNELS):
            timeline = timelines.get(channel)
            if timeline is None:
                continue
            modality = Modality.RADAR if channel in RADAR_CHANNELS else Modality.CAMERA
            index = frame_rule.nearest_index(timeline.stamps_ns, ref_ns, self.slop_ns[modality])
            if index is not None:
                chosen[channel] = timeline.records[index]
        return chosen

    def record(self, sample_token: str) -> KeyframeRecord:
        """The record of one sample token."""
        nusc = self.nusc
        sample = nusc.get("sample", sample_token)
        scene = nusc.get("scene", sample["scene_token"])
        location = str(nusc.get("log", scene["log_token"])["location"])
        chosen = self.chosen_sample_data(sample_token)
        ref_sd = chosen[LIDAR_CHANNEL]
        ref_ns = int(ref_sd["timestamp"]) * US_TO_NS
        global_to_ref = np.linalg.inv(global_from_ego(nusc, ref_sd))
        lidar = self._merged_sweeps(ref_sd, ref_sd, global_to_ref, self.lidar_sweeps, _lidar_rows)
        radars = tuple(
            self._merged_sweeps(
                chosen[ch], ref_sd, global_to_ref, self.radar_sweeps, self._radar_rows
            )
            for ch in RADAR_CHANNELS
            if ch in chosen
        )
        cameras = tuple(
            self._camera(chosen[ch], ref_sd, global_to_ref)
            for ch in CAMERA_CHANNELS
            if ch in chosen
        )
        timelines = self._scene_timelines(sample["scene_token"])
        imu = self._imu(timelines, ref_ns)
        ego_to_global = np.linalg.inv(global_to_ref)
        gnss = self._gnss(timelines, ref_sd, location, ego_to_global)
        present = {ch: ch in chosen for ch in KNOWN_CHANNELS}
        # A LiDAR whose keyframe sweep is empty is dead at this instant (older sweeps may still
        # hold points): report it absent so the model gates it out.
        lidar_alive = bool((lidar.points[:, 4] == 0.0).any())  # dt_s is exactly 0 there
        present[LIDAR_CHANNEL] = lidar_alive
        present[IMU_SENSOR] = bool(imu)
        present[GNSS_SENSOR] = gnss is not None
        frame = Frame(
            stamp_ns=ref_ns,
            trigger_sensor=LIDAR_CHANNEL,
            lidar=(lidar,),
            radar=radars,
            cameras=cameras,
            imu=imu,
            gnss=gnss,
            sensor_present=present,
            modality_present={
                Modality.LIDAR: lidar_alive,
                Modality.RADAR: bool(radars),
                Modality.CAMERA: bool(cameras),
                Modality.IMU: bool(imu),
                Modality.GNSS: gnss is not None,
            },
        )
        gt = ground_truth_in_ego(nusc, sample, global_to_ref, self.gt_filter)
        return KeyframeRecord(
            sample_token=sample_token,
            scene_name=str(scene["name"]),
            location=location,
            timestamp_ns=ref_ns,
            frame=frame,
            ego_to_global=ego_to_global,
            ground_truth=gt.boxes,
            gt_num_points=gt.num_points,
            gt_instance_tokens=gt.instance_tokens,
        )

    # ------------------------------------------------------------------------- timelines

    def scene_sample_data(self) -> dict[str, list[dict[str, Any]]]:
        """Scene token -> every sample_data record of that scene (keyframes and sweeps), for
        every scene of the version; built in one pass over sample_data on first use and kept
        (lists of references to the devkit's own records: no copy)."""
        if self._sample_data_by_scene is None:
            scene_of_sample = {s["token"]: s["scene_token"] for s in self.nusc.sample}
            by_scene: dict[str, list[dict[str, Any]]] = {s["token"]: [] for s in self.nusc.scene}
            for sd in self.nusc.sample_data:
                scene_token = scene_of_sample.get(sd["sample_token"])
                if scene_token is None:
                    raise NuScenesDataError(
                        f"{self.dataroot / self.version / 'sample_data.json'}: record "
                        f"{sd['token']} names sample {sd['sample_token']}, which does not exist"
                    )
                by_scene[scene_token].append(sd)
            self._sample_data_by_scene = by_scene
        return self._sample_data_by_scene

    def sample_data_files(self) -> list[str]:
        """The sensor files (paths relative to the dataroot) of the split's scenes: everything a
        record of the split can read."""
        by_name = {scene["name"]: scene["token"] for scene in self.nusc.scene}
        index = self.scene_sample_data()
        return [sd["filename"] for name in self.scene_names for sd in index[by_name[name]]]

    def _scene_timelines(self, scene_token: str) -> _SceneTimelines:
        """A scene's per-channel timelines and IMU samples, built on the scene's first use.

        Only the last SCENES_KEPT scenes are kept: records are read in scene order, and the IMU
        samples of every scene at once (2000 a scene at 100 Hz; 1.7 M for nuScenes trainval)
        would cost about a gigabyte in every process that reads, DataLoader workers included."""
        timelines = self._timelines.get(scene_token)
        if timelines is None:
            timelines = self._build_scene(scene_token)
            self._timelines[scene_token] = timelines
            while len(self._timelines) > SCENES_KEPT:
                self._timelines.popitem(last=False)
        else:
            self._timelines.move_to_end(scene_token)
        return timelines

    def _build_scene(self, scene_token: str) -> _SceneTimelines:
        grouped: dict[str, list[dict[str, Any]]] = {}
        for sd in self.scene_sample_data()[scene_token]:
            calibration = sd["calibrated_sensor_token"]
            channel = self._channel_of_calibration.get(calibration)
            if channel is None:
                channel = self._channel_of_calibration[calibration] = sensor_channel(self.nusc, sd)
            grouped.setdefault(channel, []).append(sd)
        timelines: dict[str, _Timeline] = {}
        for channel, records in grouped.items():
            records.sort(key=lambda record: int(record["timestamp"]))
            stamps = [int(record["timestamp"]) * US_TO_NS for record in records]
            timelines[channel] = _Timeline(stamps, records)
        imu = self._scene_imu(scene_token, timelines)
        return _SceneTimelines(timelines, imu, [s.stamp_ns for s in imu])

    def _scene_imu(
        self, scene_token: str, timelines: dict[str, _Timeline]
    ) -> tuple[ImuSample, ...]:
        """The CAN IMU samples within the scene's span (its first to last sample_data)."""
        if self._can is None or not timelines:
            return ()
        samples = sorted(
            self._can.samples(str(self.nusc.get("scene", scene_token)["name"])),
            key=lambda sample: sample.stamp_ns,
        )
        start_ns = min(t.stamps_ns[0] for t in timelines.values())
        end_ns = max(t.stamps_ns[-1] for t in timelines.values())
        return tuple(s for s in samples if start_ns <= s.stamp_ns <= end_ns)

    # --------------------------------------------------------------------------- sensors

    def _sensor_to_ref(
        self,
        sd: dict[str, Any],
        chosen_sd: dict[str, Any],
        ref_sd: dict[str, Any],
        global_to_ref: F64Array,
    ) -> F64Array:
        """[4, 4] transform of a sweep's sensor frame into the frame its points are given in.

        With ego-motion compensation: the reference (LIDAR_TOP keyframe) ego frame. Without:
        the ego frame at the chosen sweep's time (static extrinsics for the chosen sweep itself,
        exactly the node's /tf_static transform). A sweep taken at the target ego pose uses the
        extrinsics alone, not a product of a pose and its inverse (which is off in the last
        bits).
        """
        nusc = self.nusc
        target_sd = ref_sd if self.compensate_ego_motion else chosen_sd
        if sd["ego_pose_token"] == target_sd["ego_pose_token"]:
            return ego_from_sensor(nusc, sd)
        if not self.compensate_ego_motion:
            global_to_ref = np.linalg.inv(global_from_ego(nusc, chosen_sd))
        return global_to_ref @ global_from_ego(nusc, sd) @ ego_from_sensor(nusc, sd)

    def _merged_sweeps(
        self,
        chosen_sd: dict[str, Any],
        ref_sd: dict[str, Any],
        global_to_ref: F64Array,
        num_sweeps: int,
        rows: Any,
    ) -> PointCloud:
        """The chosen sweep and up to num_sweeps - 1 earlier ones of its channel (see
        _sensor_to_ref for the frame)."""
        channel = sensor_channel(self.nusc, chosen_sd)
        ref_ns = int(ref_sd["timestamp"]) * US_TO_NS
        parts: list[FloatArray] = []
        sd = chosen_sd
        for _ in range(num_sweeps):
            to_ref = self._sensor_to_ref(sd, chosen_sd, ref_sd, global_to_ref)
            dt_s = frame_rule.sweep_dt_s(ref_ns, int(sd["timestamp"]) * US_TO_NS)
            parts.append(rows(self.dataroot / sd["filename"], to_ref, dt_s))
            if not sd["prev"]:
                break
            sd = self.nusc.get("sample_data", sd["prev"])
        fields = LIDAR_POINT_FIELDS if channel == LIDAR_CHANNEL else RADAR_POINT_FIELDS
        return PointCloud(
            sensor=channel,
            stamp_ns=int(chosen_sd["timestamp"]) * US_TO_NS,
            points=np.concatenate(parts, axis=0),
            fields=fields,
        )

    def _radar_rows(self, path: Path, ref_from_sensor: F64Array, dt_s: float) -> FloatArray:
        """[N, 7] float32 RADAR_POINT_FIELDS rows of one .pcd in the reference ego frame."""
        cloud = read_radar_pcd(path)
        names = {name for name, _ in cloud.fields}
        needed: tuple[str, ...] = ("x", "y", "z", "rcs", "vx_comp", "vy_comp")
        if self.radar_filter:
            needed += core_radar.STATE_FIELDS
        missing = [n for n in needed if n not in names]
        if missing:
            raise NuScenesDataError(f"{path}: radar PCD lacks field(s) {missing}")
        pts = cloud.points
        if self.radar_filter:
            # The node applies the same rule to live clouds (core.radar); the bag keeps all.
            pts = pts[core_radar.cluster_keep_mask(*(pts[f] for f in core_radar.STATE_FIELDS))]
        out = np.empty((pts.shape[0], len(RADAR_POINT_FIELDS)), dtype=np.float32)
        xyz = np.stack([pts["x"], pts["y"], pts["z"]], axis=1).astype(np.float32)
        out[:, 0:3] = transform_points_f32(xyz, ref_from_sensor)
        out[:, 3] = pts["rcs"]
        # Ego-motion-compensated radial velocities, rotated (not translated) into the ego frame.
        vel = np.zeros((pts.shape[0], 3), dtype=np.float32)
        vel[:, 0], vel[:, 1] = pts["vx_comp"], pts["vy_comp"]
        out[:, 4:6] = rotate_vectors_f32(vel, ref_from_sensor)[:, :2]
        out[:, 6] = dt_s
        return out

    def _camera(
        self, sd: dict[str, Any], ref_sd: dict[str, Any], global_to_ref: F64Array
    ) -> CameraImage:
        path = self.dataroot / sd["filename"]
        image = decode_jpeg(read_jpeg_bytes(path), self.camera_downscale, path)
        full_w, full_h = int(sd["width"]), int(sd["height"])
        if full_w <= 0 or full_h <= 0:
            raise NuScenesDataError(
                f"{self.dataroot / self.version / 'sample_data.json'}: record {sd['token']} "
                f"({sd['filename']}) has width {full_w} and height {full_h}; camera records need "
                "the full image size to scale the intrinsics"
            )
        k = scale_intrinsics(
            camera_intrinsics(self.nusc, sd).astype(np.float32),
            image.shape[1] / full_w,
            image.shape[0] / full_h,
        )
        ref_from_cam = self._sensor_to_ref(sd, sd, ref_sd, global_to_ref)
        return CameraImage(
            sensor=sensor_channel(self.nusc, sd),
            stamp_ns=int(sd["timestamp"]) * US_TO_NS,
            image=image,
            intrinsics=k.astype(np.float32),
            camera_to_ego=ref_from_cam.astype(np.float32),
        )

    def _imu(self, timelines: _SceneTimelines, ref_ns: int) -> tuple[ImuSample, ...]:
        """The samples the synchronizer gives a LiDAR-triggered frame: those since the previous
        LiDAR sweep (the previous frame), at most `imu_window_s` old."""
        lidar = timelines.channels[LIDAR_CHANNEL]
        index = bisect.bisect_left(lidar.stamps_ns, ref_ns)
        previous_ns = lidar.stamps_ns[index - 1] if index > 0 else None
        window = frame_rule.imu_slice(
            timelines.imu_stamps_ns, ref_ns, previous_ns, self.imu_window_ns
        )
        return timelines.imu[window]

    def _gnss(
        self,
        timelines: _SceneTimelines,
        ref_sd: dict[str, Any],
        location: str,
        ego_to_global: F64Array,
    ) -> GnssFix | None:
        """The frame rule's fix among those derived from every LIDAR_TOP sweep (as the bag
        writer derives them), or None when none is recent enough."""
        lidar = timelines.channels[LIDAR_CHANNEL]
        ref_ns = int(ref_sd["timestamp"]) * US_TO_NS
        index = frame_rule.gnss_index(
            lidar.stamps_ns, ref_ns, self.slop_ns[Modality.GNSS], self.gnss_staleness_ns
        )
        if index is None:
            return None
        sd = lidar.records[index]
        pose = ego_to_global if sd["token"] == ref_sd["token"] else None
        return gnss_fix(self.nusc, sd, location, pose)


# Modalities with a slop setting (the IMU takes a window instead).
_SLOP_SETTING_MODALITIES = (Modality.LIDAR, Modality.RADAR, Modality.CAMERA, Modality.GNSS)


def _slop_ns(slop_s: Mapping[str, float] | None) -> dict[Modality, int]:
    """Per-modality slop (ns) from the node-style {"camera": 0.05, ...} mapping (seconds)."""
    out = dict(frame_rule.DEFAULT_SLOP_NS)
    for name, value in (slop_s or {}).items():
        modality = next((m for m in _SLOP_SETTING_MODALITIES if m.value == name), None)
        if modality is None:
            raise ConfigError(
                f"slop_s names {name!r}; use modality names "
                f"{[m.value for m in _SLOP_SETTING_MODALITIES]}"
            )
        if not value >= 0:
            raise ConfigError(f"slop_s[{name!r}] = {value} must be >= 0 (seconds)")
        out[modality] = round(value * 1e9)
    return out


def _gt_filter(gt_filter: GtFilter | str, min_points: int | None) -> GtFilter:
    if isinstance(gt_filter, str):
        chosen = NAMED_GT_FILTERS.get(gt_filter)
        if chosen is None:
            raise ConfigError(
                f"gt_filter {gt_filter!r} is unknown; use one of {sorted(NAMED_GT_FILTERS)} or a "
                "GtFilter"
            )
        gt_filter = chosen
    if min_points is not None:
        gt_filter = dataclasses.replace(gt_filter, min_points=min_points)
    return gt_filter


@dataclass(frozen=True)
class GroundTruth:
    """The detection-class boxes of one sample in an ego frame (see KeyframeRecord)."""

    boxes: Detections
    num_points: IntArray
    instance_tokens: tuple[str, ...]


def ground_truth_in_ego(
    nusc: Any, sample: dict[str, Any], global_to_ego: F64Array, gt_filter: GtFilter = KEEP_ALL_GT
) -> GroundTruth:
    """A sample's annotations of the 10 detection classes, in the ego frame `global_to_ego`.

    Velocity comes from the devkit's box_velocity (global, NaN where it cannot be estimated),
    rotated into the ego frame; the attribute is the annotation's only one, or "". Boxes the
    filter drops (data.gt_filter; default: none) are left out.
    """
    from nuscenes.eval.detection.utils import category_to_detection_name

    annotations: list[tuple[dict[str, Any], str]] = []
    for ann_token in sample["anns"]:
        ann = nusc.get("sample_annotation", ann_token)
        name = category_to_detection_name(ann["category_name"])
        if name is not None:
            annotations.append((ann, name))
    keep = keep_annotations(nusc, sample, annotations, gt_filter)
    rows: list[tuple[F64Array, F64Array, float, F64Array, int, str, int, str]] = []
    rotation = global_to_ego[:3, :3]
    for (ann, name), kept in zip(annotations, keep, strict=True):
        if not kept:
            continue
        ann_token = ann["token"]
        num_points = int(ann["num_lidar_pts"]) + int(ann["num_radar_pts"])
        center = transform_points(global_to_ego, np.asarray([ann["translation"]]))[0]
        yaw = yaw_of(rotation @ quaternion_wxyz_to_matrix(ann["rotation"]))
        velocity = rotation @ np.asarray(nusc.box_velocity(ann_token), dtype=np.float64)
        rows.append(
            (
                center,
                np.asarray(ann["size"], dtype=np.float64),
                yaw,
                velocity[:2],
                NUSCENES_CLASSES.index(name),
                _attribute_name(nusc, ann),
                num_points,
                str(ann["instance_token"]),
            )
        )
    if not rows:
        return GroundTruth(Detections.empty(), np.zeros((0,), np.int64), ())
    centers, sizes, yaws, vels, labels, attrs, npts, instances = zip(*rows, strict=True)
    boxes = Detections(
        center_m=np.asarray(centers, np.float32),
        size_wlh_m=np.asarray(sizes, np.float32),
        yaw_rad=np.asarray(yaws, np.float32),
        velocity_mps=np.asarray(vels, np.float32),
        score=np.ones(len(rows), np.float32),
        label=np.asarray(labels, np.int64),
        attribute=tuple(attrs),
    )
    return GroundTruth(boxes, np.asarray(npts, np.int64), tuple(instances))


def _attribute_name(nusc: Any, ann: dict[str, Any]) -> str:
    tokens = ann["attribute_tokens"]
    if len(tokens) > 1:
        raise NuScenesDataError(
            f"sample_annotation {ann['token']} has {len(tokens)} attributes; nuScenes "
            "detection allows at most one"
        )
    return str(nusc.get("attribute", tokens[0])["name"]) if tokens else ""


def _lidar_rows(path: Path, ref_from_sensor: F64Array, dt_s: float) -> FloatArray:
    """[N, 5] float32 LIDAR_POINT_FIELDS rows of one .bin in the reference ego frame."""
    raw = read_lidar_bin(path)
    out = np.empty((raw.shape[0], len(LIDAR_POINT_FIELDS)), dtype=np.float32)
    out[:, 0:3] = transform_points_f32(raw[:, 0:3], ref_from_sensor)
    out[:, 3] = raw[:, 3]
    out[:, 4] = dt_s
    return out


def gnss_fix(
    nusc: Any, sd: dict[str, Any], location: str, ego_to_global: F64Array | None = None
) -> GnssFix:
    """A GNSS fix derived from a sample_data's ego pose and its map's reference coordinate.

    Velocity (east, north) is the difference to the previous sample_data's ego pose of the same
    channel (the next one at the start of a scene). No heading: a NavSatFix has none, so, as on
    the vehicle, preprocessing derives the course from the velocity. Altitude is the ego z
    above the map origin (0 in nuScenes).
    """
    pose = ego_to_global if ego_to_global is not None else global_from_ego(nusc, sd)
    lat, lon = latlon_of(location, float(pose[0, 3]), float(pose[1, 3]))
    neighbour_token = sd["prev"] or sd["next"]
    velocity: tuple[float, float] | None = None
    if neighbour_token:
        other = nusc.get("sample_data", neighbour_token)
        other_pose = nusc.get("ego_pose", other["ego_pose_token"])
        dt_s = (int(sd["timestamp"]) - int(other["timestamp"])) * 1e-6
        if dt_s != 0:
            d = (pose[:3, 3] - np.asarray(other_pose["translation"])) / dt_s
            velocity = (float(d[0]), float(d[1]))
    return GnssFix(
        stamp_ns=int(sd["timestamp"]) * US_TO_NS,
        latitude_deg=lat,
        longitude_deg=lon,
        altitude_m=float(pose[2, 3]),
        velocity_en_mps=velocity,
        heading_rad=None,
    )


class CanImu:
    """ms_imu messages of <dataroot>/can_bus/<scene>_ms_imu.json as ImuSamples, one scene a call.

    ms_imu: utime (us), linear_accel (m/s^2), rotation_rate (rad/s), q (w, x, y, z), 100 Hz.
    Nothing is cached here: callers keep what they need (the reader keeps a few scenes).
    """

    def __init__(self, dataroot: Path) -> None:
        self.can_dir = dataroot / "can_bus"
        if not self.can_dir.is_dir():
            raise NuScenesDataError(
                f"{self.can_dir}: no CAN bus directory; extract the nuScenes CAN bus expansion "
                "there, or pass can_bus=False to read without IMU"
            )
        self._api: Any = None

    def samples(self, scene_name: str) -> tuple[ImuSample, ...]:
        return self._load(scene_name)

    def _load(self, scene_name: str) -> tuple[ImuSample, ...]:
        from nuscenes.can_bus.can_bus_api import NuScenesCanBus

        if self._api is None:
            self._api = NuScenesCanBus(dataroot=str(self.can_dir.parent))
        scene_id = _scene_number(scene_name)
        if scene_id is not None and scene_id in self._api.can_blacklist:
            # nuScenes documents these scenes as recorded without CAN bus: IMU is absent there.
            _LOG.warning("%s has no CAN bus data (devkit can_blacklist): IMU absent", scene_name)
            return ()
        path = self.can_dir / f"{scene_name}_ms_imu.json"
        if not path.is_file():
            raise NuScenesDataError(
                f"{path}: ms_imu file is missing; extract the CAN bus expansion completely, or "
                "pass can_bus=False"
            )
        try:
            messages = self._api.get_messages(scene_name, "ms_imu", print_warnings=False)
        except (json.JSONDecodeError, ValueError) as error:
            raise NuScenesDataError(f"{path}: not valid ms_imu JSON ({error})") from error
        return tuple(_imu_sample(m, path) for m in messages)


def _scene_number(scene_name: str) -> int | None:
    tail = scene_name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _imu_sample(message: dict[str, Any], path: Path) -> ImuSample:
    try:
        w, x, y, z = (float(v) for v in message["q"])
        gyro = tuple(float(v) for v in message["rotation_rate"])
        accel = tuple(float(v) for v in message["linear_accel"])
        stamp_ns = int(message["utime"]) * US_TO_NS
    except (KeyError, TypeError, ValueError) as error:
        raise NuScenesDataError(
            f"{path}: ms_imu message lacks utime/q/rotation_rate/linear_accel ({error})"
        ) from error
    if len(gyro) != 3 or len(accel) != 3:
        raise NuScenesDataError(f"{path}: ms_imu rotation_rate/linear_accel must have 3 values")
    return ImuSample(
        stamp_ns=stamp_ns,
        angular_velocity_rps=(gyro[0], gyro[1], gyro[2]),
        linear_acceleration_mps2=(accel[0], accel[1], accel[2]),
        orientation_xyzw=(x, y, z, w),
    )
