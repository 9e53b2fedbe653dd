"""A multi-sensor frame synchronizer that never waits for a missing sensor.

ROS-free, pure Python, no threads: the node calls `add` from its subscription callbacks (under
one lock) and `poll` from a timer; both return the frames that became ready. Payloads are
opaque (the node passes already-converted core types); time is integer nanoseconds.

Usage::

    sync = FrameSynchronizer(
        [SyncSensor("lidar_top", Modality.LIDAR), SyncSensor("cam_front", Modality.CAMERA),
         SyncSensor("imu", Modality.IMU)],
        SyncConfig(deadline_ns=100_000_000),
    )
    frames = sync.add("lidar_top", stamp_ns, cloud, now_ns)   # in a callback
    frames += sync.poll(now_ns)                                # in a timer, every few ms
    for frame in frames:  # frame.items["lidar_top"] is `cloud`; frame.sensor_present[...] ...
        ...

Rules
-----
- Trigger. The reference sensor (default: the first LiDAR) starts one frame per message, at
  that message's stamp, so the output rate is the reference rate, not the slowest input's.
  If the reference has not arrived for `reference_timeout_ns` (caller's clock), the first live
  sensor of the first modality in `fallback_order` (camera, then radar by default) triggers
  instead; the reference takes over again with its next message. Frames go out in stamp order;
  a trigger message not newer than the last frame is dropped (counted as dropped_late).
- Contributors follow the frame rule of `core.frame_rule`, the one the dataset reader applies
  to recorded timelines: every other LiDAR, radar and camera gives the message nearest to the
  frame stamp within its modality's slop (`slop_ns`; a tie goes to the earlier message). A
  message may serve several consecutive frames (reuse); the slop bounds how stale it can be.
  A message stops being buffered once no later frame can pick it: it is older than the last
  frame's stamp minus slop, or a newer message stamped at or before that frame exists.
- IMU gives every sample in (previous frame stamp, frame stamp], at most `imu_window_ns` back.
  Each sample is in at most one frame.
- GNSS gives the newest fix stamped at most slop after the frame and at most
  `gnss_staleness_ns` before it. The same fix may serve several frames. GNSS never holds a
  frame back.
- Waiting. A frame waits until each live LiDAR, radar and camera's nearest message is known,
  so that, unless the deadline cuts it short, the frame holds exactly what the frame rule picks
  from the whole stream. The nearest message is known when: a message stamped at or after the
  frame arrived (streams are in order); or the sensor's next message, due no earlier than
  (1 - `period_jitter`) of its measured period after its newest, cannot be nearer than the
  best one buffered (nor, without one, within slop). The IMU is waited for until it sent every
  sample up to the frame (a sample at or after its stamp, or a next sample due after it). A
  sensor silent for `sensor_timeout_ns`, or never heard, is not waited for. Otherwise the frame
  goes out when `now_ns` reaches its trigger's arrival + `deadline_ns`, with whatever arrived:
  `sensor_present` / `modality_present` say what, `waited_to_deadline` that it was cut short.
  `poll` must run often enough (the delay past the deadline is at most the poll period).
- Steady deadline. Given a `steady_clock_ns` (a monotonic clock, e.g. time.monotonic_ns), a
  frame also goes out, with whatever arrived, once that clock passes its trigger's arrival +
  `steady_deadline_ns`, whatever the caller's clock does (`frames_steady_deadline`): a stopped
  or stalled /clock freezes `now_ns`, and the frame would otherwise wait forever. It only cuts
  waiting short: on a caller clock at real speed `deadline_ns` (<= `steady_deadline_ns`,
  checked) comes first, so it decides nothing; on a slower one (a bag replayed slowly) it
  ends waits longer than `steady_deadline_ns` of real time.
- Time going backwards. A caller clock more than `jump_back_threshold_ns` behind the newest
  `now_ns` seen (sim time reset, bag loop) emits the pending frames (they hold messages from
  before the jump only), clears every buffer and forgets when each sensor was last heard, as
  at start-up (`clock_jumps_back`): no frame mixes messages from both sides of the jump, and
  none waits for a time that will not come again. A smaller step back releases at once the
  pending frames whose trigger arrived after the new `now_ns`. A stamp more than
  `jump_back_threshold_ns` older than its stream's newest also emits the pending frames and
  clears the buffers (`resets`). Smaller disorder is tolerated: late messages are inserted in
  stamp order, or dropped as late when no future frame can pick them. A repeated stamp on a
  stream is ignored (`duplicates`).
- Memory. Each stream keeps at most `buffer_size` messages (`imu_buffer_size` for the IMU);
  the oldest is dropped when full (`dropped_overflow`, unless a frame had used it already).

Every message is accounted for: received = used + duplicates + dropped_late +
dropped_unmatched + dropped_overflow + buffered. A message counts as used once, however many
frames it serves; `buffered` counts the buffered messages no frame has used yet, plus pending
frames (for their trigger). A used message that leaves the buffer changes no counter.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from peftdml_ros.core import frame_rule
from peftdml_ros.core.errors import ConfigError
from peftdml_ros.core.frame_rule import DEFAULT_SLOP_NS, MS, NEAREST_MODALITIES
from peftdml_ros.core.types import (
    MODALITIES,
    CameraImage,
    Frame,
    GnssFix,
    ImuSample,
    Modality,
    PointCloud,
)

__all__ = [
    "DEFAULT_SLOP_NS",
    "MS",
    "FrameSynchronizer",
    "SensorCounters",
    "SyncConfig",
    "SyncSensor",
    "SyncStats",
    "SyncedFrame",
    "UnknownSensorError",
]


class UnknownSensorError(ConfigError):
    """A message names a sensor that the synchronizer was not configured with."""


@dataclass(frozen=True)
class SyncSensor:
    """One configured input: a unique name and its modality."""

    name: str
    modality: Modality


@dataclass(frozen=True)
class SyncConfig:
    """Synchronizer parameters; times in nanoseconds on the clock named in each comment.

    reference_sensor: the trigger; None picks the first LiDAR (else the first radar, camera).
    slop_ns: per modality, the largest |message stamp - frame stamp| (stamps); missing
        modalities take DEFAULT_SLOP_NS.
    deadline_ns: the longest a frame waits after its trigger arrived (caller's clock).
    reference_timeout_ns: reference silence (caller's clock) after which a fallback triggers.
    sensor_timeout_ns: silence (caller's clock) after which a sensor is no longer waited for.
    fallback_order: modalities whose first live sensor triggers while the reference is silent.
    imu_window_ns: the oldest IMU sample a frame takes, relative to its stamp.
    gnss_staleness_ns: the oldest GNSS fix a frame takes, relative to its stamp.
    buffer_size / imu_buffer_size: messages kept per stream.
    jump_back_threshold_ns: a stamp this much older than its stream's newest, or a caller clock
        this much behind the newest it gave, resets all buffers.
    period_jitter: the fraction of a sensor's period by which its next message may come early;
        a frame stops waiting for a sensor whose next message, due (1 - period_jitter) periods
        after its newest, could not be nearer than what it has. 1.0 turns this prediction off.
    steady_deadline_ns: the longest a frame waits after its trigger arrived (steady clock given
        to the synchronizer; without one it is not used). At least deadline_ns.
    """

    reference_sensor: str | None = None
    slop_ns: Mapping[Modality, int] = field(default_factory=lambda: dict(DEFAULT_SLOP_NS))
    deadline_ns: int = 100 * MS
    reference_timeout_ns: int = 300 * MS
    sensor_timeout_ns: int = 500 * MS
    fallback_order: tuple[Modality, ...] = (Modality.CAMERA, Modality.RADAR)
    imu_window_ns: int = frame_rule.DEFAULT_IMU_WINDOW_NS
    gnss_staleness_ns: int = frame_rule.DEFAULT_GNSS_STALENESS_NS
    buffer_size: int = 16
    imu_buffer_size: int = 256
    jump_back_threshold_ns: int = 1000 * MS
    period_jitter: float = 0.25
    steady_deadline_ns: int = 2000 * MS

    def slop_for(self, modality: Modality) -> int:
        return int(self.slop_ns.get(modality, DEFAULT_SLOP_NS[modality]))


@dataclass(frozen=True)
class SyncedFrame:
    """One synchronized instant.

    items: sensor -> payload for the LiDARs, radars and cameras that contributed (trigger too);
    stamps_ns: their message stamps. imu: IMU payloads in stamp order; gnss: the chosen fix's
    payload (None when there was none; sensor_present tells, since a payload may be None).
    sensor_present: every configured sensor; modality_present: every Modality.
    waited_to_deadline: True when the frame left because its deadline passed.
    """

    stamp_ns: int
    trigger_sensor: str
    items: dict[str, Any]
    stamps_ns: dict[str, int]
    imu: list[Any]
    gnss: Any | None
    sensor_present: dict[str, bool]
    modality_present: dict[Modality, bool]
    trigger_arrival_ns: int
    emitted_ns: int
    waited_to_deadline: bool


@dataclass
class SensorCounters:
    """Per-sensor message counts (see the accounting rule in the module docstring)."""

    received: int = 0
    used: int = 0
    duplicates: int = 0
    dropped_late: int = 0
    dropped_unmatched: int = 0
    dropped_overflow: int = 0
    resets: int = 0
    buffered: int = 0


@dataclass(frozen=True)
class SyncStats:
    """A snapshot of the synchronizer's counters for diagnostics."""

    sensors: dict[str, SensorCounters]
    frames_by_trigger: dict[str, int]
    frames_waited_to_deadline: int
    resets: int
    pending_frames: int
    current_trigger: str | None
    frames_steady_deadline: int = 0  # released by the steady deadline (caller clock stalled)
    clock_jumps_back: int = 0

    def frames_emitted(self) -> int:
        return sum(self.frames_by_trigger.values())

    def flat(self) -> dict[str, int | str]:
        """One level of key -> value (e.g. for diagnostic_msgs/KeyValue), keys like
        "sensor.CAM_FRONT.dropped_late" and "frames_by_trigger.LIDAR_TOP"."""
        out: dict[str, int | str] = {
            "frames_emitted": self.frames_emitted(),
            "frames_waited_to_deadline": self.frames_waited_to_deadline,
            "resets": self.resets,
            "pending_frames": self.pending_frames,
            "current_trigger": self.current_trigger or "",
            "frames_steady_deadline": self.frames_steady_deadline,
            "clock_jumps_back": self.clock_jumps_back,
        }
        for name, count in self.frames_by_trigger.items():
            out[f"frames_by_trigger.{name}"] = count
        for name, counters in self.sensors.items():
            for key, value in dataclasses.asdict(counters).items():
                out[f"sensor.{name}.{key}"] = value
        return out


class _Entry:
    """One buffered message; `used` once a frame took it (it may serve later frames too)."""

    __slots__ = ("payload", "stamp_ns", "used")

    def __init__(self, stamp_ns: int, payload: Any) -> None:
        self.stamp_ns = stamp_ns
        self.payload = payload
        self.used = False


def _stamp_of(entry: _Entry) -> int:
    return entry.stamp_ns


class _Stream:
    """One sensor's state: a stamp-ordered ring buffer of entries, and counters."""

    __slots__ = (
        "buffer",
        "counters",
        "last_arrival_ns",
        "modality",
        "name",
        "newest_ns",
        "period_ns",
        "recent",
        "recent_set",
    )

    def __init__(self, sensor: SyncSensor, maxlen: int) -> None:
        self.name = sensor.name
        self.modality = sensor.modality
        self.buffer: deque[_Entry] = deque(maxlen=maxlen)
        # Stamps seen lately, to spot duplicates in O(1); bounded like the buffer.
        self.recent: deque[int] = deque(maxlen=2 * maxlen)
        self.recent_set: set[int] = set()
        self.counters = SensorCounters()
        self.newest_ns: int | None = None
        self.last_arrival_ns: int | None = None
        self.period_ns: float | None = None  # running estimate of the stamp spacing

    def note_newest(self, stamp_ns: int) -> None:
        """Advance the newest stamp and update the period estimate from in-order gaps.

        The estimate follows a shorter gap at once and a longer one slowly: an estimate that
        is too short only makes frames wait longer, one that is too long could let a frame
        leave before a nearer message arrives. A gap over 1.5 periods is mostly a lost message.
        """
        newest = self.newest_ns
        self.newest_ns = stamp_ns
        if newest is None:
            return
        gap = stamp_ns - newest
        period = self.period_ns
        if period is None or gap < period:
            self.period_ns = float(gap)
        elif gap <= 1.5 * period:
            self.period_ns = period + (gap - period) / 8.0
        else:
            self.period_ns = period + (gap - period) / 64.0

    def remember(self, stamp_ns: int) -> bool:
        """Record a stamp; False when it was seen already (a duplicate)."""
        if stamp_ns in self.recent_set:
            return False
        if len(self.recent) == self.recent.maxlen:
            self.recent_set.discard(self.recent[0])
        self.recent.append(stamp_ns)
        self.recent_set.add(stamp_ns)
        return True

    def insert(self, stamp_ns: int, payload: Any) -> None:
        buffer = self.buffer
        # A message a frame already took is no loss when it leaves.
        if len(buffer) == buffer.maxlen and not buffer.popleft().used:
            self.counters.dropped_overflow += 1
        entry = _Entry(stamp_ns, payload)
        if not buffer or stamp_ns > buffer[-1].stamp_ns:
            buffer.append(entry)
        else:
            buffer.insert(bisect.bisect_left(buffer, stamp_ns, key=_stamp_of), entry)

    def drop_first(self, count: int) -> None:
        """Drop the `count` oldest entries (no frame can pick them any more)."""
        buffer = self.buffer
        for _ in range(count):
            if not buffer.popleft().used:
                self.counters.dropped_unmatched += 1

    def unused(self) -> int:
        return sum(1 for entry in self.buffer if not entry.used)

    def clear(self) -> None:
        self.counters.dropped_unmatched += self.unused()
        self.buffer.clear()
        self.recent.clear()
        self.recent_set.clear()
        self.newest_ns = None
        self.period_ns = None


def _prunable(buffer: Sequence[_Entry], frame_ns: int, slop_ns: int) -> int:
    """How many of the oldest entries no frame stamped after `frame_ns` can pick.

    Older than frame_ns - slop: out of every later frame's reach. Older than the newest entry
    stamped at or before frame_ns: that entry is strictly nearer to every later frame.
    """
    at_or_before = bisect.bisect_right(buffer, frame_ns, key=_stamp_of)
    out_of_reach = bisect.bisect_left(buffer, frame_ns - slop_ns, key=_stamp_of)
    return max(at_or_before - 1, out_of_reach)


@dataclass
class _Pending:
    stamp_ns: int
    trigger: str
    payload: Any
    arrival_ns: int
    steady_arrival_ns: int | None  # on the steady clock, when the synchronizer has one
    blocker: _Stream | None = None  # the sensor the frame waited for at the last check


class FrameSynchronizer:
    """Groups sensor messages into frames; see the module docstring for the rules.

    Not thread-safe: call `add`, `poll`, `update_config` and `stats` under one lock.
    `steady_clock_ns` (optional) reads a monotonic clock in ns; it bounds every frame's wait
    by `steady_deadline_ns` of that clock, whatever the caller's `now_ns` does.
    """

    def __init__(
        self,
        sensors: Sequence[SyncSensor],
        config: SyncConfig | None = None,
        *,
        steady_clock_ns: Callable[[], int] | None = None,
    ) -> None:
        self._sensors: tuple[SyncSensor, ...] = tuple(sensors)
        self._steady_clock_ns = steady_clock_ns
        self._config = _validated(
            self._sensors, config or SyncConfig(), steady=steady_clock_ns is not None
        )
        self._reference = _reference_of(self._sensors, self._config)
        self._streams: dict[str, _Stream] = {
            s.name: _Stream(s, self._maxlen(s.modality)) for s in self._sensors
        }
        self._pending: deque[_Pending] = deque()
        self._frames_by_trigger: dict[str, int] = {s.name: 0 for s in self._sensors}
        self._waited_to_deadline = 0
        self._resets = 0
        self._steady_releases = 0
        self._clock_jumps_back = 0
        self._newest_now_ns: int | None = None  # the newest caller clock seen
        self._last_trigger_ns: int | None = None  # stamp of the newest frame (pending or out)
        self._last_emitted_ns: int | None = None
        self._first_call_ns: int | None = None
        self._current_trigger: str | None = self._reference
        self._cache_groups()

    # ------------------------------------------------------------------------------ public API

    @property
    def config(self) -> SyncConfig:
        return self._config

    @property
    def sensors(self) -> tuple[SyncSensor, ...]:
        return self._sensors

    @property
    def reference_sensor(self) -> str:
        return self._reference

    def add(self, sensor: str, stamp_ns: int, payload: Any, now_ns: int) -> list[SyncedFrame]:
        """Offer one message; returns the frames that became ready (usually none or one)."""
        stream = self._streams.get(sensor)
        if stream is None:
            raise UnknownSensorError(
                f"sensor {sensor!r} is not configured; known sensors: {list(self._streams)}"
            )
        if self._first_call_ns is None:
            self._first_call_ns = now_ns
        out = self._check_clock(now_ns)
        steady_ns = self._steady_now()
        counters = stream.counters
        counters.received += 1
        newest = stream.newest_ns
        if newest is not None and stamp_ns < newest - self._config.jump_back_threshold_ns:
            counters.resets += 1
            out = self._reset(now_ns)
            newest = None
        if not stream.remember(stamp_ns):
            counters.duplicates += 1
            out += self._emit_ready(now_ns, steady_ns)
            return out
        if newest is None or stamp_ns > newest:
            stream.note_newest(stamp_ns)
        stream.last_arrival_ns = now_ns
        if sensor == self._trigger_at(now_ns):
            self._start_frame(stream, stamp_ns, payload, now_ns, steady_ns)
        else:
            self._buffer(stream, stamp_ns, payload)
        out += self._emit_ready(now_ns, steady_ns)
        return out

    def poll(self, now_ns: int) -> list[SyncedFrame]:
        """Frames whose deadline has passed (or that became complete); call it from a timer."""
        if self._first_call_ns is None:
            self._first_call_ns = now_ns
        out = self._check_clock(now_ns)
        self._trigger_at(now_ns)  # keeps current_trigger fresh for diagnostics
        if self._pending:
            out += self._emit_ready(now_ns, self._steady_now())
        return out

    def flush(self, now_ns: int) -> list[SyncedFrame]:
        """Emit every pending frame now with what has arrived (at shutdown or end of a bag)."""
        out: list[SyncedFrame] = []
        while self._pending:
            out.append(self._emit(self._pending.popleft(), now_ns, waited=False))
        return out

    def update_config(self, **changes: Any) -> SyncConfig:
        """Change parameters at run time (slop, deadline, timeouts, ...); ConfigError if invalid.

        The new deadlines apply to pending frames too. Buffer sizes apply from now on,
        keeping each stream's newest messages.
        """
        unknown = set(changes) - {f.name for f in dataclasses.fields(SyncConfig)}
        if unknown:
            raise ConfigError(f"unknown synchronizer parameter(s) {sorted(unknown)}")
        if "slop_ns" in changes:
            changes["slop_ns"] = {**self._config.slop_ns, **changes["slop_ns"]}
        config = _validated(
            self._sensors,
            dataclasses.replace(self._config, **changes),
            steady=self._steady_clock_ns is not None,
        )
        reference = _reference_of(self._sensors, config)
        self._config, self._reference = config, reference
        for stream in self._streams.values():
            maxlen = self._maxlen(stream.modality)
            if stream.buffer.maxlen != maxlen:
                entries = list(stream.buffer)
                keep = entries[-maxlen:]
                stream.counters.dropped_overflow += sum(
                    1 for entry in entries[: len(entries) - len(keep)] if not entry.used
                )
                stream.buffer = deque(keep, maxlen=maxlen)
                stream.recent = deque(stream.recent, maxlen=2 * maxlen)
                stream.recent_set = set(stream.recent)
        self._cache_groups()
        return config

    def to_frame(self, synced: SyncedFrame) -> Frame:
        """The detector's `Frame` from a synced frame whose payloads are the core types.

        Payloads must be PointCloud (LiDAR, radar), CameraImage, ImuSample and GnssFix; items
        keep the configured sensor order. TypeError names the sensor whose payload is not.
        """
        groups: dict[Modality, list[Any]] = {m: [] for m in NEAREST_MODALITIES}
        for sensor in self._sensors:
            if sensor.name in synced.items:
                payload = synced.items[sensor.name]
                _check_payload(sensor, payload, _PAYLOAD_TYPES[sensor.modality])
                groups[sensor.modality].append(payload)
        imu_name = self._imu.name if self._imu is not None else "imu"
        for sample in synced.imu:
            _check_payload(SyncSensor(imu_name, Modality.IMU), sample, ImuSample)
        gnss = None
        if self._gnss is not None and synced.sensor_present.get(self._gnss.name, False):
            _check_payload(SyncSensor(self._gnss.name, Modality.GNSS), synced.gnss, GnssFix)
            gnss = synced.gnss
        return Frame(
            stamp_ns=synced.stamp_ns,
            trigger_sensor=synced.trigger_sensor,
            lidar=tuple(groups[Modality.LIDAR]),
            radar=tuple(groups[Modality.RADAR]),
            cameras=tuple(groups[Modality.CAMERA]),
            imu=tuple(synced.imu),
            gnss=gnss,
            sensor_present=dict(synced.sensor_present),
            modality_present=dict(synced.modality_present),
        )

    def stats(self) -> SyncStats:
        sensors = {}
        for name, stream in self._streams.items():
            counters = dataclasses.replace(stream.counters, buffered=stream.unused())
            counters.buffered += sum(1 for p in self._pending if p.trigger == name)
            sensors[name] = counters
        return SyncStats(
            sensors=sensors,
            frames_by_trigger=dict(self._frames_by_trigger),
            frames_waited_to_deadline=self._waited_to_deadline,
            resets=self._resets,
            pending_frames=len(self._pending),
            current_trigger=self._current_trigger,
            frames_steady_deadline=self._steady_releases,
            clock_jumps_back=self._clock_jumps_back,
        )

    # ------------------------------------------------------------------------------- internals

    def _maxlen(self, modality: Modality) -> int:
        config = self._config
        return config.imu_buffer_size if modality is Modality.IMU else config.buffer_size

    def _cache_groups(self) -> None:
        """Precompute per-modality stream lists and slops (the hot path reads these)."""
        streams = self._streams.values()
        self._nearest = [s for s in streams if s.modality in NEAREST_MODALITIES]
        self._imu = next((s for s in streams if s.modality is Modality.IMU), None)
        self._gnss = next((s for s in streams if s.modality is Modality.GNSS), None)
        # Streams a frame waits for (GNSS never holds a frame back).
        self._waited = [s for s in streams if s.modality is not Modality.GNSS]
        self._slop = {m: self._config.slop_for(m) for m in MODALITIES}
        self._period_fraction = 1.0 - self._config.period_jitter
        self._fallback_streams = [
            s for m in self._config.fallback_order for s in streams if s.modality is m
        ]

    def _alive(self, stream: _Stream, now_ns: int, timeout_ns: int) -> bool:
        last = stream.last_arrival_ns
        return last is not None and now_ns - last <= timeout_ns

    def _trigger_at(self, now_ns: int) -> str | None:
        """The sensor whose messages start frames now: the reference unless it fell silent."""
        config = self._config
        reference = self._streams[self._reference]
        last = reference.last_arrival_ns
        since = last if last is not None else self._first_call_ns
        if since is None or now_ns - since <= config.reference_timeout_ns:
            trigger: str | None = self._reference
        else:
            trigger = next(
                (
                    s.name
                    for s in self._fallback_streams
                    if s.name != self._reference
                    and self._alive(s, now_ns, config.sensor_timeout_ns)
                ),
                None,
            )
        self._current_trigger = trigger
        return trigger

    def _start_frame(
        self, stream: _Stream, stamp_ns: int, payload: Any, now_ns: int, steady_ns: int | None
    ) -> None:
        last = self._last_trigger_ns
        if last is not None and stamp_ns <= last:
            # Frames go out in stamp order; an older trigger would go backwards in time.
            stream.counters.dropped_late += 1
            return
        self._last_trigger_ns = stamp_ns
        self._pending.append(_Pending(stamp_ns, stream.name, payload, now_ns, steady_ns))

    def _buffer(self, stream: _Stream, stamp_ns: int, payload: Any) -> None:
        last = self._last_emitted_ns
        modality = stream.modality
        if last is not None:
            if modality is Modality.IMU:
                too_old = stamp_ns <= last  # that frame's window is closed
            elif modality is Modality.GNSS:
                too_old = stamp_ns < last - self._config.gnss_staleness_ns
            else:
                too_old = stamp_ns < last - self._slop[modality] or self._dominated(
                    stream, stamp_ns, last
                )
            if too_old:
                stream.counters.dropped_late += 1
                return
        stream.insert(stamp_ns, payload)
        if last is not None and modality in NEAREST_MODALITIES:
            # A late message at or before the last frame makes older ones useless.
            stream.drop_first(_prunable(stream.buffer, last, self._slop[modality]))

    @staticmethod
    def _dominated(stream: _Stream, stamp_ns: int, last_ns: int) -> bool:
        """A buffered message stamped in (stamp_ns, last_ns] is nearer to every later frame."""
        buffer = stream.buffer
        index = bisect.bisect_right(buffer, stamp_ns, key=_stamp_of)
        return index < len(buffer) and buffer[index].stamp_ns <= last_ns

    def _emit_ready(self, now_ns: int, steady_ns: int | None) -> list[SyncedFrame]:
        out: list[SyncedFrame] = []
        pending = self._pending
        deadline_ns = self._config.deadline_ns
        while pending:
            frame = pending[0]
            if now_ns < frame.arrival_ns:
                waited = False  # the caller's clock went backwards: release, never hold forever
            elif now_ns - frame.arrival_ns >= deadline_ns:
                waited = not self._complete(frame, now_ns)
            elif self._complete(frame, now_ns):
                waited = False
            elif self._steady_expired(frame, steady_ns):
                waited = True  # the caller's clock stalls: real time bounds the wait
                self._steady_releases += 1
            else:
                break
            pending.popleft()
            out.append(self._emit(frame, now_ns, waited=waited))
        return out

    def _complete(self, frame: _Pending, now_ns: int) -> bool:
        """True when no live sensor can still add to this frame (see the module docstring)."""
        blocker = frame.blocker
        if blocker is not None and self._blocks(blocker, frame, now_ns):
            return False  # the cheap common case: the sensor that held it still does
        for stream in self._waited:
            if self._blocks(stream, frame, now_ns):
                frame.blocker = stream
                return False
        frame.blocker = None
        return True

    def _blocks(self, stream: _Stream, frame: _Pending, now_ns: int) -> bool:
        """True when `stream` may still send a message that changes what `frame` holds."""
        stamp_ns = frame.stamp_ns
        newest = stream.newest_ns
        if (newest is not None and newest >= stamp_ns) or stream.name == frame.trigger:
            return False  # in order and already at or past the frame: its choice is known
        last = stream.last_arrival_ns
        if last is None or now_ns - last > self._config.sensor_timeout_ns:
            return False  # never heard, or silent: not waited for
        if stream.modality is Modality.IMU:
            # Every sample up to the frame: a later one matters if stamped <= the frame.
            return not self._next_after(stream, stamp_ns)
        slop_ns = self._slop[stream.modality]
        buffer = stream.buffer
        best = buffer[-1].stamp_ns if buffer else None  # the newest is the nearest so far
        if best is not None and best >= stamp_ns - slop_ns:
            # A later message wins only if strictly nearer: stamped before stamp + distance.
            return not self._next_at_or_after(stream, 2 * stamp_ns - best)
        return not self._next_after(stream, stamp_ns + slop_ns)

    def _next_due_ns(self, stream: _Stream) -> float | None:
        """The earliest stamp the stream's next message can have (period prediction)."""
        period, newest = stream.period_ns, stream.newest_ns
        if period is None or newest is None:
            return None
        return newest + period * self._period_fraction

    def _next_after(self, stream: _Stream, limit_ns: int) -> bool:
        due = self._next_due_ns(stream)
        return due is not None and due > limit_ns

    def _next_at_or_after(self, stream: _Stream, limit_ns: int) -> bool:
        due = self._next_due_ns(stream)
        return due is not None and due >= limit_ns

    def _emit(self, frame: _Pending, now_ns: int, *, waited: bool) -> SyncedFrame:
        stamp_ns = frame.stamp_ns
        items: dict[str, Any] = {frame.trigger: frame.payload}
        stamps: dict[str, int] = {frame.trigger: stamp_ns}
        self._streams[frame.trigger].counters.used += 1
        for stream in self._nearest:
            if stream.name != frame.trigger:
                picked = self._take_nearest(stream, stamp_ns)
                if picked is not None:
                    stamps[stream.name], items[stream.name] = picked
        imu = self._take_imu(stamp_ns)
        has_gnss, gnss = self._take_gnss(stamp_ns)
        present = {name: name in items for name in self._streams}
        if self._imu is not None:
            present[self._imu.name] = bool(imu)
        if self._gnss is not None:
            present[self._gnss.name] = has_gnss
        modality_present = dict.fromkeys(MODALITIES, False)
        for name, is_present in present.items():
            if is_present:
                modality_present[self._streams[name].modality] = True
        self._last_emitted_ns = stamp_ns
        self._frames_by_trigger[frame.trigger] += 1
        self._waited_to_deadline += waited
        return SyncedFrame(
            stamp_ns=stamp_ns,
            trigger_sensor=frame.trigger,
            items=items,
            stamps_ns=stamps,
            imu=imu,
            gnss=gnss,
            sensor_present=present,
            modality_present=modality_present,
            trigger_arrival_ns=frame.arrival_ns,
            emitted_ns=now_ns,
            waited_to_deadline=waited,
        )

    def _take_nearest(self, stream: _Stream, stamp_ns: int) -> tuple[int, Any] | None:
        """The frame rule's message for this frame (kept for later frames), or None."""
        buffer = stream.buffer
        slop_ns = self._slop[stream.modality]
        index = frame_rule.nearest_index(buffer, stamp_ns, slop_ns, key=_stamp_of)
        picked: tuple[int, Any] | None = None
        if index is not None:
            entry = buffer[index]
            if not entry.used:
                entry.used = True
                stream.counters.used += 1
            picked = (entry.stamp_ns, entry.payload)
        stream.drop_first(_prunable(buffer, stamp_ns, slop_ns))
        return picked

    def _take_imu(self, stamp_ns: int) -> list[Any]:
        stream = self._imu
        if stream is None:
            return []
        start, end = frame_rule.imu_window(
            stamp_ns, self._last_emitted_ns, self._config.imu_window_ns
        )
        buffer = stream.buffer
        samples: list[Any] = []
        while buffer and buffer[0].stamp_ns <= end:
            entry = buffer.popleft()
            if entry.stamp_ns > start:
                samples.append(entry.payload)
            else:
                stream.counters.dropped_unmatched += 1
        stream.counters.used += len(samples)
        return samples

    def _take_gnss(self, stamp_ns: int) -> tuple[bool, Any]:
        """(found, payload) of the frame rule's fix; the payload itself may be anything."""
        stream = self._gnss
        if stream is None:
            return False, None
        buffer = stream.buffer
        index = frame_rule.gnss_index(
            buffer,
            stamp_ns,
            self._slop[Modality.GNSS],
            self._config.gnss_staleness_ns,
            key=_stamp_of,
        )
        if index is None:
            return False, None
        stream.drop_first(index)  # older fixes can no longer be the newest for any frame
        entry = buffer[0]
        if not entry.used:
            entry.used = True
            stream.counters.used += 1
        return True, entry.payload

    def _reset(self, now_ns: int) -> list[SyncedFrame]:
        """A stream's stamps went backwards: emit what is pending, then empty the buffers."""
        self._resets += 1
        return self._start_over(now_ns)

    def _start_over(self, now_ns: int) -> list[SyncedFrame]:
        out = self.flush(now_ns)
        for stream in self._streams.values():
            stream.clear()
        self._last_trigger_ns = None
        self._last_emitted_ns = None
        return out

    def _steady_now(self) -> int | None:
        clock = self._steady_clock_ns
        return None if clock is None else clock()

    def _steady_expired(self, frame: _Pending, steady_ns: int | None) -> bool:
        arrival = frame.steady_arrival_ns
        if steady_ns is None or arrival is None:
            return False
        return steady_ns - arrival >= self._config.steady_deadline_ns

    def _check_clock(self, now_ns: int) -> list[SyncedFrame]:
        """Start over, as at start-up, when the caller's clock jumped back (sim time reset).

        Arrival times of the old timeline would read as "just heard" (or as never silent) on
        the new one, and buffered stamps as the future: all of it goes.
        """
        newest = self._newest_now_ns
        if newest is None or now_ns > newest:
            self._newest_now_ns = now_ns
            return []
        if now_ns >= newest - self._config.jump_back_threshold_ns:
            return []
        self._clock_jumps_back += 1
        return self.restart(now_ns)

    def restart(self, now_ns: int) -> list[SyncedFrame]:
        """Forget everything, as at start-up: return the pending frames, empty the buffers and
        the last-heard times (a clock jump back, or a managed node that was paused)."""
        out = self._start_over(now_ns)
        for stream in self._streams.values():
            stream.last_arrival_ns = None
        self._first_call_ns = self._newest_now_ns = now_ns
        return out


_PAYLOAD_TYPES: dict[Modality, type] = {
    Modality.LIDAR: PointCloud,
    Modality.RADAR: PointCloud,
    Modality.CAMERA: CameraImage,
    Modality.IMU: ImuSample,
    Modality.GNSS: GnssFix,
}


def _check_payload(sensor: SyncSensor, payload: Any, expected: type) -> None:
    if not isinstance(payload, expected):
        raise TypeError(
            f"sensor {sensor.name!r} ({sensor.modality.value}) carried a "
            f"{type(payload).__name__}; to_frame needs {expected.__name__} payloads"
        )


def _validated(
    sensors: Sequence[SyncSensor], config: SyncConfig, *, steady: bool = False
) -> SyncConfig:
    """`config` once checked against the rig; `steady`: a steady clock bounds the waits."""
    names = [s.name for s in sensors]
    if not sensors:
        raise ConfigError("the synchronizer needs at least one sensor")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"sensor names must be unique; repeated: {duplicates}")
    for modality in (Modality.IMU, Modality.GNSS):
        several = [s.name for s in sensors if s.modality is modality]
        if len(several) > 1:
            raise ConfigError(f"at most one {modality.value} sensor is supported; got {several}")
    _check_non_negative(
        config,
        (
            "deadline_ns",
            "reference_timeout_ns",
            "sensor_timeout_ns",
            "imu_window_ns",
            "gnss_staleness_ns",
            "jump_back_threshold_ns",
            "steady_deadline_ns",
        ),
    )
    if steady and config.steady_deadline_ns < config.deadline_ns:
        raise ConfigError(
            f"steady_deadline_ns {config.steady_deadline_ns} is below deadline_ns "
            f"{config.deadline_ns}: on a clock at real speed it would cut every wait short; "
            "raise steady_deadline_ns (or lower deadline_ns)"
        )
    for modality, slop in config.slop_ns.items():
        if not isinstance(modality, Modality) or int(slop) < 0:
            raise ConfigError(f"slop_ns[{modality!r}] = {slop}: give a Modality and a value >= 0")
    if config.buffer_size < 1 or config.imu_buffer_size < 1:
        raise ConfigError(
            f"buffer_size {config.buffer_size} and imu_buffer_size {config.imu_buffer_size} "
            "must be >= 1"
        )
    if not 0.0 <= config.period_jitter <= 1.0:
        raise ConfigError(f"period_jitter {config.period_jitter} must be within 0..1")
    bad_fallback = [m for m in config.fallback_order if m in (Modality.IMU, Modality.GNSS)]
    if bad_fallback:
        raise ConfigError(f"fallback_order may name lidar, radar, camera only; got {bad_fallback}")
    return config


def _check_non_negative(config: SyncConfig, names: Iterable[str]) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or value < 0:
            raise ConfigError(f"{name} = {value!r}: give an integer number of ns >= 0")


def _reference_of(sensors: Sequence[SyncSensor], config: SyncConfig) -> str:
    by_name = {s.name: s for s in sensors}
    if config.reference_sensor is not None:
        sensor = by_name.get(config.reference_sensor)
        if sensor is None:
            raise ConfigError(
                f"reference_sensor {config.reference_sensor!r} is not a configured sensor; "
                f"choose one of {list(by_name)}"
            )
        if sensor.modality not in NEAREST_MODALITIES:
            raise ConfigError(
                f"reference_sensor {sensor.name!r} is {sensor.modality.value}; choose a LiDAR, "
                "radar or camera"
            )
        return sensor.name
    for modality in (Modality.LIDAR, Modality.RADAR, Modality.CAMERA):
        for sensor in sensors:
            if sensor.modality is modality:
                return sensor.name
    raise ConfigError("no LiDAR, radar or camera configured; one of them must trigger frames")
