"""peftdml_node: the ROS 2 node around the core detector.

Data flow: subscription callback -> convert (conversions.py) -> FrameSynchronizer (under a lock)
-> newest complete frame -> inference worker -> Detection3DArray, properties, markers; a timer
polls the synchronizer for frames whose deadline passed, another publishes /diagnostics.

Threading. Callbacks run in one executor thread (main() spins a SingleThreadedExecutor) and do
only conversion and buffering; inference runs in one plain worker thread. A MultiThreadedExecutor
would not help the callbacks (they are short and mostly numpy/OpenCV) and would make callback
ordering per topic harder to reason about; a dedicated worker keeps inference from ever blocking
a callback. Hand-off is a one-frame slot: a frame that arrives while the worker is busy replaces
the waiting one, which is counted as dropped, so a slow engine never builds a backlog and the
output never falls behind real time. The synchronizer and the health counters share one lock.

Time. Message stamps are the time of record: outputs carry the trigger sensor's stamp. The
synchronizer's `now_ns` is the node clock, which follows /clock when use_sim_time is true. The
timers run on the steady clock, so a paused or slowed /clock never stalls polling or diagnostics.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.clock import Clock
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, Imu, NavSatFix, PointCloud2
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import MarkerArray

try:  # rclpy of Jazzy and later
    from rclpy.clock_type import ClockType
except ImportError:  # Humble
    from rclpy.clock import ClockType  # type: ignore[attr-defined]

from peftdml_ros.core import frame_rule
from peftdml_ros.core.errors import ConfigError, InputDataError, PeftdmlError
from peftdml_ros.core.sync import FrameSynchronizer, SyncConfig, SyncedFrame, SyncSensor
from peftdml_ros.core.types import CameraImage, Frame, Modality, PointCloud
from peftdml_ros.ros import conversions, outputs, params
from peftdml_ros.ros.params import NodeConfig, SensorSpec
from peftdml_ros.ros.tf_buffer import TF_STATIC_QOS, StaticTransformStore, TransformMissingError

NODE_NAME = "peftdml"
NS_PER_S = 1_000_000_000
POLL_PERIOD_S = 0.01  # synchronizer deadline resolution (steady clock)
RATE_WINDOW = 20  # messages over which a sensor's rate is measured


class NoClockError(conversions.ConversionError):
    """use_sim_time is true but no /clock message arrived yet (the node clock reads 0)."""


class UnexpectedInputError(conversions.ConversionError):
    """A message made the conversion fail in a way no check names (reported, then dropped)."""


@dataclass(frozen=True)
class Received:
    """A converted payload and when (steady clock) its message reached the callback."""

    value: Any
    receipt_ns: int


@dataclass
class _SensorState:
    spec: SensorSpec
    health: outputs.SensorHealth
    arrivals_ns: deque[int]  # node-clock arrival times of accepted messages
    last_arrival_ns: int | None = None
    last_stamp_ns: int | None = None


class FrameSlot:
    """A one-frame hand-off between the executor and the inference worker (newest wins)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: SyncedFrame | None = None
        self._closed = False
        self.dropped = 0

    def put(self, frame: SyncedFrame) -> None:
        with self._cond:
            if self._frame is not None:
                self.dropped += 1  # the worker is busy: the older frame is stale, never queued
            self._frame = frame
            self._cond.notify()

    def take(self, timeout_s: float) -> SyncedFrame | None:
        with self._cond:
            if self._frame is None and not self._closed:
                self._cond.wait(timeout_s)
            frame, self._frame = self._frame, None
            return frame

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


def sensor_qos(config: NodeConfig) -> QoSProfile:
    """Sensor-data QoS (best effort, volatile) by default; reliable when asked.

    A best-effort subscription also matches reliable publishers (e.g. a bag player), and a lost
    sensor message is better than a late one for a detector that runs on the newest frame.
    """
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=config.qos_depth,
        reliability=(
            ReliabilityPolicy.RELIABLE
            if config.qos_reliable
            else qos_profile_sensor_data.reliability
        ),
        durability=DurabilityPolicy.VOLATILE,
    )


