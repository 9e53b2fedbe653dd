"""peftdml_node parameters: declaration from the JSON schema, validation, run-time changes.

Three sources, each with one job:
  - `config/peftdml.yaml` holds every default (and nothing else does: parameters are declared
    without a value, so a missing one stops the node with a message naming it);
  - `config/peftdml.schema.json` holds types, ranges, descriptions and which parameters may
    change at run time (`"x-runtime": true`); descriptors and the docs table come from it;
  - this module turns the flat ROS parameters into a typed `NodeConfig`, checking the schema
    and the cross-field rules (reference sensor in the rig, cameras with a CameraInfo topic...).

The rig is dynamic: `sensors.names` is declared first, then `sensors.<name>.*` for each name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.exceptions import (
    InvalidParameterTypeException,
    InvalidParameterValueException,
    ParameterUninitializedException,
)
from rclpy.node import Node
from rclpy.parameter import Parameter

from peftdml_ros.core.errors import ConfigError
from peftdml_ros.core.types import Modality

PACKAGE_NAME = "peftdml_ros"
SCHEMA_FILE = "peftdml.schema.json"
PARAMS_FILE = "peftdml.yaml"

_TYPES: dict[str, Parameter.Type] = {
    "string": Parameter.Type.STRING,
    "number": Parameter.Type.DOUBLE,
    "integer": Parameter.Type.INTEGER,
    "boolean": Parameter.Type.BOOL,
    "array": Parameter.Type.STRING_ARRAY,  # the schema only has arrays of strings
}
_SENSOR_KEYS_BY_MODALITY: dict[Modality, tuple[str, ...]] = {
    Modality.CAMERA: ("modality", "topic", "frame_id", "camera_info_topic", "compressed"),
}
_SENSOR_KEYS = ("modality", "topic", "frame_id")


class MissingParameterError(ConfigError):
    """A required parameter has no value (the parameters file was not passed, or lacks it)."""


# Sensor names become parameter namespaces (sensors.<name>.*); the schema has the same pattern.
SENSOR_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


class InvalidParameterError(ConfigError):
    """A parameter value has the wrong type, is out of range or contradicts another one."""


@dataclass(frozen=True)
class SensorSpec:
    """One configured sensor: name (used in frames and diagnostics), topic, sensor frame."""

    name: str
    modality: Modality
    topic: str
    frame_id: str
    camera_info_topic: str = ""
    compressed: bool = True


@dataclass(frozen=True)
class NodeConfig:
    """Every parameter of the node, checked. Times in seconds (`_s`) as the parameters are."""

    output_frame: str
    reference_sensor: str
    fallback_order: tuple[Modality, ...]
    qos_reliable: bool
    qos_depth: int
    slop_s: dict[Modality, float]
    deadline_s: float
    sensor_timeout_s: float
    imu_window_s: float
    reference_timeout_s: float
    gnss_staleness_s: float
    buffer_size: int
    steady_deadline_s: float
    jump_back_threshold_s: float
    max_stamp_age_s: float
    max_stamp_future_s: float
    max_points: int
    max_image_pixels: int
    camera_decode_reduction: int
    warn_throttle_s: float
    backend: str
    device: str
    model_path: str
    score_threshold: float
    nms_iou_threshold: float
    max_detections: int
    precision: str
    build_only: bool
    skip_inference_without_subscribers: bool
    diagnostics_period_s: float
    health_warn_percentile: float
    health_error_percentile: float
    sensors: tuple[SensorSpec, ...]

    def sensor(self, name: str) -> SensorSpec:
        for spec in self.sensors:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def by_modality(self, modality: Modality) -> tuple[SensorSpec, ...]:
        return tuple(s for s in self.sensors if s.modality == modality)


@dataclass(frozen=True)
class ParamSpec:
    """One leaf of the schema as a ROS parameter."""

    name: str  # dotted ROS name, e.g. "sync.slop_s"
    json_type: str
    description: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False
    choices: tuple[Any, ...] = ()
    runtime: bool = False

    @property
    def ros_type(self) -> Parameter.Type:
        return _TYPES[self.json_type]


# ----------------------------------------------------------------------------------- the schema


def config_dir() -> Path:
    """The package's config directory: the source tree's, else the installed share directory."""
    source = Path(__file__).resolve().parents[2] / "config"
    if (source / SCHEMA_FILE).is_file():
        return source
    try:
        from ament_index_python.packages import get_package_share_directory
    except ImportError as error:  # pragma: no cover - ament_index_python ships with rclpy
        raise ConfigError(f"cannot find {SCHEMA_FILE}: {error}") from error
    share = Path(get_package_share_directory(PACKAGE_NAME)) / "config"
    if not (share / SCHEMA_FILE).is_file():
        raise ConfigError(f"{share / SCHEMA_FILE} is missing; reinstall {PACKAGE_NAME}")
    return share


def default_params_file() -> Path:
    return config_dir() / PARAMS_FILE


# detector.model_path values that select the core's default model with untrained weights.
UNTRAINED_MODEL_VALUES = ("", "untrained")


def resolve_model_path(value: str) -> str:
    """The artifact `detector.model_path` names ("" for the untrained default model).

    "" or "untrained": the untrained default model (the node says so loudly). An absolute path,
    or one that exists relative to the working directory, is used as given; any other relative
    path is looked up in the package (the source tree, else the installed share directory),
    where the shipped models live (`models/...`).
    """
    if value in UNTRAINED_MODEL_VALUES:
        return ""
    path = Path(value).expanduser()
    if path.is_absolute() or path.exists():
        return str(path)
    packaged = config_dir().parent / path
    if packaged.exists():
        return str(packaged)
    raise ConfigError(
        f"detector.model_path {value!r} is neither a file (relative to the working directory "
        f"{Path.cwd()}) nor one of this package's files ({packaged}); give the path of a "
        "checkpoint, ONNX file or engine, or 'untrained' for the untrained default model"
    )


@cache
def load_schema() -> dict[str, Any]:
    path = config_dir() / SCHEMA_FILE
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def _leaf(name: str, node: Mapping[str, Any]) -> ParamSpec:
    # an array's allowed values are those of its items
    enum = tuple(node.get("enum", node.get("items", {}).get("enum", ())))
    return ParamSpec(
        name=name,
        json_type=str(node["type"]),
        description=str(node.get("description", "")),
        minimum=node.get("minimum", node.get("exclusiveMinimum")),
        maximum=node.get("maximum", node.get("exclusiveMaximum")),
        exclusive_minimum="exclusiveMinimum" in node,
        exclusive_maximum="exclusiveMaximum" in node,
        choices=enum,
        runtime=bool(node.get("x-runtime", False)),
    )


def fixed_parameters(schema: Mapping[str, Any] | None = None) -> list[ParamSpec]:
    """The schema's leaves outside the per-sensor part, in schema order (sensors.names last)."""
    schema = load_schema() if schema is None else schema
    specs: list[ParamSpec] = []

    def walk(prefix: str, node: Mapping[str, Any]) -> None:
        for key, child in node["properties"].items():
            name = f"{prefix}{key}"
            if child.get("type") == "object" and key != "sensors":
                walk(f"{name}.", child)
            elif key == "sensors":
                specs.append(_leaf("sensors.names", child["properties"]["names"]))
            else:
                specs.append(_leaf(name, child))

    walk("", schema)
    return specs


