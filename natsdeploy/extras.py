"""Optional dependencies (pyproject's extras): whether one is importable, and the one line that names its extra.

The core install (torch, torchvision, onnx, onnxruntime, ...) runs `check`, `align`, `convert`, `export`'s
ONNX Runtime rows and `bench --backend torch ort`. The rest needs an extra: `openvino`, `coco`
(pycocotools), `plot` (matplotlib), `trt-rtx` / `trt` (TensorRT, `export/tensorrt.py` asks for it itself).
A section that is on by default degrades to `skipped_line`; a feature the user asked for calls `require`,
a one-line `UsageError` (exit 2) before any work or output.
"""

from __future__ import annotations

import importlib

from natsdeploy.errors import UsageError

__all__ = ["available", "require", "install_command", "skipped_line"]


def install_command(extra: str) -> str:
    """The pip command that installs `extra`, quoted for a shell."""
    return f'pip install "natsdeploy[{extra}]"'


def available(module: str) -> bool:
    """Whether `module` imports here (a missing package, or one blocked with `sys.modules[name] = None`, does not)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def require(module: str, extra: str, feature: str) -> None:
    """Return if `module` imports, else raise a one-line `UsageError`: `feature` needs it, and the pip
    command that installs `extra`."""
    if not available(module):
        raise UsageError(f"{feature}: got no {module} module, expected the {extra} extra: {install_command(extra)}")


def skipped_line(section: str, extra: str) -> str:
    """The one report line for a default-on `section` whose `extra` is missing."""
    return f"{section}: skipped (the {extra} extra is not installed: {install_command(extra)})"
