"""The synthetic multi-scale COCO generator: determinism, validity, size spread, atomic writes."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools import mask as mask_utils

from natsdeploy.data import DatasetError
from natsdeploy.data.synthetic import SHAPES, make_synthetic_coco

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools decode

KW = dict(train_images=6, val_images=2, image_size=(96, 128), classes=4)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = _files(make_synthetic_coco(tmp_path / "a", seed=7, **KW))
    b = _files(make_synthetic_coco(tmp_path / "b", seed=7, **KW))
    c = _files(make_synthetic_coco(tmp_path / "c", seed=8, **KW))
    assert a == b
    assert set(a) == set(c)
    assert a["annotations/instances_train.json"] != c["annotations/instances_train.json"]
    assert a["train/000001.png"] != c["train/000001.png"]
    assert sorted(a) == sorted(["annotations/instances_train.json", "annotations/instances_val.json"]
                               + [f"train/{i:06d}.png" for i in range(1, 7)] + ["val/000001.png", "val/000002.png"])


def test_pycocotools_loads_and_annotations_are_valid(synth_root):
    for split, n in (("train", 24), ("val", 6)):
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(synth_root / "annotations" / f"instances_{split}.json"))
        assert len(coco.imgs) == n
        assert sorted(coco.cats) == [1, 2, 3]
        assert [coco.cats[k]["name"] for k in (1, 2, 3)] == list(SHAPES[:3])
        assert coco.anns
        for ann in coco.anns.values():
            img = coco.imgs[ann["image_id"]]
            x, y, w, h = ann["bbox"]
            assert x >= 0 and y >= 0 and w >= 1 and h >= 1
            assert x + w <= img["width"] and y + h <= img["height"]
            assert ann["iscrowd"] == 0 and ann["category_id"] in coco.cats
            assert isinstance(ann["segmentation"], list) and all(len(p) >= 6 for p in ann["segmentation"])
            assert ann["area"] == float(coco.annToMask(ann).sum()) > 0
        for img in coco.imgs.values():
            with Image.open(synth_root / split / img["file_name"]) as im:
                assert im.mode == "RGB" and im.size == (img["width"], img["height"])


def test_objects_do_not_overlap_so_every_annotation_is_fully_visible(synth_root):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(synth_root / "annotations" / "instances_train.json"))
    for image_id in coco.imgs:
        anns = coco.imgToAnns[image_id]
        masks = np.stack([coco.annToMask(a) for a in anns]).astype(int)
        assert masks.sum(axis=0).max() <= 1
        for a in anns:  # the mask's own extent is the bbox
            assert list(mask_utils.toBbox(coco.annToRLE(a))) == a["bbox"]


def test_object_sizes_span_tiny_to_most_of_the_image(synth_root):
    data = json.loads((synth_root / "annotations" / "instances_train.json").read_text())
    sides = np.array([a["bbox"][2:] for a in data["annotations"]])
    short = min(data["images"][0]["height"], data["images"][0]["width"])
    assert sides.min() < 12
    assert sides.max() > short / 2
    # log-uniform: small, medium and large objects all appear in numbers
    geo = np.sqrt(sides.prod(axis=1))
    assert (geo < 16).sum() >= 5 and ((geo >= 16) & (geo < 48)).sum() >= 5 and (geo >= 48).sum() >= 5


def test_objects_stand_out_from_the_background(synth_root):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(synth_root / "annotations" / "instances_val.json"))
    for img in coco.imgs.values():
        pixels = np.asarray(Image.open(synth_root / "val" / img["file_name"]), dtype=float)
        for a in coco.imgToAnns[img["id"]]:
            m = coco.annToMask(a).astype(bool)
            assert pixels[m].std(axis=0).max() < 20  # one colour plus noise


def test_default_size_is_fast_enough(tmp_path):
    import time

    t = time.perf_counter()
    make_synthetic_coco(tmp_path / "d")
    assert time.perf_counter() - t < 15  # 80 images of 256x320; ~2 s here


def test_refuses_non_empty_out_dir_and_writes_nothing(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"ds: folder is not empty; expected a new or empty folder") as e:
        make_synthetic_coco(out, **KW)
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_empty_existing_dir_is_filled_and_no_temp_left(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    assert make_synthetic_coco(out, **KW) == out.absolute()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    assert sorted(p.name for p in out.iterdir()) == ["annotations", "train", "val"]


def test_refuses_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(DatasetError, match="not a folder"):
        make_synthetic_coco(tmp_path / "f", **KW)


@pytest.mark.parametrize("kwargs, expected", [
    (dict(classes=0), "classes=0"), (dict(classes=7), "classes=7"), (dict(train_images=0), "train_images=0"),
    (dict(image_size=(16, 128)), "image_size"), (dict(seed=-1), "seed=-1"), (dict(max_objects=0), "max_objects"),
])
def test_bad_arguments(tmp_path, kwargs, expected):
    with pytest.raises(ValueError, match=expected):
        make_synthetic_coco(tmp_path / "x", **{**KW, **kwargs})
    assert not (tmp_path / "x").exists() and not list(tmp_path.iterdir())


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    import natsdeploy.data.synthetic as synthetic

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synthetic, "_render_split", boom)
    with pytest.raises(RuntimeError):
        make_synthetic_coco(tmp_path / "x", **KW)
    assert not list(tmp_path.iterdir())
