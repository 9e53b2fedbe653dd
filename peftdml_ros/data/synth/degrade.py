"""Degradations: what can go wrong with the weather or a sensor, where and when.

Syntax of one spec (the CLI's `--degrade`, repeatable):

    KIND[:CHANNELS][=STRENGTH][@SCOPE]

- KIND: night, fog, rain (weather: cameras, LiDAR and radar as modelled), overexposure, blur
  (cameras), beam_loss (LiDAR), outage (the named sensors produce no sample_data).
- CHANNELS: comma-separated nuScenes channels or groups CAM, RADAR, LIDAR (= LIDAR_TOP);
  `outage` also takes IMU (gaps in the CAN bus ms_imu messages). Defaults: every sensor the
  kind affects; `outage` needs them named. A LIDAR_TOP outage keeps its sample_data (samples
  hang on LIDAR_TOP key frames in nuScenes) but their files hold 0 points.
- STRENGTH: 0..1 (defaults: night 1, fog 0.6, rain 0.6, overexposure 0.7, blur 0.5,
  beam_loss 0.5 = the fraction of the 32 beams lost).
- SCOPE: `scene-0002` (one scene), `2.0-6.0` (seconds from each scene's start, [start, end)),
  or `scene-0002/2.0-6.0`; no scope = every scene, all the time.

Examples: `fog@scene-0002`, `outage:RADAR_FRONT@2.0-6.0`, `beam_loss=0.75@scene-0001/0-3`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from peftdml_ros.data.synth.errors import SynthConfigError
from peftdml_ros.data.synth.rig import CAMERAS, CHANNELS, RADARS

WEATHER = ("night", "fog", "rain")
DEFAULT_STRENGTH: dict[str, float] = {
    "night": 1.0,
    "fog": 0.6,
    "rain": 0.6,
    "overexposure": 0.7,
    "blur": 0.5,
    "beam_loss": 0.5,
    "outage": 1.0,
}
KINDS: tuple[str, ...] = tuple(DEFAULT_STRENGTH)
GROUPS: dict[str, tuple[str, ...]] = {
    "CAM": tuple(c.channel for c in CAMERAS),
    "RADAR": tuple(r.channel for r in RADARS),
    "LIDAR": ("LIDAR_TOP",),
}
_DEFAULT_CHANNELS: dict[str, tuple[str, ...]] = {
    "night": CHANNELS,
    "fog": CHANNELS,
    "rain": CHANNELS,
    "overexposure": GROUPS["CAM"],
    "blur": GROUPS["CAM"],
    "beam_loss": ("LIDAR_TOP",),
}
_SPEC = re.compile(
    r"^(?P<kind>[a-z_]+)(?::(?P<channels>[A-Z_,]+))?(?:=(?P<strength>[0-9.]+))?"
    r"(?:@(?P<scope>[^@]+))?$"
)
_SCOPE = re.compile(r"^(?:(?P<scene>scene-\d{4}))?/?(?:(?P<start>[0-9.]+)-(?P<end>[0-9.]+))?$")


@dataclass(frozen=True)
class Degradation:
    """One parsed spec. `scene` None = all scenes; `window_s` None = the whole scene."""

    kind: str
    strength: float
    channels: tuple[str, ...]
    scene: str | None = None
    window_s: tuple[float, float] | None = None

    def applies(self, scene: str, channel: str, t_rel_s: float) -> bool:
        """Whether this degradation affects `channel` of `scene` at t seconds after its start."""
        if self.scene is not None and self.scene != scene:
            return False
        if channel not in self.channels:
            return False
        if self.window_s is None:
            return True
        return self.window_s[0] <= t_rel_s < self.window_s[1]

    def __str__(self) -> str:
        """The spec in the CLI syntax (parses back to an equal Degradation)."""
        text = self.kind
        if self.channels != _DEFAULT_CHANNELS.get(self.kind):
            text += ":" + ",".join(_compact(self.channels))
        text += f"={self.strength:g}"
        scope = self.scene or ""
        if self.window_s is not None:
            scope += (
                f"/{self.window_s[0]:g}-{self.window_s[1]:g}"
                if scope
                else (f"{self.window_s[0]:g}-{self.window_s[1]:g}")
            )
        return f"{text}@{scope}" if scope else text


def _compact(channels: tuple[str, ...]) -> list[str]:
    """Channel names with complete groups written as the group's name, in order."""
    out: list[str] = []
    rest = list(channels)
    for name, members in GROUPS.items():
        if all(m in rest for m in members) and len(members) > 1:
            out.append(name)
            rest = [c for c in rest if c not in members]
    return out + rest


