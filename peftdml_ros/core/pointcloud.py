"""ROS-free PointCloud2 packing and unpacking on plain values.

Nothing here imports ROS. Functions take any object with the attribute names of
`sensor_msgs/msg/PointCloud2` (height, width, fields, is_bigendian, point_step, row_step, data,
is_dense) whose `fields` have those of `sensor_msgs/msg/PointField` (name, offset, datatype,
count): an rclpy message, a rosbags message and a `PackedCloud` all work (duck typing).

- `pack_points(columns)` writes columns of any PointField dtype into a `PackedCloud` whose
  attributes map one to one onto a PointCloud2 (the bag writer and the ROS layer copy them over).
  Each column is written once, straight into the record buffer that `data` exposes (no
  intermediate bytes object), so a message costs that write plus its own copy of the buffer.
- `unpack_points(msg, wanted)` returns one numpy column per field without per-point Python
  loops: a zero-copy strided view into `msg.data` when the rows are not padded (one copy of the
  wanted fields otherwise). `structured_view(msg)` gives the raw [height, width] structured view.
- `points_as_array(msg, fields)` stacks fields into one [N, F] array (one pass over the points:
  fields of one dtype at evenly spaced offsets, such as x, y, z, intensity, are read as one
  strided [N, F] view and copied in one go).
- `finite_mask` / `drop_non_finite` remove NaN/inf points (drivers mark missing returns so).

Every malformed layout raises a `PointCloudError` subclass (an `InputDataError`) that names the
field or the sizes involved. Views into `msg.data` are read-only when `data` is `bytes`; copy
before writing to them.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from peftdml_ros.core.errors import InputDataError

AnyArray = npt.NDArray[Any]

# sensor_msgs/msg/PointField datatype constants.
INT8 = 1
UINT8 = 2
INT16 = 3
UINT16 = 4
INT32 = 5
UINT32 = 6
FLOAT32 = 7
FLOAT64 = 8

# datatype -> numpy dtype (byte order applied per message, see `field_dtype`).
DATATYPE_TO_DTYPE: dict[int, np.dtype[Any]] = {
    INT8: np.dtype(np.int8),
    UINT8: np.dtype(np.uint8),
    INT16: np.dtype(np.int16),
    UINT16: np.dtype(np.uint16),
    INT32: np.dtype(np.int32),
    UINT32: np.dtype(np.uint32),
    FLOAT32: np.dtype(np.float32),
    FLOAT64: np.dtype(np.float64),
}
# numpy (kind, itemsize) -> datatype; byte order does not matter here.
_DTYPE_TO_DATATYPE: dict[tuple[str, int], int] = {
    (dt.kind, dt.itemsize): code for code, dt in DATATYPE_TO_DTYPE.items()
}

# A bound that keeps a corrupt header (say width = 2**31) from allocating gigabytes. A 128-beam
# spinning LiDAR gives about 260k points per sweep; raise it for dense accumulated maps.
DEFAULT_MAX_POINTS = 4_000_000
XYZ: tuple[str, str, str] = ("x", "y", "z")


class PointCloudError(InputDataError):
    """A point cloud message cannot be unpacked (or columns cannot be packed)."""


class UnknownDatatypeError(PointCloudError):
    """A PointField datatype is not one of INT8..FLOAT64 (1..8)."""


class FieldCountError(PointCloudError):
    """A PointField count is below 1."""


class DuplicateFieldError(PointCloudError):
    """Two PointFields have the same name."""


class OverlappingFieldsError(PointCloudError):
    """Two PointFields share bytes of a point."""


class PointStepError(PointCloudError):
    """point_step is smaller than the bytes its fields need."""


class RowStepError(PointCloudError):
    """row_step is smaller than width x point_step."""


class DataLengthError(PointCloudError):
    """len(data) is not height x row_step."""


class MissingFieldError(PointCloudError):
    """A wanted or required field (x, y, z by default) is not in the message."""


class EmptyCloudError(PointCloudError):
    """The cloud has no points and the caller asked for at least one."""


class CloudTooLargeError(PointCloudError):
    """The cloud has more points than the configured maximum."""


class UnsupportedDtypeError(PointCloudError):
    """A column to pack has a dtype that no PointField datatype can hold."""


class ColumnShapeError(PointCloudError):
    """Columns to pack have different lengths or more than two dimensions."""


class FieldLike(Protocol):
    """The attributes of sensor_msgs/msg/PointField that are read here."""

    @property
    def name(self) -> str: ...
    @property
    def offset(self) -> int: ...
    @property
    def datatype(self) -> int: ...
    @property
    def count(self) -> int: ...


class CloudLike(Protocol):
    """The attributes of sensor_msgs/msg/PointCloud2 that are read here."""

    @property
    def height(self) -> int: ...
    @property
    def width(self) -> int: ...
    @property
    def fields(self) -> Sequence[Any]: ...
    @property
    def is_bigendian(self) -> bool: ...
    @property
    def point_step(self) -> int: ...
    @property
    def row_step(self) -> int: ...
    @property
    def data(self) -> Any: ...


class PackedField(NamedTuple):
    """A PointField as plain values: (name, offset in bytes, datatype, count)."""

    name: str
    offset: int
    datatype: int
    count: int  # type: ignore[assignment]  # PointField's name; shadows tuple.count


@dataclass(frozen=True)
class PackedCloud:
    """A PointCloud2 body as plain values; the attribute names are those of the message.

    data: height x row_step bytes; row_step = width x point_step (no row padding is written).
    `pack_points` gives a read-only memoryview of its record buffer (no copy); any bytes-like
    object works (np.frombuffer, array.frombytes and bytes() all take it).
    """

    height: int
    width: int
    fields: tuple[PackedField, ...]
    is_bigendian: bool
    point_step: int
    row_step: int
    data: bytes | memoryview
    is_dense: bool

    @property
    def num_points(self) -> int:
        return self.height * self.width


def datatype_for(dtype: npt.DTypeLike) -> int:
    """The PointField datatype that holds `dtype` (byte order ignored)."""
    dt = np.dtype(dtype)
    code = _DTYPE_TO_DATATYPE.get((dt.kind, dt.itemsize))
    if code is None or dt.kind not in "iuf":
        raise UnsupportedDtypeError(
            f"dtype {dt} has no PointField datatype; cast the column to one of int8, uint8, "
            "int16, uint16, int32, uint32, float32 or float64"
        )
    return code


def field_dtype(datatype: int, *, bigendian: bool) -> np.dtype[Any]:
    """The numpy dtype of one element of a field with this datatype and byte order."""
    base = DATATYPE_TO_DTYPE.get(datatype)
    if base is None:
        raise UnknownDatatypeError(
            f"PointField datatype {datatype} is unknown; valid ones are 1..8 "
            "(INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64)"
        )
    return base.newbyteorder(">" if bigendian else "<")


# --------------------------------------------------------------------------------------- packing


def pack_points(
    columns: Mapping[str, npt.ArrayLike], *, height: int = 1, bigendian: bool = False
) -> PackedCloud:
    """Pack columns into one PointCloud2 body; fields follow the mapping's order, unpadded.

    columns: name -> [N] (count 1) or [N, C] (count C) array of an integer or float dtype that
    a PointField can hold (int64, bool and float16 are refused: cast them first).
    height: rows of an organized cloud (N must be a multiple of it); 1 for an unorganized one.
    """
    if not columns:
        raise ColumnShapeError("no columns to pack; give at least one, e.g. {'x': ..., 'y': ...}")
    arrays = {name: np.asarray(values) for name, values in columns.items()}
    num_points = _common_length(arrays)
    if height < 1 or num_points % height != 0:
        raise ColumnShapeError(
            f"height {height} does not divide the {num_points} points; use a divisor (1 for an "
            "unorganized cloud)"
        )
    fields: list[PackedField] = []
    offset = 0
    for name, values in arrays.items():
        count = 1 if values.ndim == 1 else int(values.shape[1])
        if count < 1:
            raise ColumnShapeError(
                f"column {name!r} has shape {values.shape}; give [N] or [N, C>0]"
            )
        datatype = datatype_for(values.dtype)
        fields.append(PackedField(name, offset, datatype, count))
        offset += DATATYPE_TO_DTYPE[datatype].itemsize * count
    point_step = offset
    record = _structured_dtype(tuple(fields), point_step, bigendian=bigendian)
    packed = np.empty(num_points, dtype=record)
    for name, values in arrays.items():
        packed[name] = values  # numpy converts byte order here, per column, without a loop
    width = num_points // height
    buffer = packed.view(np.uint8).reshape(-1)
    buffer.flags.writeable = False  # the cloud is a value: nobody writes through `data`
    return PackedCloud(
        height=height,
        width=width,
        fields=tuple(fields),
        is_bigendian=bigendian,
        point_step=point_step,
        row_step=width * point_step,
        data=buffer.data,  # a memoryview of the records: no copy
        is_dense=_dense(packed, tuple(fields), arrays, bigendian=bigendian),
    )


def _common_length(arrays: Mapping[str, AnyArray]) -> int:
    lengths = set()
    for name, values in arrays.items():
        if values.ndim not in (1, 2):
            raise ColumnShapeError(f"column {name!r} has shape {values.shape}; give [N] or [N, C]")
        lengths.add(int(values.shape[0]))
    if len(lengths) != 1:
        sizes = {name: int(v.shape[0]) for name, v in arrays.items()}
        raise ColumnShapeError(f"columns differ in length {sizes}; give every column N rows")
    return lengths.pop()


def _dense(
    records: AnyArray,
    fields: tuple[PackedField, ...],
    columns: Mapping[str, AnyArray],
    *,
    bigendian: bool,
) -> bool:
    """True when no float value of the cloud is NaN or inf (PointCloud2.is_dense).

    When every byte of a record is a float of one type (x, y, z, intensity), the packed buffer
    is checked in one contiguous pass; otherwise the columns as given, one by one.
    """
    datatypes = {f.datatype for f in fields}
    point_step = records.dtype.itemsize
    if len(datatypes) == 1 and point_step == sum(_field_bytes(f) for f in fields):
        element = field_dtype(fields[0].datatype, bigendian=bigendian)
        return all_finite(records.view(element))
    return all(all_finite(values) for values in columns.values())


def all_finite(values: AnyArray) -> bool:
    """True when no element is NaN or +-inf (integer arrays always are finite).

    One flat reduction: far cheaper than the per-row mask (`.all(axis=1)`), which is only
    needed once some value is known not to be finite.
    """
    if values.dtype.kind != "f":
        return True
    return bool(np.isfinite(values).all())


# ------------------------------------------------------------------------------------- unpacking


def cloud_fields(msg: CloudLike) -> tuple[PackedField, ...]:
    """The message's fields as plain values, checked for names, datatypes, counts and overlap."""
    return _layout_of(msg).fields