def sync_config(config: NodeConfig) -> SyncConfig:
    return SyncConfig(
        reference_sensor=config.reference_sensor,
        slop_ns={m: int(v * NS_PER_S) for m, v in config.slop_s.items()},
        deadline_ns=int(config.deadline_s * NS_PER_S),
        reference_timeout_ns=int(config.reference_timeout_s * NS_PER_S),
        sensor_timeout_ns=int(config.sensor_timeout_s * NS_PER_S),
        fallback_order=config.fallback_order,
        imu_window_ns=int(config.imu_window_s * NS_PER_S),
        gnss_staleness_ns=int(config.gnss_staleness_s * NS_PER_S),
        buffer_size=config.buffer_size,
        imu_buffer_size=16 * config.buffer_size,
    )


def _make_detector(config: NodeConfig) -> Any:
    from peftdml_ros.core.detector import Detector, DetectorConfig

    return Detector(
        DetectorConfig(
            model_path=config.model_path,
            backend=config.backend,
            device=config.device,
            score_threshold=config.score_threshold,
            nms_iou_threshold=config.nms_iou_threshold,
            max_detections=config.max_detections,
        )
    )


class PeftdmlNode(Node):
    """Subscribes to the rig, synchronizes, detects, publishes. See the module docstring."""

    def __init__(
        self,
        *,
        context: Context | None = None,
        cli_args: Sequence[str] | None = None,
        namespace: str | None = None,
        detector_factory: Callable[[NodeConfig], Any] = _make_detector,
    ) -> None:
        super().__init__(
            NODE_NAME,
            context=context,
            cli_args=list(cli_args) if cli_args is not None else None,
            namespace=namespace,
        )
        self._config = params.declare_parameters(self)
        config = self._config
        self._lock = threading.Lock()
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._tf = StaticTransformStore()
        self._calibrations: dict[str, conversions.CameraCalibration] = {}
        self._gnss = conversions.GnssConverter()
        self._warned: dict[tuple[str, str], int] = {}
        self._sensors = {
            s.name: _SensorState(
                s,
                outputs.SensorHealth(s.name, s.modality.value, s.topic),
                deque(maxlen=RATE_WINDOW),
            )
            for s in config.sensors
        }
        self._sync = FrameSynchronizer(
            [SyncSensor(s.name, s.modality) for s in config.sensors], sync_config(config)
        )
        self._detector = detector_factory(config)
        self._check_training_data(config)
        backend = _backend_name(self._detector, config)
        self._pipeline = outputs.PipelineHealth(
            backend=str(backend), model=config.model_path or "(untrained default model)"
        )
        if not config.model_path:
            self.get_logger().warning(
                "detector.model_path selects the UNTRAINED default model: its detections are "
                "meaningless. Give a trained checkpoint, ONNX file or engine (the shipped model "
                "is the default of config/peftdml.yaml)."
            )
        self._latency_ms = outputs.LatencyWindow()
        self._processing_ms = outputs.LatencyWindow()
        self._inference_ms = outputs.LatencyWindow()
        self._slot = FrameSlot()
        self._last_report: tuple[int, int] | None = None  # (frames, errors) at the last report

        self._detections_pub = self.create_publisher(Detection3DArray, "~/detections", 10)
        self._properties_pub = self.create_publisher(PointCloud2, "~/detections/properties", 10)
        self._markers_pub = self.create_publisher(MarkerArray, "~/markers", 10)
        self._frame_status_pub = self.create_publisher(DiagnosticArray, "~/frame_status", 10)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._subscribe(config)
        self.create_timer(POLL_PERIOD_S, self._poll, clock=self._steady)
        self.create_timer(
            config.diagnostics_period_s, self._publish_diagnostics, clock=self._steady
        )
        if hasattr(self, "add_post_set_parameters_callback"):  # Iron and later
            self.add_on_set_parameters_callback(params.ParameterChangeGuard(self))
            self.add_post_set_parameters_callback(self._apply_parameters)
        else:  # Humble: apply from the guard, once it accepted the whole new configuration
            guard = params.ParameterChangeGuard(self, on_accept=self._apply_config)
            self.add_on_set_parameters_callback(guard)
        self._worker = threading.Thread(target=self._work, name="peftdml-inference", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"peftdml_node ready: {len(config.sensors)} sensors, reference "
            f"{config.reference_sensor}, backend {backend}, output frame {config.output_frame}"
        )

    # ------------------------------------------------------------------------- subscriptions

    def _subscribe(self, config: NodeConfig) -> None:
        qos = sensor_qos(config)
        self.create_subscription(TFMessage, "/tf_static", self._on_tf_static, TF_STATIC_QOS)
        for spec in config.sensors:
            handler = self._handler(spec)
            msg_type = _message_type(spec)
            self.create_subscription(msg_type, spec.topic, handler, qos)
            if spec.modality is Modality.CAMERA:
                self.create_subscription(
                    CameraInfo,
                    spec.camera_info_topic,
                    lambda msg, name=spec.name: self._on_camera_info(name, msg),
                    qos,
                )

    def _handler(self, spec: SensorSpec) -> Callable[[Any], None]:
        def callback(msg: Any) -> None:
            self._on_message(spec, msg)

        return callback

    def _on_tf_static(self, msg: TFMessage) -> None:
        try:
            self._tf.add_message(msg)
        except InputDataError as error:
            self._warn_throttled("/tf_static", "bad_transform", str(error))

    def _on_camera_info(self, name: str, msg: CameraInfo) -> None:
        try:
            self._calibrations[name] = conversions.camera_info_to_calibration(msg)
        except InputDataError as error:
            spec = self._sensors[name].spec
            self._reject(spec, error, topic=spec.camera_info_topic)

    def _on_message(self, spec: SensorSpec, msg: Any) -> None:
        receipt_ns = self._steady.now().nanoseconds
        now_ns = self.get_clock().now().nanoseconds
        state = self._sensors[spec.name]
        with self._lock:
            state.health.received += 1
        try:
            payload, stamp_ns = self._convert(spec, msg, now_ns)
        except InputDataError as error:
            self._reject(spec, error)
            return
        except Exception as error:  # an exception escaping a callback would stop the executor
            # A message kind no check foresaw must not stop the node: drop it, count it as
            # "unexpected" and warn with the exception, like any other rejection.
            self._reject(spec, UnexpectedInputError(f"{type(error).__name__}: {error}"))
            return
        with self._lock:
            self._accept(state, stamp_ns, now_ns)
            frames = self._sync.add(spec.name, stamp_ns, Received(payload, receipt_ns), now_ns)
        self._hand_off(frames)

    def _convert(self, spec: SensorSpec, msg: Any, now_ns: int) -> tuple[Any, int]:
        config = self._config
        stamp_ns = conversions.stamp_to_ns(msg.header.stamp)
        if now_ns <= 0:
            raise NoClockError("node clock is 0: use_sim_time is set but /clock is silent")
        conversions.check_stamp(
            stamp_ns,
            now_ns,
            int(config.max_stamp_age_s * NS_PER_S),
            int(config.max_stamp_future_s * NS_PER_S),
        )
        modality = spec.modality
        if modality is Modality.GNSS:
            return self._gnss.convert(msg), stamp_ns
        conversions.check_frame(msg.header.frame_id, spec.frame_id)
        ego_from_sensor = self._tf.lookup(config.output_frame, spec.frame_id)
        if modality is Modality.LIDAR:
            cloud = conversions.lidar_to_core(
                msg, spec.name, ego_from_sensor, max_points=config.max_points
            )
            return cloud, stamp_ns
        if modality is Modality.RADAR:
            cloud = conversions.radar_to_core(
                msg, spec.name, ego_from_sensor, max_points=config.max_points
            )
            return cloud, stamp_ns
        if modality is Modality.IMU:
            return conversions.imu_to_core(msg, ego_from_sensor), stamp_ns
        calibration = self._calibrations.get(spec.name)
        if calibration is None:
            raise conversions.MissingCalibrationError(
                f"no CameraInfo received yet on {spec.camera_info_topic}"
            )
        convert = (
            conversions.compressed_to_core if spec.compressed else conversions.raw_image_to_core
        )
        image = convert(
            msg,
            spec.name,
            calibration,
            ego_from_sensor,
            reduction=config.camera_decode_reduction,
        )
        return image, stamp_ns

    def _accept(self, state: _SensorState, stamp_ns: int, now_ns: int) -> None:
        """Health bookkeeping of an accepted message (caller holds the lock)."""
        if state.last_stamp_ns is not None and stamp_ns < state.last_stamp_ns:
            # Time went back (bag loop): restart the rate window. The GNSS converter already
            # refuses to difference across the jump and restarts from this fix.
            state.arrivals_ns.clear()
        state.health.accepted += 1
        state.arrivals_ns.append(now_ns)
        state.last_arrival_ns = now_ns
        state.last_stamp_ns = stamp_ns

    def _reject(self, spec: SensorSpec, error: InputDataError, topic: str | None = None) -> None:
        reason = conversions.reason_key(error)
        if isinstance(error, TransformMissingError):
            reason = "transform_missing"
        with self._lock:
            health = self._sensors[spec.name].health
            health.rejected[reason] = health.rejected.get(reason, 0) + 1
            health.last_rejection = reason
        self._warn_throttled(topic or spec.topic, reason, str(error))

    def _warn_throttled(self, topic: str, reason: str, text: str) -> None:
        now_ns = self._steady.now().nanoseconds
        key = (topic, reason)
        last = self._warned.get(key)
        if last is not None and now_ns - last < self._config.warn_throttle_s * NS_PER_S:
            return
        self._warned[key] = now_ns
        self.get_logger().warning(f"{topic}: message dropped ({reason}): {text}")

    # --------------------------------------------------------------------------------- frames

    def _poll(self) -> None:
        now_ns = self.get_clock().now().nanoseconds
        if now_ns <= 0:
            return  # sim time before the first /clock: no time has passed yet
        with self._lock:
            frames = self._sync.poll(now_ns)
        self._hand_off(frames)

    def _hand_off(self, frames: list[SyncedFrame]) -> None:
        for frame in frames:
            with self._lock:
                self._pipeline.frames_synced += 1
            self._slot.put(frame)

    def _work(self) -> None:
        while not self._slot.closed:
            synced = self._slot.take(timeout_s=0.2)
            if synced is None:
                continue
            try:
                self._process(synced)
            except PeftdmlError as error:
                self._count_failure(synced, str(error))
            except Exception:  # the worker must outlive one bad frame
                if not self.context.ok():
                    return  # shutting down: publishers are gone
                self._count_failure(synced, traceback.format_exc())

    def _count_failure(self, synced: SyncedFrame, text: str) -> None:
        with self._lock:
            self._pipeline.inference_errors += 1
        self.get_logger().error(f"frame at {synced.stamp_ns} ns failed, skipped: {text}")

    def _wanted(self) -> bool:
        if not self._config.skip_inference_without_subscribers:
            return True
        pubs = (
            self._detections_pub,
            self._properties_pub,
            self._markers_pub,
            self._frame_status_pub,
        )
        return any(p.get_subscription_count() > 0 for p in pubs)

    def _process(self, synced: SyncedFrame) -> None:
        if not self._wanted():
            with self._lock:
                self._pipeline.frames_skipped += 1
            return
        frame = build_frame(synced, self._config)
        result = self._detector.detect(frame)
        header = Header(
            stamp=conversions.ns_to_stamp(synced.stamp_ns), frame_id=self._config.output_frame
        )
        # Counted first: whoever has received a frame's outputs also sees it in the counters.
        self._record(synced, result)
        self._detections_pub.publish(conversions.detections_to_msg(result.detections, header))
        self._properties_pub.publish(outputs.properties_cloud(result.detections, header))
        if self._markers_pub.get_subscription_count() > 0:
            self._markers_pub.publish(outputs.markers(result.detections, header))
        self._frame_status_pub.publish(
            outputs.frame_status(
                header,
                synced.trigger_sensor,
                synced.sensor_present,
                synced.modality_present,
                len(result.detections),
            )
        )

    def _record(self, synced: SyncedFrame, result: Any) -> None:
        now_ns = self.get_clock().now().nanoseconds
        steady_ns = self._steady.now().nanoseconds
        trigger = synced.items[synced.trigger_sensor]
        with self._lock:
            pipeline = self._pipeline
            pipeline.frames_published += 1
            self._latency_ms.add((now_ns - synced.stamp_ns) / 1e6)
            self._processing_ms.add((steady_ns - trigger.receipt_ns) / 1e6)
            total_ms = result.timings_ms.get("total_ms")
            if total_ms is not None:
                self._inference_ms.add(float(total_ms))
            pipeline.normality_score = float(result.normality_score)
            pipeline.last_trigger = synced.trigger_sensor
            pipeline.last_modalities = ",".join(
                m.value for m, present in synced.modality_present.items() if present
            )
            pipeline.last_sensors_present = ",".join(
                name for name, present in synced.sensor_present.items() if present
            )

    # ---------------------------------------------------------------------------- diagnostics

    def health_snapshot(self) -> tuple[list[outputs.SensorHealth], outputs.PipelineHealth]:
        """Copies of the current sensor and pipeline health (for diagnostics and tests)."""
        now_ns = self.get_clock().now().nanoseconds
        timeout_ns = int(self._config.sensor_timeout_s * NS_PER_S)
        sensors: list[outputs.SensorHealth] = []
        with self._lock:
            for state in self._sensors.values():
                health = state.health
                health.present = (
                    state.last_arrival_ns is not None
                    and 0 <= now_ns - state.last_arrival_ns <= timeout_ns
                )
                health.age_s = (
                    None if state.last_stamp_ns is None else (now_ns - state.last_stamp_ns) / 1e9
                )
                health.rate_hz = _rate_hz(state.arrivals_ns) if health.present else 0.0
                sensors.append(
                    outputs.SensorHealth(**{**health.__dict__, "rejected": dict(health.rejected)})
                )
            pipeline = outputs.PipelineHealth(**self._pipeline.__dict__)
            pipeline.frames_dropped = self._slot.dropped
            pipeline.latency_p50_ms = self._latency_ms.percentile(50)
            pipeline.latency_p99_ms = self._latency_ms.percentile(99)
            pipeline.processing_p50_ms = self._processing_ms.percentile(50)
            pipeline.processing_p99_ms = self._processing_ms.percentile(99)
            pipeline.inference_p50_ms = self._inference_ms.percentile(50)
        missing = sorted(
            s.frame_id
            for s in self._config.sensors
            if s.modality not in (Modality.GNSS,)
            and not self._tf.can_transform(self._config.output_frame, s.frame_id)
        )
        pipeline.transforms_missing = ",".join(missing)
        return sensors, pipeline

    def _publish_diagnostics(self) -> None:
        sensors, pipeline = self.health_snapshot()
        frames = pipeline.frames_published + pipeline.frames_skipped
        if self._last_report is not None:
            pipeline.stalled = frames == self._last_report[0]
            pipeline.recent_inference_errors = pipeline.inference_errors - self._last_report[1]
        self._last_report = (frames, pipeline.inference_errors)
        header = Header(stamp=self.get_clock().now().to_msg())
        self._diagnostics_pub.publish(
            outputs.diagnostics(
                header, sensors, pipeline, hardware_id=self.get_fully_qualified_name()
            )
        )

    def _check_training_data(self, config: NodeConfig) -> None:
        """Warn, once and loudly, where the frames this node builds differ from those the model
        was trained on (the model still runs: the user may know better)."""
        from peftdml_ros.core.detector import data_settings_mismatches  # torch: import on use

        deployed = {
            "lidar_sweeps": 1,  # one message per sensor and frame
            "radar_sweeps": 1,
            "camera_downscale": config.camera_decode_reduction,
            "imu_window_s": config.imu_window_s,
            "slop_s": {m.value: v for m, v in config.slop_s.items()},
            "gnss_staleness_s": config.gnss_staleness_s,
            "radar_filter": True,
            "compensate_ego_motion": False,  # static extrinsics only (no odometry)
        }
        trained = getattr(self._detector, "training_data", None)
        mismatches = data_settings_mismatches(trained, deployed)
        if mismatches:
            self.get_logger().warning(
                "the model was trained on frames built differently from this node's: "
                + "; ".join(mismatches)
                + " (set input.camera_decode_reduction / sync.* to match, or retrain)"
            )

    # ----------------------------------------------------------------------------- parameters

    def _apply_parameters(self, changed: list[Parameter[Any]]) -> None:
        """Post-set: the guard accepted the values; apply the run-time ones."""
        self._apply_config(params.config_from_flat(params.flat_values(self)))
        names = ", ".join(f"{p.name}={p.value}" for p in changed)
        self.get_logger().info(f"parameters changed: {names}")

    def _apply_config(self, config: NodeConfig) -> None:
        with self._lock:
            self._config = config
            self._sync.update_config(
                slop_ns={m: int(v * NS_PER_S) for m, v in config.slop_s.items()},
                deadline_ns=int(config.deadline_s * NS_PER_S),
            )
        self._detector.update_thresholds(
            score_threshold=config.score_threshold,
            nms_iou_threshold=config.nms_iou_threshold,
            max_detections=config.max_detections,
        )

    # ------------------------------------------------------------------------------- shutdown

    def close(self) -> None:
        """Stop the worker (the frame in progress finishes). Call before destroy_node()."""
        # A constructor that failed part-way (bad configuration, a model that does not load)
        # leaves no worker; rclpy still destroys the node, and that must not raise again.
        slot: FrameSlot | None = getattr(self, "_slot", None)
        worker: threading.Thread | None = getattr(self, "_worker", None)
        if slot is not None:
            slot.close()
        if worker is not None:
            worker.join(timeout=10.0)

    def destroy_node(self) -> None:
        self.close()
        super().destroy_node()


