"""Reading COCO-format detection datasets into what torchvision detection models take.

Layout: `root/<split>/` images + `root/annotations/instances_<split>.json` (what
`make_synthetic_coco` writes), or COCO's own `root/<split>2017/` + `instances_<split>2017.json`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from natsdeploy.data.errors import DatasetError

__all__ = ["DatasetError", "CocoDetection", "collate", "load_dataset", "default_synthetic_dir", "has_annotations"]


def _layouts(root: Path, split: str) -> list[tuple[Path, Path]]:
    """(image folder, annotation file) of `split` in the two layouts this module reads."""
    return [(root / split, root / "annotations" / f"instances_{split}.json"),
            (root / f"{split}2017", root / "annotations" / f"instances_{split}2017.json")]


def has_annotations(root: str | os.PathLike) -> bool:
    """Whether `root` holds a COCO annotation file of a train or val split (either layout): a COCO-format set,
    not a plain folder of images."""
    root = Path(root).expanduser()
    return any(ann.is_file() for split in ("train", "val") for _, ann in _layouts(root, split))


def _find_layout(root: Path, split: str) -> tuple[Path, Path]:
    candidates = _layouts(root, split)
    for image_dir, ann_file in candidates:
        if ann_file.is_file():
            if not image_dir.is_dir():
                raise DatasetError(f"{image_dir}: got no image folder, expected the images of {ann_file.name} there")
            return image_dir, ann_file
    raise DatasetError(f"{candidates[0][1]}: got no annotation file, expected annotations/instances_{split}.json "
                       f"(or instances_{split}2017.json) under {root}")


def _load_json(ann_file: Path) -> dict:
    try:
        with open(ann_file, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{ann_file}: got invalid JSON at line {e.lineno} column {e.colno} ({e.msg}), "
                           "expected a COCO annotation file") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{ann_file}: got bytes that are not UTF-8 text, expected a COCO annotation JSON file") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{ann_file}: got a {type(data).__name__} at the top level, expected a JSON object with "
                           "'images', 'annotations' and 'categories'")
    for key in ("images", "categories"):
        value = data.get(key)
        if not isinstance(value, list) or not value:
            if key not in data:
                got = "no such key"
            elif isinstance(value, list):
                got = "an empty list"
            else:
                got = f"a {type(value).__name__}"
            raise DatasetError(f"{ann_file}: {key}: got {got}, expected a non-empty list")
    anns = data.setdefault("annotations", [])
    if not isinstance(anns, list):
        raise DatasetError(f"{ann_file}: annotations: got a {type(anns).__name__}, expected a list")
    for i, img in enumerate(data["images"]):
        if not (isinstance(img, dict) and isinstance(img.get("id"), int) and isinstance(img.get("file_name"), str)):
            raise DatasetError(f"{ann_file}: images[{i}]: got {str(img)[:80]}, expected an object with integer "
                               "'id' and string 'file_name'")
    for i, cat in enumerate(data["categories"]):
        if not (isinstance(cat, dict) and isinstance(cat.get("id"), int)):
            raise DatasetError(f"{ann_file}: categories[{i}]: got {str(cat)[:80]}, expected an object with integer 'id'")
    image_ids = {img["id"] for img in data["images"]}
    cat_ids = {cat["id"] for cat in data["categories"]}
    for i, ann in enumerate(anns):
        if not isinstance(ann, dict):
            raise DatasetError(f"{ann_file}: annotations[{i}]: got a {type(ann).__name__}, expected an object")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise DatasetError(f"{ann_file}: annotations[{i}].bbox: got {bbox!r}, expected [x, y, w, h] numbers")
        if ann.get("image_id") not in image_ids:
            raise DatasetError(f"{ann_file}: annotations[{i}].image_id: got {ann.get('image_id')!r}, "
                               "expected the id of an entry of 'images'")
        if ann.get("category_id") not in cat_ids:
            raise DatasetError(f"{ann_file}: annotations[{i}].category_id: got {ann.get('category_id')!r}, "
                               f"expected one of the category ids {sorted(cat_ids)}")
    return data


class CocoDetection(torch.utils.data.Dataset):
    """A COCO-format split: `ds[i] -> (image, target)`.

    `image`: float32 [3, H, W] in [0, 1]. `target`: `boxes` float32 [N, 4] xyxy (clamped to the
    image), `labels` int64 [N] in 1..K (contiguous, in order of category id), `image_id` int, and
    `masks` uint8 [N, H, W] only when `masks=True`. Crowd annotations and boxes with w or h < 1 are
    left out; images without annotations are kept (empty targets).

    Attributes: `coco` (pycocotools COCO), `ids` (image ids, sorted), `num_classes` (K, without
    background), `label_to_cat_id`, `cat_id_to_label`, `image_dir`, `ann_file`.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", *, masks: bool = False):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DatasetError(f"{root}: got no dataset folder, expected a folder with {split}/ images "
                               f"and annotations/instances_{split}.json")
        self.root, self.split, self.masks = root, split, masks
        self.image_dir, self.ann_file = _find_layout(root, split)
        data = _load_json(self.ann_file)
        present = set(os.listdir(self.image_dir))
        for img in data["images"]:
            name = img["file_name"]
            if not (name in present or ("/" in name and (self.image_dir / name).is_file())):
                raise DatasetError(f"{self.image_dir / name}: got no image file, expected the file named by "
                                   f"image id {img['id']} in {self.ann_file.name}")
        from pycocotools.coco import COCO  # the coco extra: imported on use (has_annotations needs none)

        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco.createIndex()
        cat_ids = sorted(self.coco.cats)
        self.label_to_cat_id: dict[int, int] = {i + 1: c for i, c in enumerate(cat_ids)}
        self.cat_id_to_label: dict[int, int] = {c: i + 1 for i, c in enumerate(cat_ids)}
        self.num_classes = len(cat_ids)
        self.ids: list[int] = sorted(self.coco.imgs)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        try:
            with Image.open(path) as im:
                pixels = np.asarray(im.convert("RGB"))
        except FileNotFoundError:
            raise DatasetError(f"{path}: got no image file, "
                               f"expected the file named by image id {image_id}") from None
        h, w = pixels.shape[:2]
        if (info.get("height", h), info.get("width", w)) != (h, w):
            raise DatasetError(f"{path}: got a {h}x{w} (HxW) image, expected {info.get('height')}x{info.get('width')} "
                               f"as image id {image_id} says in {self.ann_file.name}")
        image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255.0)

        boxes, labels, keep = [], [], []
        for ann in self.coco.imgToAnns.get(image_id, []):
            if ann.get("iscrowd", 0):
                continue
            x, y, bw, bh = ann["bbox"]
            if bw < 1 or bh < 1:
                continue
            x0, y0 = min(max(x, 0.0), w), min(max(y, 0.0), h)
            x1, y1 = min(max(x + bw, 0.0), w), min(max(y + bh, 0.0), h)
            if x1 <= x0 or y1 <= y0:  # entirely outside the image
                continue
            boxes.append([x0, y0, x1, y1])
            labels.append(self.cat_id_to_label[ann["category_id"]])
            keep.append(ann)
        target: dict[str, Any] = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "image_id": int(image_id),
        }
        if self.masks:
            if keep:
                with warnings.catch_warnings():  # pycocotools' decode vs numpy 2's copy=False deprecation
                    warnings.simplefilter("ignore", DeprecationWarning)
                    stacked = np.stack([self.coco.annToMask(a) for a in keep])
                target["masks"] = torch.from_numpy(stacked).to(torch.uint8)
            else:
                target["masks"] = torch.zeros((0, h, w), dtype=torch.uint8)
        return image, target


