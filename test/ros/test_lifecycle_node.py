"""peftdml_lifecycle_node: the managed node driven through its real lifecycle services
(lifecycle_msgs/srv/ChangeState, GetState) by a client node over DDS, with a stub detector; a
configure that fails; the console script's start and clean exit; the launch file's arguments.
"""

from __future__ import annotations

import ast
import gc
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import TransformStamped
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection3DArray

from peftdml_ros.core import pointcloud as core_pc
from peftdml_ros.core.detector import DetectionResult
from peftdml_ros.core.types import Detections
from peftdml_ros.ros import lifecycle_node, outputs
from peftdml_ros.ros.conversions import ns_to_stamp, stamp_to_ns
from peftdml_ros.ros.lifecycle_node import PeftdmlLifecycleNode
from peftdml_ros.ros.params import NodeConfig

pytestmark = pytest.mark.ros

TIMEOUT_S = 30.0  # event-driven waits: generous for a loaded machine, never reached when healthy
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
LIDAR_TOPIC = "/lidar/points"
DETECTIONS_TOPIC = "/peftdml/detections"


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class StubDetector:
    """No boxes, at once; records the frames it saw and the thresholds it was given."""

    backend = None
    training_data = None

    def __init__(self, config: NodeConfig) -> None:
        self.score_threshold = config.score_threshold
        self.frames = 0

    def detect(self, frame: Any) -> DetectionResult:
        self.frames += 1
        return DetectionResult(Detections.empty(), 0.0, {"total_ms": 1.0})

    def update_thresholds(self, *, score_threshold: float, **_: Any) -> None:
        self.score_threshold = score_threshold


class Managed:
    """The managed node and a client node (lifecycle service clients, a LiDAR publisher, output
    recorders) on one executor thread."""

    def __init__(self, context: Any, repo_root: Path, overrides: list[str], factory: Any) -> None:
        args = ["--ros-args", "--params-file", str(repo_root / "config" / "peftdml.yaml")]
        for override in ["diagnostics_period_s:=0.2", *overrides]:
            args += ["-p", override]
        self.made: list[StubDetector] = []
        self.node = PeftdmlLifecycleNode(
            context=context, cli_args=args, detector_factory=factory or self._stub
        )
        self.client = Node("lifecycle_client", context=context)
        self.change: Any = self.client.create_client(ChangeState, "/peftdml/change_state")
        self.get: Any = self.client.create_client(GetState, "/peftdml/get_state")
        self.lock = threading.Lock()
        self.detections: list[Detection3DArray] = []
        self.diagnostics: list[DiagnosticArray] = []
        self.client.create_subscription(
            Detection3DArray, DETECTIONS_TOPIC, self._store(self.detections), RELIABLE
        )
        self.client.create_subscription(
            DiagnosticArray, "/diagnostics", self._store(self.diagnostics), RELIABLE
        )
        self.lidar = self.client.create_publisher(PointCloud2, LIDAR_TOPIC, RELIABLE)
        self.tf_static = self.client.create_publisher(TFMessage, "/tf_static", LATCHED)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.client)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        for client in (self.change, self.get):
            assert client.wait_for_service(timeout_sec=TIMEOUT_S), client.srv_name

    def _stub(self, config: NodeConfig) -> StubDetector:
        detector = StubDetector(config)
        self.made.append(detector)
        return detector

    def _store(self, into: list[Any]) -> Callable[[Any], None]:
        def store(msg: Any) -> None:
            with self.lock:
                into.append(msg)

        return store

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5.0)
        self.thread.join(timeout=5.0)
        self.node.destroy_node()
        self.client.destroy_node()

    def _call(self, client: Any, request: Any) -> Any:
        done = threading.Event()
        future = client.call_async(request)
        future.add_done_callback(lambda _: done.set())
        assert done.wait(TIMEOUT_S), f"no answer from {client.srv_name}"
        return future.result()

    def transition(self, transition_id: int) -> bool:
        request = ChangeState.Request(transition=Transition(id=transition_id))
        return bool(self._call(self.change, request).success)

    def state(self) -> str:
        return str(self._call(self.get, GetState.Request()).current_state.label)

    def subscribed_topics(self) -> set[str]:
        """The node's own subscriptions (its entity list: no discovery delay)."""
        return {subscription.topic_name for subscription in self.node.subscriptions}

    def received(self, what: list[Any]) -> int:
        with self.lock:
            return len(what)

    def stamps_ns(self, what: list[Any]) -> list[int]:
        with self.lock:
            return [stamp_to_ns(msg.header.stamp) for msg in what]

    def feed_frame(self) -> None:
        """A LiDAR sweep stamped now (node clock); its frame waits sync.deadline_s for the
        other sensors, then goes out alone."""
        stamp_ns = self.node.get_clock().now().nanoseconds
        rng = np.random.default_rng(0)
        columns = {k: rng.uniform(1.0, 30.0, 500).astype(np.float32) for k in "xyz"}
        columns["intensity"] = rng.uniform(0.0, 50.0, 500).astype(np.float32)
        header = Header(stamp=ns_to_stamp(stamp_ns), frame_id="lidar_top")
        self.lidar.publish(outputs.pointcloud2_message(core_pc.pack_points(columns), header))

    def publish_tf_static(self) -> None:
        transform = TransformStamped(child_frame_id="lidar_top")
        transform.header.frame_id = "base_link"
        transform.transform.translation.x, transform.transform.translation.z = 0.9, 1.8
        transform.transform.rotation.w = 1.0
        self.tf_static.publish(TFMessage(transforms=[transform]))