def _layout_of(msg: CloudLike) -> _FieldsLayout:
    # The raw attribute values are the cache key (equal ints hash alike whatever their type);
    # they are converted to plain str / int once per layout, inside the cache.
    return _fields_layout(tuple((f.name, f.offset, f.datatype, f.count) for f in msg.fields))


@dataclass(frozen=True)
class _FieldsLayout:
    """Checked fields of one layout, with what the size checks and lookups need."""

    fields: tuple[PackedField, ...]
    by_name: Mapping[str, PackedField]
    needed_bytes: int  # where the last field ends: point_step must be at least this
    last_field: str  # the field that ends there


@lru_cache(maxsize=256)
def _fields_layout(raw: tuple[tuple[Any, Any, Any, Any], ...]) -> _FieldsLayout:
    """Check a field list once per layout (a driver sends the same one every sweep, and these
    checks cost more than reading a small radar cloud); a bad layout raises every time."""
    fields = tuple(PackedField(str(n), int(o), int(d), int(c)) for n, o, d, c in raw)
    seen: set[str] = set()
    for f in fields:
        if f.name in seen:
            raise DuplicateFieldError(f"field {f.name!r} appears twice; fix the publisher")
        seen.add(f.name)
        field_dtype(f.datatype, bigendian=False)  # raises UnknownDatatypeError
        if f.count < 1:
            raise FieldCountError(
                f"field {f.name!r} has count {f.count}; PointField.count must be >= 1 "
                "(1 for a scalar field)"
            )
        if f.offset < 0:
            raise PointStepError(f"field {f.name!r} has a negative offset {f.offset}")
    spans = sorted((f.offset, f.offset + _field_bytes(f), f.name) for f in fields)
    for (_, end, name), (start, _, next_name) in itertools.pairwise(spans):
        if start < end:
            raise OverlappingFieldsError(
                f"fields {name!r} and {next_name!r} overlap (bytes {start}..{end}); "
                "fix the offsets in the publisher"
            )
    last = max(spans, key=lambda span: span[1], default=(0, 0, ""))
    return _FieldsLayout(fields, {f.name: f for f in fields}, last[1], last[2])