def _channels(kind: str, text: str | None, spec: str) -> tuple[str, ...]:
    if text is None:
        if kind == "outage":
            raise SynthConfigError(
                f"degradation {spec!r}: an outage needs its sensors, e.g. outage:RADAR_FRONT "
                f"or outage:CAM (groups: {', '.join(GROUPS)})"
            )
        return _DEFAULT_CHANNELS[kind]
    out: list[str] = []
    for name in text.split(","):
        if name in GROUPS:
            out.extend(GROUPS[name])
        elif name in CHANNELS or (name == "IMU" and kind == "outage"):  # IMU: CAN ms_imu
            out.append(name)
        else:
            raise SynthConfigError(
                f"degradation {spec!r}: unknown sensor {name!r}; use one of "
                f"{', '.join(CHANNELS)}, a group {', '.join(GROUPS)} or IMU (outage only)"
            )
    order = (*CHANNELS, "IMU")
    return tuple(sorted(set(out), key=order.index))  # canonical: rig order


def parse_degradation(spec: str) -> Degradation:
    """Parse `KIND[:CHANNELS][=STRENGTH][@SCOPE]` (see the module docstring)."""
    match = _SPEC.match(spec.strip())
    if match is None or match["kind"] not in KINDS:
        raise SynthConfigError(
            f"degradation {spec!r} is not KIND[:CHANNELS][=STRENGTH][@SCOPE] with KIND one of "
            f"{', '.join(KINDS)}; e.g. fog@scene-0002 or outage:RADAR_FRONT@2.0-6.0"
        )
    kind = match["kind"]
    strength = DEFAULT_STRENGTH[kind]
    if match["strength"] is not None:
        try:
            strength = float(match["strength"])
        except ValueError:
            strength = -1.0
        if not 0.0 < strength <= 1.0:
            raise SynthConfigError(f"degradation {spec!r}: strength must be in (0, 1]")
    scene, window = None, None
    if match["scope"] is not None:
        scope = _SCOPE.match(match["scope"])
        if scope is None or (scope["scene"] is None and scope["start"] is None):
            raise SynthConfigError(
                f"degradation {spec!r}: scope must be scene-NNNN, START-END (seconds) or "
                "scene-NNNN/START-END"
            )
        scene = scope["scene"]
        if scope["start"] is not None:
            window = (float(scope["start"]), float(scope["end"]))
            if window[1] <= window[0]:
                raise SynthConfigError(f"degradation {spec!r}: the window's end must follow start")
    channels = _channels(kind, match["channels"], spec)
    return Degradation(kind, strength, channels, scene, window)


def as_degradations(items: Iterable[Degradation | str]) -> tuple[Degradation, ...]:
    """Accept parsed degradations or spec strings."""
    return tuple(d if isinstance(d, Degradation) else parse_degradation(d) for d in items)


def active_effects(
    degradations: Sequence[Degradation], scene: str, channel: str, t_rel_s: float
) -> dict[str, float]:
    """kind -> strength of every degradation acting on `channel` at that time (strongest wins)."""
    effects: dict[str, float] = {}
    for d in degradations:
        if d.applies(scene, channel, t_rel_s):
            effects[d.kind] = max(effects.get(d.kind, 0.0), d.strength)
    return effects


def scene_description_tags(degradations: Sequence[Degradation], scene: str) -> list[str]:
    """Weather words for the scene table's description (scene-wide weather only)."""
    tags = []
    for d in degradations:
        if d.kind in WEATHER and d.window_s is None and d.scene in (None, scene):
            tags.append(d.kind)
    return sorted(set(tags))
