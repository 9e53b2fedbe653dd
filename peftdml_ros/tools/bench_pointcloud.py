"""`peftdml bench pointcloud`: PointCloud2 building and reading against sensor_msgs_py.

    peftdml bench pointcloud [--runs 40] [--json]   (arguments: tools/bench.py)

Two clouds: 300,000 points of x, y, z, intensity (float32, 16 bytes a point) and a nuScenes
LiDAR sweep of 34,720 points in the layout `peftdml bag` writes (x, y, z, intensity float32 +
ring uint16, 18 bytes a point, unpadded). Per cloud:

- build: columns -> sensor_msgs/PointCloud2 (ours: core.pointcloud.pack_points +
  ros.outputs.pointcloud2_message; the peers: create_cloud from the same columns, the
  structured array it needs for mixed field types built inside the timing);
- read (owned copy): PointCloud2 -> [N, 4] float32 x, y, z, intensity that the caller owns
  (ours: points_as_array; the peers: read_points_numpy, copied when it is a view);
- read (view): zero-copy access to the fields (ours: unpack_points; the peers: read_points);
- the node's conversion of the cloud (ros.conversions.lidar_to_core: read, NaN check,
  transform into the ego frame), ours only.

Peers: sensor_msgs_py.point_cloud2 itself where it imports (a ROS install); it is not on PyPI,
so elsewhere it is reported as not available and no figure of it is printed. Always: a numpy
re-implementation of what its create_cloud, read_points and read_points_numpy do (written
here from their documented behaviour, labelled as such), so a ratio exists on every machine.
Candidates run in turns in one process (wall clock), so other load falls on all alike.
"""

from __future__ import annotations

import argparse
import array
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib import recfunctions as rfn
from tqdm import tqdm

from peftdml_ros.core import pointcloud as core_pc
from peftdml_ros.core.errors import ConfigError
from peftdml_ros.tools.bench_common import (
    NUSCENES_SWEEP_POINTS,
    lidar_sweep,
    machine_info,
    machine_line,
    time_interleaved,
)

AnyArray = npt.NDArray[Any]
XYZI: tuple[str, ...] = ("x", "y", "z", "intensity")
LARGE_CLOUD_POINTS = 300_000
TARGET_RATIO = 1.5  # ours / sensor_msgs_py, at most
OURS = "ours"
NUMPY_PEER = "numpy_equivalent"
SENSOR_MSGS_PY = "sensor_msgs_py"
OPERATIONS = ("build", "read_owned", "read_view")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=40, help="timed runs per candidate")
    parser.add_argument(
        "--large-points", type=int, default=LARGE_CLOUD_POINTS, help="points of the XYZI cloud"
    )
    parser.add_argument("--seed", type=int, default=0)


# ------------------------------------------------------------------------------------ the clouds


@dataclass(frozen=True)
class Case:
    label: str
    columns: dict[str, AnyArray]


def cases(large_points: int, seed: int) -> list[Case]:
    sweep = lidar_sweep(NUSCENES_SWEEP_POINTS, seed)
    xyzi = np.stack([lidar_sweep(large_points, seed + 1)[name] for name in XYZI], axis=1)
    return [
        # What a driver holds: one [N, 4] float32 array; ours takes its columns (views).
        Case(
            f"XYZI float32, {large_points:,} points", {n: xyzi[:, i] for i, n in enumerate(XYZI)}
        ),
        Case(f"nuScenes LiDAR layout (bag), {NUSCENES_SWEEP_POINTS:,} points", sweep),
    ]


# --------------------------------------------------------------- what sensor_msgs_py does, numpy


def point_fields(columns: dict[str, AnyArray]) -> list[Any]:
    """sensor_msgs/PointField list of unpadded columns (the layout pack_points writes)."""
    from sensor_msgs.msg import PointField

    fields, offset = [], 0
    for name, values in columns.items():
        datatype = core_pc.datatype_for(values.dtype)
        fields.append(PointField(name=name, offset=offset, datatype=datatype, count=1))
        offset += values.dtype.itemsize
    return fields


def dtype_of_fields(fields: Sequence[Any], point_step: int | None = None) -> np.dtype[Any]:
    """The structured dtype of PointFields (native byte order), as sensor_msgs_py builds it."""
    names = [str(f.name) for f in fields]
    formats = [core_pc.DATATYPE_TO_DTYPE[int(f.datatype)] for f in fields]
    offsets = [int(f.offset) for f in fields]
    end = max(o + fmt.itemsize for o, fmt in zip(offsets, formats, strict=True))
    spec = {"names": names, "formats": formats, "offsets": offsets, "itemsize": point_step or end}
    return np.dtype(spec)  # type: ignore[call-overload, no-any-return]


def structured_points(columns: dict[str, AnyArray], fields: Sequence[Any]) -> AnyArray:
    """The structured array create_cloud needs when field types differ, built from columns."""
    points = np.empty(len(next(iter(columns.values()))), dtype=dtype_of_fields(fields))
    for name, values in columns.items():
        points[name] = values
    return points