def _message_type(spec: SensorSpec) -> Any:
    if spec.modality in (Modality.LIDAR, Modality.RADAR):
        return PointCloud2
    if spec.modality is Modality.CAMERA:
        return CompressedImage if spec.compressed else Image
    if spec.modality is Modality.IMU:
        return Imu
    return NavSatFix


def _backend_name(detector: Any, config: NodeConfig) -> str:
    backend = getattr(detector, "backend", None)
    if backend is None:
        return config.backend
    return f"{backend.name} ({backend.device})"


def _rate_hz(arrivals_ns: deque[int]) -> float | None:
    if len(arrivals_ns) < 2:
        return None
    span_ns = arrivals_ns[-1] - arrivals_ns[0]
    return (len(arrivals_ns) - 1) * NS_PER_S / span_ns if span_ns > 0 else None


def _with_dt(cloud: PointCloud, frame_stamp_ns: int, *, shared: bool) -> PointCloud:
    """The cloud with its dt_s column filled (frame stamp - sweep stamp, s; core.frame_rule).

    A contributor's message may serve several frames (the frame rule reuses it) that the worker
    may still hold: give each frame its own copy. The trigger's cloud belongs to its frame only
    and is filled in place.
    """
    points = cloud.points.copy() if shared else cloud.points
    points[:, -1] = frame_rule.sweep_dt_s(frame_stamp_ns, cloud.stamp_ns)
    return dataclasses.replace(cloud, points=points) if shared else cloud