def sensor_parameters(
    name: str, modality: Modality | None, schema: Mapping[str, Any] | None = None
) -> list[ParamSpec]:
    """`sensors.<name>.*` for a sensor of this modality (just `modality` when None)."""
    schema = load_schema() if schema is None else schema
    props = schema["$defs"]["sensor"]["properties"]
    if modality is None:
        keys: tuple[str, ...] = ("modality",)
    else:
        keys = _SENSOR_KEYS_BY_MODALITY.get(modality, _SENSOR_KEYS)
    return [_leaf(f"sensors.{name}.{key}", props[key]) for key in keys]


def descriptor_for(spec: ParamSpec) -> ParameterDescriptor:
    """A ParameterDescriptor with the schema's description and range.

    Descriptor ranges are inclusive; an exclusive bound of the schema is given inclusively here
    and the bound value itself is refused by the schema check.
    """
    text = spec.description
    if spec.choices:
        text += f" One of {list(spec.choices)}."
    descriptor = ParameterDescriptor(
        name=spec.name, type=int(spec.ros_type), description=text, read_only=not spec.runtime
    )
    if spec.minimum is not None and spec.maximum is not None and not spec.choices:
        if spec.json_type == "number":
            descriptor.floating_point_range = [
                FloatingPointRange(
                    from_value=float(spec.minimum), to_value=float(spec.maximum), step=0.0
                )
            ]
        elif spec.json_type == "integer":
            descriptor.integer_range = [
                IntegerRange(from_value=int(spec.minimum), to_value=int(spec.maximum), step=1)
            ]
    return descriptor