@pytest.fixture
def managed(rclpy_context: Any, repo_root: Path) -> Iterator[Callable[..., Managed]]:
    made: list[Managed] = []

    def make(*overrides: str, factory: Any = None) -> Managed:
        made.append(Managed(rclpy_context, repo_root, list(overrides), factory))
        return made[-1]

    yield make
    for item in made:
        item.close()


def _frames_in_and_out(m: Managed, detector: StubDetector) -> None:
    """Feed LiDAR frames until one comes out on ~/detections (the first sweeps may go out
    before the node heard /tf_static, and are then dropped as transform_missing)."""
    before_out = m.received(m.detections)
    wait_for(lambda: m.client.count_subscribers(LIDAR_TOPIC) > 0, "the node's LiDAR subscription")

    def one_out() -> bool:
        m.feed_frame()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and m.received(m.detections) == before_out:
            time.sleep(0.02)
        return m.received(m.detections) > before_out

    wait_for(one_out, "detections of a fed frame")
    assert detector.frames >= 1


def test_transitions_through_the_lifecycle_services(managed: Callable[..., Managed]) -> None:
    m = managed()
    assert m.state() == "unconfigured"
    assert m.made == [] and LIDAR_TOPIC not in m.subscribed_topics()

    # configure: the model is loaded and the outputs exist, but nothing is subscribed yet
    assert m.transition(Transition.TRANSITION_CONFIGURE)
    assert m.state() == "inactive"
    (detector,) = m.made
    assert LIDAR_TOPIC not in m.subscribed_topics() and "/tf_static" not in m.subscribed_topics()
    assert m.node.get_subscriptions_info_by_topic(LIDAR_TOPIC) == []
    wait_for(lambda: m.client.count_publishers(DETECTIONS_TOPIC) == 1, "the detections output")
    assert not m.node._detections_pub.is_activated  # type: ignore[attr-defined]

    # activate: subscribed, frames in, detections and diagnostics out
    assert m.transition(Transition.TRANSITION_ACTIVATE)
    assert m.state() == "active"
    assert LIDAR_TOPIC in m.subscribed_topics()
    m.publish_tf_static()
    _frames_in_and_out(m, detector)
    wait_for(lambda: m.received(m.diagnostics) > 0, "/diagnostics while active")

    # a run-time parameter reaches the loaded detector
    result = m.node.set_parameters([Parameter("detector.score_threshold", value=0.55)])
    assert result[0].successful and detector.score_threshold == 0.55

    # deactivate: unsubscribed, nothing processed or published
    assert m.transition(Transition.TRANSITION_DEACTIVATE)
    assert m.state() == "inactive"
    assert LIDAR_TOPIC not in m.subscribed_topics()
    wait_for(lambda: m.client.count_subscribers(LIDAR_TOPIC) == 0, "the subscription to go")
    assert not m.node._detections_pub.is_activated  # type: ignore[attr-defined]
    frames, inactive_since_ns = detector.frames, m.node.get_clock().now().nanoseconds
    m.feed_frame()
    time.sleep(1.0)  # five diagnostics periods: an active node would have published
    assert detector.frames == frames
    # Messages sent before the deactivation may still arrive: their stamps say when they left.
    assert max(m.stamps_ns(m.detections)) < inactive_since_ns
    assert max(m.stamps_ns(m.diagnostics)) < inactive_since_ns

    # activate again: a new worker and hand-off, frames flow again
    assert m.transition(Transition.TRANSITION_ACTIVATE)
    _frames_in_and_out(m, detector)
    assert m.transition(Transition.TRANSITION_DEACTIVATE)

    # cleanup: the detector is released and the outputs are gone
    released = weakref.ref(detector)
    del detector
    assert m.transition(Transition.TRANSITION_CLEANUP)
    assert m.state() == "unconfigured"
    m.made.clear()
    gc.collect()
    assert m.node._detector is None and released() is None
    wait_for(lambda: m.client.count_publishers(DETECTIONS_TOPIC) == 0, "the outputs to go")

    # parameters still change while unconfigured; configure reads the current values
    result = m.node.set_parameters([Parameter("detector.score_threshold", value=0.6)])
    assert result[0].successful
    assert m.transition(Transition.TRANSITION_CONFIGURE)
    assert m.made[0].score_threshold == 0.6

    # shutdown (from inactive): finalized, holding nothing
    assert m.transition(Transition.TRANSITION_INACTIVE_SHUTDOWN)
    assert m.state() == "finalized"
    assert m.node._detector is None and m.node.state_id == State.PRIMARY_STATE_FINALIZED


