"""Detection data for natsdeploy: COCO-format reading, COCO evaluation and a synthetic multi-scale set.

- `make_synthetic_coco(out_dir, ...)` writes a deterministic (by seed) COCO-format shapes dataset whose
  object sizes span ~4 px to ~0.8 of the short image side, so no download is needed for search,
  training or parity runs (`natsdeploy data synth --out DIR`).
- `CocoDetection(root, split)` / `load_dataset(spec, split)` read `root/<split>/` +
  `root/annotations/instances_<split>.json` (or COCO's `<split>2017` names) into what torchvision
  detection models take; `collate` batches them.
- `ImageFolder(root)` reads a plain folder of images (no annotations, recursive), as INT8 calibration does.
- `coco_evaluate(coco_gt, detections)` runs pycocotools' COCOeval quietly;
  `to_coco_results(outputs, image_ids, label_to_cat_id)` converts model outputs to COCO results.

`import natsdeploy.data` is cheap: torch and pycocotools load on first use of what needs them.
"""

from __future__ import annotations

from typing import Any

from natsdeploy.data.errors import DatasetError

_LAZY = {
    "make_synthetic_coco": "natsdeploy.data.synthetic",
    "SHAPES": "natsdeploy.data.synthetic",
    "CocoDetection": "natsdeploy.data.coco",
    "collate": "natsdeploy.data.coco",
    "load_dataset": "natsdeploy.data.coco",
    "default_synthetic_dir": "natsdeploy.data.coco",
    "has_annotations": "natsdeploy.data.coco",
    "ImageFolder": "natsdeploy.data.images",
    "coco_evaluate": "natsdeploy.data.evaluate",
    "to_coco_results": "natsdeploy.data.evaluate",
    "METRICS": "natsdeploy.data.evaluate",
}

__all__ = ["DatasetError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'natsdeploy.data' has no attribute {name!r}")