def numpy_create_cloud(header: Any, fields: Sequence[Any], points: AnyArray) -> Any:
    """create_cloud's steps: an [N, F] array of one type becomes a structured array; the
    record bytes are copied once into an array('B') stored in the message; is_dense False."""
    from sensor_msgs.msg import PointCloud2

    dtype = dtype_of_fields(fields)
    if points.dtype.names is None:
        points = rfn.unstructured_to_structured(points, dtype=dtype)
    data = array.array("B")
    data.frombytes(points.data.cast("B"))
    cloud = PointCloud2(
        header=header,
        height=1,
        width=int(points.shape[0]),
        is_dense=False,
        is_bigendian=sys.byteorder != "little",
        fields=list(fields),
        point_step=dtype.itemsize,
        row_step=dtype.itemsize * int(points.shape[0]),
    )
    cloud._data = data  # as create_cloud does: the setter would copy the array again
    return cloud


def numpy_read_points(cloud: Any, field_names: Sequence[str]) -> AnyArray:
    """read_points' steps: a structured view over cloud.data, the named fields selected."""
    points: AnyArray = np.ndarray(
        shape=(int(cloud.width) * int(cloud.height),),
        dtype=dtype_of_fields(cloud.fields, int(cloud.point_step)),
        buffer=cloud.data,
    )
    selected = points[list(field_names)]
    if bool(cloud.is_bigendian) != (sys.byteorder != "little"):
        selected = selected.byteswap()
    return selected


def numpy_read_points_numpy(cloud: Any, field_names: Sequence[str]) -> AnyArray:
    """read_points_numpy's steps: read_points, then one [N, F] array of the common type."""
    unstructured: AnyArray = rfn.structured_to_unstructured(numpy_read_points(cloud, field_names))
    return unstructured


def owned(values: AnyArray, message_data: Any) -> AnyArray:
    """`values` as an array the caller owns: copied once if it is a view of the message."""
    if np.may_share_memory(values, np.frombuffer(message_data, dtype=np.uint8)):
        return values.copy()
    return values


# ------------------------------------------------------------------------------------ the peers


@dataclass(frozen=True)
class Peer:
    """One implementation of build / read: name, whether it runs here and why not."""

    name: str
    build: Callable[[Any, dict[str, AnyArray]], Any] | None
    read_owned: Callable[[Any], AnyArray] | None
    read_view: Callable[[Any], Any] | None  # a structured view or {name: column view}
    reason: str = ""


def _build_input(columns: dict[str, AnyArray], fields: Sequence[Any]) -> AnyArray:
    """What create_cloud takes: [N, F] when every field has one type, else a structured array
    filled from the columns (a caller holding columns has to build it)."""
    if len({v.dtype for v in columns.values()}) == 1:
        return np.stack(list(columns.values()), axis=1)
    return structured_points(columns, fields)


def ours() -> Peer:
    from peftdml_ros.ros.outputs import pointcloud2_message

    return Peer(
        OURS,
        build=lambda header, columns: pointcloud2_message(core_pc.pack_points(columns), header),
        read_owned=lambda cloud: core_pc.points_as_array(cloud, XYZI),
        read_view=lambda cloud: core_pc.unpack_points(cloud, XYZI),
    )


def numpy_peer() -> Peer:
    def build(header: Any, columns: dict[str, AnyArray]) -> Any:
        fields = point_fields(columns)
        return numpy_create_cloud(header, fields, _build_input(columns, fields))

    return Peer(
        NUMPY_PEER,
        build=build,
        read_owned=lambda cloud: owned(numpy_read_points_numpy(cloud, XYZI), cloud.data),
        read_view=lambda cloud: numpy_read_points(cloud, XYZI),
    )


def sensor_msgs_py_peer() -> Peer:
    """sensor_msgs_py.point_cloud2 where it imports; else a Peer that says why not."""
    try:
        pc2 = importlib.import_module("sensor_msgs_py.point_cloud2")
    except ImportError as error:
        return Peer(SENSOR_MSGS_PY, None, None, None, reason=f"not importable here ({error})")

    def build(header: Any, columns: dict[str, AnyArray]) -> Any:
        fields = point_fields(columns)
        return pc2.create_cloud(header, fields, _build_input(columns, fields))

    return Peer(
        SENSOR_MSGS_PY,
        build=build,
        read_owned=lambda cloud: owned(pc2.read_points_numpy(cloud, XYZI), cloud.data),
        read_view=lambda cloud: pc2.read_points(cloud, XYZI),
    )


# ------------------------------------------------------------------------------------------ run


def _summary(samples_s: list[float]) -> dict[str, float]:
    values = np.asarray(samples_s) * 1e3
    return {"median_ms": float(np.median(values)), "min_ms": float(values.min())}


def _check_same_result(case: Case, peers: Sequence[Peer], header: Any) -> None:
    """Every candidate must build and read the same points, or its timing means nothing."""
    reference = ours()
    assert reference.build is not None and reference.read_owned is not None
    cloud = reference.build(header, case.columns)
    expected = np.stack([case.columns[n] for n in XYZI], axis=1)
    for peer in peers:
        if peer.build is None or peer.read_owned is None:
            continue
        for source in (cloud, peer.build(header, case.columns)):
            got = np.asarray(peer.read_owned(source))
            if not np.array_equal(got, expected):
                raise ConfigError(f"{peer.name} read different points than were packed")


