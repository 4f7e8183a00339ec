"""natsdeploy: NATS-transformed ResNet backbones from search to deployment.

`import natsdeploy` is cheap: torch, onnx and runtimes load on first use of what needs them.
"""

from __future__ import annotations

from typing import Any

from natsdeploy.arch import Arch, ArchError, Branch, ConvTransform, load_arch

__version__ = "0.1.0"

_LAZY = {
    "build_backbone": "natsdeploy.models.build",
    "build_baseline": "natsdeploy.models.build",
    "transformed_state_dict_to_baseline": "natsdeploy.models.build",
    "WeightsError": "natsdeploy.errors",
    "MixedDilationConv": "natsdeploy.models.mixed_conv",
    "count": "natsdeploy.verify.count",
    "count_onnx": "natsdeploy.verify.count",
    "Counts": "natsdeploy.verify.count",
    "check_arch": "natsdeploy.verify.check",
    "from_ic_conv": "natsdeploy.convert",
    "export_arch": "natsdeploy.export.api",
    "ExportOptions": "natsdeploy.export.api",
    "decode": "natsdeploy.search.decode",
    "align_arch": "natsdeploy.align",
    "align_report": "natsdeploy.align",
    "unaligned_branches": "natsdeploy.align",
    "detect_target": "natsdeploy.targets",
    "get_target": "natsdeploy.targets",
}

__all__ = ["Arch", "ArchError", "Branch", "ConvTransform", "load_arch", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'natsdeploy' has no attribute {name!r}")
