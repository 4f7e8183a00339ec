"""ONNX (and TensorRT) export of transformed backbones.

Torch-free at import (`natsdeploy export --help` imports this package): the public entry points load
their module on first use. `to_onnx` turns a module into ONNX; `export_arch` with `ExportOptions` is
`natsdeploy export` as a library call.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "to_onnx": "natsdeploy.export.onnx",
    "OnnxExport": "natsdeploy.export.onnx",
    "export_arch": "natsdeploy.export.api",
    "ExportOptions": "natsdeploy.export.api",
    "ExportResult": "natsdeploy.export.api",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'natsdeploy.export' has no attribute {name!r}")
