"""The nuScenes tables: fixed vocabularies, deterministic tokens and the JSON writer."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from peftdml_ros.data.nuscenes_reader import NUSCENES_TABLES
from peftdml_ros.data.synth.rig import RIG

VERSION = "v1.0-synth"
TABLE_NAMES = NUSCENES_TABLES  # the 13 tables the devkit loads

# The nuScenes category vocabulary (all 23), so tools that map the full list keep working.
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("animal", "All animals, e.g. cats, rats, dogs, deer, birds."),
    ("human.pedestrian.adult", "Adult subcategory."),
    ("human.pedestrian.child", "Child subcategory."),
    ("human.pedestrian.construction_worker", "Construction worker"),
    ("human.pedestrian.personal_mobility", "A small electric or self-propelled vehicle."),
    ("human.pedestrian.police_officer", "Police officer."),
    ("human.pedestrian.stroller", "Strollers."),
    ("human.pedestrian.wheelchair", "Wheelchairs."),
    ("movable_object.barrier", "Temporary road barrier placed in the scene."),
    ("movable_object.debris", "Movable object that is left on the driveable surface."),
    ("movable_object.pushable_pullable", "Objects that a pedestrian may push or pull."),
    ("movable_object.trafficcone", "All types of traffic cone."),
    ("static_object.bicycle_rack", "Area or device intended to park or secure bicycles."),
    ("vehicle.bicycle", "Human or electric powered 2-wheeled vehicle."),
    ("vehicle.bus.bendy", "Bendy bus subcategory."),
    ("vehicle.bus.rigid", "Rigid bus subcategory."),
    ("vehicle.car", "Vehicle designed primarily for personal use."),
    ("vehicle.construction", "Vehicles primarily designed for construction."),
    ("vehicle.emergency.ambulance", "All types of ambulances."),
    ("vehicle.emergency.police", "All types of police vehicles."),
    ("vehicle.motorcycle", "Gasoline or electric powered 2-wheeled vehicle."),
    ("vehicle.trailer", "Any vehicle trailer."),
    ("vehicle.truck", "Vehicles primarily designed to haul cargo."),
)
ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("vehicle.moving", "Vehicle is moving."),
    ("vehicle.stopped", "Vehicle, with a driver/rider in/on it, is currently stationary."),
    ("vehicle.parked", "Vehicle is stationary (usually for a longer duration) with no driver."),
    ("cycle.with_rider", "There is a rider on the bicycle or motorcycle."),
    ("cycle.without_rider", "There is NO rider on the bicycle or motorcycle."),
    ("pedestrian.sitting_lying_down", "The human is sitting or lying down."),
    ("pedestrian.standing", "The human is standing."),
    ("pedestrian.moving", "The human is moving."),
)
VISIBILITY: tuple[tuple[str, str, str], ...] = (
    ("1", "v0-40", "visibility of whole object is between 0 and 40%"),
    ("2", "v40-60", "visibility of whole object is between 40 and 60%"),
    ("3", "v60-80", "visibility of whole object is between 60 and 80%"),
    ("4", "v80-100", "visibility of whole object is between 80 and 100%"),
)


def make_token(seed: int, *parts: object) -> str:
    """A 32-hex-digit token, the same for the same seed and parts."""
    text = "/".join([str(seed), *(str(p) for p in parts)])
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def visibility_token(fraction: float) -> str:
    """The nuScenes visibility token ("1".."4") of a visible fraction 0..1."""
    if fraction < 0.4:
        return "1"
    if fraction < 0.6:
        return "2"
    if fraction < 0.8:
        return "3"
    return "4"


class Tables:
    """All 13 tables as lists of records; fixed vocabularies are filled on creation."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rows: dict[str, list[dict[str, Any]]] = {name: [] for name in TABLE_NAMES}
        self.category_token = {name: make_token(0, "category", name) for name, _ in CATEGORIES}
        self.attribute_token = {name: make_token(0, "attribute", name) for name, _ in ATTRIBUTES}
        self.sensor_token = {s.channel: make_token(0, "sensor", s.channel) for s in RIG}
        for name, description in CATEGORIES:
            self.rows["category"].append(
                {"token": self.category_token[name], "name": name, "description": description}
            )
        for name, description in ATTRIBUTES:
            self.rows["attribute"].append(
                {"token": self.attribute_token[name], "name": name, "description": description}
            )
        for token, level, description in VISIBILITY:
            self.rows["visibility"].append(
                {"token": token, "level": level, "description": description}
            )
        for spec in RIG:
            self.rows["sensor"].append(
                {
                    "token": self.sensor_token[spec.channel],
                    "channel": spec.channel,
                    "modality": spec.modality,
                }
            )

    def add(self, table: str, record: dict[str, Any]) -> None:
        self.rows[table].append(record)

    def write(self, version_dir: Path) -> None:
        version_dir.mkdir(parents=True, exist_ok=True)
        for name in TABLE_NAMES:
            (version_dir / f"{name}.json").write_text(json.dumps(self.rows[name], indent=0))
