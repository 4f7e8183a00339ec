"""torchvision detectors (Faster R-CNN FPN, RetinaNet, Mask R-CNN) around any ResNet-style backbone.

The backbone module (baseline, transformed or super-net) is wrapped exactly as torchvision's own
`*_resnet50_fpn` builders do, FPN on layer1-4 (RetinaNet: layer2-4 plus P6/P7), with torchvision's
rule for BatchNorm and frozen layers: a backbone with pretrained weights gets FrozenBatchNorm2d and
trainable_layers=3 (stem and layer1 frozen); one trained from its initialisation keeps trainable
BatchNorm2d and trains every layer (trainable_layers=5), since frozen identity BN on a random init
leaves a deep ResNet unnormalised.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

__all__ = ["DETECTORS", "freeze_batchnorm", "build_detector", "parse_detector_options"]

DETECTORS = ("faster_rcnn", "retinanet", "mask_rcnn")
Detector = Literal["faster_rcnn", "retinanet", "mask_rcnn"]


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by torchvision's FrozenBatchNorm2d with the same statistics."""
    from torchvision.ops import FrozenBatchNorm2d

    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


def build_detector(kind: Detector, backbone: nn.Module, *, num_classes: int, pretrained: bool = True,
                   min_size: int = 800, max_size: int = 1333, trainable_layers: int | None = None,
                   **kwargs) -> nn.Module:
    """A torchvision detector with `num_classes` (background included) on `backbone`.

    `pretrained`: the backbone carries trained weights (BN frozen, default trainable_layers 3);
    otherwise BN stays trainable and every layer trains (default trainable_layers 5).
    """
    from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    if kind not in DETECTORS:
        raise ValueError(f"--detector: got {kind!r}, expected one of {list(DETECTORS)}")
    if trainable_layers is None:
        trainable_layers = 3 if pretrained else 5
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers: got {trainable_layers}, expected 0..5")
    if pretrained:
        backbone = freeze_batchnorm(backbone)
    if kind == "retinanet":
        out_ch = 256
        body = _resnet_fpn_extractor(backbone, trainable_layers, returned_layers=[2, 3, 4],
                                     extra_blocks=LastLevelP6P7(out_ch, out_ch))
        return RetinaNet(body, num_classes=num_classes, min_size=min_size, max_size=max_size, **kwargs)
    body = _resnet_fpn_extractor(backbone, trainable_layers)
    cls = FasterRCNN if kind == "faster_rcnn" else MaskRCNN
    return cls(body, num_classes=num_classes, min_size=min_size, max_size=max_size, **kwargs)


_SET_BY_US = {"backbone", "num_classes", "min_size", "max_size", "self"}


def parse_detector_options(kind: str, items: list[str] | None) -> dict[str, int | float]:
    """`KEY=VALUE` strings as keyword arguments of torchvision's detector class for `kind`.

    Keys must be numeric keyword arguments of `FasterRCNN` / `RetinaNet` / `MaskRCNN` (for example
    `box_batch_size_per_image=128`, `rpn_post_nms_top_n_train=500`, `score_thresh=0.05`); values
    are ints or floats. Raises UsageError naming the bad item.
    """
    import inspect

    from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet

    from natsdeploy.errors import UsageError

    cls = {"faster_rcnn": FasterRCNN, "retinanet": RetinaNet, "mask_rcnn": MaskRCNN}[kind]
    params = inspect.signature(cls.__init__).parameters
    allowed = sorted(k for k, v in params.items()
                     if k not in _SET_BY_US and isinstance(v.default, (int, float)) and not isinstance(v.default, bool))
    out: dict[str, int | float] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or key not in allowed:
            raise UsageError(f"--detector-option: got {item!r}, expected KEY=VALUE with KEY one of {allowed} "
                             f"(numeric options of torchvision's {cls.__name__})")
        if key in out:
            raise UsageError(f"--detector-option: got {key} twice ({item!r}), expected each key once")
        out[key] = _option_value(item, key, text, params[key].default)
    return out


def _option_value(item: str, key: str, text: str, default: int | float) -> int | float:
    """Counts (proposals, samples, detections) are integers >= 1; thresholds and fractions lie in [0, 1]."""
    import math

    from natsdeploy.errors import UsageError

    unit = key.endswith(("_thresh", "_fraction"))
    if isinstance(default, int) and not unit:
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or v < 1:
            raise UsageError(f"--detector-option: got {item!r}, expected an integer >= 1 for {key}")
        return v
    try:
        x = float(text)
    except ValueError:
        x = math.nan
    if not math.isfinite(x) or (unit and not 0.0 <= x <= 1.0):
        raise UsageError(f"--detector-option: got {item!r}, expected {'a number in [0, 1]' if unit else 'a finite number'} "
                         f"for {key}")
    return x
