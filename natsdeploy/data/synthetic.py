"""A deterministic synthetic multi-scale detection dataset in COCO format.

One shape type per class (rectangle, ellipse, triangle, cross, diamond, star), filled with a random
colour plus pixel noise, on a textured background (smooth colour noise at two scales plus pixel
noise). Object sizes are drawn log-uniformly from ~4 px to 0.8 of the image's short side, so the
set rewards receptive fields that cover both tiny and image-filling objects.

Annotations are exact: every shape is a polygon, the pixels drawn are pycocotools' own
rasterization of that polygon (so `annToMask` equals the painted pixels), `bbox` and `area` come
from that mask, and objects never overlap (boxes keep a 2 px gap), so every annotated object is
fully visible and nothing visible goes unannotated. Objects are placed largest first; one that
finds no free spot after a few tries is left out.

Same arguments and seed give the same bytes (PNG and JSON) on every run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from natsdeploy.data.errors import DatasetError

__all__ = ["SHAPES", "make_synthetic_coco"]

SHAPES = ("rectangle", "ellipse", "triangle", "cross", "diamond", "star")

_MIN_SIDE = 4.0  # smallest drawn size (px)
_MAX_FRACTION = 0.8  # largest drawn size, as a fraction of the short image side
_GAP = 2.0  # px kept free between object boxes
_TRIES = 30  # placements tried per object before it is left out


def _decode(rle) -> np.ndarray:
    from pycocotools import mask as mask_utils  # the coco extra: imported on use

    with warnings.catch_warnings():  # pycocotools' Cython decode trips numpy 2's copy=False deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle)


def _unit_polygon(shape: str, rng: np.random.Generator) -> np.ndarray:
    """Vertices (x, y) of `shape` in the unit square, touching all four sides."""
    if shape == "rectangle":
        pts = [(0, 0), (1, 0), (1, 1), (0, 1)]
    elif shape == "ellipse":
        t = np.linspace(0.0, 2 * math.pi, 32, endpoint=False)
        return np.stack([0.5 + 0.5 * np.cos(t), 0.5 + 0.5 * np.sin(t)], axis=1)
    elif shape == "triangle":
        apex = float(rng.uniform(0.2, 0.8))
        pts = [(apex, 0), (1, 1), (0, 1)]
        if rng.random() < 0.5:  # upside down
            pts = [(x, 1 - y) for x, y in pts]
    elif shape == "cross":
        a, b = 1 / 3, 2 / 3
        pts = [(a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b), (b, 1), (a, 1), (a, b), (0, b), (0, a), (a, a)]
    elif shape == "diamond":
        pts = [(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)]
    elif shape == "star":
        t = -math.pi / 2 + np.arange(10) * math.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        p = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
        p -= p.min(axis=0)
        return p / p.max(axis=0)
    else:  # pragma: no cover - SHAPES is closed
        raise AssertionError(shape)
    return np.asarray(pts, dtype=np.float64)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Float HxWx3 in [0, 255]: base colour + coarse and fine smooth colour noise + pixel noise."""
    base = rng.uniform(40, 215, size=3)
    img = np.broadcast_to(base, (h, w, 3)).astype(np.float32)
    for cells, amp in ((4, 45.0), (16, 20.0)):
        gh, gw = max(2, h * cells // max(h, w)), max(2, w * cells // max(h, w))
        grid = rng.uniform(-amp, amp, size=(gh, gw, 3)) + 128.0
        small = Image.fromarray(np.clip(grid, 0, 255).astype(np.uint8), "RGB")
        img += np.asarray(small.resize((w, h), Image.BICUBIC), dtype=np.float32) - 128.0
    img += rng.normal(0.0, 8.0, size=(h, w, 3)).astype(np.float32)
    return img


def _render_split(rng: np.random.Generator, n_images: int, h: int, w: int, classes: int, max_objects: int,
                  image_dir: Path) -> tuple[list[dict], list[dict]]:
    from pycocotools import mask as mask_utils  # the coco extra: imported on use

    images, annotations = [], []
    lo, hi = math.log(_MIN_SIDE), math.log(_MAX_FRACTION * min(h, w))
    for image_id in range(1, n_images + 1):
        img = _background(rng, h, w)
        n = int(rng.integers(1, max_objects + 1))
        labels = rng.integers(0, classes, size=n)
        sizes = np.exp(rng.uniform(lo, hi, size=n))
        aspects = np.exp(rng.uniform(-math.log(1.5), math.log(1.5), size=n))
        order = np.argsort(-sizes, kind="stable")  # largest first: it needs the free canvas most
        boxes: list[tuple[float, float, float, float]] = []
        for i in order:
            bw = float(np.clip(sizes[i] * math.sqrt(aspects[i]), 3.0, w - 2 * _GAP))
            bh = float(np.clip(sizes[i] / math.sqrt(aspects[i]), 3.0, h - 2 * _GAP))
            unit = _unit_polygon(SHAPES[labels[i]], rng)
            for _ in range(_TRIES):
                x0 = float(rng.uniform(_GAP / 2, w - bw - _GAP / 2))
                y0 = float(rng.uniform(_GAP / 2, h - bh - _GAP / 2))
                if all(x0 + bw + _GAP <= bx0 or bx1 + _GAP <= x0 or y0 + bh + _GAP <= by0 or by1 + _GAP <= y0
                       for bx0, by0, bx1, by1 in boxes):
                    break
            else:
                continue  # no free spot: leave it out rather than occlude
            poly = np.round(unit * [bw, bh] + [x0, y0], 2)
            flat = [float(v) for v in poly.reshape(-1)]
            rle = mask_utils.merge(mask_utils.frPyObjects([flat], h, w))
            area = float(mask_utils.area(rle))
            if area < 4:  # too thin to rasterize into a visible object
                continue
            m = _decode(rle).astype(bool)
            bg_mean = img[m].mean(axis=0)
            for _ in range(10):  # a colour that stands out from the background under it
                colour = rng.uniform(0, 255, size=3)
                if np.abs(colour - bg_mean).mean() > 50:
                    break
            img[m] = colour + rng.normal(0.0, 8.0, size=(int(m.sum()), 3))
            boxes.append((x0, y0, x0 + bw, y0 + bh))
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(labels[i]) + 1,
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "area": area,
                "iscrowd": 0,
                "segmentation": [flat],
            })
        name = f"{image_id:06d}.png"
        Image.fromarray(np.clip(img, 0, 255).round().astype(np.uint8), "RGB").save(image_dir / name, format="PNG")
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
    return images, annotations


