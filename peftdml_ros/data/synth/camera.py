"""Camera images rendered from the world with the rig's calibration (1600 x 900, cv2).

The background (sky and the textured ground: lanes, markings, curb strips, sidewalks, terrain)
is computed per pixel at quarter resolution from precomputed ground rays (the cameras are level
and the ground is flat, so each pixel's ground point in the ego frame never changes) and
upscaled. Objects are drawn as shaded faces of their parts (appearance.py), far to near
(painter's algorithm) at full resolution. Weather acts on colours (night, fog with per-pixel
depth, rain) and on the image (rain streaks, blur, overexposure, sensor noise).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from peftdml_ros.data.synth.appearance import PARTS, RIDER
from peftdml_ros.data.synth.geometry import F64, box_corners, rot_z
from peftdml_ros.data.synth.ground import Ground, surface_palette
from peftdml_ros.data.synth.rig import IMAGE_HEIGHT_PX, IMAGE_WIDTH_PX, SensorSpec
from peftdml_ros.data.synth.world import SceneBoxes, World, scene_boxes

U8 = npt.NDArray[np.uint8]
LOW_SCALE = 4  # background resolution divisor
NEAR_M = 0.3
FAR_M = 160.0
# Faces as corner indices of geometry.box_corners, with outward normals in the box frame.
FACES = np.array([[4, 5, 6, 7], [0, 3, 7, 4], [1, 5, 6, 2], [0, 4, 5, 1], [3, 2, 6, 7]])
FACE_NORMALS = np.array([[0, 0, 1], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]], dtype=float)
SUN = np.array([0.4, 0.3, 0.87]) / np.linalg.norm([0.4, 0.3, 0.87])
SKY_TOP = np.array([230.0, 190.0, 140.0])
SKY_HORIZON = np.array([245.0, 230.0, 215.0])
FOG_BGR = np.array([205.0, 205.0, 200.0])
NIGHT_SKY = np.array([40.0, 22.0, 12.0])
VEHICLES = ("car", "truck", "bus", "construction_vehicle", "motorcycle")


@dataclass(frozen=True)
class CameraModel:
    """A camera of the rig with its precomputed quarter-resolution ground rays.

    ground_xy_ego [h, w, 2] (m; NaN where the pixel sees the sky), ground_dist [h, w] (m).
    """

    spec: SensorSpec
    k: F64
    cam_to_ego: F64  # [3, 3]
    position_ego: F64  # [3]
    ground_xy_ego: F64
    ground_dist: F64
    sky_row_frac: F64  # [h] 0 at the image top .. 1 at the horizon, for the sky gradient


def make_camera(spec: SensorSpec) -> CameraModel:
    k = np.array(spec.intrinsic)
    h, w = IMAGE_HEIGHT_PX // LOW_SCALE, IMAGE_WIDTH_PX // LOW_SCALE
    u = (np.arange(w) + 0.5) * LOW_SCALE
    v = (np.arange(h) + 0.5) * LOW_SCALE
    uu, vv = np.meshgrid(u, v)
    rays_cam = np.stack([(uu - k[0, 2]) / k[0, 0], (vv - k[1, 2]) / k[1, 1], np.ones_like(uu)], -1)
    rot = spec.rotation_matrix
    rays = rays_cam @ rot.T  # ego frame, [h, w, 3]
    pos = np.array(spec.translation_m)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(rays[..., 2] < -1e-4, -pos[2] / rays[..., 2], np.nan)
    xy = pos[None, None, :2] + rays[..., :2] * t[..., None]
    dist = np.linalg.norm(rays, axis=-1) * t
    far = ~(dist < 400.0)
    xy[far] = np.nan
    horizon = k[1, 2]
    sky_frac = np.clip(v / max(horizon, 1.0), 0.0, 1.0)
    return CameraModel(spec, k, rot, pos, xy, np.where(far, 400.0, dist), sky_frac)


@dataclass
class Look:
    """Colour grading for the frame's conditions (night, fog, rain strengths 0..1)."""

    night: float = 0.0
    fog: float = 0.0
    rain: float = 0.0

    @property
    def visibility_m(self) -> float:
        return 150.0 - 130.0 * self.fog if self.fog > 0 else 1e9

    def gain(self) -> float:
        return (1.0 - 0.82 * self.night) * (1.0 - 0.25 * self.rain)

    def haze(self, dist_m: F64) -> F64:
        """Blend factor towards the fog colour at distances (m)."""
        if self.fog > 0:
            return np.asarray(1.0 - np.exp(-3.0 * dist_m / self.visibility_m), dtype=np.float64)
        return np.asarray(1.0 - np.exp(-dist_m / 900.0), dtype=np.float64)  # aerial perspective

    def fog_color(self) -> F64:
        base = FOG_BGR if self.fog > 0 else SKY_HORIZON
        return base * (1.0 - 0.85 * self.night) if self.night > 0 else base * (1 - 0.3 * self.rain)


