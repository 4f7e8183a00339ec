"""Per-channel cost of an int8 3x3 conv on CPU by output width (issue 21, item 6), ONNX Runtime and OpenVINO.

Which branch widths run at the full int8 rate: for each stage shape (layer3 and layer4 conv2 inputs of
ResNet-50 at 1x3x800x1216), a one-conv QDQ graph (Conv + Relu, per-channel symmetric int8 weights,
symmetric int8 activations, float bias: what `export --precision int8` writes) of `width` outputs at
each dilation is timed against a full-width (256) dilation-1 one on the same input, interleaved
(median of per-pair ratios, bootstrap 95% interval), on ONNX Runtime CPU and OpenVINO CPU. Reported:
the per-channel ratio (t_width / width) / (t_full / full); 1.0 is full rate. `natsdeploy.targets`'
int8 CPU targets take their full-rate width from the recorded tables (results/conv_width_int8*.json; the
narrowest width at most 1.15x everywhere), which tests/test_targets.py recomputes.

    .venv/bin/python benchmarks/conv_width_int8.py [--pairs 20] [--threads 2] [--widths 8,16,32,48,64,128]
        [--runtimes onnxruntime,openvino] [--out benchmarks/results/conv_width_int8.json]

Run it on a quiet machine, on both CPU kinds (AVX-512 VNNI/AMX and AVX2): the blocks differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from natsdeploy.export.int8 import calibrate, quantize_model  # noqa: E402
from natsdeploy.targets import cpu_block_int8, cpu_flags  # noqa: E402
from natsdeploy.timing.latency import time_interleaved  # noqa: E402
from natsdeploy.timing.machine import machine_info  # noqa: E402

# (name, input channels, height, width) of conv2 inputs in ResNet-50 at 1x3x800x1216
STAGES = (("layer3", 256, 50, 76), ("layer4", 512, 25, 38))
DILATIONS = ((1, 1), (2, 2), (4, 1))
FULL = 256


def int8_conv(cin: int, cout: int, h: int, w: int, dilation: tuple[int, int]):
    """A one-Conv (+ Relu) fp32 model with seeded weights, quantized as export --precision int8 does."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(cout * 100 + dilation[0] * 10 + dilation[1])
    weight = numpy_helper.from_array((rng.standard_normal((cout, cin, 3, 3)) * 0.05).astype(np.float32), "w")
    bias = numpy_helper.from_array(np.zeros(cout, np.float32), "b")
    nodes = [helper.make_node("Conv", ["images", "w", "b"], ["c"], dilations=list(dilation), kernel_shape=[3, 3],
                              pads=[dilation[0], dilation[1], dilation[0], dilation[1]]),
             helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, cin, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, h, w])], [weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    xs = [np.maximum(rng.standard_normal((1, cin, h, w)), 0).astype(np.float32) for _ in range(2)]
    return quantize_model(model, calibrate(model, iter(xs)))


def runner(runtime: str, model, threads: int):
    if runtime == "onnxruntime":
        import onnxruntime as ort

        from natsdeploy.runners import ort_session_options

        s = ort.InferenceSession(model.SerializeToString(), sess_options=ort_session_options(threads=threads),
                                 providers=["CPUExecutionProvider"])
        return lambda x: s.run(None, {"images": x})
    from natsdeploy.runners import OpenVinoRunner

    r = OpenVinoRunner(model, threads=threads, precision="f32")
    return lambda x: r.run({"images": x})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--widths", default="8,16,32,48,64,128")
    ap.add_argument("--runtimes", default="onnxruntime,openvino")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "conv_width_int8.json"))
    args = ap.parse_args()
    widths = [int(v) for v in args.widths.split(",")]
    runtimes = args.runtimes.split(",")
    rows = []
    for stage, cin, h, w in STAGES:
        x = np.maximum(np.random.default_rng(0).standard_normal((1, cin, h, w)), 0).astype(np.float32)
        full_model = int8_conv(cin, FULL, h, w, (1, 1))
        for rt in runtimes:
            full = runner(rt, full_model, args.threads)
            for width in widths:
                for dil in DILATIONS:
                    narrow = runner(rt, int8_conv(cin, width, h, w, dil), args.threads)
                    t = time_interleaved(lambda: full(x), lambda: narrow(x), pairs=args.pairs, warmup_s=0.5)
                    r, scale = t.ratio, FULL / width
                    row = {"runtime": rt, "stage": stage, "input": [1, cin, h, w], "width": width,
                           "dilation": list(dil), "per_channel_ratio": r.median * scale,
                           "ci95": [r.ci_low * scale, r.ci_high * scale], "full_p50_ms": t.baseline.p50,
                           "narrow_p50_ms": t.transformed.p50, "pairs": args.pairs}
                    rows.append(row)
                    print(f"{rt} {stage} width {width:>3} d{dil}: per-channel {row['per_channel_ratio']:.2f} "
                          f"({row['ci95'][0]:.2f}-{row['ci95'][1]:.2f})", flush=True)
    import onnxruntime as ort
    import openvino as ov

    block, why = cpu_block_int8(cpu_flags())
    record = {"command": " ".join(["python", "benchmarks/conv_width_int8.py", *sys.argv[1:]]), "threads": args.threads,
              "ort": ort.__version__, "openvino": ov.__version__, "full_width": FULL, "isa_block": block,
              "isa_reason": why, "machine": machine_info(), "results": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"`{record['command']}`", "", f"int8 QDQ conv, {args.threads} threads; per-channel cost of a Conv of "
             f"`width` outputs over a {FULL}-wide dilation-1 Conv on the same input (1.0: full rate); ISA block "
             f"{block} ({why})", "",
             "| runtime | stage (input) | width | " + " | ".join(f"d{d[0]},{d[1]}" for d in DILATIONS) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in DILATIONS) + " |"]
    for rt in runtimes:
        for stage, cin, h, w in STAGES:
            for width in widths:
                cells = [f"{r['per_channel_ratio']:.2f}" for r in rows
                         if r["runtime"] == rt and r["stage"] == stage and r["width"] == width]
                lines.append(f"| {rt} | {stage} (1x{cin}x{h}x{w}) | {width} | " + " | ".join(cells) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
