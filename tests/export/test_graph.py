"""The shared ONNX graph builder: nodes against torch's conv, and the export package's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from natsdeploy.export.fold import Block, ConvOp, SplitConv
from natsdeploy.export.graph import GraphBuilder, branch_inputs, emit_block, emit_split
from tests.conftest import REPO
from tests.helpers import ort_outputs


def _op(name, rng, c_out, c_in, *, dilation=(1, 1), stride=1, groups=1, relu=False):
    w = rng.standard_normal((c_out, c_in // groups, 3, 3), dtype=np.float32)
    b = rng.standard_normal(c_out, dtype=np.float32)
    return ConvOp(name, w, b, stride, dilation, dilation, groups, relu)


def _run(model, x):
    return next(iter(ort_outputs(model, x, input_name="x").values()))


def _torch(x, op):
    y = F.conv2d(torch.from_numpy(x), torch.from_numpy(op.weight), torch.from_numpy(op.bias), stride=op.stride,
                 padding=op.padding, dilation=op.dilation, groups=op.groups)
    return torch.relu(y) if op.relu else y


def test_init_names_are_unique_and_conv_attributes_follow_the_op():
    g = GraphBuilder()
    op = _op("c", np.random.default_rng(0), 4, 2, dilation=(2, 3), stride=2, relu=True)
    y = g.conv("x", op)
    assert y == "c:relu" and [n.op_type for n in g.nodes] == ["Conv", "Relu"]
    attrs = {a.name: list(a.ints) or a.i for a in g.nodes[0].attribute}
    assert attrs == {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [2, 3, 2, 3], "dilations": [2, 3], "group": 1}
    assert [i.name for i in g.inits] == ["c.weight", "c.bias"]
    with pytest.raises(AssertionError):
        g.init("c.weight", op.weight)


def test_grouped_split_matches_torch():
    rng = np.random.default_rng(1)
    # a grouped conv (8 groups of 2 channels) split in two branches of 3 and 5 groups, other dilations
    split = SplitConv("s", (_op("s/b0", rng, 6, 6, dilation=(1, 2), groups=3, relu=True),
                            _op("s/b1", rng, 10, 10, dilation=(3, 1), groups=5, relu=True)), grouped=True)
    g = GraphBuilder()
    assert branch_inputs(g, "x", split) == ["s/split:0", "s/split:1"]
    g = GraphBuilder()
    y = emit_split(g, "x", split)
    g.node("Identity", [y], "y", "out")
    model = g.model([("x", (1, 16, 9, 11))], ["y"], name="t")
    assert [n.op_type for n in g.nodes] == ["Split", "Conv", "Relu", "Conv", "Relu", "Concat", "Identity"]
    x = rng.standard_normal((1, 16, 9, 11), dtype=np.float32)
    ref = torch.cat([_torch(x[:, :6], split.branches[0]), _torch(x[:, 6:], split.branches[1])], 1)
    torch.testing.assert_close(torch.from_numpy(_run(model, x)), ref, rtol=1e-5, atol=1e-5)


def test_single_branch_split_is_one_conv_and_block_adds_the_shortcut():
    rng = np.random.default_rng(2)
    c1 = _op("b.conv1", rng, 8, 8, dilation=(2, 2), relu=True)
    blk = Block("b", (SplitConv("b.conv1", (c1,)), _op("b.conv2", rng, 8, 8)))
    g = GraphBuilder()
    y = emit_block(g, "x", blk)
    assert [n.op_type for n in g.nodes] == ["Conv", "Relu", "Conv", "Add", "Relu"] and y == "b:out"
    g.node("Identity", [y], "y", "out")
    x = rng.standard_normal((1, 8, 7, 6), dtype=np.float32)
    ref = torch.relu(_torch(_torch(x, c1).numpy(), blk.path[1]) + torch.from_numpy(x))
    torch.testing.assert_close(torch.from_numpy(_run(g.model([("x", x.shape)], ["y"], name="t"), x)), ref,
                               rtol=1e-5, atol=1e-5)


def _imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) for every `from module import name` in `path`, also inside functions."""
    tree = ast.parse(path.read_text())
    return [(n.module or "", a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names]


def test_export_forms_share_the_builder_without_cycles_or_private_imports():
    pkg = REPO / "natsdeploy"
    users = [pkg / "export" / f for f in ("onnx.py", "rows.py", "function.py", "autotune.py", "graph.py")]
    users.append(pkg / "bench" / "per_conv.py")
    for path in users:
        private = [f"{m}.{n}" for m, n in _imports(path) if m.startswith("natsdeploy") and n.startswith("_")
                   and not n.startswith("__")]
        assert not private, f"{path.name} imports private names {private}"
    graph_deps = {m for m, _ in _imports(pkg / "export" / "graph.py") if m.startswith("natsdeploy")}
    assert graph_deps == {"natsdeploy.export.fold"}
    for form in ("rows.py", "function.py"):
        deps = {d for m, n in _imports(pkg / "export" / form) for d in (m, f"{m}.{n}")}
        assert "natsdeploy.export.onnx" not in deps, form
