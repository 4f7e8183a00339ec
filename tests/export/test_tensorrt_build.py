"""TensorRT's own ONNX parser and builder on natsdeploy's graphs (TensorRT-RTX builds on the CPU; skipped
without any TensorRT). Only running an engine needs a GPU, and those tests skip with that reason."""

from __future__ import annotations

import importlib.util
import json
import random

import numpy as np
import onnx
import pytest

from natsdeploy import build_backbone
from natsdeploy.arch import load_arch
from natsdeploy.export.fold import fold_trunk, rewrite
from natsdeploy.export.function import is_call, plugin_model
from natsdeploy.export.onnx import trunk_to_onnx
from tests.conftest import EXAMPLES, ICCONV
from tests.helpers import random_arch, seeded_state_dict

HAS_ANY = any(importlib.util.find_spec(m) is not None for m in ("tensorrt", "tensorrt_rtx"))
pytestmark = pytest.mark.skipif(not HAS_ANY, reason="no TensorRT importable (pip install 'natsdeploy[trt-rtx]')")
SHAPE = (1, 3, 64, 96)


def _gpu() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture(scope="module")
def api():
    from natsdeploy.export.tensorrt import require_tensorrt

    return require_tensorrt("auto")


def _arch(which: str):
    if which == "resnext101_32x4d":
        return random_arch("resnext101_32x4d", random.Random(3), p_conv=0.3, max_branches=3)
    if which == "icconv":
        from natsdeploy.convert import load_ic_conv

        if not ICCONV.is_dir():
            pytest.skip(reason=f"published IC-Conv patterns not found at {ICCONV}")
        return load_ic_conv(ICCONV / "detection_ic_resnet50_k9.json", "resnet50")
    return load_arch(EXAMPLES / f"{which}_nats_c.json")


def _forms(arch, seed=0):
    trunk = rewrite(fold_trunk(build_backbone(arch, seeded_state_dict(arch.backbone, seed=seed))))
    return {f: trunk_to_onnx(trunk, input_shape=SHAPE, form=f) for f in ("branches", "function")}


@pytest.mark.parametrize("which", ["resnet18", "resnet50", pytest.param("resnext101_32x4d", marks=pytest.mark.slow),
                                   "icconv"])
def test_function_form_parses_as_written_into_the_branch_forms_network(api, which):
    """Conv for conv, in order: kernel, dilation, padding, stride, groups, outputs and the weights themselves."""
    from natsdeploy.export.tensorrt import network_convs, parse_onnx

    protos = _forms(_arch(which))
    assert protos["function"].functions and any(is_call(n) for n in protos["function"].graph.node)
    nets = {}
    for form, proto in protos.items():
        parsed = parse_onnx(api, model_bytes=proto.SerializeToString())  # as written: no inlining
        assert parsed.ok, (form, parsed.errors)
        nets[form] = network_convs(api.trt, parsed.network)
    a, b = nets["branches"], nets["function"]
    n_onnx = sum(n.op_type == "Conv" for n in protos["branches"].graph.node)
    assert len(a) == len(b) == n_onnx
    assert any(c.dilation != (1, 1) for c in b)  # the transformed branches are there
    if which == "resnext101_32x4d":
        assert any(c.groups > 1 and c.dilation != (1, 1) for c in b)
    assert [c.signature() for c in a] == [c.signature() for c in b]
    for x, y in zip(a, b):
        assert x.weight.shape == y.weight.shape and np.array_equal(x.weight, y.weight), (x.name, y.name)
        assert np.array_equal(x.bias, y.bias), (x.name, y.name)


def test_a_registered_plugin_would_be_looked_up_as_mixeddilationconv(api):
    """plugin_model's nodes are sent to the plugin registry by that one name (none is registered here)."""
    from natsdeploy.export.tensorrt import parse_onnx

    proto = _forms(_arch("resnet18"))["function"]
    parsed = parse_onnx(api, model_bytes=plugin_model(proto).SerializeToString())
    assert not parsed.ok and "MixedDilationConv" in parsed.errors[0] and "Plugin not found" in parsed.errors[0]


