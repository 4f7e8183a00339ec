"""A plain folder of images (no annotations), read as what a detector's transform takes: INT8 calibration data.

`ImageFolder(root)` finds every `.jpg`, `.jpeg`, `.png` and `.bmp` file under `root` (suffix case-insensitive,
searched recursively, hidden files and folders -- names starting with '.', such as macOS `._x.jpg` -- left
out), sorted by their path relative to `root` so a calibration run is reproducible. `ds[i]` is
`(image, {})`, `image` float32 [3, H, W] in [0, 1], as `CocoDetection` gives it: 8-bit images go through
PIL's `convert("RGB")` exactly as `CocoDetection` does (grayscale replicated, alpha dropped, palette
looked up, CMYK converted), so a COCO set's images read as a folder give the same tensors. 16-bit
grayscale (PIL mode `I;16`/`I`) is scaled to 8 bits by round(v * 255 / 65535), not clipped as
`convert("RGB")` would clip it; 16-bit colour PNGs PIL itself decodes to 8 bits (the high byte, within
one level of that scaling). EXIF orientation is not applied, as in `CocoDetection` and pycocotools.

Any file that cannot be read raises a one-line `DatasetError` naming it; so does a folder with no images.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from natsdeploy.errors import DatasetError

__all__ = ["IMAGE_SUFFIXES", "ImageFolder", "find_images", "read_rgb", "check_readable"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
_UNREADABLE = (OSError, ValueError, SyntaxError, EOFError)  # PIL's decoders raise these for bad files


def find_images(root: str | os.PathLike) -> list[Path]:
    """The image files under `root` (recursive, `IMAGE_SUFFIXES` in any case, hidden names left out),
    sorted by their POSIX path relative to `root`."""
    root = Path(root)
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(folder) / f for f in files if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES)]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _unreadable(path: Path, error: Exception) -> DatasetError:
    from PIL import UnidentifiedImageError

    why = ("not an image format PIL recognises" if isinstance(error, UnidentifiedImageError)
           else f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'no message'}")
    return DatasetError(f"{path}: got an unreadable image ({why}), expected a JPEG, PNG or BMP image")


def _to_rgb8(im: Any) -> np.ndarray:
    """uint8 [H, W, 3] of a PIL image: 16-bit grayscale scaled, everything else `convert("RGB")`."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        v = np.asarray(im).astype(np.int64).clip(0, 65535)
        grey = ((v * 255 + 32767) // 65535).astype(np.uint8)  # round(v * 255 / 65535), exact in integers
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # the same RGB, without PIL's warning about palette transparency
    return np.asarray(im.convert("RGB"))


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """The image at `path` as uint8 [H, W, 3] RGB (module docstring); a one-line `DatasetError` naming it
    if PIL cannot read it."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as im:
            return np.array(_to_rgb8(im))
    except (*_UNREADABLE, Image.DecompressionBombError) as e:
        raise _unreadable(path, e) from None


def check_readable(path: str | os.PathLike) -> None:
    """Cheap check before any work: PIL recognises the file's header (decoding errors show in `read_rgb`)."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path):
            pass
    except (*_UNREADABLE, Image.DecompressionBombError) as e:
        raise _unreadable(path, e) from None


class ImageFolder:
    """The images under `root` (`find_images`): `ds[i] -> (image float32 [3, H, W] in [0, 1], {})`.

    `split` is "image folder" (where a COCO set names its split), `paths` the files in order. An empty
    folder raises a one-line `DatasetError` (`field` names the flag it came from).
    """

    split = "image folder"

    def __init__(self, root: str | os.PathLike, *, field: str = "images") -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DatasetError(f"{field}: got {str(root)!r}, expected a folder of images")
        self.paths = find_images(self.root)
        if not self.paths:
            raise DatasetError(f"{field}: got {str(root)!r} with no {'/'.join(IMAGE_SUFFIXES)} file in it or its "
                               "subfolders, expected a folder of images or a COCO-format folder")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        import torch

        pixels = read_rgb(self.paths[index])
        return torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255.0), {}

    def check(self, n: int | None = None) -> None:
        """Every one of the first `n` images (all by default) has a header PIL recognises."""
        for path in self.paths[:n]:
            check_readable(path)
