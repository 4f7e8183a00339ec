"""Per-conv form choice: the mixed graph (some convs rows, others branches) stays exact."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from natsdeploy import build_backbone, count_onnx
from natsdeploy.convert import load_ic_conv
from natsdeploy.export.autotune import block_input_shapes, choose_rows
from natsdeploy.export.fold import fold_trunk, merge_same_dilation
from natsdeploy.export.onnx import trunk_to_onnx
from tests.conftest import ICCONV, needs_icconv
from tests.helpers import model_features, seeded_state_dict


@needs_icconv
def test_choose_rows_and_mixed_graph_parity():
    arch = load_ic_conv(ICCONV / "detection_ic_resnet50_k9.json", "resnet50")
    m = build_backbone(arch, seeded_state_dict("resnet50", seed=2))
    trunk = merge_same_dilation(fold_trunk(m))
    shape = (1, 3, 64, 96)
    assert block_input_shapes(trunk, shape)["layer2.0"] == (1, 256, 16, 24)
    chosen, records = choose_rows(trunk, shape, threads=1, pairs=1, warmup_s=0.0, log=lambda s: None)
    assert records and set(chosen) <= {c for r in records for c in r["convs"]}
    assert all(r["form"] in ("rows", "branches") for r in records)
    # an arbitrary mix must be exact too: every other eligible conv in rows form
    eligible = [c for r in records for c in r["convs"]]
    proto = trunk_to_onnx(trunk, input_shape=shape, form="rows", opset=18, rows_only=eligible[::2])
    nodes = {n.name.split("/")[0] for n in proto.graph.node if n.op_type == "Col2Im"}
    assert nodes == set(eligible[::2])
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    s = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in s.get_outputs()], s.run(None, {"images": x.numpy()})))
    with torch.no_grad():
        ref = model_features(m, x)
    for k in ("c2", "c3", "c4", "c5"):
        scale = float(ref[k].abs().max())
        np.testing.assert_allclose(got[k], ref[k].numpy(), rtol=1e-4, atol=1e-4 * scale)
    base = trunk_to_onnx(trunk, input_shape=shape)
    assert (count_onnx(proto).params, count_onnx(proto).macs) == (count_onnx(base).params, count_onnx(base).macs)


def test_cli_auto_form(tmp_path, capsys):
    import json

    from natsdeploy.cli import main
    from tests.conftest import EXAMPLES

    assert main(["export", str(EXAMPLES / "resnet18_nats_c.json"), "--form", "auto", "--input-shape", "1x3x64x64",
                 "--latency-pairs", "0", "--out", str(tmp_path / "o")]) == 0
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["export"]["form"] == "auto" and rep["export"]["opset"] == 18 and rep["parity"]["model"]["passed"]
    assert isinstance(rep["export"]["autotune"], list)
