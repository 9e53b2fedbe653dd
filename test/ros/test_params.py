"""Parameters: the YAML against the schema, declaration on a real rclpy node, run-time changes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from rclpy.node import Node
from rclpy.parameter import Parameter

from peftdml_ros.core.errors import ConfigError
from peftdml_ros.core.types import Modality
from peftdml_ros.ros import params

pytestmark = pytest.mark.ros


def _yaml_params(repo_root: Path) -> dict[str, Any]:
    text = (repo_root / "config" / "peftdml.yaml").read_text()
    loaded: dict[str, Any] = yaml.safe_load(text)["/**"]["ros__parameters"]
    return loaded


def _write_params(tmp_path: Path, tree: dict[str, Any]) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": tree}}))
    return path


def _node(context: Any, params_file: Path, *overrides: str) -> Node:
    args = ["--ros-args", "--params-file", str(params_file)]
    for override in overrides:
        args += ["-p", override]
    return Node("peftdml", context=context, cli_args=args)


def test_default_yaml_follows_the_schema(repo_root: Path) -> None:
    schema = json.loads((repo_root / "config" / "peftdml.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(_yaml_params(repo_root), schema)


def test_every_schema_leaf_has_a_description() -> None:
    specs = params.fixed_parameters() + params.sensor_parameters("X", Modality.CAMERA)
    assert specs
    assert all(spec.description for spec in specs), [s.name for s in specs if not s.description]


def test_declared_values_are_those_of_the_yaml(rclpy_context: Any, repo_root: Path) -> None:
    node = _node(rclpy_context, repo_root / "config" / "peftdml.yaml")
    config = params.declare_parameters(node)
    expected = _yaml_params(repo_root)
    assert config.reference_sensor == expected["reference_sensor"]
    assert config.deadline_s == expected["sync"]["deadline_s"]
    assert config.slop_s[Modality.CAMERA] == expected["sync"]["slop_s"]["camera"]
    assert [s.name for s in config.sensors] == expected["sensors"]["names"]
    camera = config.sensor("CAM_FRONT")
    assert camera.modality is Modality.CAMERA
    assert camera.camera_info_topic == expected["sensors"]["CAM_FRONT"]["camera_info_topic"]
    assert len(config.by_modality(Modality.RADAR)) == 5
    descriptor = node.describe_parameter("detector.score_threshold")
    assert descriptor.floating_point_range[0].to_value == 1.0
    assert not descriptor.read_only
    assert node.describe_parameter("detector.backend").read_only
    node.destroy_node()


def test_a_missing_parameter_is_named(rclpy_context: Any, tmp_path: Path, repo_root: Path) -> None:
    tree = _yaml_params(repo_root)
    del tree["sync"]["deadline_s"]
    del tree["sensors"]["CAM_BACK"]["camera_info_topic"]
    node = _node(rclpy_context, _write_params(tmp_path, tree))
    with pytest.raises(params.MissingParameterError, match=r"sync\.deadline_s.*CAM_BACK"):
        params.declare_parameters(node)
    node.destroy_node()


@pytest.mark.parametrize(
    ("names", "match"),
    [(["LIDAR_TOP", "IMU", "IMU"], r"\['IMU'\] more than once"), (["LIDAR TOP"], "not usable")],
)
def test_bad_sensor_names_are_a_configuration_error(
    rclpy_context: Any, tmp_path: Path, repo_root: Path, names: list[str], match: str
) -> None:
    tree = _yaml_params(repo_root)
    tree["sensors"]["names"] = names
    node = _node(rclpy_context, _write_params(tmp_path, tree))
    with pytest.raises(params.InvalidParameterError, match=match):
        params.declare_parameters(node)
    node.destroy_node()


def test_no_parameters_file_says_how_to_run(rclpy_context: Any) -> None:
    node = Node("peftdml", context=rclpy_context)
    with pytest.raises(params.MissingParameterError, match="--params-file"):
        params.declare_parameters(node)
    node.destroy_node()


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("sync.deadline_s:=1", "write 1.0"),  # an integer where a double is declared
        ("detector.score_threshold:=1.5", "out of range"),
        ("reference_sensor:=NOPE", "not in sensors.names"),
        ("reference_sensor:=IMU", "cannot trigger"),
        ("detector.backend:=tensorflow", "backend"),
        ("input.camera_decode_reduction:=3", "camera_decode_reduction"),
        ("sensors.LIDAR_TOP.topic:=/radar/front/points", "more than one sensor"),
    ],
)
def test_bad_values_are_refused_at_start(
    rclpy_context: Any, repo_root: Path, override: str, match: str
) -> None:
    node = _node(rclpy_context, repo_root / "config" / "peftdml.yaml", override)
    with pytest.raises(params.InvalidParameterError, match=match):
        params.declare_parameters(node)
    node.destroy_node()


def test_schema_rules_for_cameras(repo_root: Path) -> None:
    tree = _yaml_params(repo_root)
    del tree["sensors"]["CAM_FRONT"]["camera_info_topic"]
    with pytest.raises(params.InvalidParameterError, match=r"CAM_FRONT.*camera_info_topic"):
        params.validate_tree(tree)
    tree = _yaml_params(repo_root)
    tree["sensors"]["LIDAR_TOP"]["compressed"] = True  # camera-only key on a LiDAR
    with pytest.raises(params.InvalidParameterError, match="LIDAR_TOP"):
        params.validate_tree(tree)


def test_run_time_changes_are_validated(rclpy_context: Any, repo_root: Path) -> None:
    node = _node(rclpy_context, repo_root / "config" / "peftdml.yaml")
    params.declare_parameters(node)
    node.add_on_set_parameters_callback(params.ParameterChangeGuard(node))
    ok = node.set_parameters([Parameter("detector.score_threshold", value=0.55)])
    assert ok[0].successful
    assert node.get_parameter("detector.score_threshold").value == 0.55
    assert node.set_parameters([Parameter("sync.slop_s.lidar", value=0.02)])[0].successful
    out_of_range = node.set_parameters([Parameter("sync.deadline_s", value=5.0)])
    assert not out_of_range[0].successful and "range" in out_of_range[0].reason
    read_only = node.set_parameters([Parameter("detector.backend", value="torch")])
    assert not read_only[0].successful and "read-only" in read_only[0].reason
    assert node.get_parameter("detector.backend").value == "auto"
    node.destroy_node()


def test_docs_parameter_table_is_generated_from_the_schema(repo_root: Path) -> None:
    docs = (repo_root / "docs" / "node.md").read_text()
    assert params.markdown_table() in docs, "regenerate the table: see docs/node.md"


def test_model_path_resolves_the_shipped_model_and_the_untrained_option(
    repo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths must not depend on the working directory
    loaded = yaml.safe_load(params.default_params_file().read_text())["/**"]["ros__parameters"]
    shipped = loaded["detector"]["model_path"]
    resolved = Path(params.resolve_model_path(shipped))
    assert resolved.is_file() and resolved.parent.name == "models"
    assert resolved.with_suffix(".manifest.json").is_file()
    assert params.resolve_model_path("untrained") == params.resolve_model_path("") == ""
    (tmp_path / "mine.onnx").write_bytes(b"")
    assert params.resolve_model_path("mine.onnx") == "mine.onnx"
    with pytest.raises(ConfigError, match="'untrained'"):
        params.resolve_model_path("models/no_such_model.onnx")
