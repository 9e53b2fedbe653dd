"""The node as a process: SIGINT to its process group and SIGTERM end it cleanly (status 0, no
traceback), idle and with the inference worker busy; the Fast DDS profile loads once.

Each test starts `peftdml_node` (or a driver around the same `main()`) in its own process group
with a ROS domain, log and home directory of its own, waits for its ready line, and signals it
the way a terminal and `ros2 launch` do: Ctrl-C reaches the whole group, then launch forwards
SIGINT to the node once more (and SIGTERM when its timeout passes) while the node is already
cleaning up.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from peftdml_ros.ros import dds_profile

pytestmark = pytest.mark.ros

READY_LINE = "peftdml_node ready"
INFERENCE_STARTED = "busy-driver: inference started"
START_TIMEOUT_S = 120.0  # event-driven: generous for a loaded machine, never reached when healthy
EXIT_TIMEOUT_S = 60.0
BUSY_INFERENCE_S = 3.0  # long enough that every signal below lands while the worker is busy

# The node's main() with a detector whose inference takes BUSY_INFERENCE_S, and one frame queued
# at start: the worker is inside detect() when the test signals the process.
BUSY_DRIVER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from peftdml_ros.core.detector import DetectionResult
    from peftdml_ros.core.sync import SyncedFrame
    from peftdml_ros.core.types import LIDAR_POINT_FIELDS, Detections, Modality, PointCloud
    from peftdml_ros.ros import node

    INFERENCE_S = float(sys.argv[1])

    class SlowDetector:
        backend = None
        training_data = None

        def detect(self, frame):
            print("busy-driver: inference started", flush=True)
            time.sleep(INFERENCE_S)
            print("busy-driver: inference finished", flush=True)
            return DetectionResult(Detections.empty(), 0.0, {"total_ms": INFERENCE_S * 1e3})

        def update_thresholds(self, **kwargs):
            pass

    init = node.PeftdmlNode.__init__

    def init_with_a_queued_frame(self, **kwargs):
        init(self, detector_factory=lambda config: SlowDetector(), **kwargs)
        points = np.zeros((0, len(LIDAR_POINT_FIELDS)), np.float32)
        cloud = PointCloud("LIDAR_TOP", 1, points, LIDAR_POINT_FIELDS)
        self._slot.put(SyncedFrame(
            stamp_ns=1, trigger_sensor="LIDAR_TOP", items={"LIDAR_TOP": node.Received(cloud, 0)},
            stamps_ns={"LIDAR_TOP": 1}, imu=[], gnss=None, sensor_present={"LIDAR_TOP": True},
            modality_present={m: m is Modality.LIDAR for m in Modality},
            trigger_arrival_ns=0, emitted_ns=0, waited_to_deadline=False,
        ))

    node.PeftdmlNode.__init__ = init_with_a_queued_frame
    sys.exit(node.main(["peftdml_node", *sys.argv[2:]]))
    """
)


