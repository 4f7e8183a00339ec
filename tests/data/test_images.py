"""A plain folder of images (`natsdeploy.data.images`): which files, in which order, how each mode becomes
8-bit RGB, one-line errors, and the same tensors as the COCO reader gives for the same files."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from natsdeploy.data.coco import load_dataset
from natsdeploy.data.images import ImageFolder, find_images, read_rgb
from natsdeploy.errors import DatasetError

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 8, 3), dtype=np.uint8)
GREY = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
RGBA = RNG.integers(0, 256, (4, 6, 4), dtype=np.uint8)
GREY16 = np.array([[0, 1, 128, 129, 257, 30000], [32767, 32768, 40000, 65279, 65534, 65535]], np.uint16)
SMOOTH = np.stack([*np.meshgrid(np.arange(8) * 30, np.arange(6) * 40), np.full((6, 8), 90)], axis=2).astype(np.uint8)
PALETTE = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
INDICES = RNG.integers(0, 256, (3, 5), dtype=np.uint8)


def write_png16(path, array: np.ndarray) -> None:
    """A 16-bit PNG written byte by byte (PIL cannot write 16-bit colour): grey [H, W] or RGB [H, W, 3]."""
    h, w = array.shape[:2]
    color_type = 0 if array.ndim == 2 else 2
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Images of every mode at several depths, plus files that are not images or are hidden."""
    root = tmp_path_factory.mktemp("photos")
    (root / "sub" / "deep").mkdir(parents=True)
    (root / ".cache").mkdir()
    Image.fromarray(RGB).save(root / "b_rgb.png")
    Image.fromarray(SMOOTH).save(root / "A.JPG", quality=95, subsampling=0)
    Image.fromarray(GREY).save(root / "grey.jpeg")
    Image.fromarray(RGBA).save(root / "sub" / "rgba.png")
    pal = Image.fromarray(INDICES, mode="P")
    pal.putpalette(PALETTE.tobytes())
    pal.save(root / "sub" / "palette.bmp")
    write_png16(root / "sub" / "deep" / "grey16.PNG", GREY16)
    write_png16(root / "sub" / "deep" / "rgb16.png", np.stack([GREY16, GREY16[::-1], GREY16[:, ::-1]], axis=2))
    (root / "notes.txt").write_text("not an image")
    (root / "sub" / "x.gif").write_bytes(b"GIF89a")  # not a suffix calibration reads
    (root / "._A.JPG").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # hidden: macOS resource fork
    Image.fromarray(RGB).save(root / ".cache" / "c.png")
    return root


ORDER = ["A.JPG", "b_rgb.png", "grey.jpeg", "sub/deep/grey16.PNG", "sub/deep/rgb16.png", "sub/palette.bmp",
         "sub/rgba.png"]


def test_finds_images_recursively_sorted_case_insensitive(folder):
    assert [p.relative_to(folder).as_posix() for p in find_images(folder)] == ORDER
    ds = ImageFolder(folder)
    assert len(ds) == len(ORDER) and ds.split == "image folder"


def test_modes_become_rgb_uint8(folder):
    """Each mode against the pixels written (lossless formats) or PIL's own JPEG decode."""
    for name in ORDER:
        px = read_rgb(folder / name)
        assert px.dtype == np.uint8 and px.ndim == 3 and px.shape[2] == 3, name
    np.testing.assert_array_equal(read_rgb(folder / "b_rgb.png"), RGB)
    np.testing.assert_array_equal(read_rgb(folder / "sub" / "rgba.png"), RGBA[..., :3])  # alpha dropped
    np.testing.assert_array_equal(read_rgb(folder / "sub" / "palette.bmp"), PALETTE[INDICES])
    grey = read_rgb(folder / "grey.jpeg")
    assert (grey == grey[..., :1]).all()  # replicated
    with Image.open(folder / "grey.jpeg") as im:
        np.testing.assert_array_equal(grey[..., 0], np.asarray(im))
    assert np.abs(read_rgb(folder / "A.JPG").astype(int) - SMOOTH).max() <= 8  # a smooth JPEG at quality 95


def test_16_bit_scaled_not_clipped(folder):
    """16-bit grey: round(v / 257) exactly (65535 -> 255, 30000 -> 117; PIL's convert would clip 30000 to 255).
    16-bit colour: PIL keeps the high byte, within one level of that."""
    g = read_rgb(folder / "sub" / "deep" / "grey16.PNG")
    want = np.floor(GREY16.astype(np.float64) / 257 + 0.5).astype(np.uint8)
    for c in range(3):
        np.testing.assert_array_equal(g[..., c], want)
    assert g[0, 5, 0] == 117 and g[1, 5, 0] == 255 and g[0, 1, 0] == 0
    rgb = read_rgb(folder / "sub" / "deep" / "rgb16.png")
    ref = np.stack([GREY16, GREY16[::-1], GREY16[:, ::-1]], axis=2).astype(np.float64) / 257
    assert np.abs(rgb - ref).max() <= 1.0


def test_items_are_float_images_like_coco(folder):
    image, target = ImageFolder(folder)[1]
    assert target == {} and image.dtype == torch.float32 and image.shape == (3, 6, 8)
    torch.testing.assert_close(image, torch.from_numpy(RGB).permute(2, 0, 1).float() / 255, rtol=0, atol=0)


def test_coco_images_read_as_a_folder_equal_the_coco_reader(synth_root):
    coco = load_dataset(str(synth_root), "train")
    ds = ImageFolder(synth_root / "train")
    assert len(ds) == len(coco) > 0
    for i in range(len(ds)):
        assert torch.equal(ds[i][0], coco[i][0]), i


def test_unreadable_jpg_named_in_one_line(tmp_path):
    """A file PIL cannot identify fails the header check of the images used (only those) and the read."""
    Image.fromarray(RGB).save(tmp_path / "a_good.png")
    (tmp_path / "b_bad.jpg").write_text("this is text, not a JPEG")
    ds = ImageFolder(tmp_path)
    ds.check(1)  # only the first image is used: the bad one is not looked at
    with pytest.raises(DatasetError) as e:
        ds.check(2)
    msg = str(e.value)
    assert msg == f"{tmp_path / 'b_bad.jpg'}: got an unreadable image (not an image format PIL recognises), " \
                  "expected a JPEG, PNG or BMP image"
    with pytest.raises(DatasetError, match="b_bad.jpg: got an unreadable image"):
        ds[1]


def test_truncated_jpeg_fails_when_decoded(tmp_path):
    """A JPEG cut short has a valid header (it passes `check`) and fails, named, where it is decoded."""
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    ds = ImageFolder(tmp_path)
    ds.check()
    with pytest.raises(DatasetError) as e:
        read_rgb(tmp_path / "cut.jpg")
    assert str(e.value).startswith(f"{tmp_path / 'cut.jpg'}: got an unreadable image (OSError: ")
    assert "\n" not in str(e.value)


def test_folder_without_images_is_one_line(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError) as e:
        ImageFolder(tmp_path, field="--calibration")
    assert str(e.value) == (f"--calibration: got {str(tmp_path)!r} with no .jpg/.jpeg/.png/.bmp file in it or its "
                            "subfolders, expected a folder of images or a COCO-format folder")
