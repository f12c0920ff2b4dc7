"""Image loading: every odd kind of file is written for real with PIL/OpenCV and read back."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from ganviews.core.errors import ImageError
from ganviews.core.images import load_image, load_images, orient_array, signed_to_uint8


def _rgb(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR claims ``width × height`` but carries no pixel data at all."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def _reason(excinfo: pytest.ExceptionInfo) -> str:
    return excinfo.value.reason


def test_rgb_png_roundtrips_exactly(tmp_path):
    arr = _rgb()
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (24, 32, 3)
    np.testing.assert_array_equal(out, arr)


def test_grayscale_and_bilevel_are_replicated(tmp_path):
    gray = _rgb()[:, :, 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.shape == (24, 32, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)
    Image.fromarray(gray > 127).save(tmp_path / "b.png")
    assert Image.open(tmp_path / "b.png").mode == "1"
    out = load_image(tmp_path / "b.png")
    np.testing.assert_array_equal(out[:, :, 1], np.where(gray > 127, 255, 0))


def test_rgba_is_composited_over_the_background(tmp_path):
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 100, 0)
    rgba[:10, :, 3] = 128  # half transparent
    rgba[10:, :, 3] = 0  # fully transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    # 200·128/255 + 255·127/255 = 227.4 → 227;  100·128/255 + 127 = 177.2 → 177;  0 + 127 → 127
    np.testing.assert_array_equal(out[0, 0], [227, 177, 127])
    np.testing.assert_array_equal(out[15, 3], [255, 255, 255])
    out_black = load_image(tmp_path / "a.png", background=(0, 0, 0))
    np.testing.assert_array_equal(out_black[0, 0], [100, 50, 0])
    np.testing.assert_array_equal(out_black[15, 3], [0, 0, 0])


def test_gray_alpha_is_composited(tmp_path):
    la = np.zeros((20, 20, 2), dtype=np.uint8)
    la[..., 0] = 60
    la[..., 1] = 255
    la[:, :5, 1] = 0
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    out = load_image(tmp_path / "la.png")
    np.testing.assert_array_equal(out[0, 10], [60, 60, 60])
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])


def test_palette_with_transparency(tmp_path):
    idx = np.zeros((20, 20), dtype=np.uint8)
    idx[:, 10:] = 1
    im = Image.fromarray(idx, mode="P")
    im.putpalette([0, 0, 0, 10, 200, 30] + [0] * (3 * 254))
    im.save(tmp_path / "p.png", transparency=0)
    assert Image.open(tmp_path / "p.png").mode == "P"
    out = load_image(tmp_path / "p.png")
    np.testing.assert_array_equal(out[5, 2], [255, 255, 255])  # index 0 is transparent → white
    np.testing.assert_array_equal(out[5, 15], [10, 200, 30])
    im.save(tmp_path / "p_opaque.png")
    np.testing.assert_array_equal(load_image(tmp_path / "p_opaque.png")[5, 2], [0, 0, 0])


def test_cmyk_jpeg(tmp_path):
    cmyk = np.zeros((32, 48, 4), dtype=np.uint8)
    cmyk[:, 16:32, 0] = 255  # pure cyan
    cmyk[:, 32:, 3] = 128  # 50 % black
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    out = load_image(tmp_path / "c.jpg").astype(int)
    assert out.shape == (32, 48, 3)
    np.testing.assert_allclose(out[16, 4], [255, 255, 255], atol=3)
    np.testing.assert_allclose(out[16, 24], [0, 255, 255], atol=3)
    np.testing.assert_allclose(out[16, 40], [127, 127, 127], atol=3)


def test_16bit_gray_png_scales_by_257(tmp_path):
    values = np.array([[0, 257, 1000, 32768], [65535, 65279, 128, 12850]], dtype=np.uint16)
    values = np.tile(values, (8, 4))  # [16, 16]
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = load_image(tmp_path / "g16.png")
    expect = np.round(values / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(out[:, :, 0], expect)
    assert out[1, 0, 0] == 255 and out[0, 0, 0] == 0


def test_16bit_colour_png_scales_by_257_not_high_byte(tmp_path):
    rng = np.random.default_rng(1)
    rgb16 = rng.integers(0, 65536, size=(16, 20, 3), dtype=np.uint16)
    rgb16[0, 0] = (65535, 0, 383)  # 383/257 = 1.49 → 1, whereas the high byte gives 1 too
    rgb16[0, 1] = (
        65279,
        32768,
        511,
    )  # 65279/257 = 254.0; high byte 254; 511/257 = 1.99 → 2 (high byte 1)
    cv2.imwrite(str(tmp_path / "c16.png"), rgb16[:, :, ::-1].copy())  # OpenCV writes BGR
    out = load_image(tmp_path / "c16.png")
    np.testing.assert_array_equal(out, np.round(rgb16 / 257.0).astype(np.uint8))
    assert tuple(out[0, 1]) == (254, 128, 2)


def test_16bit_rgba_png_composites_in_16bit(tmp_path):
    bgra = np.zeros((16, 16, 4), dtype=np.uint16)
    bgra[..., 2] = 65535  # red
    bgra[..., 3] = 32768  # ≈ half alpha
    cv2.imwrite(str(tmp_path / "a16.png"), bgra)
    out = load_image(tmp_path / "a16.png", background=(0, 0, 0))
    np.testing.assert_array_equal(out[3, 3], [128, 0, 0])


def test_float_tiff(tmp_path):
    values = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
    Image.fromarray(values, mode="F").save(tmp_path / "f.tif")
    out = load_image(tmp_path / "f.tif")
    np.testing.assert_array_equal(out[:, :, 2], np.round(values * 255).astype(np.uint8))
    Image.fromarray(values * 3, mode="F").save(tmp_path / "f3.tif")
    with pytest.raises(ImageError) as exc:
        load_image(tmp_path / "f3.tif")
    assert "not all within [0, 1]" in _reason(exc)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil(tmp_path, orientation):
    arr = _rgb(12, 20, seed=orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(tmp_path / "o.png", exif=exif)
    out = load_image(tmp_path / "o.png", min_size=4)
    expect = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")).convert("RGB"))
    np.testing.assert_array_equal(out, expect)
    if orientation == 6:  # "rotate 90° clockwise to display"
        np.testing.assert_array_equal(out, np.rot90(arr, -1))
    np.testing.assert_array_equal(orient_array(arr, orientation), expect)


def test_truncated_jpeg_is_rejected(tmp_path):
    Image.fromarray(_rgb(64, 64)).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as exc:
        load_image(tmp_path / "cut.jpg")
    assert _reason(exc).startswith("truncated or corrupt")
    assert "cut.jpg" in str(exc.value)


def test_truncated_16bit_colour_png_is_rejected(tmp_path):
    rgb16 = np.random.default_rng(2).integers(0, 65536, size=(64, 64, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "full.png"), rgb16)
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as exc:
        load_image(tmp_path / "cut.png")
    assert _reason(exc).startswith("truncated or corrupt")


def test_random_bytes_named_jpg(tmp_path):
    (tmp_path / "junk.jpg").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ImageError) as exc:
        load_image(tmp_path / "junk.jpg")
    assert _reason(exc) == "unreadable: not a recognised image format"


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError) as exc:
        load_image(tmp_path / "nope.png")
    assert _reason(exc) == "file not found"
    with pytest.raises(ImageError) as exc:
        load_image(tmp_path)
    assert _reason(exc) == "not a regular file"


def test_tiny_image_is_rejected(tmp_path):
    Image.fromarray(_rgb(4, 4)).save(tmp_path / "t.png")
    with pytest.raises(ImageError) as exc:
        load_image(tmp_path / "t.png")
    assert _reason(exc) == "too small: 4x4 px (shortest side must be >= 16)"
    assert load_image(tmp_path / "t.png", min_size=4).shape == (4, 4, 3)


def test_decompression_bomb_header_is_rejected_without_decoding(tmp_path):
    path = _png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(ImageError) as exc:
        load_image(path)
    assert _reason(exc).startswith("decompression bomb")


def test_pil_bomb_warning_becomes_rejection(tmp_path):
    # 10000² = 1e8 px lies between PIL's MAX_IMAGE_PIXELS (≈8.9e7) and twice that, where
    # PIL only warns; it must be a rejection, and no warning may escape.
    path = _png_header_only(tmp_path / "warn.png", 10_000, 10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageError) as exc:
            load_image(path, max_pixels=10**9)
    assert _reason(exc).startswith("decompression bomb: ")
    assert "DecompressionBomb" in type(exc.value.__cause__).__name__


def test_max_pixels_keyword(tmp_path):
    Image.fromarray(_rgb(100, 100)).save(tmp_path / "a.png")
    with pytest.raises(ImageError) as exc:
        load_image(tmp_path / "a.png", max_pixels=5000)
    assert _reason(exc) == ("decompression bomb guard: 100x100 = 10000 px exceeds max_pixels=5000")
    with pytest.raises(ValueError, match="max_pixels must be >= 1, got 0"):
        load_image(tmp_path / "a.png", max_pixels=0)


def test_load_images_goes_on_after_failures(tmp_path):
    good = _rgb()
    Image.fromarray(good).save(tmp_path / "ok.png")
    Image.fromarray(_rgb(4, 4)).save(tmp_path / "tiny.png")
    (tmp_path / "junk.jpg").write_bytes(b"<html>not an image</html>")
    paths = [tmp_path / "ok.png", tmp_path / "tiny.png", tmp_path / "junk.jpg", tmp_path / "ok.png"]
    arrays, failures = load_images(paths)
    assert len(arrays) == 4 and arrays[1] is None and arrays[2] is None
    np.testing.assert_array_equal(arrays[0], good)
    np.testing.assert_array_equal(arrays[3], good)
    assert failures == {
        1: "too small: 4x4 px (shortest side must be >= 16)",
        2: "unreadable: not a recognised image format",
    }


def test_signed_to_uint8_clamps_rounds_and_inverts_the_uint8_scaling():
    pixels = np.arange(256, dtype=np.uint8)
    assert np.array_equal(signed_to_uint8(pixels.astype(np.float32) / 127.5 - 1.0), pixels)
    got = signed_to_uint8(
        np.array([-3.0, -1.0, 0.0, 1.0, 7.0, 0.5 / 127.5 - 1.0], dtype=np.float32)
    )
    assert got.dtype == np.uint8
    assert got.tolist() == [0, 0, 128, 255, 255, 0]  # 127.5 → 128, 0.5 → 0 (half to even)


def test_integer_compositing_equals_the_float64_formula_for_every_value():
    """Every (colour, alpha) pair over three backgrounds: the block-wise integer "over" gives
    exactly round(c·a/255 + bg·(1 − a/255)) as computed in float64."""
    from ganviews.core.images import _composite

    c, a = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")  # [256, 256]
    rgba = np.stack([c, c, 255 - c, a], axis=2).astype(np.uint8)
    for bg in ((255, 255, 255), (0, 0, 0), (17, 128, 254)):
        got = _composite(Image.fromarray(rgba, "RGBA"), bg)
        x = rgba.astype(np.float64)
        want = x[:, :, :3] * (x[:, :, 3:] / 255) + np.asarray(bg) * (1 - x[:, :, 3:] / 255)
        np.testing.assert_array_equal(got, np.clip(np.round(want), 0, 255).astype(np.uint8))


PEAK_CHILD = """
import json, resource, sys
import numpy as np, cv2
from PIL import Image
from ganviews.core.images import load_image
def peak_kib():  # VmHWM: ru_maxrss of an exec'd child starts at its parent's peak
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 512 * 2**20, resource.RLIM_INFINITY))
open("/proc/self/clear_refs", "w").write("5")  # peak RSS := current RSS (Linux)
base = peak_kib()
shape = load_image(sys.argv[1]).shape
print(json.dumps({"shape": shape, "growth_mb": (peak_kib() - base) / 1024}))
"""


@pytest.mark.parametrize("kind", ["rgba8", "rgba16"])
def test_peak_memory_per_image_is_bounded(tmp_path, kind):
    """Issue 18.2: an 8192² RGBA PNG took 7.7 GB (float64 compositing of the whole image), a
    16-bit one 7.1 GB. At 2048² the decoded source is 16 / 32 MiB and the output 12 MiB;
    the child (address space capped at +512 MiB) may grow its peak RSS (VmHWM) by the decoded
    source + output + 96 MiB, not by float64 copies (the old code grew by 470-480 MiB)."""
    side = 2048
    ramp = np.arange(side, dtype=np.uint32)
    alpha = (ramp[None, :] + ramp[:, None]) % 256  # [H, W]: every alpha value, compressible
    if kind == "rgba8":
        arr = np.dstack([alpha, 255 - alpha, alpha // 2, alpha]).astype(np.uint8)
        decoded = side * side * 4
    else:
        arr = (np.dstack([alpha, 255 - alpha, alpha // 2, alpha]) * 257).astype(np.uint16)
        decoded = side * side * 8
    path = tmp_path / f"{kind}.png"
    assert cv2.imwrite(str(path), arr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    del arr
    proc = subprocess.run(
        [sys.executable, "-c", PEAK_CHILD, str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["shape"] == [side, side, 3]
    assert result["growth_mb"] < (decoded + side * side * 3) / 2**20 + 96, result


def test_decoded_size_budget_rejects_before_decoding_and_fails_alone(tmp_path):
    """A 16-bit RGBA PNG over ``max_decoded_bytes`` is rejected from its header, by itself."""
    big = tmp_path / "big16.png"
    assert cv2.imwrite(str(big), np.zeros((512, 512, 4), np.uint16))
    good = tmp_path / "good.png"
    Image.fromarray(_rgb()).save(good)
    arrays, failures = load_images([good, big, good], max_decoded_bytes=1 << 20)
    assert list(failures) == [1]
    assert failures[1] == (
        "too large to decode: 512x512 RGBA needs 2097152 bytes, more than max_decoded_bytes=1048576"
    )
    assert arrays[0].shape == arrays[2].shape == (24, 32, 3)