def _ros_env(tmp_path: Path) -> dict[str, str]:
    """The suite's environment with a domain, log and home directory of this test's own."""
    env = dict(os.environ)
    # Ids 201..231: apart from the 1..200 that test/conftest.py gives whole test runs.
    env["ROS_DOMAIN_ID"] = str(201 + (os.getpid() + len(str(tmp_path))) % 31)
    env["ROS_LOG_DIR"] = str(tmp_path / "ros_log")
    env["ROS_HOME"] = str(tmp_path / "ros_home")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class NodeProcess:
    """A node started in its own process group; its output (stdout and stderr) read in a thread."""

    def __init__(self, command: list[str], env: Mapping[str, str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for_line(self, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line with {text!r} within {timeout_s} s:\n{self.output}")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the process ended before {text!r}:\n{self.output}")
            self.lines.append(line)
            if text in line:
                return

    def signal_group(self, signum: signal.Signals) -> None:
        os.killpg(self.process.pid, signum)

    def wait(self, timeout_s: float = EXIT_TIMEOUT_S) -> int:
        returncode = self.process.wait(timeout=timeout_s)
        self._reader.join(timeout=timeout_s)
        while not self._queue.empty():
            line = self._queue.get()
            if line is not None:
                self.lines.append(line)
        return returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    @property
    def output(self) -> str:
        return "".join(self.lines)


@pytest.fixture
def start_node(tmp_path: Path, repo_root: Path) -> Iterator[Callable[..., NodeProcess]]:
    started: list[NodeProcess] = []
    params = ["--ros-args", "--params-file", str(repo_root / "config" / "peftdml.yaml")]

    def start(
        *,
        busy: bool = False,
        env: Mapping[str, str] | None = None,
        command: list[str] | None = None,
    ) -> NodeProcess:
        """peftdml_node (busy: the driver above), or `command`, in a directory of its own."""
        if command is None and busy:
            command = [sys.executable, "-c", BUSY_DRIVER, str(BUSY_INFERENCE_S), *params]
            command += ["-p", "skip_inference_without_subscribers:=false"]
        elif command is None:
            command = [str(Path(sys.executable).parent / "peftdml_node"), *params]
        run_dir = tmp_path / f"run{len(started)}"
        run_dir.mkdir()
        process = NodeProcess(command, env or _ros_env(run_dir), cwd=run_dir)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def _assert_clean_exit(process: NodeProcess) -> None:
    returncode = process.wait()
    assert returncode == 0, f"exit status {returncode}:\n{process.output}"
    assert "Traceback" not in process.output, process.output
    assert "KeyboardInterrupt" not in process.output, process.output


# Several nodes at once (a launch file's worth): each is one more try at the race that, before
# the fix, gave a traceback in 2 runs out of 3 (a repeat landing in the clean-up of the first).
REPEATS = 3
FORWARD_DELAYS_S = (0.0, 0.05, 0.1)  # from the terminal's signal to launch's, one per node


def test_ctrl_c_to_the_process_group_then_launch_forwarding_it_is_a_clean_exit(
    start_node: Callable[..., NodeProcess],
) -> None:
    nodes = [start_node() for _ in range(REPEATS)]
    for node in nodes:
        node.wait_for_line(READY_LINE, START_TIMEOUT_S)
    for node, delay_s in zip(nodes, FORWARD_DELAYS_S, strict=True):
        node.signal_group(signal.SIGINT)  # the terminal's Ctrl-C
        time.sleep(delay_s)
        node.signal_group(signal.SIGINT)  # ros2 launch forwards it
    for node in nodes:
        _assert_clean_exit(node)


def test_sigterm_is_a_clean_exit(start_node: Callable[..., NodeProcess]) -> None:
    nodes = [start_node() for _ in range(REPEATS)]
    for node in nodes:
        node.wait_for_line(READY_LINE, START_TIMEOUT_S)
    for node in nodes:
        node.process.send_signal(signal.SIGTERM)
    for node in nodes:
        _assert_clean_exit(node)


@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signals_while_the_worker_is_busy_in_inference_are_a_clean_exit(
    start_node: Callable[..., NodeProcess], first: signal.Signals
) -> None:
    node = start_node(busy=True)
    node.wait_for_line(READY_LINE, START_TIMEOUT_S)
    node.wait_for_line(INFERENCE_STARTED, START_TIMEOUT_S)
    started = time.monotonic()
    node.signal_group(first)
    # The node now waits for the frame in progress: what launch sends meanwhile must not
    # interrupt that clean-up (a second SIGINT, then SIGTERM).
    time.sleep(0.5)
    node.signal_group(signal.SIGINT)
    node.signal_group(signal.SIGTERM)
    _assert_clean_exit(node)
    # It waited for the frame in progress instead of abandoning the worker mid-inference.
    assert "busy-driver: inference finished" in node.output, node.output
    assert time.monotonic() - started >= BUSY_INFERENCE_S - 1.0


def _ros2_launch() -> str:
    ros2 = shutil.which("ros2")
    if ros2 is None or importlib.util.find_spec("ros2launch") is None:
        pytest.skip("ros2 launch needs a ROS 2 install (launch and ros2launch are not on PyPI)")
    return ros2


def test_ros2_launch_starts_the_node_and_ctrl_c_ends_it_cleanly(
    start_node: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    """`ros2 launch peftdml_ros peftdml.launch.py` as a user runs it, from a shell that set both
    Fast DDS profile variables (the launch file keeps only the one Fast DDS reads)."""
    ros2 = _ros2_launch()
    env = _ros_env(tmp_path)
    env.update(dict.fromkeys(dds_profile.PROFILE_VARIABLES, str(tmp_path / "unused.xml")))
    launch = start_node(env=env, command=[ros2, "launch", "peftdml_ros", "peftdml.launch.py"])
    launch.wait_for_line(READY_LINE, START_TIMEOUT_S)
    launch.signal_group(signal.SIGINT)  # Ctrl-C: launch and the node both get it
    _assert_clean_exit(launch)
    assert "process has finished cleanly" in launch.output, launch.output
    assert not XMLPARSER_ERROR.search(launch.output), launch.output


# ------------------------------------------------------------------------------ Fast DDS profile

XMLPARSER_ERROR = re.compile(r"XMLPARSER.{0,20}Error")


def _user_environment(tmp_path: Path, repo_root: Path, how: str) -> dict[str, str]:
    """What a user's node process gets: from `make` (the Makefile's exports) or from the
    environment helper the launch file applies, starting from a shell that set neither."""
    env = _ros_env(tmp_path)
    for name in dds_profile.PROFILE_VARIABLES:
        env.pop(name, None)
    if how == "make":
        # The Makefile's own exports, read by make itself from a throw-away extra rule.
        dump = subprocess.run(
            ["make", "--no-print-directory", "-s", "-f", "Makefile", "-f", "-", "print-env"],
            input="print-env:\n\t@env -0\n",
            cwd=repo_root,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        return dict(item.split("=", 1) for item in dump.split("\0") if "=" in item)
    profile = Path(sys.prefix) / "share" / "peftdml_ros" / "config" / "fastdds_profile.xml"
    return dds_profile.apply(env, profile)


@pytest.mark.parametrize("how", ["make", "launch"])
def test_the_dds_profile_loads_once_without_parser_errors(
    start_node: Callable[..., NodeProcess], tmp_path: Path, repo_root: Path, how: str
) -> None:
    env = _user_environment(tmp_path, repo_root, how)
    expected = dds_profile.profile_variable(env)
    assert env.get(expected, "").endswith("fastdds_profile.xml"), "the profile is not set"
    unread = set(dds_profile.PROFILE_VARIABLES) - {expected}
    assert not unread & env.keys(), f"{unread} set: Fast DDS would load the profile twice"

    node = start_node(env=env)
    node.wait_for_line(READY_LINE, START_TIMEOUT_S)
    segments = _shared_memory_segments_bytes(node.process.pid)
    node.signal_group(signal.SIGINT)
    _assert_clean_exit(node)
    assert not XMLPARSER_ERROR.search(node.output), node.output
    assert "deprecated" not in node.output, node.output
    # The profile is in effect: its SHM segment (Fast DDS's default is about 0.5 MB).
    assert max(segments, default=0) >= _profile_segment_bytes(repo_root), segments


def _shared_memory_segments_bytes(pid: int) -> list[int]:
    """Sizes of the Fast DDS shared-memory segments mapped by a process."""
    maps = Path(f"/proc/{pid}/maps")
    if not maps.is_file():
        pytest.skip("no /proc: cannot see the process's shared-memory segments")
    sizes = []
    for line in maps.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5].startswith("/dev/shm/fastdds_"):
            start, end = (int(address, 16) for address in fields[0].split("-"))
            sizes.append(end - start)
    return sizes


def _profile_segment_bytes(repo_root: Path) -> int:
    text = (repo_root / "config" / "fastdds_profile.xml").read_text()
    match = re.search(r"<segment_size>(\d+)</segment_size>", text)
    assert match, "the profile names no SHM segment size"
    return int(match.group(1))


def test_both_profile_variables_make_fast_dds_3_report_a_double_load(tmp_path: Path) -> None:
    """The check above can fail: the set-up it replaced (both variables, one through the share
    directory) makes Fast DDS 3 print the parser errors it looks for."""
    env = _ros_env(tmp_path)
    if dds_profile.fastdds_major_version(env) < 3:
        pytest.skip("Fast DDS 2 reads only FASTRTPS_DEFAULT_PROFILES_FILE")
    profile = Path(sys.prefix) / "share" / "peftdml_ros" / "config" / "fastdds_profile.xml"
    env.update(dict.fromkeys(dds_profile.PROFILE_VARIABLES, str(profile)))
    result = subprocess.run(
        [sys.executable, "-c", "import rclpy; rclpy.init(); rclpy.create_node('probe')"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert XMLPARSER_ERROR.search(result.stdout + result.stderr), result.stderr
