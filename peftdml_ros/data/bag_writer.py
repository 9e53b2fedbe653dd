"""nuScenes (real or generated) -> rosbag2 directory with MCAP storage, every sweep included.

One message per sample_data record (cameras: a CompressedImage and a CameraInfo), stamped with
the sensor's timestamp (us -> ns) in the header and as the bag's log time, written in time
order. Topics (see docs/bag_replay.md for the full table):

  /lidar/points                      sensor_msgs/PointCloud2   lidar_top (x y z intensity
                                     float32, ring uint16), LiDAR frame as in nuScenes
  /radar/<name>/points               sensor_msgs/PointCloud2   radar_<name>, all 18 PCD fields
                                     in their native types, every cluster (no filter)
  /camera/<name>/image/compressed    sensor_msgs/CompressedImage   cam_<name> (JPEG unchanged)
  /camera/<name>/camera_info         sensor_msgs/CameraInfo    cam_<name> (K, P, plumb_bob, D = 0)
  /imu/data                          sensor_msgs/Imu           base_link (CAN bus ms_imu)
  /gnss/fix                          sensor_msgs/NavSatFix     base_link (ego pose + map origin)
  /tf                                tf2_msgs/TFMessage        map -> base_link (every ego pose)
  /tf_static                         tf2_msgs/TFMessage        base_link -> every sensor frame,
                                     once per scene, offered transient-local
  /ground_truth/detections           vision_msgs/Detection3DArray  base_link, keyframes only

This module uses rosbags (pure Python), not rclpy, so it stays importable without ROS.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from peftdml_ros.core import pointcloud
from peftdml_ros.core.errors import ConfigError, InputDataError
from peftdml_ros.core.types import NUSCENES_CLASSES, Detections
from peftdml_ros.data import nuscenes_reader as nr
from peftdml_ros.data.rosbag_types import typestore

_LOG = logging.getLogger(__name__)

MAP_FRAME = "map"
BASE_FRAME = "base_link"
GNSS_FRAME = BASE_FRAME  # the derived fix is the ego origin's position
IMU_TOPIC = "/imu/data"
GNSS_TOPIC = "/gnss/fix"
TF_TOPIC = "/tf"
TF_STATIC_TOPIC = "/tf_static"
GT_TOPIC = "/ground_truth/detections"
LIDAR_TOPIC = "/lidar/points"

# Log-time tie-break at equal stamps: static transforms first, then poses, then the rest.
_ORDER_TF_STATIC, _ORDER_TF, _ORDER_SENSOR, _ORDER_GT = 0, 1, 2, 3


class BagWriteError(InputDataError):
    """The bag cannot be written (target exists, unknown scene, rosbags refused)."""


def short_name(channel: str) -> str:
    """RADAR_FRONT_LEFT -> front_left, CAM_BACK -> back, LIDAR_TOP -> top."""
    return channel.split("_", 1)[1].lower()


def frame_id(channel: str) -> str:
    """The TF frame of a channel: lidar_top, radar_front_left, cam_back, ..."""
    return channel.lower()


def sensor_topics(channel: str) -> tuple[str, ...]:
    """The topic(s) that one sample_data record of this channel is written to."""
    if channel == nr.LIDAR_CHANNEL:
        return (LIDAR_TOPIC,)
    if channel in nr.RADAR_CHANNELS:
        return (f"/radar/{short_name(channel)}/points",)
    if channel in nr.CAMERA_CHANNELS:
        name = short_name(channel)
        return (f"/camera/{name}/image/compressed", f"/camera/{name}/camera_info")
    raise nr.UnknownChannelError(f"channel {channel!r} has no topic")


# -------------------------------------------------------------------------------------- QoS


def _qos(*, depth: int, transient_local: bool) -> Any:
    from rosbags.interfaces import (
        Qos,
        QosDurability,
        QosHistory,
        QosLiveliness,
        QosReliability,
        QosTime,
    )

    zero = QosTime(0, 0)
    # rosbag2 writes "infinite" durations as the largest sec/nsec values.
    infinite = QosTime(0x7FFFFFFF, 0xFFFFFFFF)
    return Qos(
        history=QosHistory.KEEP_LAST,
        depth=depth,
        reliability=QosReliability.RELIABLE,
        durability=QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
        deadline=infinite if not transient_local else zero,
        lifespan=infinite if not transient_local else zero,
        liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=infinite if not transient_local else zero,
        avoid_ros_namespace_conventions=False,
    )


def offered_qos(topic: str) -> Any:
    """The QoS profile recorded for a topic: /tf_static latched (transient local, depth 1)."""
    if topic == TF_STATIC_TOPIC:
        return _qos(depth=1, transient_local=True)
    return _qos(depth=100 if topic == TF_TOPIC else 10, transient_local=False)


# ------------------------------------------------------------------------------- messages


class _Msgs:
    """Builds rosbags message objects and serializes them to CDR."""

    def __init__(self) -> None:
        self.store = typestore()
        self.t = self.store.types

    def cdr(self, msg: Any) -> bytes:
        return bytes(self.store.serialize_cdr(msg, msg.__msgtype__))

    def header(self, stamp_ns: int, frame: str) -> Any:
        sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
        stamp = self.t["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)
        return self.t["std_msgs/msg/Header"](stamp=stamp, frame_id=frame)

    def vector3(self, xyz: Sequence[float]) -> Any:
        return self.t["geometry_msgs/msg/Vector3"](
            x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2])
        )

    def quaternion(self, wxyz: Sequence[float]) -> Any:
        w, x, y, z = (float(v) for v in wxyz)
        return self.t["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w)

    def transform(
        self, stamp_ns: int, parent: str, child: str, xyz: Sequence[float], wxyz: Sequence[float]
    ) -> Any:
        transform = self.t["geometry_msgs/msg/Transform"](
            translation=self.vector3(xyz), rotation=self.quaternion(wxyz)
        )
        return self.t["geometry_msgs/msg/TransformStamped"](
            header=self.header(stamp_ns, parent), child_frame_id=child, transform=transform
        )

    def tf_message(self, transforms: list[Any]) -> Any:
        return self.t["tf2_msgs/msg/TFMessage"](transforms=transforms)

    def cloud(self, stamp_ns: int, frame: str, packed: pointcloud.PackedCloud) -> Any:
        fields = [
            self.t["sensor_msgs/msg/PointField"](
                name=f.name, offset=f.offset, datatype=f.datatype, count=f.count
            )
            for f in packed.fields
        ]
        return self.t["sensor_msgs/msg/PointCloud2"](
            header=self.header(stamp_ns, frame),
            height=packed.height,
            width=packed.width,
            fields=fields,
            is_bigendian=packed.is_bigendian,
            point_step=packed.point_step,
            row_step=packed.row_step,
            data=np.frombuffer(packed.data, dtype=np.uint8),
            is_dense=packed.is_dense,
        )

    def compressed_image(self, stamp_ns: int, frame: str, jpeg: bytes) -> Any:
        return self.t["sensor_msgs/msg/CompressedImage"](
            header=self.header(stamp_ns, frame),
            format="jpeg",
            data=np.frombuffer(jpeg, dtype=np.uint8),
        )

    def camera_info(
        self, stamp_ns: int, frame: str, k: npt.NDArray[np.float64], width: int, height: int
    ) -> Any:
        p = np.zeros((3, 4))
        p[:, :3] = k
        roi = self.t["sensor_msgs/msg/RegionOfInterest"](
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
        )
        return self.t["sensor_msgs/msg/CameraInfo"](
            header=self.header(stamp_ns, frame),
            height=height,
            width=width,
            distortion_model="plumb_bob",
            d=np.zeros(5),
            k=k.reshape(9).astype(np.float64),
            r=np.eye(3).reshape(9),
            p=p.reshape(12),
            binning_x=0,
            binning_y=0,
            roi=roi,
        )

    def imu(self, sample: Any) -> Any:
        # Zero covariances mean "unknown" (sensor_msgs/Imu); the orientation is the CAN's q.
        x, y, z, w = sample.orientation_xyzw
        return self.t["sensor_msgs/msg/Imu"](
            header=self.header(sample.stamp_ns, BASE_FRAME),
            orientation=self.quaternion((w, x, y, z)),
            orientation_covariance=np.zeros(9),
            angular_velocity=self.vector3(sample.angular_velocity_rps),
            angular_velocity_covariance=np.zeros(9),
            linear_acceleration=self.vector3(sample.linear_acceleration_mps2),
            linear_acceleration_covariance=np.zeros(9),
        )

    def nav_sat_fix(self, fix: Any) -> Any:
        status_type = self.t["sensor_msgs/msg/NavSatStatus"]
        status = status_type(status=status_type.STATUS_FIX, service=status_type.SERVICE_GPS)
        return self.t["sensor_msgs/msg/NavSatFix"](
            header=self.header(fix.stamp_ns, GNSS_FRAME),
            status=status,
            latitude=fix.latitude_deg,
            longitude=fix.longitude_deg,
            altitude=fix.altitude_m,
            position_covariance=np.zeros(9),
            position_covariance_type=0,  # COVARIANCE_TYPE_UNKNOWN: derived, not measured
        )

    def detections(self, stamp_ns: int, boxes: Detections, ids: Sequence[str]) -> Any:
        t = self.t
        items = []
        for i in range(len(boxes)):
            yaw = float(boxes.yaw_rad[i])
            width, length, height = (float(v) for v in boxes.size_wlh_m[i])
            pose = t["geometry_msgs/msg/Pose"](
                position=t["geometry_msgs/msg/Point"](
                    x=float(boxes.center_m[i, 0]),
                    y=float(boxes.center_m[i, 1]),
                    z=float(boxes.center_m[i, 2]),
                ),
                orientation=self.quaternion((np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))),
            )
            hypothesis = t["vision_msgs/msg/ObjectHypothesisWithPose"](
                hypothesis=t["vision_msgs/msg/ObjectHypothesis"](
                    class_id=NUSCENES_CLASSES[int(boxes.label[i])], score=float(boxes.score[i])
                ),
                pose=t["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=np.zeros(36)),
            )
            # BoundingBox3D size is along the box's own axes: x = length, y = width, z = height.
            size = self.vector3((length, width, height))
            bbox = t["vision_msgs/msg/BoundingBox3D"](center=pose, size=size)
            items.append(
                t["vision_msgs/msg/Detection3D"](
                    header=self.header(stamp_ns, BASE_FRAME),
                    results=[hypothesis],
                    bbox=bbox,
                    id=ids[i],
                )
            )
        return t["vision_msgs/msg/Detection3DArray"](
            header=self.header(stamp_ns, BASE_FRAME), detections=items
        )


def lidar_packed(path: Path) -> pointcloud.PackedCloud:
    """A nuScenes .bin as PointCloud2 columns x, y, z, intensity (float32), ring (uint16)."""
    raw = nr.read_lidar_bin(path)
    ring = raw[:, 4]
    if ring.size and (ring.min() < 0 or ring.max() > np.iinfo(np.uint16).max):
        raise nr.NuScenesDataError(f"{path}: ring index out of uint16 range; corrupt sweep")
    return pointcloud.pack_points(
        {
            "x": raw[:, 0],
            "y": raw[:, 1],
            "z": raw[:, 2],
            "intensity": raw[:, 3],
            "ring": np.rint(ring).astype(np.uint16),
        }
    )


def radar_packed(path: Path) -> pointcloud.PackedCloud:
    """A nuScenes radar .pcd as a PointCloud2 body: its 18 fields, bytes unchanged."""
    cloud = nr.read_radar_pcd(path)
    fields: list[pointcloud.PackedField] = []
    offset = 0  # PCD binary rows are packed: each field starts where the previous one ends
    for name, dt in cloud.fields:
        fields.append(pointcloud.PackedField(name, offset, pointcloud.datatype_for(dt), 1))
        offset += dt.itemsize
    floats = [cloud.points[name] for name, dt in cloud.fields if dt.kind == "f"]
    n = int(cloud.points.shape[0])
    return pointcloud.PackedCloud(
        height=1,
        width=n,
        fields=tuple(fields),
        is_bigendian=False,
        point_step=cloud.point_step,
        row_step=n * cloud.point_step,
        data=cloud.data,
        is_dense=all(bool(np.isfinite(f).all()) for f in floats),
    )


# --------------------------------------------------------------------------------- events


@dataclass(frozen=True, order=True)
class _Event:
    """One message to write: sorted by stamp, then kind, then a sequence number."""

    stamp_ns: int
    order: int
    seq: int
    kind: str = field(compare=False)
    payload: Any = field(compare=False)


@dataclass
class BagSummary:
    """What write_bag wrote and how fast.

    realtime_factor: bag duration / wall time (10 = ten times faster than real time).
    """

    path: Path
    scenes: list[str]
    messages: int
    topics: dict[str, int]
    bytes_written: int
    bag_duration_s: float
    wall_s: float

    @property
    def messages_per_s(self) -> float:
        return self.messages / self.wall_s if self.wall_s > 0 else float("inf")

    @property
    def realtime_factor(self) -> float:
        return self.bag_duration_s / self.wall_s if self.wall_s > 0 else float("inf")

    def line(self) -> str:
        return (
            f"wrote {self.messages} messages ({self.bytes_written / 1e6:.1f} MB, "
            f"{len(self.scenes)} scene(s), {self.bag_duration_s:.1f} s of data) to {self.path} "
            f"in {self.wall_s:.1f} s: {self.messages_per_s:.0f} msg/s, "
            f"{self.realtime_factor:.1f}x real time"
        )


class _SceneEvents:
    """The time-ordered messages of one scene."""

    def __init__(self, nusc: Any, scene: dict[str, Any], can: Any, sample_data: list[Any]):
        self.nusc = nusc
        self.scene = scene
        self.can = can
        self.sample_data = sample_data
        self.location = str(nusc.get("log", scene["log_token"])["location"])

    def events(self) -> list[_Event]:
        events: list[_Event] = []
        seq = 0

        def add(stamp_ns: int, order: int, kind: str, payload: Any) -> None:
            nonlocal seq
            events.append(_Event(stamp_ns, order, seq, kind, payload))
            seq += 1

        poses: dict[str, int] = {}
        for sd in self.sample_data:
            channel = nr.sensor_channel(self.nusc, sd)
            stamp_ns = int(sd["timestamp"]) * nr.US_TO_NS
            add(stamp_ns, _ORDER_SENSOR, channel, sd)
            pose = self.nusc.get("ego_pose", sd["ego_pose_token"])
            poses.setdefault(str(pose["token"]), int(pose["timestamp"]) * nr.US_TO_NS)
            if channel == nr.LIDAR_CHANNEL:
                add(stamp_ns, _ORDER_SENSOR, "gnss", sd)
        seen_stamps: set[int] = set()
        for token, stamp_ns in sorted(poses.items(), key=lambda kv: kv[1]):
            if stamp_ns not in seen_stamps:  # one map -> base_link per instant
                seen_stamps.add(stamp_ns)
                add(stamp_ns, _ORDER_TF, "tf", token)
        token = self.scene["first_sample_token"]
        while token:
            sample = self.nusc.get("sample", token)
            add(int(sample["timestamp"]) * nr.US_TO_NS, _ORDER_GT, "gt", sample)
            token = sample["next"]
        start_ns = min(e.stamp_ns for e in events)
        end_ns = max(e.stamp_ns for e in events)
        for imu in self._imu_samples():
            if start_ns <= imu.stamp_ns <= end_ns:
                add(imu.stamp_ns, _ORDER_SENSOR, "imu", imu)
        add(start_ns, _ORDER_TF_STATIC, "tf_static", self._static_transforms())
        events.sort()
        return events

    def _imu_samples(self) -> tuple[Any, ...]:
        return () if self.can is None else self.can.samples(str(self.scene["name"]))

    def _static_transforms(self) -> dict[str, dict[str, Any]]:
        """frame -> calibrated_sensor record of every channel that the scene's records use.

        The first record of each channel decides (a scene has one calibration per sensor), so
        a sensor that is out at the scene's start still gets its mount.
        """
        out: dict[str, dict[str, Any]] = {}
        for sd in sorted(self.sample_data, key=lambda record: int(record["timestamp"])):
            frame = frame_id(nr.sensor_channel(self.nusc, sd))
            if frame not in out:
                out[frame] = self.nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        return out


class _BagSink:
    """Owns the rosbags Writer and its connections; turns events into CDR messages."""

    def __init__(self, writer: Any, dataroot: Path, nusc: Any) -> None:
        self.writer = writer
        self.dataroot = dataroot
        self.nusc = nusc
        self.msgs = _Msgs()
        self.connections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self.bytes_written = 0
        self.messages = 0

    def _write(self, topic: str, msg: Any, stamp_ns: int) -> None:
        conn = self.connections.get(topic)
        if conn is None:
            conn = self.writer.add_connection(
                topic,
                msg.__msgtype__,
                typestore=self.msgs.store,
                offered_qos_profiles=[offered_qos(topic)],
            )
            self.connections[topic] = conn
        data = self.msgs.cdr(msg)
        self.writer.write(conn, stamp_ns, data)
        self.counts[topic] = self.counts.get(topic, 0) + 1
        self.bytes_written += len(data)
        self.messages += 1

    def write(self, event: _Event, location: str) -> None:
        kind, stamp = event.kind, event.stamp_ns
        m = self.msgs
        if kind == nr.LIDAR_CHANNEL:
            packed = lidar_packed(self.dataroot / event.payload["filename"])
            self._write(LIDAR_TOPIC, m.cloud(stamp, frame_id(kind), packed), stamp)
        elif kind in nr.RADAR_CHANNELS:
            packed = radar_packed(self.dataroot / event.payload["filename"])
            topic = sensor_topics(kind)[0]
            self._write(topic, m.cloud(stamp, frame_id(kind), packed), stamp)
        elif kind in nr.CAMERA_CHANNELS:
            self._camera(event.payload, kind, stamp)
        elif kind == "imu":
            self._write(IMU_TOPIC, m.imu(event.payload), stamp)
        elif kind == "gnss":
            fix = nr.gnss_fix(self.nusc, event.payload, location)
            self._write(GNSS_TOPIC, m.nav_sat_fix(fix), stamp)
        elif kind == "tf":
            pose = self.nusc.get("ego_pose", event.payload)
            transform = m.transform(
                stamp, MAP_FRAME, BASE_FRAME, pose["translation"], pose["rotation"]
            )
            self._write(TF_TOPIC, m.tf_message([transform]), stamp)
        elif kind == "tf_static":
            transforms = [
                m.transform(stamp, BASE_FRAME, child, cal["translation"], cal["rotation"])
                for child, cal in sorted(event.payload.items())
            ]
            self._write(TF_STATIC_TOPIC, m.tf_message(transforms), stamp)
        elif kind == "gt":
            self._ground_truth(event.payload, stamp)
        else:  # pragma: no cover - the event builder makes only the kinds above
            raise BagWriteError(f"internal: unknown event kind {kind!r}")

    def _camera(self, sd: dict[str, Any], channel: str, stamp: int) -> None:
        image_topic, info_topic = sensor_topics(channel)
        frame = frame_id(channel)
        jpeg = nr.read_jpeg_bytes(self.dataroot / sd["filename"])
        k = nr.camera_intrinsics(self.nusc, sd)
        info = self.msgs.camera_info(stamp, frame, k, int(sd["width"]), int(sd["height"]))
        # CameraInfo first: a player keeps write order within a stamp, so a consumer has the
        # calibration before the first image it applies to.
        self._write(info_topic, info, stamp)
        self._write(image_topic, self.msgs.compressed_image(stamp, frame, jpeg), stamp)

    def _ground_truth(self, sample: dict[str, Any], stamp: int) -> None:
        ref_sd = self.nusc.get("sample_data", sample["data"][nr.LIDAR_CHANNEL])
        global_to_ego = np.linalg.inv(nr.global_from_ego(self.nusc, ref_sd))
        gt = nr.ground_truth_in_ego(self.nusc, sample, global_to_ego)
        msg = self.msgs.detections(stamp, gt.boxes, gt.instance_tokens)
        self._write(GT_TOPIC, msg, stamp)


def _scene_sample_data(nusc: Any, scene_tokens: set[str]) -> dict[str, list[Any]]:
    """scene token -> every sample_data record (keyframes and sweeps) of that scene."""
    scene_of_sample = {s["token"]: s["scene_token"] for s in nusc.sample}
    out: dict[str, list[Any]] = {token: [] for token in scene_tokens}
    for sd in nusc.sample_data:
        scene_token = scene_of_sample.get(sd["sample_token"])
        if scene_token is None:
            raise nr.NuScenesDataError(
                f"{Path(nusc.dataroot) / nusc.version / 'sample_data.json'}: record "
                f"{sd['token']} names sample {sd['sample_token']}, which does not exist"
            )
        if scene_token in out:
            out[scene_token].append(sd)
    return out


def _chosen_scenes(nusc: Any, scenes: Sequence[str] | None) -> list[dict[str, Any]]:
    by_name = {s["name"]: s for s in nusc.scene}
    if scenes is None:
        return list(nusc.scene)
    unknown = [name for name in scenes if name not in by_name]
    if unknown:
        raise ConfigError(
            f"scene(s) {unknown} are not in {nusc.version}; available: "
            f"{', '.join(sorted(by_name))}"
        )
    return [by_name[name] for name in scenes]


def write_bag(
    dataroot: Path | str,
    version: str,
    out: Path | str,
    scenes: Sequence[str] | None = None,
    *,
    can_bus: bool = True,
    progress: bool = True,
) -> BagSummary:
    """Convert scenes (all when None) of a nuScenes version into a rosbag2 MCAP directory.

    `out` must not exist (rosbag2 never overwrites). can_bus=False writes no /imu/data (for a
    download without the CAN bus expansion).
    """
    from rosbags.rosbag2 import StoragePlugin, Writer, WriterError
    from tqdm import tqdm

    out_path = Path(out)
    if out_path.exists():
        raise BagWriteError(f"{out_path} exists; remove it or choose another output directory")
    root = Path(dataroot)
    nusc = nr.open_nuscenes(root, version)
    chosen = _chosen_scenes(nusc, scenes)
    can = nr.CanImu(root) if can_bus else None
    per_scene = _scene_sample_data(nusc, {s["token"] for s in chosen})
    plans = [(s, _SceneEvents(nusc, s, can, per_scene[s["token"]]).events()) for s in chosen]
    # Progress counts messages: a camera record gives two (image and camera_info).
    total = sum(2 if e.kind in nr.CAMERA_CHANNELS else 1 for _, events in plans for e in events)
    started = time.perf_counter()
    duration_ns = 0
    try:
        writer = Writer(out_path, version=9, storage_plugin=StoragePlugin.MCAP)
        writer.open()
    except WriterError as error:
        raise BagWriteError(f"{out_path}: rosbags cannot create the bag ({error})") from error
    sink = _BagSink(writer, root, nusc)
    try:
        with tqdm(total=total, unit="msg", desc="bag", disable=not progress) as bar:
            for scene, events in plans:
                location = str(nusc.get("log", scene["log_token"])["location"])
                duration_ns += events[-1].stamp_ns - events[0].stamp_ns
                for event in events:
                    before = sink.messages
                    sink.write(event, location)
                    bar.update(sink.messages - before)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return BagSummary(
        path=out_path,
        scenes=[str(s["name"]) for s in chosen],
        messages=sum(sink.counts.values()),
        topics=dict(sorted(sink.counts.items())),
        bytes_written=sink.bytes_written,
        bag_duration_s=duration_ns * 1e-9,
        wall_s=time.perf_counter() - started,
    )
