"""PointCloud2 packing/unpacking on plain values: round trips, zero-copy views, every error."""

from __future__ import annotations

import struct
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peftdml_ros.core import pointcloud as pc
from peftdml_ros.core.errors import InputDataError

_STRUCT_CODE = {
    pc.INT8: "b",
    pc.UINT8: "B",
    pc.INT16: "h",
    pc.UINT16: "H",
    pc.INT32: "i",
    pc.UINT32: "I",
    pc.FLOAT32: "f",
    pc.FLOAT64: "d",
}


def _cloud(**overrides: Any) -> SimpleNamespace:
    """A valid 4-point x, y, z float32 cloud as a duck-typed message, with overrides."""
    packed = pc.pack_points(
        {name: np.arange(4, dtype=np.float32) + i for i, name in enumerate("xyz")}
    )
    body = {
        "height": packed.height,
        "width": packed.width,
        "fields": list(packed.fields),
        "is_bigendian": False,
        "point_step": packed.point_step,
        "row_step": packed.row_step,
        "data": packed.data,
        "is_dense": True,
    }
    body.update(overrides)
    return SimpleNamespace(**body)


def test_datatype_constants_match_sensor_msgs_point_field() -> None:
    assert (pc.INT8, pc.UINT8, pc.INT16, pc.UINT16) == (1, 2, 3, 4)
    assert (pc.INT32, pc.UINT32, pc.FLOAT32, pc.FLOAT64) == (5, 6, 7, 8)
    assert pc.DATATYPE_TO_DTYPE[pc.FLOAT64] == np.float64
    assert pc.datatype_for(np.dtype(">u2")) == pc.UINT16


def test_pack_mixed_radar_like_columns_round_trip() -> None:
    rng = np.random.default_rng(0)
    n = 7
    columns = {
        "x": rng.normal(size=n).astype(np.float32),
        "y": rng.normal(size=n).astype(np.float32),
        "z": rng.normal(size=n).astype(np.float32),
        "dyn_prop": rng.integers(0, 7, n).astype(np.int8),
        "id": rng.integers(0, 300, n).astype(np.int16),
        "rcs": rng.normal(size=n).astype(np.float32),
        "ambig_state": rng.integers(0, 4, n).astype(np.uint8),
        "pdh0": rng.integers(0, 7, n).astype(np.int8),
        "invalid_state": rng.integers(0, 17, n).astype(np.uint8),
        "stamp_ns": rng.integers(0, 2**31, n).astype(np.uint32),
        "cov": rng.normal(size=(n, 3)).astype(np.float64),
    }
    packed = pc.pack_points(columns)
    assert packed.point_step == 12 + 1 + 2 + 4 + 1 + 1 + 1 + 4 + 24
    assert packed.row_step == n * packed.point_step
    assert len(packed.data) == n * packed.point_step
    assert packed.fields[3] == pc.PackedField("dyn_prop", 12, pc.INT8, 1)
    assert packed.fields[-1].count == 3
    out = pc.unpack_points(packed)
    assert list(out) == list(columns)
    for name, values in columns.items():
        np.testing.assert_array_equal(out[name], values)
        assert out[name].dtype == values.dtype


def test_unpack_is_zero_copy_for_unpadded_rows() -> None:
    buffer = np.frombuffer(_cloud().data, dtype=np.uint8).copy()  # like rosbags' uint8 array
    msg = _cloud(data=buffer)
    out = pc.unpack_points(msg)
    assert np.shares_memory(out["y"], buffer)
    buffer[4:8] = np.frombuffer(np.float32(42.0).tobytes(), np.uint8)  # point 0, field y
    assert out["y"][0] == 42.0


def test_unpack_wanted_subset_and_order() -> None:
    out = pc.unpack_points(_cloud(), ["z", "x"])
    assert list(out) == ["z", "x"]
    np.testing.assert_array_equal(out["z"], np.arange(4, dtype=np.float32) + 2)


