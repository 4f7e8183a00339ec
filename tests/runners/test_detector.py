"""RuntimeBody: a runner standing in for a detector's backbone body returns what torchvision's
IntermediateLayerGetter returns (the independent reference)."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.models import resnet18
from torchvision.models._utils import IntermediateLayerGetter

from natsdeploy.runners import TorchRunner
from natsdeploy.runners.detector import RuntimeBody, feature_name

LAYERS = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}


def test_feature_names_follow_the_stages():
    assert [feature_name(f"layer{i}") for i in range(1, 5)] == ["c2", "c3", "c4", "c5"]


def test_runtime_body_returns_what_the_layer_getter_returns():
    torch.manual_seed(0)
    model = resnet18().eval()
    x = torch.randn(2, 3, 64, 96)
    for return_layers in (LAYERS, {"layer2": "0", "layer3": "1", "layer4": "2"}):  # Faster R-CNN, RetinaNet
        with torch.no_grad():
            ref = IntermediateLayerGetter(model, return_layers).eval()(x)
        body = RuntimeBody(TorchRunner(model), return_layers)
        got = body(x)
        assert isinstance(body, torch.nn.Module) and list(got) == list(ref) == list(return_layers.values())
        for k in ref:
            assert got[k].dtype == x.dtype and got[k].device == x.device
            torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-5)
        assert body.calls == 1


def test_runtime_body_feeds_the_runner_a_float_host_array():
    seen = []

    class Fake:
        output_names = ("c2", "c3", "c4", "c5")

        def run(self, feed):
            seen.append({k: (type(v), v.dtype, v.shape) for k, v in feed.items()})
            return {f"c{i}": np.full((1, 1, 2, 2), i, np.float32) for i in range(2, 6)}

    body = RuntimeBody(Fake(), {"layer4": "out"})
    out = body(torch.zeros(1, 3, 8, 8, dtype=torch.float64))
    assert seen == [{"images": (np.ndarray, np.float32, (1, 3, 8, 8))}]
    assert list(out) == ["out"] and out["out"].dtype == torch.float64 and float(out["out"].max()) == 5.0
