"""Shared by the runner tests: the example ResNet-18 arch with seeded weights, its PyTorch outputs and one ONNX
file per export form (built once for the package, removed when its tests end), and the fp32 comparisons."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from natsdeploy import build_backbone
from natsdeploy.arch import load_arch
from natsdeploy.export.fold import fold_trunk, merge_same_dilation
from natsdeploy.export.onnx import FORMS, save_onnx, trunk_to_onnx
from tests.conftest import EXAMPLES
from tests.helpers import seeded_state_dict

SHAPE = (1, 3, 64, 96)
OUTS = ("c2", "c3", "c4", "c5")
REL = 1e-4  # fp32 bound on |err| relative to max |ref|


@pytest.fixture(scope="package")
def net(tmp_path_factory):
    """The example ResNet-18 arch with seeded weights, its PyTorch outputs, and one ONNX file per form."""
    from natsdeploy.runners import TorchRunner

    arch = load_arch(EXAMPLES / "resnet18_nats_c.json")
    sd = seeded_state_dict("resnet18", seed=7)
    m = build_backbone(arch, sd).eval()
    trunk = merge_same_dilation(fold_trunk(m))
    root = tmp_path_factory.mktemp("runners")
    files = {f: save_onnx(trunk_to_onnx(trunk, input_shape=SHAPE, form=f, opset=18 if f == "rows" else 17),
                          root / f"{f}.onnx") for f in FORMS}
    x = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)
    ref = TorchRunner(m, output_names=OUTS).run({"images": x})
    yield {"arch": arch, "sd": sd, "model": m, "trunk": trunk, "files": files, "x": x, "ref": ref}
    shutil.rmtree(root, ignore_errors=True)  # four ResNet-18 graphs: do not keep them for the whole session


def rel_err(got: dict, ref: dict) -> float:
    """max |got - ref| / max |ref| over the outputs of `ref`."""
    return max(float(np.abs(got[k] - ref[k]).max() / np.abs(ref[k]).max()) for k in ref)


def assert_close(got: dict, ref: dict, rel: float) -> None:
    """The same outputs, each within `rel` of its largest reference magnitude."""
    assert set(got) == set(ref)
    for k, v in ref.items():
        scale = float(np.abs(v).max())
        torch.testing.assert_close(torch.from_numpy(got[k]), torch.from_numpy(v), rtol=rel, atol=rel * scale,
                                   msg=lambda m: f"{k}: {m}")