def test_organized_cloud_with_row_padding() -> None:
    height, width, point_step, row_step = 3, 2, 8, 20  # 4 padding bytes after each row
    data = bytearray(height * row_step)
    for r in range(height):
        for c in range(width):
            struct.pack_into("<ff", data, r * row_step + c * point_step, 10 * r + c, -1.0)
    fields = [pc.PackedField("x", 0, pc.FLOAT32, 1), pc.PackedField("y", 4, pc.FLOAT32, 1)]
    msg = SimpleNamespace(
        height=height,
        width=width,
        fields=fields,
        is_bigendian=False,
        point_step=point_step,
        row_step=row_step,
        data=bytes(data),
    )
    view = pc.structured_view(msg)
    assert view.shape == (3, 2)
    assert view["x"][2, 1] == 21.0
    out = pc.unpack_points(msg, required=("x", "y"))
    np.testing.assert_array_equal(out["x"], [0, 1, 10, 11, 20, 21])


def test_big_endian_cloud() -> None:
    packed = pc.pack_points(
        {"x": np.array([1.5, -2.0], np.float32), "y": np.array([3, 4], np.uint16)},
        bigendian=True,
    )
    assert packed.is_bigendian
    assert packed.data[:4] == struct.pack(">f", 1.5)
    out = pc.unpack_points(packed, required=("x",))
    np.testing.assert_array_equal(out["x"], [1.5, -2.0])
    np.testing.assert_array_equal(out["y"], [3, 4])


def test_works_on_a_rosbags_message() -> None:
    from rosbags.typesys import Stores, get_typestore

    types = get_typestore(Stores.ROS2_HUMBLE).types
    packed = pc.pack_points({"x": np.ones(3, np.float32), "y": np.zeros(3, np.float32)})
    msg = types["sensor_msgs/msg/PointCloud2"](
        header=types["std_msgs/msg/Header"](
            stamp=types["builtin_interfaces/msg/Time"](sec=1, nanosec=2), frame_id="lidar"
        ),
        height=packed.height,
        width=packed.width,
        fields=[
            types["sensor_msgs/msg/PointField"](
                name=f.name, offset=f.offset, datatype=f.datatype, count=f.count
            )
            for f in packed.fields
        ],
        is_bigendian=packed.is_bigendian,
        point_step=packed.point_step,
        row_step=packed.row_step,
        data=np.frombuffer(packed.data, np.uint8),
        is_dense=packed.is_dense,
    )
    out = pc.unpack_points(msg, required=("x", "y"))
    np.testing.assert_array_equal(out["x"], np.ones(3))


def test_points_as_array_and_non_finite_filter() -> None:
    x = np.array([0.0, np.nan, 2.0, np.inf], np.float32)
    packed = pc.pack_points(
        {
            "x": x,
            "y": np.zeros(4, np.float32),
            "z": np.ones(4, np.float64),
            "i": np.arange(4, dtype=np.uint8),
        }
    )
    assert not packed.is_dense
    arr = pc.points_as_array(packed, ("x", "y", "z", "i"))
    assert arr.shape == (4, 4) and arr.dtype == np.float32
    kept = pc.points_as_array(packed, ("x", "y", "z", "i"), drop_non_finite_xyz=True)
    np.testing.assert_array_equal(kept[:, 3], [0, 2])
    columns = pc.unpack_points(packed)
    np.testing.assert_array_equal(pc.finite_mask(columns), [True, False, True, False])
    np.testing.assert_array_equal(pc.drop_non_finite(columns)["i"], [0, 2])


def test_empty_cloud_is_allowed_by_default_and_refusable() -> None:
    msg = _cloud(width=0, row_step=0, data=b"")
    out = pc.unpack_points(msg)
    assert out["x"].shape == (0,) and out["x"].dtype == np.float32
    with pytest.raises(pc.EmptyCloudError, match="no points"):
        pc.unpack_points(msg, allow_empty=False)


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"point_step": 8}, pc.PointStepError, r"point_step 8 is smaller than the 12 bytes"),
        ({"data": b"\0" * 47}, pc.DataLengthError, r"47 bytes but height 1 x row_step 48"),
        ({"row_step": 40, "data": b"\0" * 40}, pc.RowStepError, r"row_step 40 is smaller"),
        ({"width": 10**7}, pc.CloudTooLargeError, r"more than max_points"),
        (
            {"fields": [pc.PackedField("x", 0, 9, 1)]},
            pc.UnknownDatatypeError,
            r"datatype 9 is unknown",
        ),
        (
            {"fields": [pc.PackedField("x", 0, pc.FLOAT32, 0)]},
            pc.FieldCountError,
            r"'x' has count 0",
        ),
        (
            {"fields": [pc.PackedField("x", 0, pc.FLOAT32, 1)] * 2},
            pc.DuplicateFieldError,
            r"'x' appears twice",
        ),
        (
            {
                "fields": [
                    pc.PackedField("x", 0, pc.FLOAT32, 1),
                    pc.PackedField("y", 2, pc.FLOAT32, 1),
                ]
            },
            pc.OverlappingFieldsError,
            r"'x' and 'y' overlap",
        ),
        (
            {"fields": [pc.PackedField("x", 0, pc.FLOAT32, 1)]},
            pc.MissingFieldError,
            r"lacks required field\(s\) \['y', 'z'\]",
        ),
    ],
)
def test_malformed_cloud_gives_its_specific_error(
    overrides: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match) as info:
        pc.unpack_points(_cloud(**overrides))
    assert isinstance(info.value, InputDataError)


