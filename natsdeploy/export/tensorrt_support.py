"""What TensorRT makes of an ONNX graph: which nodes its parser rejects and why, whether the rest of the
graph then parses, and whether the builder builds the graph as written (`probe_tensorrt`).

The parser stops at its first rejected node. To list every op type it rejects, each rejection cuts out
all nodes of that op type (their outputs become graph inputs, typed by ONNX shape inference) and the
graph is parsed again, until it parses or a cut cannot be made. So a `rejected` entry says: its first
node was rejected with this error; its other nodes were cut with it, not parsed one by one. The builder
runs only on the graph as written (a cut graph is another model), with one optimization profile.

Each rejection carries the ERROR lines TensorRT logged before it (`cause`: e.g. a plugin whose creator
needs CUDA) and, for the ops a torchvision detector emits, the documented `remedy` (onnx-tensorrt
docs/operators.md for TensorRT 8.5-10.15; NVIDIA/TensorRT-RTX#32 for NonZero on TensorRT-RTX). A remedy
is what those documents say, not something run here.

TensorRT runs in a child interpreter (``python -m natsdeploy.export.tensorrt_support``): freeing a
parsed network's objects in the wrong order (builder before network) crashed the process on the next
parse (TensorRT-RTX 1.7.1, measured), and `init_libnvinfer_plugins` registers plugins process-wide.
A crash is then a line in the report, with what was learnt before it, not the end of the export.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["REMEDIES", "probe_tensorrt", "format_tensorrt_support", "graph_op_counts"]

REMEDIES: dict[str, str] = {
    "NonZero": "TensorRT 8.5+ imports NonZero natively (onnx-tensorrt docs/operators.md: --trt tensorrt); "
               "TensorRT-RTX looks it up as a plugin 'NonZero' (IPluginV3, version 1) and ships none "
               "(NVIDIA/TensorRT-RTX#32): register one before parsing (TensorRT's samples/python/non_zero_plugin)",
    "RoiAlign": "imported through the ROIAlign_TRT plugin of libnvinfer_plugin (TensorRT 8.5+, "
                "docs/operators.md); where its creator fails on CUDA (see cause), parse on a machine with an "
                "NVIDIA GPU",
    "NonMaxSuppression": "native since TensorRT 8.5 (docs/operators.md; experimental in 8.4, which needs "
                         "max_output_boxes_per_class, iou_threshold and score_threshold as initializers)",
    "TopK": "TensorRT 10.15: K below 3840 and sorted=1 (docs/operators.md); lower the detector's "
            "rpn_pre_nms_top_n_test / detections_per_img",
    "If": "TensorRT: both branches' outputs must have the same rank and different names (docs/operators.md)",
    "Resize": "TensorRT: modes nearest/linear, no antialiasing (docs/operators.md)",
}
GENERIC_REMEDY = ("not in TensorRT's supported-operator list for this version (onnx-tensorrt docs/operators.md): "
                  "a plugin registered under the op's name is the parser's fallback")
MAX_ROUNDS = 16


def probe_tensorrt(onnx_path: str | os.PathLike[str], *, trt: str = "auto", engine_path: str | os.PathLike | None = None,
                   min_shape: Sequence[int], opt_shape: Sequence[int], max_shape: Sequence[int],
                   timeout_s: float = 1800.0) -> dict[str, Any]:
    """Parse (with the rejection census) and, where the graph parses as written, build it, in a child.

    `engine_path`: where the engine is written; None builds into a temporary folder and keeps nothing.
    Returns the report section: API, plugins, `parse`, `rejected`, `parsed_after_cuts`, `build`, and
    `crashed` where the child died (with the sections it reported before).
    """
    import natsdeploy

    root = str(Path(natsdeploy.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    with tempfile.TemporaryDirectory(prefix="natsdeploy-trt-") as tmp:
        result = Path(tmp) / "result.jsonl"
        cmd = [sys.executable, "-m", "natsdeploy.export.tensorrt_support", str(onnx_path), "--result", str(result),
               "--trt", trt, "--shapes", *("x".join(str(int(d)) for d in s) for s in (min_shape, opt_shape, max_shape)),
               "--engine", str(engine_path) if engine_path is not None else str(Path(tmp) / "detector.engine")]
        if engine_path is None:
            cmd.append("--discard-engine")
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
            rc, tail = proc.returncode, (proc.stderr or "").strip().splitlines()[-1:]
        except subprocess.TimeoutExpired:
            rc, tail = None, [f"timed out after {timeout_s:g} s"]
        out: dict[str, Any] = {}
        if result.exists():
            for line in result.read_text().splitlines():
                out.update(json.loads(line))
    done = out.pop("done", False)
    if rc != 0:
        why = (f"signal {signal.Signals(-rc).name}" if rc is not None and rc < 0 else
               f"exit status {rc}" if rc is not None else tail[0])
        where = "after its last step" if done else f"during {out.get('stage', 'start-up')}"
        out["crashed"] = f"TensorRT's child process ended with {why} {where}" + (
            f": {tail[0][:300]}" if tail and rc is not None else "")
    if done:
        out.pop("stage", None)
    return out


def _graphs(graph):
    """`graph` and every subgraph in it (If/Loop bodies), depth first."""
    yield graph
    for node in graph.node:
        for a in node.attribute:
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _graphs(g)


def graph_op_counts(model) -> Counter:
    """Nodes per op type in an ONNX model, its If/Loop subgraphs included (torchvision's NMS sits in one)."""
    return Counter(n.op_type for g in _graphs(model.graph) for n in g.node)


def _value_types(model) -> dict[str, Any]:
    """Each tensor's ValueInfoProto from ONNX shape inference, subgraphs included."""
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(model)
    types: dict[str, Any] = {}
    for g in _graphs(inferred.graph):
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            types.setdefault(vi.name, vi)
    return types


def _cut(model, op_type: str, types: dict[str, Any]) -> int:
    """Remove every node of `op_type`; their outputs become graph inputs. Returns how many were cut (0: none
    could be, as an output has no inferred type)."""
    nodes = [(g, n) for g in _graphs(model.graph) for n in g.node if n.op_type == op_type]
    outputs = [o for _, n in nodes for o in n.output if o]
    if not nodes or any(o not in types for o in outputs):
        return 0
    for g, n in nodes:
        g.node.remove(n)
    known = {i.name for i in model.graph.input}
    model.graph.input.extend(types[o] for o in outputs if o not in known)
    return len(nodes)


def _release(parsed) -> None:
    """Free a parse's TensorRT objects parser first, builder last (the other order crashed the next parse)."""
    for name in ("parser", "network", "builder"):
        setattr(parsed, name, None)


def _causes(messages: list[tuple[str, str]]) -> list[str]:
    """The ERROR lines TensorRT logged before the parser's own report of the failing node."""
    out = []
    for severity, msg in messages:
        if severity not in ("ERROR", "INTERNAL_ERROR"):
            continue
        if msg.startswith("ModelImporter") or "While parsing node" in msg:
            break
        out.append(msg.splitlines()[0][:300])
    return out[-3:]


def _census(api, onnx_path: str, emit) -> bool:
    """Parse as written, then cut each rejected op type and parse again; True when the graph as written parsed."""
    import onnx

    from natsdeploy.export.tensorrt import parse_onnx

    model = onnx.load(onnx_path)
    total = sum(graph_op_counts(model).values())
    emit({"stage": "parse as written", "nodes": total})
    types, rejected, cut = None, [], 0
    for round_ in range(MAX_ROUNDS):
        parsed = parse_onnx(api, onnx_path) if round_ == 0 else parse_onnx(api, model_bytes=model.SerializeToString())
        ok = parsed.ok
        err = None if ok else parsed.parser.get_error(0)
        failure = None if ok else {"node": err.node_name() or f"#{err.node()}", "op": err.node_operator(), "code": str(err.code()).split(".")[-1],
                                   "error": str(err.desc()).splitlines()[0][:300], "cause": _causes(parsed.log.messages)}
        _release(parsed)
        if round_ == 0:
            emit({"parse": "ok (as written)" if ok else f"failed at node {failure['node']} ({failure['op']})"})
        if ok:
            if round_ > 0:
                emit({"parsed_after_cuts": f"yes: the other {total - cut} nodes parsed with the {cut} rejected ones cut out"})
            emit({"accepted_ops": dict(sorted(graph_op_counts(model).items()))})
            return round_ == 0
        if types is None:
            types = _value_types(model)
        op = failure["op"]
        n = _cut(model, op, types) if op and op not in {r["op"] for r in rejected} else 0
        rejected.append({**failure, "nodes": n, "remedy": REMEDIES.get(op, GENERIC_REMEDY)})
        emit({"rejected": rejected, "stage": f"parse after cutting {', '.join(r['op'] for r in rejected)}"})
        if n == 0:
            emit({"parsed_after_cuts": f"not tried further: node {failure['node']} ({op}) could not be cut out"})
            return False
        cut += n
    emit({"parsed_after_cuts": f"not known: still failing after {MAX_ROUNDS} rounds"})
    return False


def _build(api, onnx_path: str, engine: str, shapes: list[tuple[int, ...]], discard: bool, emit) -> None:
    from natsdeploy.export.tensorrt import build
    from natsdeploy.export.tensorrt import engine_layers, layer_counts

    lo, opt, hi = shapes
    emit({"stage": "build", "profile": {"min": list(lo), "opt": list(opt), "max": list(hi)}})
    try:
        r = build(api, onnx_path, engine, dynamic=True, input_shape=opt, min_shape=lo, max_shape=hi)
    except RuntimeError as e:
        emit({"build": "failed: " + (str(e).splitlines() or [""])[0][:400]})
        return
    layers = engine_layers(r.log)
    emit({"build": f"ok ({r.typing}ly typed network)", "build_s": round(r.seconds, 3), "engine_bytes": r.nbytes,
          "layers": len(layers), "layer_counts": layer_counts(layers),
          "engine": None if discard else str(r.engine)})
    if discard:
        Path(r.engine).unlink(missing_ok=True)


def _main(argv: Sequence[str] | None = None) -> int:
    """The child: census and build for one ONNX file, each finding appended to `--result` as a JSON line."""
    p = argparse.ArgumentParser(prog="python -m natsdeploy.export.tensorrt_support")
    p.add_argument("onnx")
    p.add_argument("--result", required=True)
    p.add_argument("--trt", default="auto")
    p.add_argument("--shapes", nargs=3, required=True, help="min opt max, e.g. 3x64x64 3x800x1216 3x1333x1333")
    p.add_argument("--engine", required=True)
    p.add_argument("--discard-engine", action="store_true")
    args = p.parse_args(argv)

    def emit(d: dict) -> None:
        with open(args.result, "a", encoding="utf-8") as f:
            f.write(json.dumps(d) + "\n")
            f.flush()

    from natsdeploy.export.tensorrt import VerboseLog, require_tensorrt

    api = require_tensorrt(args.trt, field="--trt")
    emit({**api.describe(), "stage": "plugin registration"})
    log = VerboseLog(api.trt)
    api.trt.init_libnvinfer_plugins(log, "")  # as trtexec does: RoiAlign imports through ROIAlign_TRT
    creators = sorted({f"{c.name} {c.plugin_version}" for c in api.trt.get_plugin_registry().all_creators})
    emit({"plugins": creators})
    if _census(api, args.onnx, emit):
        _build(api, args.onnx, args.engine, [tuple(int(d) for d in s.split("x")) for s in args.shapes],
               args.discard_engine, emit)
    else:
        emit({"build": "not run: the graph as written does not parse"})
    emit({"done": True, "stage": "done"})
    return 0


def format_tensorrt_support(t: dict[str, Any]) -> list[str]:
    """The printed table's TensorRT rows."""
    if "skipped" in t:
        return [f"TensorRT: not run ({t['skipped']})"]
    lines = [f"TensorRT: {t.get('flavour', '?')} {t.get('version', '?')}; plugins registered: "
             f"{', '.join(t.get('plugins', [])) or 'none'}",
             f"  parse as written: {t.get('parse', 'not reached')}"]
    for r in t.get("rejected", []):
        lines.append(f"  rejected {r['op']:<18} {r['nodes']:>3} node(s), first {r['node']}: {r['error'][:110]}")
        lines += [f"    cause: {c[:140]}" for c in r["cause"]]
        lines.append(f"    remedy: {r['remedy']}")
    if "parsed_after_cuts" in t:
        lines.append(f"  rest of the graph: {t['parsed_after_cuts']}")
    lines.append(f"  build: {t.get('build', 'not reached')}" + (
        f", {t['build_s']:.1f} s, {t['engine_bytes'] / 1e6:.1f} MB, {t['layers']} layers" if "build_s" in t else ""))
    if t.get("engine"):
        lines.append(f"  engine: {t['engine']}")
    if "crashed" in t:
        lines.append(f"  {t['crashed']}")
    return lines


if __name__ == "__main__":
    sys.exit(_main())