def _grading(
    cam: CameraModel, look: Look
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Per-pixel affine colour grading of the quarter-resolution background: colour = surface
    colour * A + B. A [h, w, 1] holds gain, headlights and haze; B [h, w, 3] holds the haze
    colour, and the sky (where A = 0). Fixed per camera and look, since the ground rays are."""
    sky = np.isnan(cam.ground_xy_ego[..., 0])
    gx, gy = np.nan_to_num(cam.ground_xy_ego[..., 0]), np.nan_to_num(cam.ground_xy_ego[..., 1])
    gain = np.full(sky.shape, look.gain())
    if look.night > 0 and cam.spec.channel == "CAM_FRONT":  # the ego's headlights
        lit = (gx > 2.0) & (gx < 45.0) & (np.abs(gy) < 0.45 * gx)
        gain[lit] *= 1.0 + 3.0 * look.night * np.exp(-gx[lit] / 25.0)
    haze = look.haze(cam.ground_dist)
    a = (gain * (1.0 - haze))[..., None]
    b = haze[..., None] * look.fog_color()[None, None, :]
    f = cam.sky_row_frac[:, None, None]
    if look.fog > 0:
        sky_col = np.broadcast_to(look.fog_color(), b.shape)
    elif look.night > 0:
        sky_col = np.broadcast_to(NIGHT_SKY * (1.5 - 0.5 * f), b.shape)
    else:
        sky_col = np.broadcast_to(
            (SKY_TOP * (1 - f) + SKY_HORIZON * f) * (1 - 0.35 * look.rain), b.shape
        )
    a = np.where(sky[..., None], 0.0, a)
    b = np.where(sky[..., None], sky_col, b)
    return a.astype(np.float32), b.astype(np.float32)


_GRADING_CACHE: dict[
    tuple[str, float, float, float], tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]
] = {}


def _background(cam: CameraModel, ground: Ground, ego_xy: F64, ego_yaw: float, look: Look) -> U8:
    """Quarter-resolution sky + ground, upscaled to the full image (uint8 BGR)."""
    key = (cam.spec.channel, look.night, look.fog, look.rain)
    if key not in _GRADING_CACHE:
        _GRADING_CACHE[key] = _grading(cam, look)
    a, b = _GRADING_CACHE[key]
    c, s = np.cos(ego_yaw), np.sin(ego_yaw)
    gx = np.nan_to_num(cam.ground_xy_ego[..., 0])
    gy = np.nan_to_num(cam.ground_xy_ego[..., 1])
    codes = ground.lookup_codes(ego_xy[0] + c * gx - s * gy, ego_xy[1] + s * gx + c * gy)
    color = _PALETTE[codes] * a + b
    low = np.clip(color, 0, 255).astype(np.uint8)
    full = cv2.resize(low, (IMAGE_WIDTH_PX, IMAGE_HEIGHT_PX), interpolation=cv2.INTER_LINEAR)
    return np.asarray(full, dtype=np.uint8)


_PALETTE = surface_palette()


@dataclass(frozen=True)
class _Parts:
    """Boxes to draw: center [P, 3], size [P, 3], yaw [P], color [P, 3], owner [P] (box index)."""

    center: F64
    size: F64
    yaw: F64
    color: F64
    owner: npt.NDArray[np.int64]


def _expand_parts(world: World, boxes: SceneBoxes, index: npt.NDArray[np.int64]) -> _Parts:
    centers, sizes, yaws, colors, owners = [], [], [], [], []
    names, riders = world.actors.name, world.actors.rider
    for j in index:
        if j >= boxes.num_actors:
            centers.append(boxes.center_m[j])
            sizes.append(boxes.size_wlh_m[j])
            yaws.append(boxes.yaw_rad[j])
            colors.append(boxes.color_bgr[j])
            owners.append(j)
            continue
        parts = PARTS[names[j]] + (RIDER if riders[j] else ())
        width, length, height = boxes.size_wlh_m[j]
        yaw = boxes.yaw_rad[j]
        c, s = np.cos(yaw), np.sin(yaw)
        bottom = boxes.center_m[j] - np.array([0.0, 0.0, height / 2.0])
        for x0, x1, y0, y1, z0, z1, col in parts:
            lx, ly = (x0 + x1) / 2.0 * length, (y0 + y1) / 2.0 * width
            centers.append(
                bottom + np.array([c * lx - s * ly, s * lx + c * ly, (z0 + z1) / 2 * height])
            )
            sizes.append(np.array([(y1 - y0) * width, (x1 - x0) * length, (z1 - z0) * height]))
            yaws.append(yaw)
            colors.append(boxes.color_bgr[j] if col is None else np.array(col, dtype=float))
            owners.append(j)
    if not centers:
        empty = np.zeros((0, 3))
        return _Parts(empty, empty, np.zeros(0), empty, np.zeros(0, dtype=np.int64))
    return _Parts(
        np.array(centers),
        np.array(sizes),
        np.array(yaws),
        np.array(colors),
        np.array(owners, dtype=np.int64),
    )


def _clip_near(poly_cam: F64) -> F64:
    """Sutherland-Hodgman clip of one polygon [K, 3] (camera frame) against z >= NEAR_M."""
    out = []
    count = poly_cam.shape[0]
    for i in range(count):
        a, b = poly_cam[i], poly_cam[(i + 1) % count]
        a_in, b_in = a[2] >= NEAR_M, b[2] >= NEAR_M
        if a_in:
            out.append(a)
        if a_in != b_in:
            t = (NEAR_M - a[2]) / (b[2] - a[2])
            out.append(a + t * (b - a))
    return np.array(out) if out else np.zeros((0, 3))


@dataclass(frozen=True)
class Faces:
    """Visible faces, far to near: polygons in the camera frame [F, 4, 3], colour [F, 3],
    owner box [F], depth [F] (m)."""

    poly_cam: F64
    color: F64
    owner: npt.NDArray[np.int64]
    depth: F64


def _visible_faces(cam_pos_w: F64, world_to_cam: F64, parts: _Parts, look: Look) -> Faces:
    corners = box_corners(parts.center, parts.size, parts.yaw)  # [P, 8, 3]
    face_pts = corners[:, FACES]  # [P, 5, 4, 3]
    c, s = np.cos(parts.yaw), np.sin(parts.yaw)
    nx = c[:, None] * FACE_NORMALS[None, :, 0] - s[:, None] * FACE_NORMALS[None, :, 1]
    ny = s[:, None] * FACE_NORMALS[None, :, 0] + c[:, None] * FACE_NORMALS[None, :, 1]
    nz = np.broadcast_to(FACE_NORMALS[None, :, 2], nx.shape)
    normals = np.stack([nx, ny, nz], axis=-1)  # [P, 5, 3]
    centers = face_pts.mean(axis=2)
    facing = np.sum(normals * (cam_pos_w[None, None, :] - centers), axis=-1) > 0.0
    cam_pts = (face_pts - cam_pos_w) @ world_to_cam.T  # [P, 5, 4, 3]
    in_front = cam_pts[..., 2].max(axis=-1) > NEAR_M
    keep = facing & in_front
    p_idx, f_idx = np.nonzero(keep)
    shade = 0.55 + 0.45 * np.clip(np.sum(normals[p_idx, f_idx] * SUN, axis=-1), 0.0, 1.0)
    depth = np.linalg.norm(centers[p_idx, f_idx] - cam_pos_w, axis=-1)
    color = parts.color[p_idx] * shade[:, None] * look.gain()
    a = look.haze(depth)[:, None]
    color = color * (1 - a) + look.fog_color()[None, :] * a
    order = np.argsort(-depth, kind="stable")
    return Faces(
        cam_pts[p_idx, f_idx][order], color[order], parts.owner[p_idx][order], depth[order]
    )


def _draw_faces(
    image: npt.NDArray[np.uint8] | npt.NDArray[np.uint16],
    faces: Faces,
    k: F64,
    scale: float,
    ids: npt.NDArray[np.int64] | None = None,
) -> None:
    """Fill the faces into `image` (BGR, or an id image when `ids` gives each face's value)."""
    count = faces.poly_cam.shape[0]
    if count == 0:
        return
    focal = np.array([k[0, 0], k[1, 1]])
    z = np.maximum(faces.poly_cam[..., 2:3], NEAR_M)
    uv = (faces.poly_cam[..., :2] / z * focal + k[:2, 2]) * scale  # [F, 4, 2]
    pts_all = np.round(np.clip(uv, -1e5, 1e5) * 16.0).astype(np.int32)
    needs_clip = faces.poly_cam[..., 2].min(axis=1) < NEAR_M
    colors = faces.color.tolist()
    for i in range(count):
        if needs_clip[i]:
            poly = _clip_near(faces.poly_cam[i])
            if poly.shape[0] < 3:
                continue
            uv_i = (poly[:, :2] / poly[:, 2:3] * focal + k[:2, 2]) * scale
            pts = np.round(np.clip(uv_i, -1e5, 1e5) * 16.0).astype(np.int32)
        else:
            pts = pts_all[i]
        value = (float(ids[i]),) if ids is not None else tuple(colors[i])
        cv2.fillPoly(image, [pts], value, lineType=cv2.LINE_8, shift=4)


def _frustum(
    boxes: SceneBoxes, cam_pos_w: F64, world_to_cam: F64, k: F64
) -> npt.NDArray[np.int64]:
    rel_cam = (boxes.center_m - cam_pos_w) @ world_to_cam.T
    radius = np.linalg.norm(boxes.size_wlh_m, axis=1) / 2.0
    half_fov = np.arctan2(IMAGE_WIDTH_PX / 2.0, k[0, 0])
    lateral = np.abs(rel_cam[:, 0]) - radius
    dist = np.linalg.norm(rel_cam, axis=1)
    visible = (
        (rel_cam[:, 2] > -radius)
        & (lateral < np.tan(half_fov) * np.maximum(rel_cam[:, 2], 0) + radius)
        & (dist - radius < FAR_M)
    )
    return np.nonzero(visible)[0]


@dataclass(frozen=True)
class Rendered:
    """image [900, 1600, 3] uint8 BGR; for key frames, per actor the visible and unoccluded
    pixel counts at quarter resolution ([num_actors] each), else None."""

    image: U8
    visible_px: npt.NDArray[np.int64] | None
    total_px: npt.NDArray[np.int64] | None


def render(
    cam: CameraModel,
    world: World,
    ground: Ground,
    t_s: float,
    effects: dict[str, float],
    rng: np.random.Generator,
    with_visibility: bool,
) -> Rendered:
    ego_xyz, ego_yaw = world.ego_pose(t_s)
    r_ego = rot_z(ego_yaw)
    cam_pos_w = ego_xyz + r_ego @ cam.position_ego
    world_to_cam = (r_ego @ cam.cam_to_ego).T
    look = Look(effects.get("night", 0.0), effects.get("fog", 0.0), effects.get("rain", 0.0))
    image = _background(cam, ground, ego_xyz[:2], ego_yaw, look)
    boxes = scene_boxes(world, t_s)
    index = _frustum(boxes, cam_pos_w, world_to_cam, cam.k)
    _draw_faces(image, _shadows(boxes, index, cam_pos_w, world_to_cam, look), cam.k, 1.0)
    faces = _visible_faces(cam_pos_w, world_to_cam, _expand_parts(world, boxes, index), look)
    _draw_faces(image, faces, cam.k, 1.0)
    if look.night > 0:
        _draw_lamps(image, world, boxes, index, cam_pos_w, world_to_cam, cam.k)
    image = _post(image, effects, rng)
    if not with_visibility:
        return Rendered(image, None, None)
    visible, total = _visibility(world, boxes, index, cam_pos_w, world_to_cam, cam.k)
    return Rendered(image, visible, total)


def _shadows(
    boxes: SceneBoxes,
    index: npt.NDArray[np.int64],
    cam_pos_w: F64,
    world_to_cam: F64,
    look: Look,
) -> Faces:
    """Dark patches on the ground under the actors (their footprint, 10 % larger)."""
    actors = index[index < boxes.num_actors]
    size = boxes.size_wlh_m[actors] * np.array([1.1, 1.1, 0.0])
    center = boxes.center_m[actors] * np.array([1.0, 1.0, 0.0]) + np.array([0.0, 0.0, 0.01])
    corners = box_corners(center, size, boxes.yaw_rad[actors])[:, :4]  # [A, 4, 3]
    poly_cam = (corners - cam_pos_w) @ world_to_cam.T
    keep = poly_cam[..., 2].max(axis=1) > NEAR_M
    dist = np.asarray(np.linalg.norm(boxes.center_m[actors] - cam_pos_w, axis=1), np.float64)
    depth: F64 = dist[keep]
    shade = np.array([38.0, 38.0, 42.0]) * look.gain()
    haze = look.haze(depth)[:, None]
    color = np.asarray(
        shade[None, :] * (1.0 - haze) + look.fog_color()[None, :] * haze, np.float64
    )
    return Faces(poly_cam[keep], color, actors[keep], depth)


def _visibility(
    world: World,
    boxes: SceneBoxes,
    index: npt.NDArray[np.int64],
    cam_pos_w: F64,
    world_to_cam: F64,
    k: F64,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Per actor: pixels visible after occlusion, and pixels it would cover alone (1/4 res)."""
    h, w = IMAGE_HEIGHT_PX // LOW_SCALE, IMAGE_WIDTH_PX // LOW_SCALE
    whole = _Parts(
        boxes.center_m[index],
        boxes.size_wlh_m[index],
        boxes.yaw_rad[index],
        boxes.color_bgr[index],
        index,
    )
    faces = _visible_faces(cam_pos_w, world_to_cam, whole, Look())
    id_image = np.zeros((h, w), dtype=np.uint16)
    _draw_faces(id_image, faces, k, 1.0 / LOW_SCALE, ids=faces.owner + 1)
    n = boxes.num_actors
    visible = np.bincount(id_image.ravel(), minlength=len(boxes.yaw_rad) + 1)[1 : n + 1]
    total = np.zeros(n, dtype=np.int64)
    scratch = np.zeros((h, w), dtype=np.uint8)
    for j in np.unique(faces.owner[faces.owner < n]):
        scratch[:] = 0
        mine = faces.owner == j
        sub = Faces(faces.poly_cam[mine], faces.color[mine], faces.owner[mine], faces.depth[mine])
        _draw_faces(scratch, sub, k, 1.0 / LOW_SCALE, ids=np.ones(int(mine.sum()), np.int64))
        total[j] = int(cv2.countNonZero(scratch))
    return visible.astype(np.int64), total


def _draw_lamps(
    image: U8,
    world: World,
    boxes: SceneBoxes,
    index: npt.NDArray[np.int64],
    cam_pos_w: F64,
    world_to_cam: F64,
    k: F64,
) -> None:
    """Head lamps (white) and tail lamps (red) of vehicles facing the camera, at night."""
    for j in index:
        if j >= boxes.num_actors or world.actors.name[j] not in VEHICLES:
            continue
        if world.actors.attribute[j] in ("vehicle.parked", "cycle.without_rider"):
            continue  # nobody inside: lights off
        width, length, height = boxes.size_wlh_m[j]
        yaw = boxes.yaw_rad[j]
        heading = np.array([np.cos(yaw), np.sin(yaw), 0.0])
        for sign, color in ((1.0, (230, 250, 255)), (-1.0, (40, 40, 255))):
            face_center = boxes.center_m[j] + sign * heading * length / 2.0
            if np.dot(sign * heading, cam_pos_w - face_center) <= 0:
                continue
            side = np.array([-heading[1], heading[0], 0.0])
            for lat in (-0.35, 0.35):
                p = face_center + side * lat * width + np.array([0, 0, -0.15 * height])
                pc = world_to_cam @ (p - cam_pos_w)
                if pc[2] < NEAR_M:
                    continue
                u = k[0, 0] * pc[0] / pc[2] + k[0, 2]
                v = k[1, 1] * pc[1] / pc[2] + k[1, 2]
                radius = max(1, int(k[0, 0] * 0.07 / pc[2]))  # ~7 cm lamps
                if -50 < u < IMAGE_WIDTH_PX + 50 and -50 < v < IMAGE_HEIGHT_PX + 50:
                    cv2.circle(image, (int(u), int(v)), radius * 2, color, -1, cv2.LINE_AA)


def _post(image: U8, effects: dict[str, float], rng: np.random.Generator) -> U8:
    """Image-space effects: rain streaks, blur, overexposure and sensor noise."""
    rain = effects.get("rain", 0.0)
    if rain > 0:
        count = int(400 * rain)
        x0 = rng.uniform(0, IMAGE_WIDTH_PX, count)
        y0 = rng.uniform(0, IMAGE_HEIGHT_PX, count)
        length = rng.uniform(15, 45, count)
        for x, y, ln in zip(x0, y0, length, strict=True):
            cv2.line(image, (int(x), int(y)), (int(x + 0.2 * ln), int(y + ln)), (200, 200, 200), 1)
        image = np.asarray(cv2.GaussianBlur(image, (0, 0), 1.0), dtype=np.uint8)
    blur = effects.get("blur", 0.0)
    if blur > 0:
        sigma = 1.0 + 7.0 * blur
        small = cv2.resize(
            image, (IMAGE_WIDTH_PX // 4, IMAGE_HEIGHT_PX // 4), interpolation=cv2.INTER_AREA
        )
        small = cv2.GaussianBlur(small, (0, 0), sigma / 4.0)
        image = np.asarray(
            cv2.resize(small, (IMAGE_WIDTH_PX, IMAGE_HEIGHT_PX), interpolation=cv2.INTER_LINEAR),
            dtype=np.uint8,
        )
    over = effects.get("overexposure", 0.0)
    if over > 0:
        image = np.asarray(
            cv2.convertScaleAbs(image, alpha=1.0 + 2.0 * over, beta=60.0 * over), dtype=np.uint8
        )
    noise_sigma = 8.0 * effects.get("night", 0.0) + 4.0 * rain
    if noise_sigma > 0:  # sensor noise in the dark and the rain (clear frames stay clean)
        pos, neg = _noise(round(noise_sigma), int(rng.integers(_NOISE_VARIANTS)))
        image = np.asarray(cv2.subtract(cv2.add(image, pos), neg), dtype=np.uint8)
    return image


_NOISE_VARIANTS = 3


@functools.lru_cache(maxsize=6)  # ~9 MB each; strengths rarely vary within a run
def _noise(sigma: int, variant: int) -> tuple[U8, U8]:
    """A fixed pool of grain images (positive and negative parts) per strength."""
    field = np.random.default_rng(1000 * sigma + variant).normal(
        0.0, sigma, (IMAGE_HEIGHT_PX, IMAGE_WIDTH_PX, 1)
    )
    field = np.repeat(field, 3, axis=2)
    return np.clip(field, 0, 255).astype(np.uint8), np.clip(-field, 0, 255).astype(np.uint8)


def encode_jpeg(image: U8, quality: int = 90) -> bytes:
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("cv2 could not encode a JPEG")  # cv2 is broken, nothing to fix here
    return bytes(buffer)