def test_wanted_field_missing_names_the_available_ones() -> None:
    with pytest.raises(pc.MissingFieldError, match=r"no field\(s\) \['intensity'\].*'x'"):
        pc.unpack_points(_cloud(), ["x", "intensity"])


def test_max_points_is_configurable() -> None:
    with pytest.raises(pc.CloudTooLargeError, match="4 points, more than max_points 3"):
        pc.unpack_points(_cloud(), max_points=3)
    assert pc.unpack_points(_cloud(), max_points=4)["x"].shape == (4,)


def test_pack_refuses_unrepresentable_columns() -> None:
    with pytest.raises(pc.UnsupportedDtypeError, match="int64 has no PointField datatype"):
        pc.pack_points({"x": np.zeros(2, np.int64)})
    with pytest.raises(pc.UnsupportedDtypeError):
        pc.pack_points({"x": np.zeros(2, bool)})
    with pytest.raises(pc.ColumnShapeError, match="differ in length"):
        pc.pack_points({"x": np.zeros(2, np.float32), "y": np.zeros(3, np.float32)})
    with pytest.raises(pc.ColumnShapeError, match="height 3 does not divide"):
        pc.pack_points({"x": np.zeros(4, np.float32)}, height=3)


def test_packed_cloud_matches_point_cloud2_attribute_names() -> None:
    packed = pc.pack_points({"x": np.zeros(6, np.float32)}, height=2)
    assert (packed.height, packed.width, packed.num_points) == (2, 3, 6)
    assert replace(packed, is_dense=False).fields[0].name == "x"


# --------------------------------------------------------------------- random layouts (property)

_DATATYPES = st.sampled_from(sorted(_STRUCT_CODE))


@st.composite
def _layouts(draw: st.DrawFn) -> dict[str, Any]:
    """A random cloud layout: fields in any byte order, gaps, point and row padding."""
    num_fields = draw(st.integers(1, 5))
    names = [f"f{i}" for i in range(num_fields)]
    datatypes = [draw(_DATATYPES) for _ in names]
    counts = [draw(st.integers(1, 3)) for _ in names]
    order = draw(st.permutations(range(num_fields)))
    offsets = [0] * num_fields
    cursor = 0
    for i in order:  # byte order of fields differs from their listed order
        cursor += draw(st.integers(0, 3))  # gap before the field
        offsets[i] = cursor
        cursor += pc.DATATYPE_TO_DTYPE[datatypes[i]].itemsize * counts[i]
    point_step = cursor + draw(st.integers(0, 5))
    height = draw(st.integers(1, 3))
    width = draw(st.integers(0, 4))
    row_step = width * point_step + draw(st.integers(0, 7))
    return {
        "fields": [
            pc.PackedField(n, o, d, c)
            for n, o, d, c in zip(names, offsets, datatypes, counts, strict=True)
        ],
        "point_step": point_step,
        "height": height,
        "width": width,
        "row_step": row_step,
        "bigendian": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
    }


def _random_value(rng: np.random.Generator, datatype: int) -> float | int:
    dtype = pc.DATATYPE_TO_DTYPE[datatype]
    if dtype.kind == "f":
        return float(np.float32(rng.normal() * 100))
    info = np.iinfo(dtype)
    return int(rng.integers(info.min, info.max, endpoint=True))


