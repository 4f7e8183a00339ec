"""The TensorRT engine audit's pure part, on hand-built layer-information dicts (no TensorRT needed).

The dicts have the shape `IEngineInspector.get_engine_information(LayerInformationFormat.JSON)` gives
under `ProfilingVerbosity.DETAILED`: {"Layers": [{"Name": ..., "LayerType": ...}, ...]}.
"""

from __future__ import annotations

import importlib.util

import pytest

from natsdeploy.export.tensorrt import audit_concats, require_tensorrt
from natsdeploy.shapes import UsageError

SPLITS = ["layer2.0.conv1", "layer3.1.conv2"]


def _layer(name: str, kind: str) -> dict:
    return {"Name": name, "LayerType": kind, "Inputs": [], "Outputs": []}


def test_no_surviving_concat_means_eliminated():
    info = {"Layers": [_layer("layer2.0.conv1/b0 + layer2.0.bn1", "CaskConvolution"),
                       _layer("layer2.0.conv1/b1", "CaskConvolution"),
                       _layer("layer3.1.conv2/b0", "CaskConvolution")]}
    assert audit_concats(info, SPLITS) == {"layer2.0.conv1": True, "layer3.1.conv2": True}


@pytest.mark.parametrize("kind", ["Concatenation", "Reformat", "Copy", "concatenation"])
def test_a_concat_copy_or_reformat_named_after_the_concat_survives(kind):
    info = {"Layers": [_layer("layer2.0.conv1/b0", "CaskConvolution"),
                       _layer("layer2.0.conv1/concat", kind),
                       _layer("layer3.1.conv2/b0", "CaskConvolution")]}
    assert audit_concats(info, SPLITS) == {"layer2.0.conv1": False, "layer3.1.conv2": True}


def test_only_the_named_concat_counts():
    """A surviving layer named after another conv's concat, or a conv named like it, is not this conv's."""
    info = {"Layers": [_layer("Reformatting CopyNode for Input Tensor 0 to layer3.1.conv2/concat", "Reformat"),
                       _layer("layer2.0.conv1/concat_fused_into_conv", "CaskConvolution")]}
    assert audit_concats(info, SPLITS) == {"layer2.0.conv1": True, "layer3.1.conv2": False}


def test_names_only_layer_info_and_empty_engine():
    """Without DETAILED verbosity TensorRT lists names only: nothing to judge by type, so nothing flagged."""
    assert audit_concats({"Layers": ["layer2.0.conv1/concat"]}, SPLITS) == dict.fromkeys(SPLITS, True)
    assert audit_concats({}, SPLITS) == dict.fromkeys(SPLITS, True)
    assert audit_concats({"Layers": []}, []) == {}


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is importable here")
def test_require_tensorrt_without_it_is_one_usage_line_naming_the_extra():
    with pytest.raises(UsageError, match=r"^--engine: TensorRT is not importable here \(\w+\); .*natsdeploy\[trt\]") as e:
        require_tensorrt()
    assert "\n" not in str(e.value)