# ----------------------------------------------------------------------------- declare and read


def _declare(node: Node, spec: ParamSpec, missing: list[str]) -> Any:
    try:
        node.declare_parameter(spec.name, spec.ros_type, descriptor_for(spec))
        return node.get_parameter(spec.name).value
    except ParameterUninitializedException:
        missing.append(spec.name)
        return None
    except InvalidParameterTypeException as error:
        raise InvalidParameterError(
            f"parameter {spec.name!r} must be a {spec.json_type} "
            f"({'write 1.0, not 1' if spec.json_type == 'number' else 'check the YAML'}): "
            f"{error}"
        ) from error
    except InvalidParameterValueException as error:
        raise InvalidParameterError(
            f"parameter {spec.name!r} is out of range [{spec.minimum}, {spec.maximum}]: {error}"
        ) from error


def declare_parameters(node: Node) -> NodeConfig:
    """Declare every parameter on `node` (fixed ones, then the rig's), read and check them.

    Raises MissingParameterError naming every parameter without a value, or
    InvalidParameterError for a wrong type, range or cross-field rule.
    """
    return config_from_flat(declare_values(node))


def declare_values(node: Node) -> dict[str, Any]:
    """Declare every parameter on `node` and return {dotted name: value}, not yet checked
    against the schema and the cross-field rules (a managed node checks them at configure).

    Raises MissingParameterError naming every parameter without a value, or
    InvalidParameterError for a wrong type or range (the parameter interface needs those).
    """
    missing: list[str] = []
    flat: dict[str, Any] = {}
    for spec in fixed_parameters():
        flat[spec.name] = _declare(node, spec, missing)
    names = flat.get("sensors.names") or []
    _check_sensor_names(names)  # before declaring sensors.<name>.*, which a bad name would break
    for name in names:
        (modality_spec,) = sensor_parameters(name, None)
        value = _declare(node, modality_spec, missing)
        flat[modality_spec.name] = value
        modality = _modality(name, value) if value is not None else None
        if modality is None:
            continue
        for spec in sensor_parameters(name, modality)[1:]:
            flat[spec.name] = _declare(node, spec, missing)
    if missing:
        raise MissingParameterError(
            f"parameter(s) {missing} have no value; the node takes its defaults from a "
            f"parameters file only: run it with --ros-args --params-file {PARAMS_FILE} "
            f"(the package's is {default_params_file()}) and add any missing entry there"
        )
    return flat


def _modality(name: str, value: Any) -> Modality:
    try:
        return Modality(str(value))
    except ValueError as error:
        raise InvalidParameterError(
            f"sensors.{name}.modality is {value!r}; use one of {[m.value for m in Modality]}"
        ) from error


def flat_values(node: Node) -> dict[str, Any]:
    """The node's current parameters of this schema as {dotted name: value}."""
    out: dict[str, Any] = {}
    for spec in fixed_parameters():
        out[spec.name] = node.get_parameter(spec.name).value
    for name in out["sensors.names"]:
        modality = Modality(node.get_parameter(f"sensors.{name}.modality").value)
        for spec in sensor_parameters(name, modality):
            out[spec.name] = node.get_parameter(spec.name).value
    return out


