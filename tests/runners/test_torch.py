"""TorchRunner against the independent reference (tests/helpers.reference_features), and what it describes."""

from __future__ import annotations

import torch

from natsdeploy.runners import TorchRunner
from tests.helpers import assert_features_close, reference_features
from tests.runners.conftest import OUTS, REL


def test_torch_runner_matches_the_independent_reference(net):
    r = TorchRunner(net["model"], output_names=(*OUTS, "logits"))
    assert r.name == "torch-cpu" and r.output_names == (*OUTS, "logits")
    got = r.run({"images": net["x"]})
    ref = reference_features(net["sd"], net["arch"], torch.from_numpy(net["x"]))
    assert_features_close({k: torch.from_numpy(v) for k, v in got.items()}, ref, rel=REL)


def test_describe_names_torch_its_version_and_precision(net):
    assert TorchRunner(net["model"]).describe() == {"runtime": "torch", "version": torch.__version__,
                                                    "precision": "fp32", "device": "cpu"}
