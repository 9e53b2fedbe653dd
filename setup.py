"""ament_python packaging for peftdml_ros (colcon build on a ROS install, pip in a venv)."""

from __future__ import annotations

from pathlib import Path

from setuptools import find_packages, setup

PACKAGE_NAME = "peftdml_ros"


def _files(pattern: str) -> list[str]:
    # Relative paths, as setuptools wants them for data_files.
    return sorted(str(path) for path in Path().glob(pattern) if path.is_file())


setup(
    name=PACKAGE_NAME,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE_NAME, f"{PACKAGE_NAME}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE_NAME}"]),
        (f"share/{PACKAGE_NAME}", ["package.xml"]),
        (f"share/{PACKAGE_NAME}/launch", _files("launch/*.launch.py")),
        (
            f"share/{PACKAGE_NAME}/config",
            _files("config/*.yaml")
            + _files("config/*.rviz")
            + _files("config/*.xml")
            + _files("config/*.json"),
        ),
        (
            f"share/{PACKAGE_NAME}/models",
            _files("models/*.json")
            + _files("models/*.md")
            + _files("models/*.pt")
            + _files("models/*.onnx"),
        ),
    ],
    install_requires=["setuptools"],
    # `pip install .[gpu]` on a CUDA 12 machine: ONNX Runtime's CUDA execution provider and CuPy
    # (core/gpu_preprocess.py). onnxruntime-gpu replaces the CPU `onnxruntime` (both provide the
    # `onnxruntime` module): uninstall that first. TensorRT comes from NVIDIA's own index.
    extras_require={"gpu": ["onnxruntime-gpu>=1.20", "cupy-cuda12x>=13.0"]},
    zip_safe=True,
    maintainer="peftdml_ros maintainers",
    maintainer_email="maintainers@peftdml-ros.dev",
    description="Robust multi-sensor 3D object detection for ROS 2 (PEFT-DML fused detector).",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "peftdml = peftdml_ros.tools.cli:main",
            "peftdml_node = peftdml_ros.ros.node:main",
            "peftdml_lifecycle_node = peftdml_ros.ros.lifecycle_node:main",
        ],
    },
)