def _time_case(case: Case, peers: Sequence[Peer], runs: int, header: Any) -> dict[str, Any]:
    from peftdml_ros.ros.conversions import lidar_to_core

    live = [p for p in peers if p.build is not None]
    cloud = ours().build(header, case.columns)  # type: ignore[misc]
    n = len(next(iter(case.columns.values())))
    ops: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        candidates = {peer.name: _call(peer, op, header, case.columns, cloud) for peer in live}
        samples = time_interleaved(candidates, runs)
        ops[op] = {name: _summary(s) for name, s in samples.items()}
    conversion = time_interleaved(
        {OURS: lambda: lidar_to_core(cloud, "LIDAR", np.eye(4), max_points=4 * n)}, runs
    )
    return {
        "case": case.label,
        "points": n,
        "point_step": int(cloud.point_step),
        "ops": ops,
        "lidar_to_core": _summary(conversion[OURS]),
    }


def _call(
    peer: Peer, op: str, header: Any, columns: dict[str, AnyArray], cloud: Any
) -> Callable[[], object]:
    """A no-argument call of the peer's `op`: build from the columns, or read the cloud."""
    fn = getattr(peer, op)
    if op == "build":
        return lambda: fn(header, columns)
    return lambda: fn(cloud)


def _ratios(ops: dict[str, dict[str, Any]], peer: str) -> dict[str, dict[str, float]]:
    out = {}
    for op, timings in ops.items():
        if peer in timings:
            out[op] = {
                "median": timings[OURS]["median_ms"] / timings[peer]["median_ms"],
                "min": timings[OURS]["min_ms"] / timings[peer]["min_ms"],
            }
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.runs < 1 or args.large_points < 1:
        raise ConfigError("--runs and --large-points must be >= 1")
    from std_msgs.msg import Header

    header = Header(frame_id="lidar_top")
    real = sensor_msgs_py_peer()
    peers = [ours(), numpy_peer(), real]
    reference = SENSOR_MSGS_PY if real.build is not None else NUMPY_PEER
    results = []
    for case in tqdm(cases(args.large_points, args.seed), desc="bench pointcloud", unit="cloud"):
        _check_same_result(case, peers, header)
        row = _time_case(case, peers, args.runs, header)
        row["ratio_vs"] = {
            name: _ratios(row["ops"], name)
            for name in (NUMPY_PEER, SENSOR_MSGS_PY)
            if name in row["ops"]["build"]
        }
        results.append(row)
    return {
        "target": "pointcloud",
        "machine": machine_info(),
        "runs": args.runs,
        "sensor_msgs_py": {"available": real.build is not None, "reason": real.reason},
        "reference_peer": reference,
        "target_ratio": TARGET_RATIO,
        "cases": results,
    }


# --------------------------------------------------------------------------------------- render


_OP_LABELS = {
    "build": "build (columns -> PointCloud2)",
    "read_owned": "read, owned [N, 4] float32 copy",
    "read_view": "read, zero-copy field view",
}
_PEER_LABELS = {
    OURS: "ours (core.pointcloud)",
    NUMPY_PEER: "numpy equivalent of sensor_msgs_py (written here)",
    SENSOR_MSGS_PY: "sensor_msgs_py",
}


def render(result: dict[str, Any]) -> str:
    sensor_msgs_py = result["sensor_msgs_py"]
    lines = [
        f"PointCloud2 build and read, {result['runs']} runs per candidate taken in turns; "
        "median (min) ms",
        machine_line(result["machine"]),
    ]
    if not sensor_msgs_py["available"]:
        lines.append(f"sensor_msgs_py: not available ({sensor_msgs_py['reason']})")
    reference = result["reference_peer"]
    for row in result["cases"]:
        lines += ["", f"{row['case']} ({row['point_step']} bytes a point)"]
        for op, timings in row["ops"].items():
            lines.append(f"  {_OP_LABELS[op]}")
            for name in (OURS, NUMPY_PEER, SENSOR_MSGS_PY):
                label = f"    {_PEER_LABELS[name]:<52}"
                if name not in timings:
                    lines.append(f"{label} not available")
                    continue
                t = timings[name]
                lines.append(f"{label} {t['median_ms']:8.3f} ({t['min_ms']:.3f})")
            ratio = row["ratio_vs"][reference].get(op)
            if ratio is not None:
                verdict = "within" if ratio["median"] <= result["target_ratio"] else "OVER"
                lines.append(
                    f"    ours / {_PEER_LABELS[reference]}: {ratio['median']:.2f}x median, "
                    f"{ratio['min']:.2f}x min ({verdict} {result['target_ratio']}x)"
                )
        conv = row["lidar_to_core"]
        lines.append(
            f"  node conversion lidar_to_core (read + NaN check + ego transform): "
            f"{conv['median_ms']:.3f} ({conv['min_ms']:.3f})"
        )
    return "\n".join(lines)
