"""Reading COCO-format datasets: targets, label mapping, layouts, one-line DatasetErrors, training step."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from natsdeploy.data import DatasetError
from natsdeploy.data.coco import CocoDetection, collate, default_synthetic_dir, load_dataset
from tests.data.conftest import SMALL

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools decode


def write_tiny(root, *, split="train", image_dir=None, ann_name=None, doc=None, images=True):
    """Two 40x50 images, categories with non-contiguous ids 5 and 42, one crowd and one too-thin box."""
    image_dir = root / (image_dir or split)
    image_dir.mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    if doc is None:
        doc = {
            "images": [{"id": 10, "file_name": "a.png", "height": 40, "width": 50},
                       {"id": 11, "file_name": "b.png", "height": 40, "width": 50}],
            "categories": [{"id": 42, "name": "late"}, {"id": 5, "name": "early"}],
            "annotations": [
                {"id": 1, "image_id": 10, "category_id": 42, "bbox": [2, 3, 10, 20], "area": 200, "iscrowd": 0,
                 "segmentation": [[2, 3, 12, 3, 12, 23, 2, 23]]},
                {"id": 2, "image_id": 10, "category_id": 5, "bbox": [20, 5, 25, 30], "area": 750, "iscrowd": 0,
                 "segmentation": [[20, 5, 45, 5, 45, 35, 20, 35]]},
                {"id": 3, "image_id": 10, "category_id": 5, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 1,
                 "segmentation": {"size": [40, 50], "counts": [0, 2000]}},
                {"id": 4, "image_id": 10, "category_id": 5, "bbox": [30, 30, 0.5, 8], "area": 4, "iscrowd": 0,
                 "segmentation": [[30, 30, 30.5, 30, 30.5, 38, 30, 38]]},
                {"id": 5, "image_id": 10, "category_id": 42, "bbox": [40, 30, 20, 20], "area": 100, "iscrowd": 0,
                 "segmentation": [[40, 30, 50, 30, 50, 40, 40, 40]]},  # sticks out: clamped to the image
            ],
        }
    if images:
        for name in ("a.png", "b.png"):
            Image.fromarray(np.full((40, 50, 3), 255, np.uint8)).save(image_dir / name)
    text = doc if isinstance(doc, str) else json.dumps(doc)
    (root / "annotations" / (ann_name or f"instances_{split}.json")).write_text(text)
    return root


def test_targets_shapes_dtypes_and_contiguous_labels(tmp_path):
    ds = CocoDetection(write_tiny(tmp_path), "train")
    assert len(ds) == 2 and ds.ids == [10, 11]
    assert ds.num_classes == 2
    assert ds.label_to_cat_id == {1: 5, 2: 42} and ds.cat_id_to_label == {5: 1, 42: 2}
    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 40, 50)
    assert float(image.min()) == 1.0 == float(image.max())
    assert set(target) == {"boxes", "labels", "image_id"}
    assert target["image_id"] == 10
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    # crowd and the 0.5-px-wide box are left out; the last box is clamped to the image
    assert target["boxes"].tolist() == [[2, 3, 12, 23], [20, 5, 45, 35], [40, 30, 50, 40]]
    assert target["labels"].tolist() == [2, 1, 2]
    _, empty = ds[1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,) and empty["image_id"] == 11


def test_masks_only_when_asked(tmp_path):
    ds = CocoDetection(write_tiny(tmp_path), "train", masks=True)
    _, target = ds[0]
    m = target["masks"]
    assert m.dtype == torch.uint8 and m.shape == (3, 40, 50)
    assert set(torch.unique(m).tolist()) <= {0, 1}
    assert int(m[0].sum()) == 200 and int(m[0, 3:23, 2:12].sum()) == 200
    assert ds[1][1]["masks"].shape == (0, 40, 50)


def test_synthetic_masks_agree_with_boxes(synth_root):
    ds = CocoDetection(synth_root, "val", masks=True)
    assert ds.num_classes == SMALL["classes"] and len(ds) == SMALL["val_images"]
    for i in range(len(ds)):
        image, t = ds[i]
        assert image.shape == (3, *SMALL["image_size"])
        assert t["labels"].min() >= 1 and t["labels"].max() <= SMALL["classes"]
        for box, mask in zip(t["boxes"], t["masks"]):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_coco2017_layout(tmp_path):
    write_tiny(tmp_path, image_dir="val2017", ann_name="instances_val2017.json")
    ds = CocoDetection(tmp_path, "val")
    assert ds.image_dir == tmp_path / "val2017" and len(ds) == 2


def test_collate():
    batch = [(torch.zeros(3, 4, 4), {"a": 1}), (torch.ones(3, 5, 5), {"a": 2})]
    images, targets = collate(batch)
    assert isinstance(images, list) and [i.shape[-1] for i in images] == [4, 5]
    assert targets == [{"a": 1}, {"a": 2}]


def test_fasterrcnn_training_step_on_collated_samples(synth_root):
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    torch.manual_seed(0)
    ds = CocoDetection(synth_root, "train")
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    images, targets = next(iter(loader))
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)
    model = FasterRCNN(backbone, num_classes=ds.num_classes + 1, min_size=128, max_size=160)
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    total = sum(losses.values())
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in losses.values())
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def _one_line(e):
    assert "\n" not in str(e.value)
    return str(e.value)


def _base_doc():
    return {"images": [{"id": 1, "file_name": "a.png", "height": 40, "width": 50}],
            "categories": [{"id": 1, "name": "x"}], "annotations": []}


@pytest.mark.parametrize("setup, expected", [
    (lambda r: None, r"nope: got no dataset folder, expected a folder with train/"),
    (lambda r: (r / "nope").mkdir(), r"instances_train.json: got no annotation file, expected annotations/instances_train.json"),
    (lambda r: write_tiny(r / "nope", image_dir="elsewhere"), r"nope/train: got no image folder, expected the images of instances_train.json there"),
    (lambda r: write_tiny(r / "nope", doc="{\"images\": ["), r"instances_train.json: got invalid JSON at line 1 column \d+ \(.+\), expected a COCO annotation file"),
    (lambda r: write_tiny(r / "nope", doc="[1, 2]"), r"instances_train.json: got a list at the top level, expected a JSON object"),
    (lambda r: write_tiny(r / "nope", doc={**_base_doc(), "images": []}),
     r"instances_train.json: images: got an empty list, expected a non-empty list"),
    (lambda r: write_tiny(r / "nope", doc={k: v for k, v in _base_doc().items() if k != "categories"}),
     r"instances_train.json: categories: got no such key, expected a non-empty list"),
    (lambda r: write_tiny(r / "nope", doc={**_base_doc(), "annotations": [
        {"id": 1, "image_id": 99, "category_id": 1, "bbox": [0, 0, 2, 2]}]}),
     r"annotations\[0\].image_id: got 99, expected the id of an entry of 'images'"),
    (lambda r: write_tiny(r / "nope", doc={**_base_doc(), "annotations": [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 2, 2]}]}),
     r"annotations\[0\].category_id: got 7, expected one of the category ids \[1\]"),
    (lambda r: write_tiny(r / "nope", doc={**_base_doc(), "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2]}]}),
     r"annotations\[0\].bbox: got \[0, 0, 2\], expected \[x, y, w, h\] numbers"),
    (lambda r: write_tiny(r / "nope", images=False), r"nope/train/a.png: got no image file, expected the file named by image id 1"),
])
def test_bad_datasets_raise_one_line_dataset_error(tmp_path, setup, expected):
    setup(tmp_path)
    with pytest.raises(DatasetError) as e:
        CocoDetection(tmp_path / "nope", "train")
    assert re.search(expected, _one_line(e)), str(e.value)
    assert isinstance(e.value, ValueError)


def test_image_size_mismatch_raises_on_read(tmp_path):
    doc = _base_doc()
    doc["images"][0]["height"] = 41
    write_tiny(tmp_path, doc=doc)
    ds = CocoDetection(tmp_path, "train")
    with pytest.raises(DatasetError, match=r"a.png: got a 40x50 \(HxW\) image, expected 41x50") as e:
        ds[0]
    _one_line(e)


def test_load_dataset_folder_and_synthetic(tmp_path, monkeypatch):
    assert load_dataset(str(write_tiny(tmp_path / "tiny")), "train").num_classes == 2
    monkeypatch.setenv("NATSDEPLOY_CACHE", str(tmp_path / "cache"))
    assert default_synthetic_dir(4) == tmp_path / "cache" / "synthetic-4"
    monkeypatch.delenv("NATSDEPLOY_CACHE")
    assert default_synthetic_dir().parts[-3:] == (".cache", "natsdeploy", "synthetic-0")

    import natsdeploy.data.synthetic as synthetic

    calls = []
    real = synthetic.make_synthetic_coco

    def small(out, *, seed):
        calls.append(seed)
        return real(out, train_images=3, val_images=2, image_size=(64, 80), seed=seed)

    monkeypatch.setattr(synthetic, "make_synthetic_coco", small)
    d = tmp_path / "syn"
    ds = load_dataset("synthetic", "val", synthetic_dir=d, seed=2, masks=True)
    assert len(ds) == 2 and "masks" in ds[0][1] and calls == [2]
    assert len(load_dataset("synthetic", "train", synthetic_dir=d, seed=2)) == 3
    assert calls == [2]  # generated once, then read
    with pytest.raises(DatasetError, match="instances_test.json: got no annotation file, expected"):
        load_dataset("synthetic", "test", synthetic_dir=d)
