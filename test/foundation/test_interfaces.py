"""The interface packages built from interfaces/ are the real ones: same fields, same type hashes.

ROS 2 (Iron and later) refuses to connect a publisher and a subscriber whose type hashes differ,
so our vision_msgs/tf2_msgs must hash exactly as a ROS install's do. The hash (RIHS01) is a
function of the field names and types only, so it is recomputed here independently by rosbags
from the .msg text and compared with what the rosidl build produced; tf2_msgs/TFMessage is also
compared with rosbags' own Kilted definition.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

INTERFACES = Path(__file__).resolve().parents[2] / "interfaces"
VISION_MSGS = sorted(path.stem for path in (INTERFACES / "vision_msgs/msg").glob("*.msg"))


def _built_hash(package: str, message: str) -> str:
    description = Path(sys.prefix, "share", package, "msg", f"{message}.json")
    if not description.exists():
        pytest.skip(f"{package} comes from a ROS install here, not from interfaces/")
    hashes = json.loads(description.read_text())["type_hashes"]
    wanted = f"{package}/msg/{message}"
    return next(entry["hash_string"] for entry in hashes if entry["type_name"] == wanted)


def _store_with_vision_msgs():  # type: ignore[no-untyped-def]
    store = get_typestore(Stores.ROS2_KILTED)
    types = {}
    for name in VISION_MSGS:
        text = (INTERFACES / "vision_msgs/msg" / f"{name}.msg").read_text()
        types.update(get_types_from_msg(text, f"vision_msgs/msg/{name}"))
    store.register(types)
    return store


def test_all_vision_msgs_messages_are_built() -> None:
    import vision_msgs.msg as vision

    required = {
        "Detection3DArray",
        "Detection3D",
        "BoundingBox3D",
        "ObjectHypothesis",
        "ObjectHypothesisWithPose",
        "LabelInfo",
        "VisionInfo",
        "Detection2DArray",
        "Detection2D",
        "BoundingBox2D",
    }
    assert required <= set(VISION_MSGS)
    for name in VISION_MSGS:
        assert hasattr(vision, name), f"vision_msgs.msg.{name} was not generated"


@pytest.mark.parametrize("message", VISION_MSGS)
def test_vision_msgs_type_hash_matches_independent_computation(message: str) -> None:
    store = _store_with_vision_msgs()
    assert _built_hash("vision_msgs", message) == store.hash_rihs01(f"vision_msgs/msg/{message}")


def test_tf2_msgs_tfmessage_hash_matches_the_kilted_definition() -> None:
    store = get_typestore(Stores.ROS2_KILTED)
    assert _built_hash("tf2_msgs", "TFMessage") == store.hash_rihs01("tf2_msgs/msg/TFMessage")


def test_detection3d_fields_are_those_of_vision_msgs_4() -> None:
    from vision_msgs.msg import BoundingBox3D, Detection3D, ObjectHypothesis, VisionInfo

    assert list(Detection3D.get_fields_and_field_types()) == ["header", "results", "bbox", "id"]
    assert list(BoundingBox3D.get_fields_and_field_types()) == ["center", "size"]
    assert ObjectHypothesis.get_fields_and_field_types() == {
        "class_id": "string",
        "score": "double",
    }
    assert list(VisionInfo.get_fields_and_field_types()) == [
        "header",
        "method",
        "database_location",
        "database_version",
    ]