@settings(max_examples=60, deadline=None)
@given(_layouts())
def test_unpack_matches_bytes_written_with_struct(layout: dict[str, Any]) -> None:
    rng = np.random.default_rng(layout["seed"])
    prefix = ">" if layout["bigendian"] else "<"
    data = bytearray(rng.integers(0, 256, layout["height"] * layout["row_step"], np.uint8))
    expected: dict[str, list[Any]] = {f.name: [] for f in layout["fields"]}
    for r in range(layout["height"]):
        for c in range(layout["width"]):
            base = r * layout["row_step"] + c * layout["point_step"]
            for f in layout["fields"]:
                values = [_random_value(rng, f.datatype) for _ in range(f.count)]
                code = prefix + _STRUCT_CODE[f.datatype] * f.count
                struct.pack_into(code, data, base + f.offset, *values)
                expected[f.name].append(values[0] if f.count == 1 else values)
    msg = SimpleNamespace(
        height=layout["height"],
        width=layout["width"],
        fields=layout["fields"],
        is_bigendian=layout["bigendian"],
        point_step=layout["point_step"],
        row_step=layout["row_step"],
        data=bytes(data),
    )
    out = pc.unpack_points(msg, required=())
    for f in layout["fields"]:
        want = np.array(expected[f.name], dtype=pc.DATATYPE_TO_DTYPE[f.datatype])
        if f.count > 1:
            want = want.reshape(-1, f.count)
        np.testing.assert_array_equal(out[f.name], want.reshape(out[f.name].shape))
        assert out[f.name].shape[0] == layout["height"] * layout["width"]


@settings(max_examples=40, deadline=None)
@given(_layouts())
def test_pack_then_unpack_round_trips(layout: dict[str, Any]) -> None:
    rng = np.random.default_rng(layout["seed"])
    n = layout["height"] * max(layout["width"], 1)
    columns: dict[str, Any] = {}
    for f in layout["fields"]:
        dtype = pc.DATATYPE_TO_DTYPE[f.datatype]
        shape = (n,) if f.count == 1 else (n, f.count)
        columns[f.name] = np.array(
            [_random_value(rng, f.datatype) for _ in range(int(np.prod(shape)))], dtype
        ).reshape(shape)
    packed = pc.pack_points(columns, height=layout["height"], bigendian=layout["bigendian"])
    out = pc.unpack_points(packed, required=())
    assert list(out) == list(columns)
    for name, values in columns.items():
        np.testing.assert_array_equal(out[name], values)


def test_data_may_be_any_buffer_or_a_list() -> None:
    """rclpy gives array.array('B'), rosbags a uint8 ndarray, others bytes or a list."""
    import array

    raw = _cloud().data
    for data in (array.array("B", raw), memoryview(raw), bytearray(raw), list(raw)):
        out = pc.unpack_points(_cloud(data=data))
        np.testing.assert_array_equal(out["z"], np.arange(4, dtype=np.float32) + 2)


# --------------------------------------------------------------- points_as_array: one-pass path


@st.composite
def _uniform_layouts(draw: st.DrawFn) -> dict[str, Any]:
    """Scalar fields of one datatype at evenly spaced offsets (the one-pass path), with a lead
    gap, a field stride of at least the element size, point and row padding, either order."""
    datatype = draw(_DATATYPES)
    size = pc.DATATYPE_TO_DTYPE[datatype].itemsize
    num_fields = draw(st.integers(1, 5))
    first = draw(st.integers(0, 6))
    step = size + draw(st.sampled_from([0, 0, 1, 4]))
    fields = [pc.PackedField(f"f{i}", first + i * step, datatype, 1) for i in range(num_fields)]
    point_step = first + (num_fields - 1) * step + size + draw(st.integers(0, 5))
    width = draw(st.integers(0, 5))
    return {
        "fields": fields,
        "point_step": point_step,
        "height": draw(st.integers(1, 3)),
        "width": width,
        "row_step": width * point_step + draw(st.integers(0, 7)),
        "bigendian": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
    }


def _random_cloud(layout: dict[str, Any]) -> SimpleNamespace:
    """A message of `layout` whose bytes are random (NaN bit patterns included)."""
    rng = np.random.default_rng(layout["seed"])
    size = layout["height"] * layout["row_step"]
    return SimpleNamespace(
        height=layout["height"],
        width=layout["width"],
        fields=layout["fields"],
        is_bigendian=layout["bigendian"],
        point_step=layout["point_step"],
        row_step=layout["row_step"],
        data=rng.integers(0, 256, size, np.uint8).tobytes(),
    )