def _field_bytes(f: PackedField) -> int:
    return DATATYPE_TO_DTYPE[f.datatype].itemsize * f.count


@lru_cache(maxsize=256)
def _structured_dtype(
    fields: tuple[PackedField, ...], point_step: int, *, bigendian: bool
) -> np.dtype[Any]:
    """The record dtype of a layout (cached: a driver sends the same layout every sweep, and
    building a structured dtype costs more than viewing a small radar cloud through it)."""
    formats: list[Any] = []
    for f in fields:
        element = field_dtype(f.datatype, bigendian=bigendian)
        formats.append(element if f.count == 1 else (element, (f.count,)))
    return np.dtype(
        {
            "names": [f.name for f in fields],
            "formats": formats,
            "offsets": [f.offset for f in fields],
            "itemsize": point_step,
        }
    )


def check_layout(
    msg: CloudLike, *, max_points: int = DEFAULT_MAX_POINTS
) -> tuple[PackedField, ...]:
    """Validate the sizes of a cloud message and return its fields; raise a PointCloudError."""
    return _checked(msg, max_points).fields


def _checked(msg: CloudLike, max_points: int) -> _FieldsLayout:
    layout = _layout_of(msg)
    height, width = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    if height < 0 or width < 0:
        raise DataLengthError(f"height {height} and width {width} must be >= 0")
    if height * width > max_points:
        raise CloudTooLargeError(
            f"cloud has {height} x {width} = {height * width} points, more than max_points "
            f"{max_points}; raise max_points if such clouds are expected, else the header is "
            "corrupt"
        )
    needed = layout.needed_bytes
    if point_step < needed:
        raise PointStepError(
            f"point_step {point_step} is smaller than the {needed} bytes its fields need "
            f"(field {layout.last_field!r} ends at byte {needed}); fix point_step or the offsets"
        )
    if row_step < width * point_step:
        raise RowStepError(
            f"row_step {row_step} is smaller than width {width} x point_step {point_step} = "
            f"{width * point_step}; fix row_step in the publisher"
        )
    data_len = _data_length(msg.data)
    if data_len != height * row_step:
        raise DataLengthError(
            f"data has {data_len} bytes but height {height} x row_step {row_step} = "
            f"{height * row_step}; the message is truncated or its header is wrong"
        )
    return layout