def build_frame(synced: SyncedFrame, config: NodeConfig) -> Frame:
    """SyncedFrame (payloads wrapped in Received) -> the core Frame the detector takes."""
    lidar: list[PointCloud] = []
    radar: list[PointCloud] = []
    cameras: list[CameraImage] = []
    for spec in config.sensors:
        item = synced.items.get(spec.name)
        if item is None:
            continue
        shared = spec.name != synced.trigger_sensor
        if spec.modality is Modality.LIDAR:
            lidar.append(_with_dt(item.value, synced.stamp_ns, shared=shared))
        elif spec.modality is Modality.RADAR:
            radar.append(_with_dt(item.value, synced.stamp_ns, shared=shared))
        elif spec.modality is Modality.CAMERA:
            cameras.append(item.value)
    return Frame(
        stamp_ns=synced.stamp_ns,
        trigger_sensor=synced.trigger_sensor,
        lidar=tuple(lidar),
        radar=tuple(radar),
        cameras=tuple(cameras),
        imu=tuple(sample.value for sample in synced.imu),
        gnss=None if synced.gnss is None else synced.gnss.value,
        sensor_present=dict(synced.sensor_present),
        modality_present=dict(synced.modality_present),
    )


USAGE = """usage: peftdml_node --ros-args --params-file PARAMS.yaml [-p NAME:=VALUE] [-r FROM:=TO]

The PEFT-DML multi-sensor 3D detector as a ROS 2 node (name: peftdml). Every parameter default
is in the package's parameters file, {params}: pass it (or a complete copy)
with --params-file. Add -p use_sim_time:=true for bag replay with /clock. Outputs: ~/detections
(vision_msgs/Detection3DArray), ~/detections/properties, ~/markers, ~/frame_status, /diagnostics.
Set FASTDDS_DEFAULT_PROFILES_FILE (Fast DDS 3; FASTRTPS_DEFAULT_PROFILES_FILE for Fast DDS 2)
to config/fastdds_profile.xml for large messages between processes (the launch file does).
See docs/node.md."""


def _wants_help(argv: Sequence[str]) -> bool:
    """-h/--help before any --ros-args (after it, arguments belong to ROS)."""
    own = list(argv)[: list(argv).index("--ros-args")] if "--ros-args" in argv else list(argv)
    return any(arg in ("-h", "--help") for arg in own)


def main(args: Sequence[str] | None = None) -> int:
    """Console script `peftdml_node` (args: like sys.argv); owns rclpy init/shutdown; Ctrl-C is
    a normal exit (0); a configuration error exits 2.
    """
    argv = list(sys.argv if args is None else args)
    if _wants_help(argv[1:]):
        print(USAGE.format(params=params.default_params_file()))
        return 0
    rclpy.init(args=argv)
    node: PeftdmlNode | None = None
    try:
        # The executor first: a Ctrl-C right after "ready" must not land in its constructor,
        # which would leave rclpy a half-built executor to complain about at exit.
        executor = SingleThreadedExecutor()
        node = PeftdmlNode()
        executor.add_node(node)
        executor.spin()
    except ConfigError as error:
        print(f"peftdml_node: configuration error: {error}", file=sys.stderr)
        return 2
    except PeftdmlError as error:
        print(f"peftdml_node: error: {error}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