def _column_by_column(msg: Any, names: list[str]) -> np.ndarray:
    """The reference: one float64 column per field from unpack_points (checked against struct
    above), stacked."""
    columns = pc.unpack_points(msg, names, required=())
    n = msg.height * msg.width
    if not names:
        return np.zeros((n, 0))
    return np.stack([columns[name].astype(np.float64) for name in names], axis=1)


@settings(max_examples=60, deadline=None)
@given(_uniform_layouts())
def test_points_as_array_one_pass_path_matches_column_by_column(layout: dict[str, Any]) -> None:
    msg = _random_cloud(layout)
    names = [f.name for f in layout["fields"]]
    got = pc.points_as_array(msg, names, dtype=np.float64, extra_columns=2)
    want = _column_by_column(msg, names)
    assert got.shape == (want.shape[0], len(names) + 2)
    np.testing.assert_array_equal(got[:, : len(names)], want)  # NaN compares equal here
    assert not got[:, len(names) :].any()


@settings(max_examples=60, deadline=None)
@given(_layouts())
def test_points_as_array_matches_column_by_column_on_any_layout(layout: dict[str, Any]) -> None:
    msg = _random_cloud(layout)
    names = [f.name for f in layout["fields"] if f.count == 1]
    np.testing.assert_array_equal(
        pc.points_as_array(msg, names, dtype=np.float64), _column_by_column(msg, names)
    )


def test_points_as_array_reads_a_subset_in_any_order_and_drops_non_finite_xyz() -> None:
    columns = {
        "x": np.array([1.0, np.nan, 3.0, 4.0], np.float32),
        "y": np.array([5.0, 6.0, np.inf, 8.0], np.float32),
        "z": np.array([9.0, 10.0, 11.0, 12.0], np.float32),
        "intensity": np.array([13.0, 14.0, 15.0, np.nan], np.float32),
    }
    packed = pc.pack_points(columns)
    np.testing.assert_array_equal(
        pc.points_as_array(packed, ["z", "x"]), np.stack([columns["z"], columns["x"]], axis=1)
    )
    kept = pc.points_as_array(packed, ["x", "y", "z", "intensity"], drop_non_finite_xyz=True)
    np.testing.assert_array_equal(kept[:, 0], [1.0, 4.0])  # intensity NaN is not an xyz value
    with pytest.raises(pc.ColumnShapeError, match="extra_columns"):
        pc.points_as_array(packed, ["x"], extra_columns=-1)
    with pytest.raises(pc.FieldCountError, match="scalar fields only"):
        pc.points_as_array(pc.pack_points({"x": np.zeros((2, 3), np.float32)}), ["x"])


def test_packed_data_is_a_read_only_view_of_the_records() -> None:
    packed = pc.pack_points(
        {"x": np.array([1.5, 2.5], np.float32), "ring": np.array([3, 4], np.uint16)}
    )
    assert isinstance(packed.data, memoryview) and packed.data.readonly
    assert bytes(packed.data) == struct.pack("<fHfH", 1.5, 3, 2.5, 4)
    assert packed == replace(packed)  # compared by value


def test_all_finite() -> None:
    assert pc.all_finite(np.zeros((3, 4), np.float32))
    assert pc.all_finite(np.zeros(0, np.float32))
    assert pc.all_finite(np.array([1, 2], np.int64))
    for bad in (np.nan, np.inf, -np.inf):
        values = np.ones((5, 4), np.float32)
        values[3, 2] = bad
        assert not pc.all_finite(values)
        assert not pc.all_finite(values[:, 1:])  # strided
    # finite values whose sum overflows float32 are still finite
    assert pc.all_finite(np.full(4, 3e38, np.float32))


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("layout", ["xyzi", "with_ring", "float64_and_float32"])
def test_is_dense_says_whether_any_float_is_nan_or_inf(layout: str, bigendian: bool) -> None:
    columns: dict[str, np.ndarray] = {n: np.ones(5, np.float32) for n in ("x", "y", "z", "i")}
    if layout == "with_ring":
        columns["ring"] = np.arange(5, dtype=np.uint16)
    elif layout == "float64_and_float32":
        columns["t"] = np.ones(5, np.float64)
    assert pc.pack_points(columns, bigendian=bigendian).is_dense
    for bad in (np.nan, np.inf, -np.inf):
        for name in columns:
            if columns[name].dtype.kind != "f":
                continue
            spoiled = {**columns, name: columns[name].copy()}
            spoiled[name][3] = bad
            assert not pc.pack_points(spoiled, bigendian=bigendian).is_dense, (name, bad)