def test_a_configure_that_fails_says_why_and_leaves_the_node_unconfigured(
    managed: Callable[..., Managed], capfd: pytest.CaptureFixture[str]
) -> None:
    from peftdml_ros.ros.node import _make_detector  # the real one: the file does not exist

    missing = "/nonexistent/peftdml_model.onnx"
    m = managed(f"detector.model_path:={missing}", factory=_make_detector)
    assert not m.transition(Transition.TRANSITION_CONFIGURE)
    assert m.state() == "unconfigured"
    assert m.node._detector is None and not m.node._outputs_open
    assert m.client.count_publishers(DETECTIONS_TOPIC) == 0
    log = capfd.readouterr().err
    assert f"configure failed: ONNX file {missing} does not exist" in log, log
    assert "stays unconfigured" in log, log


def test_build_only_is_refused_at_configure(
    managed: Callable[..., Managed], capfd: pytest.CaptureFixture[str]
) -> None:
    m = managed("detector.build_only:=true")
    assert not m.transition(Transition.TRANSITION_CONFIGURE)
    assert m.state() == "unconfigured" and m.made == []
    assert "detector.build_only is for peftdml_node" in capfd.readouterr().err


# --------------------------------------------------------------------------- console script


def _start(repo_root: Path, tmp_path: Path, *own_args: str) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(201 + (os.getpid() + len(own_args)) % 31)  # like the signal tests
    env["ROS_LOG_DIR"], env["ROS_HOME"] = str(tmp_path / "log"), str(tmp_path / "home")
    env["PYTHONUNBUFFERED"] = "1"
    command = [str(Path(sys.executable).parent / lifecycle_node.EXECUTABLE), *own_args]
    command += ["--ros-args", "--params-file", str(repo_root / "config" / "peftdml.yaml")]
    return subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )


class Output:
    """A process's output lines, read to the end by a thread (waits have deadlines)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def wait_for(self, text: str, timeout_s: float = 120.0) -> None:
        with self._changed:
            found = self._changed.wait_for(lambda: text in self.text, timeout=timeout_s)
        assert found, f"no line with {text!r}:\n{self.text}"

    def join(self) -> None:
        self._thread.join(timeout=60.0)

    @property
    def text(self) -> str:
        return "".join(self.lines)


@pytest.mark.parametrize("autostart", [False, True], ids=["unconfigured", "autostart"])
def test_the_console_script_starts_and_ctrl_c_is_a_clean_exit(
    repo_root: Path, tmp_path: Path, autostart: bool
) -> None:
    process = _start(repo_root, tmp_path, *(["--autostart"] if autostart else []))
    output = Output(process)
    try:
        # After the autostart transitions: a signal during one would interrupt it (a quick
        # exit, without the shutdown transition this test looks for).
        ready = "autostart: active" if autostart else "unconfigured"
        output.wait_for(f"{lifecycle_node.EXECUTABLE} {ready}")
        os.killpg(process.pid, signal.SIGINT)  # the terminal's Ctrl-C
        os.killpg(process.pid, signal.SIGINT)  # launch forwards it
        process.wait(timeout=60)
        output.join()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    text = output.text
    assert process.returncode == 0, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    state = "active" if autostart else "unconfigured"
    assert f"finalized (shut down from {state})" in text, text


def test_the_console_script_refuses_unknown_arguments() -> None:
    assert lifecycle_node.main(["peftdml_lifecycle_node", "--autostrat"]) == 2


# ------------------------------------------------------------------------------- launch file


def test_the_launch_file_starts_the_managed_node_with_managed_true(repo_root: Path) -> None:
    tree = ast.parse((repo_root / "launch" / "peftdml.launch.py").read_text())
    declared = {
        node.args[0].value: {kw.arg: getattr(kw.value, "value", None) for kw in node.keywords}
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", "") == "DeclareLaunchArgument"
        and isinstance(node.args[0], ast.Constant)
    }
    assert declared["managed"]["default_value"] == "false"  # the plain node stays the default
    assert declared["autostart"]["default_value"] == "false"
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)}
    assert {lifecycle_node.EXECUTABLE, lifecycle_node.AUTOSTART_FLAG, "peftdml_node"} <= strings
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "launch_ros.actions"
        for alias in node.names
    }
    assert imported == {"Node", "LifecycleNode"}