def to_tree(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"a.b": 1} -> {"a": {"b": 1}}; ROS sequences become lists."""
    tree: dict[str, Any] = {}
    for dotted, value in flat.items():
        parts = dotted.split(".")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        # rclpy hands arrays back as list or array.array; JSON schema wants lists
        node[parts[-1]] = value if isinstance(value, str | bool | int | float) else list(value)
    return tree


# ----------------------------------------------------------------------------------- validation


def validate_tree(tree: Mapping[str, Any]) -> None:
    """jsonschema check of the nested parameters; InvalidParameterError with the first problem."""
    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(tree), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = ".".join(str(p) for p in first.absolute_path) or "(top level)"
        raise InvalidParameterError(f"parameter {where}: {first.message}")


def config_from_flat(flat: Mapping[str, Any]) -> NodeConfig:
    """Check flat parameters against the schema and the cross-field rules; build NodeConfig."""
    tree = to_tree(flat)
    validate_tree(tree)
    sensors = tuple(_sensor_spec(name, tree["sensors"][name]) for name in tree["sensors"]["names"])
    config = NodeConfig(
        output_frame=tree["output_frame"],
        reference_sensor=tree["reference_sensor"],
        fallback_order=tuple(Modality(m) for m in tree["fallback_order"]),
        qos_reliable=tree["qos"]["reliable"],
        qos_depth=tree["qos"]["depth"],
        slop_s={Modality(m): float(v) for m, v in tree["sync"]["slop_s"].items()},
        deadline_s=tree["sync"]["deadline_s"],
        sensor_timeout_s=tree["sync"]["sensor_timeout_s"],
        imu_window_s=tree["sync"]["imu_window_s"],
        reference_timeout_s=tree["sync"]["reference_timeout_s"],
        gnss_staleness_s=tree["sync"]["gnss_staleness_s"],
        buffer_size=tree["sync"]["buffer_size"],
        steady_deadline_s=tree["sync"]["steady_deadline_s"],
        jump_back_threshold_s=tree["sync"]["jump_back_threshold_s"],
        max_stamp_age_s=tree["input"]["max_stamp_age_s"],
        max_stamp_future_s=tree["input"]["max_stamp_future_s"],
        max_points=tree["input"]["max_points"],
        max_image_pixels=tree["input"]["max_image_pixels"],
        camera_decode_reduction=tree["input"]["camera_decode_reduction"],
        warn_throttle_s=tree["input"]["warn_throttle_s"],
        backend=tree["detector"]["backend"],
        device=tree["detector"]["device"],
        model_path=resolve_model_path(tree["detector"]["model_path"]),
        score_threshold=tree["detector"]["score_threshold"],
        nms_iou_threshold=tree["detector"]["nms_iou_threshold"],
        max_detections=tree["detector"]["max_detections"],
        precision=tree["detector"]["precision"],
        build_only=tree["detector"]["build_only"],
        skip_inference_without_subscribers=tree["skip_inference_without_subscribers"],
        diagnostics_period_s=tree["diagnostics_period_s"],
        health_warn_percentile=tree["health_warn_percentile"],
        health_error_percentile=tree["health_error_percentile"],
        sensors=sensors,
    )
    check_rig(config)
    check_time_limits(config)
    return config


def _sensor_spec(name: str, entry: Mapping[str, Any]) -> SensorSpec:
    return SensorSpec(
        name=name,
        modality=Modality(entry["modality"]),
        topic=entry["topic"],
        frame_id=entry["frame_id"],
        camera_info_topic=entry.get("camera_info_topic", ""),
        compressed=entry.get("compressed", True),
    )


def check_time_limits(config: NodeConfig) -> None:
    """The steady-clock bound on a frame's wait must not undercut the node-clock deadline."""
    if config.steady_deadline_s < config.deadline_s:
        raise InvalidParameterError(
            f"sync.steady_deadline_s {config.steady_deadline_s} is below sync.deadline_s "
            f"{config.deadline_s}: on a clock at real speed it would cut every wait short; "
            "raise sync.steady_deadline_s (at least deadline_s / the slowest replay rate)"
        )