def collate(batch):
    """[(image, target), ...] -> ([image, ...], [target, ...]), the lists torchvision detectors take."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


def default_synthetic_dir(seed: int = 0) -> Path:
    """`$NATSDEPLOY_CACHE/synthetic-<seed>`, or `~/.cache/natsdeploy/synthetic-<seed>` without the variable."""
    cache = os.environ.get("NATSDEPLOY_CACHE") or Path.home() / ".cache" / "natsdeploy"
    return Path(cache).expanduser() / f"synthetic-{seed}"


def load_dataset(spec: str, split: str, *, masks: bool = False, synthetic_dir: str | os.PathLike | None = None,
                 seed: int = 0) -> CocoDetection:
    """`spec` is a dataset folder, or `"synthetic"`: the default synthetic set (see `make_synthetic_coco`),
    generated once into `synthetic_dir` (default `default_synthetic_dir(seed)`) and read from there."""
    if spec != "synthetic":
        return CocoDetection(spec, split, masks=masks)
    from natsdeploy.data.synthetic import make_synthetic_coco

    out = Path(synthetic_dir).expanduser() if synthetic_dir is not None else default_synthetic_dir(seed)
    if not out.is_dir() or not any(out.iterdir()):
        try:
            make_synthetic_coco(out, seed=seed)
        except DatasetError:
            if not (out / "annotations").is_dir():  # not a concurrent generator that won the rename
                raise
    return CocoDetection(out, split, masks=masks)
