"""Launch peftdml_node (and optionally RViz) with the package's parameters and Fast DDS profile.

    ros2 launch peftdml_ros peftdml.launch.py
    ros2 launch peftdml_ros peftdml.launch.py use_sim_time:=true model_path:=/models/peftdml.onnx
    ros2 launch peftdml_ros peftdml.launch.py params_file:=my_rig.yaml namespace:=perception

Arguments:
  params_file   parameters YAML (default: the package's config/peftdml.yaml, which holds every
                default; a custom file must be complete, or list the package's file first)
  namespace     namespace of the node (outputs become /<namespace>/peftdml/...)
  use_sim_time  true to follow /clock (bag replay with --clock)
  backend       overrides detector.backend when given (auto, torch, onnxruntime, tensorrt)
  model_path    overrides detector.model_path when given
  rviz          true to start RViz with config/peftdml.rviz (rviz2 is not a dependency of the
                package: install it to use this)
  managed       true to start the managed (lifecycle) node, peftdml_lifecycle_node, instead: it
                waits unconfigured for a lifecycle manager or `ros2 lifecycle set`
  autostart     with managed:=true, true to have the node configure and activate itself at start

The package's config/fastdds_profile.xml (large shared-memory segments) is given to Fast DDS so
that multi-megabyte point clouds and images arrive between processes; it applies when the RMW is
rmw_fastrtps_cpp (the default). Only the variable that the installed Fast DDS reads is set
(FASTDDS_DEFAULT_PROFILES_FILE for Fast DDS 3, Kilted and later; FASTRTPS_DEFAULT_PROFILES_FILE
for Fast DDS 2, Humble and Jazzy) and the other one is unset: given both, Fast DDS 3 loads the
profile twice and prints XMLPARSER errors at every start (peftdml_ros/ros/dds_profile.py).

Defaults of the node's parameters live only in the YAML: `backend` and `model_path` are passed
on only when given, so an empty argument keeps the file's value.
"""

from __future__ import annotations

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import Action, LaunchContext, LaunchDescription
from launch.actions import (
    DeclareLaunchArgument,
    OpaqueFunction,
    SetEnvironmentVariable,
    UnsetEnvironmentVariable,
)
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

try:
    from launch_ros.actions import LifecycleNode
except ImportError:  # a launch_ros without it: the plain action starts the managed node too
    LifecycleNode = None

from peftdml_ros.ros import dds_profile

PACKAGE = "peftdml_ros"


def _dds_profile(profile: Path) -> list[Action]:
    """Set the profile variable the installed Fast DDS reads, unset the other."""
    return [
        UnsetEnvironmentVariable(name) if value is None else SetEnvironmentVariable(name, value)
        for name, value in dds_profile.profile_settings(profile).items()
    ]


def _true(context: LaunchContext, name: str) -> bool:
    return LaunchConfiguration(name).perform(context).lower() == "true"


def _node(context: LaunchContext) -> list[Node]:
    """The node (the managed one with managed:=true), with `backend` / `model_path` overrides
    only when they were given."""
    overrides: dict[str, object] = {"use_sim_time": _true(context, "use_sim_time")}
    backend = LaunchConfiguration("backend").perform(context)
    if backend:
        overrides["detector.backend"] = backend
    model_path = LaunchConfiguration("model_path").perform(context)
    if model_path:
        overrides["detector.model_path"] = model_path
    managed = _true(context, "managed")
    # LifecycleNode lets launch's lifecycle events and handlers address the managed node.
    action = LifecycleNode if managed and LifecycleNode is not None else Node
    return [
        action(
            package=PACKAGE,
            executable="peftdml_lifecycle_node" if managed else "peftdml_node",
            name="peftdml",
            namespace=LaunchConfiguration("namespace").perform(context),
            parameters=[LaunchConfiguration("params_file").perform(context), overrides],
            arguments=["--autostart"] if managed and _true(context, "autostart") else [],
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description() -> LaunchDescription:
    config_dir = Path(get_package_share_directory(PACKAGE)) / "config"
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "params_file",
                default_value=str(config_dir / "peftdml.yaml"),
                description="Parameters YAML of peftdml_node (every default is in the package's)",
            ),
            DeclareLaunchArgument(
                "namespace", default_value="", description="Namespace of the node"
            ),
            DeclareLaunchArgument(
                "use_sim_time",
                default_value="false",
                description="Follow /clock (true for bag replay with --clock)",
            ),
            DeclareLaunchArgument(
                "backend",
                default_value="",
                description="Override detector.backend (auto, torch, onnxruntime, tensorrt)",
            ),
            DeclareLaunchArgument(
                "model_path", default_value="", description="Override detector.model_path"
            ),
            DeclareLaunchArgument(
                "rviz", default_value="false", description="Start RViz with config/peftdml.rviz"
            ),
            DeclareLaunchArgument(
                "managed",
                default_value="false",
                description="Start the managed (lifecycle) node, peftdml_lifecycle_node",
            ),
            DeclareLaunchArgument(
                "autostart",
                default_value="false",
                description="With managed:=true: configure and activate the node at start",
            ),
            *_dds_profile(config_dir / "fastdds_profile.xml"),
            OpaqueFunction(function=_node),
            Node(
                package="rviz2",
                executable="rviz2",
                name="rviz2",
                arguments=["-d", str(config_dir / "peftdml.rviz")],
                parameters=[{"use_sim_time": LaunchConfiguration("use_sim_time")}],
                condition=IfCondition(LaunchConfiguration("rviz")),
                output="screen",
            ),
        ]
    )