def test_aot_build_of_both_forms_and_the_aux_stream_knob(api, tmp_path):
    from natsdeploy.export.tensorrt import audit_concats, build, engine_layers, sync_counts

    arch = _arch("resnet18")
    splits = [n for n, ct in arch.convs.items() if len({b.dilation for b in ct.branches}) > 1]
    counts = {}
    for form, proto in _forms(arch).items():
        path = tmp_path / f"{form}.onnx"
        path.write_bytes(proto.SerializeToString())
        for aux in (None, 0):
            r = build(api, path, tmp_path / f"{form}-{aux}.engine", aux_streams=aux)
            layers = engine_layers(r.log)
            assert r.engine.stat().st_size == r.nbytes > 1_000_000 and layers
            audit = audit_concats(layers, splits)
            assert audit and all(a["eliminated"] for a in audit.values()), audit
            counts[form, aux] = sync_counts(layers)
    assert counts["branches", 0] == counts["function", 0] == {"wait": 0, "signal": 0}
    assert counts["branches", None]["wait"] > 0  # the default runs branches on auxiliary streams


@pytest.fixture(scope="module")
def r50_engine(tmp_path_factory):
    """`natsdeploy export examples/resnet50_nats_c.json --engine --form function` (small input)."""
    from natsdeploy.cli import main

    out = tmp_path_factory.mktemp("r50") / "o"
    code = main(["export", str(EXAMPLES / "resnet50_nats_c.json"), "--engine", "--form", "function", "--input-shape",
                 "1x3x64x96", "--latency-pairs", "0", "--openvino", "off", "--out", str(out)])
    return code, out


def test_export_engine_function_form_resnet50(r50_engine, capsys):
    code, out = r50_engine
    assert code == 0
    t = json.loads((out / "report.json").read_text())["tensorrt"]
    for key in ("model", "baseline"):
        engine = out / f"{key}.fp32.engine"
        assert engine.is_file() and engine.stat().st_size == t[key]["engine_bytes"]
        assert t[key]["parse"] == "ok (as written)" and t[key]["build_s"] > 0
    assert t["flavour"] in ("tensorrt", "tensorrt-rtx") and t["version"]
    n_branches = sum(len({b.dilation for b in ct.branches}) for ct in load_arch(EXAMPLES / "resnet50_nats_c.json").convs.values())
    conv_type = "correlation" if t["flavour"] == "tensorrt-rtx" else None
    if conv_type:  # 53 baseline convs; each transformed conv's one becomes its branches
        assert t["baseline"]["layer_counts"][conv_type] == 53
        assert t["model"]["layer_counts"][conv_type] == 53 - 13 + n_branches
    audit = t["model"]["concat_audit"]
    assert audit["passed"] and audit["convs"] == audit["eliminated"] == 13
    assert not any(v["copy_layers"] for v in audit["per_conv"].values())
    assert set(t["model"]["stream_sync"]) == {"wait", "signal"}
    if not _gpu():
        assert t["run"] == "built, not run (no GPU)"
    verdict = json.loads((out / "report.json").read_text())["verdict"]
    assert verdict["tensorrt_audit_passed"] and verdict["passed"]