def check_rig(config: NodeConfig) -> None:
    """Cross-field rules the schema cannot say."""
    names = [s.name for s in config.sensors]
    if config.reference_sensor not in names:
        raise InvalidParameterError(
            f"reference_sensor {config.reference_sensor!r} is not in sensors.names {names}"
        )
    for modality in (Modality.IMU, Modality.GNSS):
        several = [s.name for s in config.by_modality(modality)]
        if len(several) > 1:
            raise InvalidParameterError(
                f"at most one {modality.value} sensor is supported, got {several}"
            )
    if config.sensor(config.reference_sensor).modality in (Modality.IMU, Modality.GNSS):
        raise InvalidParameterError(
            f"reference_sensor {config.reference_sensor!r} cannot trigger frames (IMU and GNSS "
            "only accompany them); choose a LiDAR, radar or camera"
        )
    for spec in config.sensors:
        if (
            spec.modality in (Modality.LIDAR, Modality.RADAR, Modality.CAMERA)
            and not spec.frame_id
        ):
            raise InvalidParameterError(
                f"sensors.{spec.name}.frame_id is empty; give the sensor frame of /tf_static"
            )
    topics = [s.topic for s in config.sensors]
    doubled = sorted({t for t in topics if topics.count(t) > 1})
    if doubled:
        raise InvalidParameterError(f"topic(s) {doubled} are used by more than one sensor")
    if config.health_error_percentile > config.health_warn_percentile:
        raise InvalidParameterError(
            f"health_error_percentile {config.health_error_percentile} is above "
            f"health_warn_percentile {config.health_warn_percentile}: ERROR must be the rarer "
            "level"
        )


# ------------------------------------------------------------------------------ run-time changes


def _check_sensor_names(names: Sequence[Any]) -> None:
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise InvalidParameterError(f"sensors.names must be a list of strings, got {names!r}")
    duplicates = sorted({n for n in names if list(names).count(n) > 1})
    if duplicates:
        raise InvalidParameterError(
            f"sensors.names lists {duplicates} more than once; give every sensor one entry"
        )
    bad = [n for n in names if not SENSOR_NAME.fullmatch(n) or n == "names"]
    if bad:
        raise InvalidParameterError(
            f"sensor name(s) {bad} are not usable: use letters, digits and _, starting with a "
            "letter (and not 'names')"
        )


class ParameterChangeGuard:
    """The on-set-parameters callback: accepts a change only if the whole config stays valid.

    rclpy already refuses read-only parameters and values outside a descriptor's range; this
    adds the schema's and the cross-field rules, and returns the reason on refusal.
    """

    def __init__(self, node: Node, on_accept: Callable[[NodeConfig], None] | None = None) -> None:
        self._node = node
        # Distros without post-set callbacks (Humble) apply an accepted change from here.
        self._on_accept = on_accept

    def __call__(self, parameters: list[Parameter[Any]]) -> SetParametersResult:
        candidate = flat_values(self._node)
        known = set(candidate)
        for parameter in parameters:
            if parameter.name not in known:
                continue  # not ours (use_sim_time, qos overrides...): rclpy handles those
            candidate[parameter.name] = parameter.value
        try:
            config = config_from_flat(candidate)
        except ConfigError as error:
            return SetParametersResult(successful=False, reason=str(error))
        if self._on_accept is not None:
            self._on_accept(config)
        return SetParametersResult(successful=True, reason="")


# ------------------------------------------------------------------------------------ docs table


def markdown_table(schema: Mapping[str, Any] | None = None) -> str:
    """The parameter table of docs/node.md, generated from the schema."""
    schema = load_schema() if schema is None else schema
    rows = ["| Parameter | Type | Range | Run time | Description |", "|---|---|---|---|---|"]
    sensor_specs = [
        _leaf(f"sensors.<name>.{key}", node)
        for key, node in schema["$defs"]["sensor"]["properties"].items()
    ]
    for spec in [*fixed_parameters(schema), *sensor_specs]:
        rows.append(
            f"| `{spec.name}` | {_type_text(spec)} | {_range_text(spec)} | "
            f"{'yes' if spec.runtime else 'no'} | {_escape(spec.description)} |"
        )
    return "\n".join(rows)


def _escape(text: str) -> str:
    return text.replace("|", "\\|")  # a bare | would end the table cell


def _type_text(spec: ParamSpec) -> str:
    return {"number": "double", "array": "string[]", "boolean": "bool"}.get(
        spec.json_type, spec.json_type
    )


def _range_text(spec: ParamSpec) -> str:
    if spec.choices:
        return ", ".join(f"`{c}`" for c in spec.choices)
    if spec.minimum is not None and spec.maximum is not None:
        left = "(" if spec.exclusive_minimum else "["
        right = ")" if spec.exclusive_maximum else "]"
        return f"{left}{spec.minimum:g}, {spec.maximum:g}{right}"
    return ""