def _check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    is_int = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not is_int or value < lo or (hi is not None and value > hi):
        expected = f"an integer in [{lo}, {hi}]" if hi is not None else f"an integer >= {lo}"
        raise ValueError(f"make_synthetic_coco: {name}={value!r}, expected {expected}")
    return int(value)


def make_synthetic_coco(out_dir: str | os.PathLike, *, train_images: int = 64, val_images: int = 16,
                        image_size: tuple[int, int] = (256, 320), classes: int = 3, seed: int = 0,
                        max_objects: int = 6) -> Path:
    """Write the synthetic dataset to `out_dir` and return it (as an absolute Path).

    Layout: `train/*.png`, `val/*.png`, `annotations/instances_train.json`,
    `annotations/instances_val.json`; categories 1..`classes` named after SHAPES; image ids 1..N per
    split. `image_size` is (H, W), each side 32..4096; `classes` is 1..6; each image gets
    1..`max_objects` objects (fewer when they do not fit without overlapping).

    Written into a temporary folder beside `out_dir`, then renamed into place, so `out_dir` is either
    absent/empty or complete. A non-empty `out_dir` (or a file there) raises DatasetError and
    nothing is written. Bad argument values raise ValueError.
    """
    train_images = _check_int("train_images", train_images, 1)
    val_images = _check_int("val_images", val_images, 1)
    classes = _check_int("classes", classes, 1, len(SHAPES))
    seed = _check_int("seed", seed, 0)
    max_objects = _check_int("max_objects", max_objects, 1)
    if not (isinstance(image_size, (tuple, list)) and len(image_size) == 2):
        raise ValueError(f"make_synthetic_coco: image_size={image_size!r}, expected (H, W)")
    h = _check_int("image_size[0]", image_size[0], 32, 4096)
    w = _check_int("image_size[1]", image_size[1], 32, 4096)

    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out}: exists and is not a folder; "
                           "expected a new or empty folder for the synthetic dataset")
    if out.is_dir() and any(out.iterdir()):
        raise DatasetError(f"{out}: folder is not empty; expected a new or empty folder for the synthetic dataset")
    out.parent.mkdir(parents=True, exist_ok=True)

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / "annotations").mkdir()
        categories = [{"id": k + 1, "name": SHAPES[k], "supercategory": "shape"} for k in range(classes)]
        for split_index, (split, n) in enumerate((("train", train_images), ("val", val_images))):
            (tmp / split).mkdir()
            rng = np.random.default_rng(np.random.SeedSequence([seed, split_index]))
            images, annotations = _render_split(rng, n, h, w, classes, max_objects, tmp / split)
            doc = {
                "info": {"description": "natsdeploy synthetic multi-scale shapes", "version": "1",
                         "seed": seed, "split": split, "image_size": [h, w]},
                "licenses": [],
                "images": images,
                "annotations": annotations,
                "categories": categories,
            }
            (tmp / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc, separators=(",", ":")))
        if out.is_dir():
            out.rmdir()  # empty (checked above); rename needs the name free
        try:
            os.rename(tmp, out)
        except OSError as e:
            raise DatasetError(f"{out}: could not move the generated dataset into place ({e.strerror}); "
                               "expected a new or empty folder") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
