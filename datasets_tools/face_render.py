"""Parametric cartoon face whose parts move the way facial action units (AUs) move them.

A face is described in a canonical frame (x to the image right, y down, top of the head at
y = -1, chin near y = +0.95, face half-width about 0.7). ``face_geometry`` turns an identity
and per-AU amounts (0..1) into curves and landmark points in that frame; ``FaceRenderer`` maps
them into a picture with a per-frame head pose and draws them with OpenCV (anti-aliased,
sub-pixel polygons), then applies the identity's lighting and sensor noise.

Landmarks: the 68 points of aubench's one scheme (iBUG 300-W, datasets_tools.landmarks), sampled
on the drawn curves; ``LANDMARK_NAMES`` names them in that order (brow, eye and lip points
counted from the face's middle outwards or from image-left to image-right, the jaw from the
image-left ear level over the chin, jaw_8, to the right).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

# Every AU the renderer can show. Amounts are indexed by position in this tuple.
RENDERED_AUS = (1, 2, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 22, 23, 24,
                25, 26, 27, 28)
AU_INDEX = {au: i for i, au in enumerate(RENDERED_AUS)}


def _landmark_names() -> list[str]:
    """Names of the 68 points, in the iBUG order of datasets_tools.landmarks."""
    names = [f"jaw_{k}" for k in range(17)]                       # 0-16
    names += [f"left_brow_{k}" for k in range(4, -1, -1)]         # 17-21: outer -> inner
    names += [f"right_brow_{k}" for k in range(5)]                # 22-26: inner -> outer
    names += ["nose_root", "nose_bridge_1", "nose_bridge_2", "nose_tip",          # 27-30
              "nose_left_ala", "nose_left_nostril", "subnasale", "nose_right_nostril", "nose_right_ala"]
    names += ["left_eye_outer", "left_eye_upper_outer", "left_eye_upper_inner",   # 36-41
              "left_eye_inner", "left_eye_lower_inner", "left_eye_lower_outer"]
    names += ["right_eye_inner", "right_eye_upper_inner", "right_eye_upper_outer",  # 42-47
              "right_eye_outer", "right_eye_lower_outer", "right_eye_lower_inner"]
    names += ["mouth_left_corner"] + [f"upper_lip_outer_{k}" for k in range(5)]     # 48-53
    names += ["mouth_right_corner"] + [f"lower_lip_outer_{k}" for k in range(4, -1, -1)]  # 54-59
    names += ["inner_left_corner"] + [f"upper_lip_inner_{k}" for k in range(3)]     # 60-63
    names += ["inner_right_corner"] + [f"lower_lip_inner_{k}" for k in range(2, -1, -1)]  # 64-67
    return names


LANDMARK_NAMES = _landmark_names()
NUM_LANDMARKS = len(LANDMARK_NAMES)

_SHIFT = 4  # OpenCV sub-pixel bits for anti-aliased drawing
_ONE = 1 << _SHIFT


def intensity_to_amount(intensity) -> np.ndarray:
    """AU intensity 0..5 (may be fractional) -> drawing amount 0..1; a trace (1) stays visible."""
    x = np.clip(np.asarray(intensity, dtype=np.float64) / 5.0, 0.0, 1.0)
    return np.sqrt(x)


@dataclass
class Identity:
    """Everything about one person that does not change between frames."""

    face_w: float
    jaw_taper: float
    chin_y: float
    eye_x: float
    eye_y: float
    eye_w: float
    eye_h: float
    eye_lo: float
    eye_tilt: float
    iris_r: float
    brow_inner: float
    brow_len: float
    brow_gap: float
    brow_arch: float
    brow_th: float
    nose_y: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    lip_u: float
    lip_l: float
    hairline: float
    long_hair: bool
    skin: tuple
    lip: tuple
    hair: tuple
    iris: tuple
    brow: tuple
    clothes: tuple
    background: tuple
    background2: tuple
    face_scale: float      # head height as a fraction of the frame's shorter side
    center: tuple          # face centre as fractions of (width, height)
    light_dir: float       # radians
    light_strength: float
    noise_sigma: float


_SKIN_LIGHT = np.array([178, 200, 236.0])  # BGR
_SKIN_DARK = np.array([58, 82, 128.0])
_HAIR = [(20, 20, 25), (30, 40, 60), (40, 65, 105), (90, 150, 200), (150, 150, 155), (25, 35, 90)]
_IRIS = [(40, 60, 90), (30, 45, 60), (120, 100, 60), (90, 110, 70)]


def make_identity(rng: np.random.Generator, female: bool | None = None) -> Identity:
    """Draw a random identity (face shape, colours, framing, lighting, noise)."""
    u = rng.uniform
    if female is None:
        female = bool(rng.integers(2))
    tone = u(0, 1)
    skin = (1 - tone) * _SKIN_LIGHT + tone * _SKIN_DARK + rng.normal(0, 6, 3)
    lip = skin * np.array([0.72, 0.68, 0.95]) + np.array([10, 0, 0])
    eye_y = u(-0.13, -0.05)
    hair = np.array(_HAIR[rng.integers(len(_HAIR))], float)
    bg = rng.uniform(40, 220, 3)
    return Identity(
        face_w=u(0.64, 0.76), jaw_taper=u(0.12, 0.32), chin_y=u(0.88, 0.97),
        eye_x=u(0.26, 0.31), eye_y=eye_y, eye_w=u(0.115, 0.14), eye_h=u(0.05, 0.068),
        eye_lo=u(0.028, 0.04), eye_tilt=u(-0.015, 0.02), iris_r=u(0.048, 0.058),
        brow_inner=u(0.07, 0.1), brow_len=u(0.25, 0.31), brow_gap=u(0.14, 0.19),
        brow_arch=u(0.015, 0.045), brow_th=u(0.025, 0.04) * (0.8 if female else 1.15),
        nose_y=u(0.2, 0.27), nose_w=u(0.085, 0.115), mouth_y=u(0.5, 0.56),
        mouth_w=u(0.21, 0.27), lip_u=u(0.035, 0.05) * (1.15 if female else 1.0),
        lip_l=u(0.05, 0.065) * (1.15 if female else 1.0), hairline=u(-0.72, -0.52),
        long_hair=bool(female and u() < 0.8) or (not female and u() < 0.1),
        skin=tuple(np.clip(skin, 0, 255)), lip=tuple(np.clip(lip, 0, 255)), hair=tuple(hair),
        iris=tuple(float(v) for v in _IRIS[rng.integers(len(_IRIS))]),
        brow=tuple(np.clip(0.55 * hair + 0.25 * skin * 0.4, 0, 255)),
        clothes=tuple(rng.uniform(20, 230, 3)), background=tuple(bg),
        background2=tuple(np.clip(bg * u(0.55, 0.95), 0, 255)),
        face_scale=u(0.62, 0.78), center=(u(0.44, 0.56), u(0.46, 0.54)),
        light_dir=u(0, 2 * np.pi), light_strength=u(0.08, 0.3), noise_sigma=u(1.5, 5.0))


def _mix(color, target, k):
    k = min(max(float(k), 0.0), 1.0)
    return tuple((1 - k) * c + k * t for c, t in zip(color, target))


@functools.lru_cache(maxsize=None)
def _linspace_cached(a, b, n):
    out = np.linspace(a, b, n)
    out.flags.writeable = False
    return out


def _linspace(a, b, n) -> np.ndarray:
    return _linspace_cached(float(a), float(b), int(n))


def _curve(a, b, c, n):
    """Quadratic Bezier from a to c bending towards b: (n, 2)."""
    t = _linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * np.asarray(a) + 2 * (1 - t) * t * np.asarray(b) + t ** 2 * np.asarray(c)


def face_geometry(idn: Identity, amounts: np.ndarray, blink: float = 0.0,
                  gaze: tuple = (0.0, 0.0)) -> dict:
    """Curves (canonical coordinates) of a face showing AU ``amounts`` (indexed as RENDERED_AUS).

    Returns a dict of named (n, 2) point arrays and scalar shading levels; the key
    "landmarks" holds the (P, 2) landmark points in LANDMARK_NAMES order.
    """
    a = {au: float(amounts[i]) for i, au in enumerate(RENDERED_AUS)}
    g: dict = {}
    lm: dict = {}  # landmark name -> (x, y)

    # Brows: AU1 raises the inner end, AU2 the outer end, AU4 pulls them down and together,
    # AU9 drags the inner ends down a little.
    t = _linspace(0, 1, 5)
    td = _linspace(0, 1, 12)
    brow_y = idn.eye_y - idn.brow_gap
    for side, sgn in (("left", -1), ("right", 1)):
        def centre(tt):
            x = sgn * (idn.brow_inner + tt * idn.brow_len) - sgn * 0.035 * a[4] * (1 - tt)
            y = (brow_y - idn.brow_arch * np.sin(np.pi * tt * 0.85)
                 - 0.12 * a[1] * (1 - tt) ** 1.3 - 0.13 * a[2] * tt ** 1.3
                 + 0.06 * a[4] * (1 - 0.6 * tt) + 0.03 * a[9] * (1 - tt))
            return np.stack([x, y], 1)
        lm.update(zip([f"{side}_brow_{k}" for k in range(5)], centre(t)))
        c = centre(td)
        th = idn.brow_th * (1.15 - 0.55 * td)[:, None]
        g[f"{side}_brow"] = np.concatenate([c - [0, 1] * th / 2, (c + [0, 1] * th / 2)[::-1]])

    # Eyes: AU5 widens, AU6 pushes the lower lid up, AU7 tightens both lids.
    tt = _linspace(-1, 1, 15)
    for side, sgn in (("left", -1), ("right", 1)):
        cx, cy = sgn * idn.eye_x, idn.eye_y
        open_u = idn.eye_h * (1 + 0.75 * a[5] - 0.4 * a[7] - 0.3 * a[6] - 0.25 * a[9] - 0.12 * a[4])
        open_u = max(open_u * (1 - 0.95 * blink), 0.004)
        open_l = idn.eye_lo * (1 - 0.55 * a[6] - 0.7 * a[7] - 0.2 * a[9] + 0.15 * a[5])
        open_l = max(open_l * (1 - 0.5 * blink), 0.004)
        # t = -1 inner corner, +1 outer corner
        xs = cx + sgn * tt * idn.eye_w
        lift = -idn.eye_tilt * (tt + 1) / 2  # outer corner raised for a positive tilt
        upper = np.stack([xs, cy + lift - open_u * (1 - tt ** 2) ** 0.85 * (1 - 0.12 * tt)], 1)
        lower = np.stack([xs, cy + lift + open_l * (1 - tt ** 2) ** 1.1], 1)
        g[f"{side}_eye_upper"], g[f"{side}_eye_lower"] = upper, lower
        g[f"{side}_eye"] = np.concatenate([upper, lower[-2:0:-1]])
        g[f"{side}_iris"] = (cx + gaze[0] * idn.eye_w * 0.35, cy + gaze[1] * 0.015 + 0.004)
        g[f"{side}_crease"] = upper[2:-2] - [0, 0.03 + 0.25 * open_u]
        g[f"{side}_under"] = lower[3:-3] + [0, 0.03 + 0.2 * idn.eye_lo]
        lm.update(zip([f"{side}_eye_{n}" for n in ("inner", "upper_inner", "upper_outer", "outer",
                                                   "lower_outer", "lower_inner")],
                      (upper[0], upper[4], upper[10], upper[-1], lower[10], lower[4])))
        g[f"{side}_crow"] = [((upper[-1][0] + sgn * 0.025, upper[-1][1] + k * 0.02),
                              (upper[-1][0] + sgn * 0.1, upper[-1][1] + k * 0.045)) for k in (-1, 0, 1)]
        g[f"{side}_cheek"] = ((sgn * (idn.eye_x + 0.03), idn.eye_y + 0.27 - 0.07 * a[6] - 0.03 * a[12]
                               - 0.05 * a[13]), (0.17 * (1 + 0.25 * a[13]), 0.1 * (1 + 0.3 * a[13])))
    g["glabella"] = [((sgn * 0.03, brow_y - 0.02), (sgn * 0.04, brow_y + 0.07)) for sgn in (-1, 1)]
    g["forehead"] = [np.stack([_linspace(-0.28, 0.28, 9), brow_y - 0.12 - 0.05 * k
                               - 0.015 * np.cos(_linspace(-1.5, 1.5, 9))], 1) for k in range(3)]

    # Nose: AU9 wrinkles the bridge and lifts the alae; AU10 lifts them slightly.
    ala_dy = -0.035 * a[9] - 0.02 * a[10] - 0.01 * a[11]
    ala_w = idn.nose_w * (1 + 0.2 * a[9] + 0.08 * a[10])
    tip = (0.0, idn.nose_y - 0.015 * a[9])
    ala_l = (-ala_w, idn.nose_y + 0.01 + ala_dy)
    ala_r = (ala_w, idn.nose_y + 0.01 + ala_dy)
    subn = (0.0, idn.nose_y + 0.055 + ala_dy * 0.5)
    root = np.array([0.0, idn.eye_y])
    lm.update(nose_root=root, nose_bridge_1=root + (np.array(tip) - root) / 3,
              nose_bridge_2=root + 2 * (np.array(tip) - root) / 3, nose_tip=tip, nose_left_ala=ala_l,
              nose_left_nostril=(np.array(ala_l) + subn) / 2, subnasale=subn,
              nose_right_nostril=(np.array(ala_r) + subn) / 2, nose_right_ala=ala_r)
    g["nose_tip"], g["ala"], g["subnasale"] = tip, (ala_l, ala_r), subn
    g["nose_bridge"] = [np.array([(sgn * 0.055, idn.eye_y + 0.03), (sgn * 0.065, idn.nose_y - 0.09)])
                        for sgn in (-1, 1)]
    g["nose_wrinkles"] = [_curve((-0.06, y + 0.01), (0, y - 0.012), (0.06, y + 0.01), 7)
                          for y in idn.eye_y + np.array([0.07, 0.11, 0.15])]

    # Mouth. Corners: AU12 up/out, AU13 sharply up, AU14 in, AU15 down, AU20 out, AU18/22 in.
    hw = idn.mouth_w * (1 + 0.22 * a[12] + 0.06 * a[13] + 0.3 * a[20] - 0.34 * a[18]
                        - 0.3 * a[22] - 0.1 * a[14] - 0.16 * a[23] - 0.05 * a[24] - 0.1 * a[27]
                        - 0.06 * a[28])
    y_corner = idn.mouth_y - 0.085 * a[12] - 0.11 * a[13] - 0.015 * a[14] + 0.11 * a[15] \
        + 0.025 * a[20] - 0.01 * a[10] + 0.01 * a[17]
    y_mid = idn.mouth_y - 0.05 * a[17] - 0.012 * a[10] - 0.008 * a[24]
    jaw = 0.1 * a[26] + 0.22 * a[27] + 0.012 * a[25]
    gap = 0.045 * a[25] + 0.075 * a[26] + 0.2 * a[27] + 0.03 * a[22] + 0.02 * a[19] + 0.01 * a[16]
    gap *= 1 - 0.7 * max(a[24], a[23], a[28]) * (1 - a[25])
    td = _linspace(-1, 1, 25)
    rounded = max(a[18], a[22])
    prof = (1 - td ** 2) ** max(0.7 - 0.4 * rounded, 0.1)  # finite for amounts > 1 (expressiveness)
    y_base = y_mid + (y_corner - y_mid) * np.abs(td) ** 1.8
    y_ui = y_base - 0.35 * gap * prof - 0.035 * a[10] * (1 - td ** 2) ** 1.5
    y_li = y_base + 0.65 * gap * prof + 0.035 * a[16] * (1 - td ** 2) ** 1.5
    thin = 1 - 0.6 * a[23] - 0.6 * a[24] - 0.9 * a[28] - 0.3 * a[20] + 0.4 * a[22] + 0.3 * a[18] \
        - 0.15 * a[12]
    thin = max(thin, 0.06)
    cupid = 0.011 * np.exp(-((np.abs(td) - 0.22) / 0.12) ** 2) - 0.006 * np.exp(-(td / 0.1) ** 2)
    y_uo = y_ui - idn.lip_u * thin * (1 - 0.75 * td ** 2) - cupid * thin
    y_lo = y_li + idn.lip_l * max(thin + 0.25 * a[17] + 0.2 * a[16], 0.06) * (1 - 0.8 * td ** 2)
    xs = td * hw
    g["upper_lip"] = np.concatenate([np.stack([xs, y_uo], 1), np.stack([xs, y_ui], 1)[::-1]])
    g["lower_lip"] = np.concatenate([np.stack([xs, y_li], 1), np.stack([xs, y_lo], 1)[::-1]])
    g["mouth_inner"] = np.concatenate([np.stack([xs, y_ui], 1), np.stack([xs, y_li], 1)[::-1]])
    local_gap = y_li - y_ui
    teeth_up = y_ui + np.minimum(0.045, 0.7 * local_gap)
    g["upper_teeth"] = np.concatenate([np.stack([xs * 0.9, y_ui], 1), np.stack([xs * 0.9, teeth_up], 1)[::-1]])
    teeth_lo = y_li - np.minimum(0.03, 0.25 * local_gap) * (a[16] + a[27] + 0.3 * a[26] > 0.15)
    g["lower_teeth"] = np.concatenate([np.stack([xs * 0.8, teeth_lo], 1), np.stack([xs * 0.8, y_li], 1)[::-1]])
    g["mouth_line"] = np.stack([xs, (y_ui + y_li) / 2], 1)
    g["gap"] = float(local_gap.max())
    g["tongue"] = ((0.0, float(y_li[12]) + 0.01 * a[19]), (0.07 * a[19] + 1e-3, 0.045 * a[19] + 1e-3))
    outer, inner = [4, 8, 12, 16, 20], [6, 12, 18]  # image left -> right
    lm.update(mouth_left_corner=(xs[0], y_base[0]), mouth_right_corner=(xs[-1], y_base[-1]),
              inner_left_corner=(xs[1], (y_ui[1] + y_li[1]) / 2),
              inner_right_corner=(xs[-2], (y_ui[-2] + y_li[-2]) / 2))
    lm.update(zip([f"upper_lip_outer_{k}" for k in range(5)], np.stack([xs[outer], y_uo[outer]], 1)))
    lm.update(zip([f"lower_lip_outer_{k}" for k in range(5)], np.stack([xs[outer], y_lo[outer]], 1)))
    lm.update(zip([f"upper_lip_inner_{k}" for k in range(3)], np.stack([xs[inner], y_ui[inner]], 1)))
    lm.update(zip([f"lower_lip_inner_{k}" for k in range(3)], np.stack([xs[inner], y_li[inner]], 1)))
    corner_l, corner_r = (xs[0], y_base[0]), (xs[-1], y_base[-1])
    g["dimples"] = [_curve((c[0] + s * 0.02, c[1] - 0.03), (c[0] + s * 0.04, c[1]),
                           (c[0] + s * 0.02, c[1] + 0.03), 6) for c, s in ((corner_l, -1), (corner_r, 1))]
    g["press_bulges"] = [np.stack([xs[4:-4] * 0.9, y_uo[4:-4] - 0.025], 1),
                         np.stack([xs[4:-4] * 0.9, y_lo[4:-4] + 0.025], 1)]
    g["nasolabial"] = [_curve((s * (ala_w + 0.03), idn.nose_y + ala_dy),
                              (s * (hw + 0.14), (idn.nose_y + c[1]) / 2 + 0.02),
                              (c[0] + s * 0.07, c[1] + 0.07), 12)
                       for c, s in ((corner_l, -1), (corner_r, 1))]

    # Jaw: AU26/27 drop it, AU17 raises the chin boss, AU13 puffs the cheeks.
    def jaw_points(theta):
        st = np.sin(theta)
        half = idn.face_w * (1 - idn.jaw_taper * st ** 2) * (1 + 0.06 * a[13] * np.sin(2 * theta) ** 2)
        x = -np.cos(theta) * half
        y = -0.15 + (idn.chin_y + 0.15) * st
        w = np.clip((y + 0.05) / (idn.chin_y + 0.05), 0, 1) ** 1.5
        y = y + jaw * w - 0.05 * a[17] * st ** 8
        return np.stack([x, y], 1)
    lm.update(zip([f"jaw_{k}" for k in range(17)], jaw_points(_linspace(0, np.pi, 17))))
    jaw_dense = jaw_points(_linspace(0, np.pi, 40))
    phi = _linspace(0, np.pi, 30)
    cranium = np.stack([idn.face_w * 1.02 * np.cos(phi), -0.15 - 0.85 * np.sin(phi)], 1)
    g["face"] = np.concatenate([jaw_dense, cranium[1:-1]])
    g["jaw_drop"] = jaw
    chin = jaw_dense[20]
    g["chin_dots"] = [(chin[0] + dx, chin[1] - 0.1 + dy) for dx, dy in
                      ((-0.05, 0), (0.0, 0.015), (0.05, 0), (-0.025, 0.04), (0.025, 0.04))]
    g["mentolabial"] = _curve((-0.09, y_lo[12] + 0.05), (0, y_lo[12] + 0.075 - 0.03 * a[17]),
                              (0.09, y_lo[12] + 0.05), 9)
    hl = idn.hairline
    g["hair_top"] = np.concatenate([
        np.stack([idn.face_w * 1.07 * np.cos(phi), -0.1 - 0.96 * np.sin(phi)], 1),
        _curve((-idn.face_w * 1.0, -0.25), (0, 2 * hl + 0.25), (idn.face_w * 1.0, -0.25), 15)])
    g["landmarks"] = np.array([lm[name] for name in LANDMARK_NAMES], dtype=np.float64)
    g["levels"] = {
        "forehead": 0.5 * max(a[1], a[2]), "glabella": 0.55 * a[4] + 0.2 * a[9],
        "crow": 0.55 * a[6], "cheek": 0.12 + 0.35 * a[6] + 0.25 * a[13],
        "under": 0.12 + 0.35 * max(a[6], a[7]), "nose_wrinkle": 0.6 * a[9],
        "nasolabial": 0.12 + 0.55 * max(a[10], 1.1 * a[11], 0.9 * a[12], 0.8 * a[9], 0.9 * a[13]),
        "dimple": 0.6 * a[14], "press": 0.6 * a[24] + 0.3 * a[23], "chin": 0.6 * a[17],
        "mentolabial": 0.15 + 0.3 * a[17], "tongue": a[19],
    }
    return g


def _depth(p: np.ndarray) -> np.ndarray:
    """Rough depth of canonical points (head dome plus nose), for the yaw projection."""
    x, y = p[..., 0], p[..., 1]
    dome = 0.35 * np.sqrt(np.clip(1 - (x / 0.85) ** 2 - ((y - 0.05) / 1.15) ** 2, 0, 1))
    nose = 0.15 * np.exp(-(x ** 2 + 0.5 * (y - 0.1) ** 2) / 0.01)
    return dome + nose


class Pose:
    """Canonical -> pixel mapping: centre (px), scale (px per canonical unit), roll, yaw (rad)."""

    def __init__(self, cx, cy, scale, roll=0.0, yaw=0.0):
        self.cx, self.cy, self.scale, self.yaw = cx, cy, scale, yaw
        self.roll = roll
        self.c, self.s = np.cos(roll), np.sin(roll)

    def __call__(self, p) -> np.ndarray:
        p = np.asarray(p, dtype=np.float64)
        x = p[..., 0] * np.cos(self.yaw) + _depth(p) * np.sin(self.yaw)
        y = p[..., 1]
        return np.stack([self.cx + self.scale * (self.c * x - self.s * y),
                         self.cy + self.scale * (self.s * x + self.c * y)], -1)


def _fx(p) -> np.ndarray:
    return np.round(np.asarray(p) * _ONE).astype(np.int32)


class FaceRenderer:
    """Draws one identity at one frame size; holds the per-sequence background, light and noise."""

    def __init__(self, identity: Identity, width: int, height: int, rng: np.random.Generator):
        self.idn, self.w, self.h = identity, width, height
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        ramp = (yy / max(height - 1, 1))[..., None]
        bg = (1 - ramp) * np.float32(identity.background) + ramp * np.float32(identity.background2)
        self.background = np.clip(bg, 0, 255).astype(np.uint8)
        d = np.array([np.cos(identity.light_dir), np.sin(identity.light_dir)], np.float32)
        light = 1 + identity.light_strength * ((xx / width - 0.5) * d[0] + (yy / height - 0.5) * d[1]) * 2
        self.gain = np.repeat(np.clip(light * 128, 0, 255).astype(np.uint8)[..., None], 3, 2)
        self.noise = []
        for _ in range(3):
            n = rng.normal(0, identity.noise_sigma, (height, width, 1)).astype(np.float32)
            self.noise.append((np.clip(n, 0, 255).astype(np.uint8).repeat(3, 2),
                               np.clip(-n, 0, 255).astype(np.uint8).repeat(3, 2)))
        # Head height (2 canonical units) = face_scale of the frame's shorter side, so portrait
        # BP4D frames (1040x1392) and landscape DISFA frames (1024x768) frame the face alike.
        self.base_scale = identity.face_scale * min(width, 0.9 * height) / 2
        # Keep the whole head inside a landscape frame too.
        self.base_scale = min(self.base_scale, 0.5 * width / (identity.face_w * 1.35))

    def pose(self, dx=0.0, dy=0.0, ds=0.0, roll=0.0, yaw=0.0) -> Pose:
        """Pose from small offsets (fractions of the face scale) around the identity's framing."""
        s = self.base_scale * (1 + ds)
        return Pose(self.idn.center[0] * self.w + dx * s, self.idn.center[1] * self.h + dy * s,
                    s, roll, yaw)

    def render(self, amounts, pose: Pose, blink=0.0, gaze=(0.0, 0.0), noise_index=0):
        """-> (BGR uint8 image (H, W, 3), landmarks (P, 2) pixels, face box (x0, y0, x1, y1))."""
        idn = self.idn
        g = face_geometry(idn, amounts, blink, gaze)
        lv = g["levels"]
        skin = idn.skin
        dark = tuple(0.35 * np.asarray(skin))
        # Drawing ops on canonical points; all points go through the pose in one call.
        ops: list = []

        def poly(points, color):
            ops.append(("poly", np.asarray(points, float), color, 0))

        def line(points, color, width):
            ops.append(("line", np.asarray(points, float), color, width))

        def ellipse(center, axes, color, thickness=-1):
            ops.append(("ellipse", np.asarray(center, float)[None], color, (axes, thickness)))

        body = [(-1.6, 1.45), (-0.9, 1.2), (0.9, 1.2), (1.6, 1.45), (1.8, 3.0), (-1.8, 3.0)]
        poly(body, idn.clothes)
        poly([(-0.3, 0.4), (0.3, 0.4), (0.33, 1.3), (-0.33, 1.3)], _mix(skin, (0, 0, 0), 0.18))
        if idn.long_hair:
            poly([(-idn.face_w * 1.15, -0.3), (idn.face_w * 1.15, -0.3),
                  (idn.face_w * 1.25, 1.1), (-idn.face_w * 1.25, 1.1)], idn.hair)
        for sgn in (-1, 1):
            ellipse((sgn * (idn.face_w + 0.01), idn.eye_y + 0.12), (0.07, 0.15), _mix(skin, (0, 0, 0), 0.1))
        poly(g["face"], skin)
        poly(g["hair_top"], idn.hair)

        # Shading that sits under the features.
        for side in ("left", "right"):
            c, ax = g[f"{side}_cheek"]
            ellipse(c, ax, _mix(skin, (60, 60, 200), lv["cheek"]))
        if lv["forehead"] > 0.03:
            for f in g["forehead"]:
                line(f, _mix(skin, dark, lv["forehead"]), 0.008)
        if lv["glabella"] > 0.03:
            for seg in g["glabella"]:
                line(seg, _mix(skin, dark, lv["glabella"]), 0.009)
        for nl in g["nasolabial"]:
            line(nl, _mix(skin, dark, lv["nasolabial"]), 0.012)

        # Eyes: sclera, iris clipped to the lids, lid lines, brows.
        for side in ("left", "right"):
            ops.append(("eye", np.concatenate([g[f"{side}_eye"], np.asarray(g[f"{side}_iris"])[None]]),
                        (225, 228, 232), 0))
            line(g[f"{side}_eye_upper"], (30, 30, 35), 0.014)
            line(g[f"{side}_eye_lower"], _mix(skin, dark, 0.6), 0.006)
            line(g[f"{side}_crease"], _mix(skin, dark, 0.35), 0.007)
            line(g[f"{side}_under"], _mix(skin, dark, lv["under"]), 0.007)
            if lv["crow"] > 0.03:
                for seg in g[f"{side}_crow"]:
                    line(seg, _mix(skin, dark, lv["crow"]), 0.006)
            poly(g[f"{side}_brow"], idn.brow)

        # Nose.
        for b in g["nose_bridge"]:
            line(b, _mix(skin, dark, 0.15), 0.008)
        if lv["nose_wrinkle"] > 0.03:
            for wr in g["nose_wrinkles"]:
                line(wr, _mix(skin, dark, lv["nose_wrinkle"]), 0.008)
        ala_l, ala_r = g["ala"]
        for (x, y), sgn in ((ala_l, -1), (ala_r, 1)):
            ellipse((x - sgn * 0.01, y), (0.045, 0.04), _mix(skin, dark, 0.45), 0.006)
            ellipse((x - sgn * 0.04, y + 0.02), (0.025, 0.013), (25, 25, 40))
        ellipse(g["nose_tip"], (0.05, 0.04), _mix(skin, (255, 255, 255), 0.12))

        # Mouth: interior, teeth, lips, wrinkles around it.
        if g["gap"] > 0.006:
            poly(g["mouth_inner"], (35, 30, 80))
            poly(g["upper_teeth"], (222, 228, 232))
            poly(g["lower_teeth"], (210, 218, 224))
        poly(g["upper_lip"], _mix(idn.lip, (0, 0, 0), 0.08))
        poly(g["lower_lip"], idn.lip)
        line(g["mouth_line"], _mix(idn.lip, (0, 0, 0), 0.5 if g["gap"] < 0.01 else 0.2), 0.007)
        if lv["tongue"] > 0.03:
            c, ax = g["tongue"]
            ellipse(c, ax, (110, 110, 215))
        if lv["dimple"] > 0.03:
            for d in g["dimples"]:
                line(d, _mix(skin, dark, lv["dimple"]), 0.01)
        if lv["press"] > 0.03:
            for b in g["press_bulges"]:
                line(b, _mix(skin, dark, lv["press"]), 0.008)
        line(g["mentolabial"], _mix(skin, dark, lv["mentolabial"]), 0.01)
        if lv["chin"] > 0.03:
            for c in g["chin_dots"]:
                ellipse(c, (0.018, 0.012), _mix(skin, dark, lv["chin"]))

        box_extra = np.array([(0.0, idn.eye_y - idn.brow_gap - 0.2)])
        chunks = [op[1] for op in ops] + [g["landmarks"], g["face"][:40], box_extra]
        pixels = _fx(pose(np.concatenate(chunks)))
        img = self.background.copy()
        self._draw(img, ops, pixels, pose)
        cv2.multiply(img, self.gain, img, scale=1 / 128)
        pos, neg = self.noise[noise_index % len(self.noise)]
        cv2.add(img, pos, img)
        cv2.subtract(img, neg, img)

        n_ops = sum(len(op[1]) for op in ops)
        landmarks = pixels[n_ops:n_ops + NUM_LANDMARKS] / _ONE
        box_pts = pixels[n_ops:] / _ONE
        box = np.concatenate([box_pts.min(0), box_pts.max(0)])
        return img, landmarks, box

    def _draw(self, img, ops, pixels, pose: Pose):
        aa, s = cv2.LINE_AA, pose.scale
        roll_deg = float(np.degrees(pose.roll))
        i = 0
        for kind, points, color, extra in ops:
            p = pixels[i:i + len(points)]
            i += len(points)
            if kind == "poly":
                cv2.fillPoly(img, [p], color, aa, _SHIFT)
            elif kind == "line":
                cv2.polylines(img, [p], False, color, max(1, int(round(extra * s))), aa, _SHIFT)
            elif kind == "ellipse":
                (ax, ay), thickness = extra
                thickness = thickness if thickness < 0 else max(1, int(round(thickness * s)))
                axes = (max(int(ax * s * _ONE), 1), max(int(ay * s * _ONE), 1))
                cv2.ellipse(img, (int(p[0, 0]), int(p[0, 1])), axes, roll_deg, 0, 360, color,
                            thickness, aa, _SHIFT)
            else:  # eye: outline points then the iris centre
                self._draw_eye(img, p[:-1], p[-1], color, s)

    def _draw_eye(self, img, outline, iris, sclera, s):
        aa, idn = cv2.LINE_AA, self.idn
        cv2.fillPoly(img, [outline], sclera, aa, _SHIFT)
        x0, y0 = np.floor(outline.min(0) / _ONE).astype(int) - 1
        x1, y1 = np.ceil(outline.max(0) / _ONE).astype(int) + 2
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, self.w), min(y1, self.h)
        if x1 <= x0 or y1 <= y0:
            return
        roi = img[y0:y1, x0:x1]
        drawn = roi.copy()
        ci = (int(iris[0]) - x0 * _ONE, int(iris[1]) - y0 * _ONE)
        cv2.circle(drawn, ci, max(int(idn.iris_r * s * _ONE), 1), idn.iris, -1, aa, _SHIFT)
        cv2.circle(drawn, ci, max(int(0.45 * idn.iris_r * s * _ONE), 1), (15, 15, 15), -1, aa, _SHIFT)
        mask = np.zeros(roi.shape[:2], np.uint8)
        cv2.fillPoly(mask, [outline - np.array([x0, y0], np.int32) * _ONE], 255, cv2.LINE_8, _SHIFT)
        cv2.copyTo(drawn, mask, roi)