def _data_length(data: Any) -> int:
    if isinstance(data, list | tuple):
        return len(data)
    return int(memoryview(data).nbytes)


def _as_bytes_array(data: Any) -> npt.NDArray[np.uint8]:
    """The message data as a 1-D uint8 array; zero-copy for any buffer (bytes, array, ndarray)."""
    if isinstance(data, list | tuple):
        return np.asarray(data, dtype=np.uint8)  # a plain list has no buffer to share
    return np.frombuffer(data, dtype=np.uint8)


def structured_view(
    msg: CloudLike,
    wanted: Sequence[str] | None = None,
    *,
    max_points: int = DEFAULT_MAX_POINTS,
) -> AnyArray:
    """[height, width] structured array over `msg.data` (zero-copy, row padding skipped).

    Only `wanted` fields (all when None) are in the dtype; the others stay in the bytes.
    """
    layout = _checked(msg, max_points)
    return _view(msg, _choose(layout, wanted))


def _view(msg: CloudLike, chosen: Sequence[PackedField]) -> AnyArray:
    height, width = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    record = _structured_dtype(tuple(chosen), point_step, bigendian=bool(msg.is_bigendian))
    if height * width == 0:
        return np.zeros((height, width), dtype=record)
    raw = _as_bytes_array(msg.data).reshape(height, row_step)[:, : width * point_step]
    # The last axis is contiguous, so viewing it as records keeps the row stride (row_step).
    return raw.view(record)


def _choose(layout: _FieldsLayout, wanted: Sequence[str] | None) -> list[PackedField]:
    if wanted is None:
        return list(layout.fields)
    by_name = layout.by_name
    missing = [name for name in wanted if name not in by_name]
    if missing:
        raise MissingFieldError(
            f"cloud has no field(s) {missing}; it has {list(by_name)}; check the "
            "topic or the wanted field names"
        )
    return [by_name[name] for name in wanted]


def unpack_points(
    msg: CloudLike,
    wanted: Sequence[str] | None = None,
    *,
    required: Sequence[str] = XYZ,
    max_points: int = DEFAULT_MAX_POINTS,
    allow_empty: bool = True,
) -> dict[str, AnyArray]:
    """Columns of a cloud: name -> [N] (count 1) or [N, count], N = height x width.

    Zero-copy views when rows are unpadded (row_step == width x point_step); otherwise one copy
    of the wanted fields. Values keep the message's datatype and byte order.
    wanted: field names to return (all when None). required: names that must exist (x, y, z by
    default; pass () for clouds without coordinates). An empty cloud gives empty columns, since
    radars publish one when they see nothing; allow_empty=False raises EmptyCloudError instead.
    """
    layout = _checked(msg, max_points)
    view = _view(msg, _choose(layout, wanted))
    missing = [name for name in required if name not in layout.by_name]
    if missing:
        raise MissingFieldError(
            f"cloud lacks required field(s) {missing}; it has {list(layout.by_name)}"
        )
    if view.size == 0 and not allow_empty:
        raise EmptyCloudError("cloud has no points (height x width = 0)")
    flat = view.reshape(-1)  # a view when rows are unpadded, a copy of the wanted fields otherwise
    return {name: flat[name] for name in view.dtype.names or ()}


