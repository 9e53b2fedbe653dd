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
timers run on the steady clock, so a paused or slowed /clock never stalls polling or diagnostics,
and the synchronizer reads the steady clock too: a frame waits at most sync.steady_deadline_s of
it, so a stopped /clock never holds frames forever. A node clock that jumps back by more than
sync.jump_back_threshold_s (sim time reset, bag loop) makes the synchronizer start over; stamps
more than input.max_stamp_future_s ahead of the node clock are refused (docs/sync.md, "Time
faults").
"""

from __future__ import annotations

import dataclasses
import gc
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
from rclpy.publisher import Publisher
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, Imu, NavSatFix, PointCloud2
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import MarkerArray

try:  # rclpy of Jazzy and later
    from rclpy.clock_type import ClockType
except ImportError:  # Humble
    from rclpy.clock import ClockType  # type: ignore[attr-defined]

from peftdml_ros.core import frame_rule, health, plausibility
from peftdml_ros.core.errors import (
    ConfigError,
    InputDataError,
    ModelArtifactError,
    PeftdmlError,
)
from peftdml_ros.core.sync import FrameSynchronizer, SyncConfig, SyncedFrame, SyncSensor
from peftdml_ros.core.types import CameraImage, Frame, Modality, PointCloud
from peftdml_ros.ros import conversions, outputs, params
from peftdml_ros.ros.params import NodeConfig, SensorSpec
from peftdml_ros.ros.stop_signals import StopSignals
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
    """A converted payload and when (steady clock) its message reached the callback and when
    its conversion ended (0: not recorded; the conversion stage then counts as zero)."""

    value: Any
    receipt_ns: int
    converted_ns: int = 0


@dataclass
class _SensorState:
    spec: SensorSpec
    health: outputs.SensorHealth
    arrivals_ns: deque[int]  # node-clock arrival times of accepted messages
    last_arrival_ns: int | None = None
    last_stamp_ns: int | None = None


class FrameSlot:
    """A one-frame hand-off between the executor and the inference worker (newest wins)."""

    def __init__(self, dropped: int = 0) -> None:
        self._cond = threading.Condition()
        self._frame: SyncedFrame | None = None
        self._released_ns = 0
        self._closed = False
        self.dropped = dropped  # a managed node's new slot carries on its predecessor's count
        # When (steady clock, as given to put) the frame last taken was released; read by the
        # taking thread right after take().
        self.taken_released_ns = 0

    def put(self, frame: SyncedFrame, released_ns: int = 0) -> None:
        with self._cond:
            if self._frame is not None:
                self.dropped += 1  # the worker is busy: the older frame is stale, never queued
            self._frame = frame
            self._released_ns = released_ns
            self._cond.notify()

    def take(self, timeout_s: float) -> SyncedFrame | None:
        with self._cond:
            if self._frame is None and not self._closed:
                self._cond.wait(timeout_s)
            frame, self._frame = self._frame, None
            if frame is not None:
                self.taken_released_ns = self._released_ns
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
        jump_back_threshold_ns=int(config.jump_back_threshold_s * NS_PER_S),
        steady_deadline_ns=int(config.steady_deadline_s * NS_PER_S),
    )


def _make_detector(config: NodeConfig) -> Any:
    from peftdml_ros.core.detector import Detector, DetectorConfig

    _prepare_engine(config)
    return Detector(
        DetectorConfig(
            model_path=config.model_path,
            backend=config.backend,
            device=config.device,
            score_threshold=config.score_threshold,
            nms_iou_threshold=config.nms_iou_threshold,
            max_detections=config.max_detections,
            precision=config.precision,
        )
    )


def _prepare_engine(config: NodeConfig) -> None:
    """For an ONNX model on TensorRT: say whether the cached engine is loaded or one is being
    built (minutes; progress every 10 s), and build it, before the detector loads it. A silent
    build would look like a hung node."""
    from peftdml_ros.core.backends import choose_backend

    chosen, _ = choose_backend(config.backend, config.model_path, config.device)
    if chosen != "tensorrt" or not config.model_path.lower().endswith(".onnx"):
        return
    from rclpy.logging import get_logger

    from peftdml_ros.core.backends.tensorrt_backend import prepare_engine

    logger = get_logger(NODE_NAME)
    prepare_engine(
        config.model_path, config.precision, config.device, info=logger.info, warn=logger.warning
    )


class PeftdmlNode(Node):
    """Subscribes to the rig, synchronizes, detects, publishes. See the module docstring."""

    # True once a detector.build_only start has built (or loaded) the engine; main() exits 0.
    build_only_done = False
    # The outputs' publisher class: a managed node's are lifecycle publishers, which publish
    # only while the node is active (lifecycle_node.py).
    _publisher_class: type[Publisher[Any]] = Publisher
    _detector: Any = None  # None: no model loaded (a managed node unconfigured)

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
        # The same pieces a managed node runs from its transitions (lifecycle_node.py).
        self._config = params.declare_parameters(self)
        config = self._config
        self._load(config, detector_factory)
        if config.build_only:  # the engine is built or loaded: nothing else to set up
            self.build_only_done = True
            ready = _backend_name(self._detector, config)
            if ready.startswith("tensorrt"):  # only TensorRT engines have a precision
                ready += f" {config.precision}"
            self.get_logger().info(
                f"detector.build_only: {ready} ready for "
                f"{config.model_path or '(untrained default model)'}; exiting without subscribing"
            )
            return
        self._open_outputs()
        self._start_io(config)
        self._watch_parameters()
        self.get_logger().info(f"peftdml_node ready: {self._summary(config)}")

    # ------------------------------------------------------------ set-up pieces (both variants)

    def _load(self, config: NodeConfig, detector_factory: Callable[[NodeConfig], Any]) -> None:
        """The run-time state and the detector, which may build a TensorRT engine (minutes).
        With detector.build_only, the detector only."""
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
            [SyncSensor(s.name, s.modality) for s in config.sensors],
            sync_config(config),
            steady_clock_ns=self._steady_now,
        )
        self._detector = detector_factory(config)
        if config.build_only:
            return
        self._check_training_data(config)
        backend = _backend_name(self._detector, config)
        self._pipeline = outputs.PipelineHealth(
            backend=str(backend), model=config.model_path or "(untrained default model)"
        )
        self._health_calibration = self._load_health_calibration(config)
        if not config.model_path:
            self.get_logger().warning(
                "detector.model_path selects the UNTRAINED default model: its detections are "
                "meaningless. Give a trained checkpoint, ONNX file or engine (the shipped model "
                "is the default of config/peftdml.yaml)."
            )
        self._stages = outputs.StageWindows()  # per-frame latency by stage (docs/node.md)
        self._inference_ms = outputs.LatencyWindow()
        self._slot = FrameSlot()
        self._last_report: tuple[int, int] | None = None  # (frames, errors) at the last report

    def _unload(self) -> None:
        """Release the detector and the memory its model or engine held (undoes _load)."""
        self._detector = None
        gc.collect()  # backends free device memory in their destructors
        torch = sys.modules.get("torch")  # never imported for it: only a torch user has a cache
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()  # hand the freed blocks back to the device

    def _open_outputs(self) -> None:
        kind = self._publisher_class
        self._detections_pub = self.create_publisher(
            Detection3DArray, "~/detections", 10, publisher_class=kind
        )
        self._properties_pub = self.create_publisher(
            PointCloud2, "~/detections/properties", 10, publisher_class=kind
        )
        self._markers_pub = self.create_publisher(
            MarkerArray, "~/markers", 10, publisher_class=kind
        )
        self._frame_status_pub = self.create_publisher(
            DiagnosticArray, "~/frame_status", 10, publisher_class=kind
        )
        self._latency_pub = self.create_publisher(
            DiagnosticArray, "~/latency", 10, publisher_class=kind
        )
        self._diagnostics_pub = self.create_publisher(
            DiagnosticArray, "/diagnostics", 10, publisher_class=kind
        )

    def _output_publishers(self) -> tuple[Publisher[Any], ...]:
        return (
            self._detections_pub,
            self._properties_pub,
            self._markers_pub,
            self._frame_status_pub,
            self._latency_pub,
            self._diagnostics_pub,
        )

    def _start_io(self, config: NodeConfig) -> None:
        """Subscriptions, timers and the inference worker: from here on the node works."""
        previous = getattr(self, "_worker", None)
        if previous is not None and previous.is_alive():
            # The last frame's inference outlived close(): two workers would share the detector.
            raise PeftdmlError(
                "the previous inference has not finished yet; activate again once it has"
            )
        if self._slot.closed:  # a managed node activated again: a new hand-off
            self._slot = FrameSlot(dropped=self._slot.dropped)
        self._inputs = self._subscribe(config)
        self._io_timers = [
            self.create_timer(POLL_PERIOD_S, self._poll, clock=self._steady),
            self.create_timer(
                config.diagnostics_period_s, self._publish_diagnostics, clock=self._steady
            ),
        ]
        self._worker = threading.Thread(
            target=self._work, args=(self._slot,), name="peftdml-inference", daemon=True
        )
        self._worker.start()

    def _stop_io(self) -> None:
        """Undo _start_io: no message or timer callback from here on, then the worker finishes
        its frame. Frames the synchronizer still holds are dropped (and counted as dropped): a
        node activated again starts from new messages."""
        for subscription in getattr(self, "_inputs", []):
            self.destroy_subscription(subscription)
        for timer in getattr(self, "_io_timers", []):
            self.destroy_timer(timer)
        self._inputs, self._io_timers = [], []
        self.close()
        with self._lock:
            # As at start-up: no buffered message or last-heard time carries over the pause.
            held = self._sync.restart(self.get_clock().now().nanoseconds)
            self._slot.dropped += len(held)
            self._last_report = None  # a paused node is not a stalled one

    def _watch_parameters(self) -> None:
        """Run-time parameter changes: checked as a whole configuration, then applied."""
        if hasattr(self, "add_post_set_parameters_callback"):  # Iron and later
            self.add_on_set_parameters_callback(params.ParameterChangeGuard(self))
            self.add_post_set_parameters_callback(self._apply_parameters)
        else:  # Humble: apply from the guard, once it accepted the whole new configuration
            guard = params.ParameterChangeGuard(self, on_accept=self._apply_config)
            self.add_on_set_parameters_callback(guard)

    def _summary(self, config: NodeConfig) -> str:
        return (
            f"{len(config.sensors)} sensors, reference {config.reference_sensor}, backend "
            f"{self._pipeline.backend}, output frame {config.output_frame}"
        )

    # ------------------------------------------------------------------------- subscriptions

    def _subscribe(self, config: NodeConfig) -> list[Any]:
        qos = sensor_qos(config)
        made = [
            self.create_subscription(TFMessage, "/tf_static", self._on_tf_static, TF_STATIC_QOS)
        ]
        for spec in config.sensors:
            handler = self._handler(spec)
            msg_type = _message_type(spec)
            made.append(self.create_subscription(msg_type, spec.topic, handler, qos))
            if spec.modality is Modality.CAMERA:
                made.append(
                    self.create_subscription(
                        CameraInfo,
                        spec.camera_info_topic,
                        lambda msg, name=spec.name: self._on_camera_info(name, msg),
                        qos,
                    )
                )
        return made

    def _handler(self, spec: SensorSpec) -> Callable[[Any], None]:
        def callback(msg: Any) -> None:
            self._on_message(spec, msg)

        return callback

    def _on_tf_static(self, msg: TFMessage) -> None:
        # Implausible transforms are left out one by one (the store keeps what it had); each is
        # counted in the pipeline status as tf_static_rejected.<reason>.
        for error in self._tf.add_message(msg):
            reason = conversions.reason_key(error)
            with self._lock:
                counts = self._pipeline.tf_static_rejected
                counts[reason] = counts.get(reason, 0) + 1
            self._warn_throttled("/tf_static", reason, str(error))

    def _on_camera_info(self, name: str, msg: CameraInfo) -> None:
        try:
            calibration = conversions.camera_info_to_calibration(msg)
        except InputDataError as error:
            # The previous calibration (if any) stays in use; counted as
            # camera_info_rejected.<reason> in the camera's status.
            reason = conversions.reason_key(error)
            with self._lock:
                counts = self._sensors[name].health.camera_info_rejected
                counts[reason] = counts.get(reason, 0) + 1
            self._warn_throttled(self._sensors[name].spec.camera_info_topic, reason, str(error))
            return
        self._calibrations[name] = calibration

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
        received = Received(payload, receipt_ns, self._steady.now().nanoseconds)
        with self._lock:
            self._accept(state, stamp_ns, now_ns)
            frames = self._sync.add(spec.name, stamp_ns, received, now_ns)
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
        plausibility.check_sensor_mount(ego_from_sensor, spec.frame_id)
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
            max_pixels=config.max_image_pixels,
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

    def _steady_now(self) -> int:
        """The steady clock (ns) the timers run on; bounds the synchronizer's waits."""
        return int(self._steady.now().nanoseconds)

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
            self._slot.put(frame, released_ns=self._steady.now().nanoseconds)

    def _work(self, slot: FrameSlot) -> None:
        # The slot it was started with: a later activation's new slot belongs to a new worker.
        while not slot.closed:
            synced = slot.take(timeout_s=0.2)
            if synced is None:
                continue
            try:
                self._process(synced, slot.taken_released_ns)
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

    def _process(self, synced: SyncedFrame, released_ns: int = 0) -> None:
        taken_ns = self._steady.now().nanoseconds
        released_ns = released_ns or taken_ns
        if not self._wanted():
            with self._lock:
                self._pipeline.frames_skipped += 1
            return
        frame = build_frame(synced, self._config)
        built_ns = self._steady.now().nanoseconds
        result = self._detector.detect(frame)
        detected_ns = self._steady.now().nanoseconds
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
        times_ns = (released_ns, taken_ns, built_ns, detected_ns)
        self._record_latency(synced, result.timings_ms, header, times_ns)

    def _record_latency(
        self,
        synced: SyncedFrame,
        timings_ms: dict[str, float],
        header: Header,
        times_ns: tuple[int, int, int, int],
    ) -> None:
        """The frame's FrameLatency (steady clock; `latency` on the node clock): into the
        /diagnostics windows, and onto ~/latency while someone listens.

        times_ns: (released by the synchronizer, taken by the worker, frame assembled,
        detector done), steady clock.
        """
        published_ns = self._steady.now().nanoseconds
        now_ns = self.get_clock().now().nanoseconds
        trigger = synced.items[synced.trigger_sensor]
        clock = outputs.FrameClock(
            trigger.receipt_ns, trigger.converted_ns or trigger.receipt_ns, *times_ns, published_ns
        )
        latency = outputs.frame_latency(clock, timings_ms, now_ns, synced.stamp_ns)
        with self._lock:
            self._stages.add(latency)
        if self._latency_pub.get_subscription_count() > 0:
            self._latency_pub.publish(
                outputs.latency_message(
                    header, latency, synced.trigger_sensor, self.get_fully_qualified_name()
                )
            )

    def _record(self, synced: SyncedFrame, result: Any) -> None:
        with self._lock:
            pipeline = self._pipeline
            pipeline.frames_published += 1
            total_ms = result.timings_ms.get("total_ms")
            if total_ms is not None:
                self._inference_ms.add(float(total_ms))
            pipeline.normality_score = float(result.normality_score)
            config = self._config
            pipeline.normality = health.assess(
                pipeline.normality_score,
                self._health_calibration,
                config.health_warn_percentile,
                config.health_error_percentile,
            )
            pipeline.health_warn_percentile = config.health_warn_percentile
            pipeline.health_error_percentile = config.health_error_percentile
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
                    dataclasses.replace(
                        health,
                        rejected=dict(health.rejected),
                        camera_info_rejected=dict(health.camera_info_rejected),
                    )
                )
            pipeline = outputs.PipelineHealth(**self._pipeline.__dict__)
            pipeline.tf_static_rejected = dict(self._pipeline.tf_static_rejected)
            pipeline.frames_dropped = self._slot.dropped
            sync_stats = self._sync.stats()
            pipeline.frames_steady_deadline = sync_stats.frames_steady_deadline
            pipeline.clock_jumps_back = sync_stats.clock_jumps_back
            p50, p99 = self._stages.percentiles(50), self._stages.percentiles(99)
            pipeline.latency_p50_ms, pipeline.latency_p99_ms = p50["latency"], p99["latency"]
            pipeline.processing_p50_ms = p50["processing"]
            pipeline.processing_p99_ms = p99["processing"]
            pipeline.stage_p50_ms = {stage: p50[stage] for stage in outputs.LATENCY_STAGES}
            pipeline.stage_p99_ms = {stage: p99[stage] for stage in outputs.LATENCY_STAGES}
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

    def _load_health_calibration(self, config: NodeConfig) -> health.HealthCalibration | None:
        """The model's clean-score calibration (core/health.py), said once at start. Without
        one (or with an unreadable one) the normality status says so and stays OK. The status
        shows the thresholds from the start (each frame's assessment updates them)."""
        self._pipeline.health_warn_percentile = config.health_warn_percentile
        self._pipeline.health_error_percentile = config.health_error_percentile
        try:
            calibration = health.load_calibration(config.model_path)
        except ModelArtifactError as error:
            self._pipeline.normality_calibration = "unusable"
            self.get_logger().error(
                f"the model's health calibration cannot be used ({error}); /diagnostics reports "
                "the raw normality score with no level"
            )
            return None
        if calibration is None:
            self._pipeline.normality_calibration = "none"
            if config.model_path:
                self.get_logger().warning(
                    f"{config.model_path} carries no health calibration: /diagnostics reports "
                    "the raw normality score with no level (calibrate it with `peftdml "
                    "calibrate`, see docs/model.md)"
                )
            return None
        data = calibration.dataset
        text = f"{calibration.frames} clean keyframes of {data.get('name', '?')}"
        self._pipeline.normality_calibration = text
        self.get_logger().info(f"normality score calibrated on {text}")
        return calibration

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
        if self._detector is None:  # a managed node, unconfigured: configure reads them all
            return
        with self._lock:
            self._config = config
            self._sync.update_config(
                slop_ns={m: int(v * NS_PER_S) for m, v in config.slop_s.items()},
                deadline_ns=int(config.deadline_s * NS_PER_S),
                steady_deadline_ns=int(config.steady_deadline_s * NS_PER_S),
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
            if worker.is_alive():  # a frame slower than that: say so, the node goes anyway
                self.get_logger().warning(
                    "the inference worker did not finish its frame within 10 s; stopping anyway"
                )

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
    """Console script `peftdml_node` (args: like sys.argv); owns rclpy init/shutdown and the
    process's SIGINT/SIGTERM handling: either is a normal exit (0), repeats included; a
    configuration error exits 2.
    """
    argv = list(sys.argv if args is None else args)
    if _wants_help(argv[1:]):
        print(USAGE.format(params=params.default_params_file()))
        return 0
    # Our handlers instead of rclpy's, whose context shutdown from another thread races the
    # executor (stop_signals.py says why).
    stop = StopSignals().install()
    node: PeftdmlNode | None = None
    try:
        rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
        # The executor first: a Ctrl-C right after "ready" must not land in its constructor,
        # which would leave rclpy a half-built executor to complain about at exit.
        executor = SingleThreadedExecutor()
        node = PeftdmlNode()
        if node.build_only_done:
            return 0
        executor.add_node(node)
        stop.spin(executor)  # until SIGINT or SIGTERM
    except ConfigError as error:
        print(f"peftdml_node: configuration error: {error}", file=sys.stderr)
        return 2
    except PeftdmlError as error:
        print(f"peftdml_node: error: {error}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # The frame in progress finishes and the node is destroyed whatever arrives meanwhile
        # (launch forwards the terminal's Ctrl-C, then sends SIGTERM): no second interrupt.
        stop.interrupt_main = False
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        stop.ignore_from_now()
    return 0


if __name__ == "__main__":
    sys.exit(main())
