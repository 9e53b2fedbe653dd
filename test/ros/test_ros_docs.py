"""docs/ros.md stays true: its parameter table, topics and launch arguments are the code's."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from peftdml_ros.ros import params

TABLE_START = "<!-- parameter table: generated, do not edit by hand -->\n"
TABLE_END = "<!-- end of parameter table -->"


@pytest.fixture(scope="module")
def docs(repo_root: Path) -> str:
    return (repo_root / "docs" / "ros.md").read_text()


def test_the_parameter_table_is_the_one_generated_from_the_schema(docs: str) -> None:
    table = docs[docs.index(TABLE_START) + len(TABLE_START) : docs.index(TABLE_END)]
    assert table.strip() == params.markdown_table().strip(), (
        "regenerate the table of docs/ros.md: "
        'python3 -c "from peftdml_ros.ros.params import markdown_table; print(markdown_table())"'
    )


def test_every_default_input_topic_is_listed(docs: str, repo_root: Path) -> None:
    tree = yaml.safe_load((repo_root / "config" / "peftdml.yaml").read_text())
    sensors = tree["/**"]["ros__parameters"]["sensors"]
    topics = {
        sensors[name][key]
        for name in sensors["names"]
        for key in ("topic", "camera_info_topic")
        if sensors[name].get(key)
    }
    assert topics
    missing = sorted(topic for topic in topics if f"`{topic}`" not in docs)
    assert not missing, f"input topics not in docs/ros.md: {missing}"


def test_every_output_topic_of_the_node_is_listed(docs: str, repo_root: Path) -> None:
    tree = ast.parse((repo_root / "peftdml_ros" / "ros" / "node.py").read_text())
    published = {
        node.args[1].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "create_publisher"
        and len(node.args) > 1
        and isinstance(node.args[1], ast.Constant)
    }
    assert {"~/detections", "/diagnostics"} <= published
    missing = sorted(topic for topic in published if f"| `{topic}`" not in docs)
    assert not missing, f"output topics not in docs/ros.md: {missing}"


def test_every_launch_argument_is_documented(docs: str, repo_root: Path) -> None:
    tree = ast.parse((repo_root / "launch" / "peftdml.launch.py").read_text())
    declared = {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", "") == "DeclareLaunchArgument"
        and isinstance(node.args[0], ast.Constant)
    }
    documented = set(re.findall(r"^\| `(\w+)` \|", docs, flags=re.MULTILINE))
    assert declared and declared <= documented, f"undocumented: {declared - documented}"