def points_as_array(
    msg: CloudLike,
    fields: Sequence[str] = XYZ,
    *,
    dtype: npt.DTypeLike = np.float32,
    max_points: int = DEFAULT_MAX_POINTS,
    drop_non_finite_xyz: bool = False,
    extra_columns: int = 0,
) -> AnyArray:
    """[N, F + extra_columns] array of the named scalar fields in `dtype` (one copy, native
    byte order); the extra columns, room for the caller's own channels, are zero.

    Fields of one datatype at evenly spaced offsets (x, y, z, intensity of most drivers) are
    read through one strided [N, F] view in a single pass; others column by column.
    drop_non_finite_xyz: drop the points whose x, y or z is NaN or inf (when those are in
    `fields`), as drivers mark missing returns.
    """
    if extra_columns < 0:
        raise ColumnShapeError(f"extra_columns {extra_columns} must be >= 0")
    chosen = _choose(_checked(msg, max_points), fields)
    for f in chosen:
        if f.count != 1:
            raise FieldCountError(
                f"field {f.name!r} has count {f.count}; points_as_array stacks "
                "scalar fields only, use unpack_points for it"
            )
    height, width = int(msg.height), int(msg.width)
    out = np.empty((height * width, len(chosen) + extra_columns), dtype=dtype)
    out[:, len(chosen) :] = 0
    if out.shape[0] and chosen:
        strided = _uniform_view(msg, chosen)
        if strided is not None:
            out[:, : len(chosen)].reshape(height, width, len(chosen))[...] = strided
        else:
            columns = unpack_points(msg, fields, required=(), max_points=max_points)
            for i, name in enumerate(fields):
                out[:, i] = columns[name]
    if drop_non_finite_xyz:
        xyz_cols = [i for i, name in enumerate(fields) if name in XYZ]
        if xyz_cols and not all_finite(out[:, xyz_cols]):
            out = out[np.isfinite(out[:, xyz_cols]).all(axis=1)]
    return out


def _uniform_view(msg: CloudLike, chosen: Sequence[PackedField]) -> AnyArray | None:
    """[height, width, F] zero-copy view of scalar fields that share a datatype and sit at
    evenly spaced offsets in that order (offset_i = offset_0 + i x step); None otherwise."""
    datatypes = {f.datatype for f in chosen}
    if len(datatypes) != 1:
        return None
    element = field_dtype(chosen[0].datatype, bigendian=bool(msg.is_bigendian))
    first = chosen[0].offset
    step = chosen[1].offset - first if len(chosen) > 1 else element.itemsize
    if step <= 0 or any(f.offset != first + i * step for i, f in enumerate(chosen)):
        return None
    height, width = int(msg.height), int(msg.width)
    return np.ndarray(
        shape=(height, width, len(chosen)),
        dtype=element,
        buffer=_as_bytes_array(msg.data),
        offset=first,
        strides=(int(msg.row_step), int(msg.point_step), step),
    )


def _num_rows(columns: Mapping[str, AnyArray]) -> int:
    return int(next(iter(columns.values())).shape[0]) if columns else 0


def finite_mask(columns: Mapping[str, AnyArray], fields: Sequence[str] = XYZ) -> AnyArray:
    """[N] bool: True where every named column is finite (not NaN, not +-inf)."""
    mask = np.ones(_num_rows(columns), dtype=bool)
    for name in fields:
        values = columns[name]
        if values.dtype.kind == "f":
            finite = np.isfinite(values)
            mask &= finite if finite.ndim == 1 else finite.all(axis=1)
    return mask


def drop_non_finite(
    columns: Mapping[str, AnyArray], fields: Sequence[str] = XYZ
) -> dict[str, AnyArray]:
    """Copies of the columns without the points whose named fields are NaN or inf."""
    mask = finite_mask(columns, fields)
    return {name: values[mask] for name, values in columns.items()}