def test_a_surviving_concat_fails_the_export(monkeypatch, tmp_path, capsys):
    """The Concat audit is part of the verdict: an engine that copies a conv's branches exits 1."""
    from natsdeploy.cli import main
    from natsdeploy.export import tensorrt

    real = tensorrt.audit_concats

    def one_copy(layers, names):
        out = real(layers, names)
        first = next(iter(out))
        out[first] = {**out[first], "eliminated": False}
        return out

    monkeypatch.setattr(tensorrt, "audit_concats", one_copy)
    code = main(["export", str(EXAMPLES / "resnet18_nats_c.json"), "--engine", "--input-shape", "1x3x64x96",
                 "--latency-pairs", "0", "--openvino", "off", "--out", str(tmp_path / "o")])
    out = capsys.readouterr().out
    verdict = json.loads((tmp_path / "o" / "report.json").read_text())["verdict"]
    assert code == 1 and not verdict["tensorrt_audit_passed"] and not verdict["passed"]
    assert "verdict: FAIL" in out and "tensorrt audit passed: False" in out


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="torch.cuda.is_available() is False: "
                    "running a TensorRT engine needs an NVIDIA GPU")
def test_engines_run_with_parity_against_ort(r50_engine):
    _, out = r50_engine
    run = json.loads((out / "report.json").read_text())["tensorrt"]["run"]
    assert isinstance(run, dict) and all(p["passed"] for p in run["parity_vs_ort"].values()), run


def test_fp16_engine_is_strongly_typed_from_the_fp16_model(api, tmp_path):
    from natsdeploy.export.tensorrt import build

    path = tmp_path / "m.onnx"
    path.write_bytes(_forms(_arch("resnet18"))["function"].SerializeToString())
    r32, r16 = (build(api, path, tmp_path / f"{p}.engine", fp16=p == "fp16") for p in ("fp32", "fp16"))
    if api.strongly_typed:
        assert r16.typing == "strong (fp16 model)"
    else:
        assert r16.typing == "weak, FP16 flag"
    assert r16.nbytes < 0.6 * r32.nbytes  # the weights are stored in half precision


def test_dynamic_engine_with_two_profiles(tmp_path, capsys):
    """`--engine --dynamic --trt-shapes A --trt-shapes B`: one engine per graph with both profiles, printed and
    recorded per engine; the build log lists the layers once per profile (TensorRT-RTX names profile 1's
    `... [profile 1]`), counted once; the Concat audit runs on every profile's layers."""
    from natsdeploy.cli import main

    out = tmp_path / "o"
    profiles = ["1x3x64x64:1x3x64x96:1x3x128x128", "2x3x128x128:2x3x160x192:4x3x256x256"]
    code = main(["export", str(EXAMPLES / "resnet18_nats_c.json"), "--engine", "--dynamic", "--input-shape", "1x3x64x96",
                 "--trt-shapes", profiles[0], "--trt-shapes", profiles[1], "--latency-pairs", "0", "--openvino", "off",
                 "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert f"optimization profiles (MIN:OPT:MAX) {profiles[0]}, {profiles[1]}" in printed
    assert "profile 0 (min / opt / max): 1x3x64x64 / 1x3x64x96 / 1x3x128x128" in printed
    t = json.loads((out / "report.json").read_text())["tensorrt"]
    want = [{"min": [1, 3, 64, 64], "opt": [1, 3, 64, 96], "max": [1, 3, 128, 128]},
            {"min": [2, 3, 128, 128], "opt": [2, 3, 160, 192], "max": [4, 3, 256, 256]}]
    n_convs = {k: sum(n.op_type == "Conv" for n in onnx.load(str(out / f"{k}.onnx")).graph.node)
               for k in ("model", "baseline")}
    for key in ("model", "baseline"):
        assert t[key]["profiles"] == want and (out / f"{key}.fp32.engine").is_file()
        if t["flavour"] == "tensorrt-rtx":  # listed twice in the log, counted once
            assert t[key]["layer_counts"]["correlation"] == n_convs[key] and "2 profiles" in t[key]["layers_note"]
    a = t["model"]["concat_audit"]
    assert a["passed"] and a["profiles"] == 2 and a["convs"] == a["eliminated"] > 0
    assert all(v["branch_layers"] >= 2 and len(v["written_tensors"]) == 1 for v in a["per_conv"].values())
    assert "audited on each of the 2 profiles' layers" in printed
