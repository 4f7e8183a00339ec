"""Per-channel cost of a 3x3 conv on ONNX Runtime CPU by output width and dilation (issue 11).

Why aligned-32 archs still cost a few percent on ORT: a transformed conv runs one ONNX Conv per
branch, and the cost per output channel of a Conv depends on its width. For each stage shape
(layer3 and layer4 of ResNet-50 at 1x3x800x1216), times a Conv of `width` output channels at each
dilation against a full-width (256) dilation-1 Conv on the same input, interleaved (pairs in
alternating order, median of per-pair ratios, bootstrap 95% interval), and reports the per-channel
ratio (t_width / width) / (t_full / full).

    .venv/bin/python benchmarks/conv_width.py [--pairs 20] [--threads 2] [--widths 16,32,48,64,128]
        [--out benchmarks/results/conv_width.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from natsdeploy.runners import ort_session_options  # noqa: E402
from natsdeploy.timing.latency import time_interleaved  # noqa: E402
from natsdeploy.timing.machine import machine_info  # noqa: E402

# (name, input channels, height, width) of conv2 inputs in ResNet-50 at 1x3x800x1216
STAGES = (("layer3", 256, 50, 76), ("layer4", 512, 25, 38))
DILATIONS = ((1, 1), (1, 2), (2, 2), (4, 4), (4, 1))
FULL = 256


def conv_session(cin: int, cout: int, h: int, w: int, dilation: tuple[int, int], threads: int):
    """A one-Conv (+ Relu, as folded blocks run) ONNX model on ORT CPU with seeded weights."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(cout * 100 + dilation[0] * 10 + dilation[1])
    weight = numpy_helper.from_array((rng.standard_normal((cout, cin, 3, 3)) * 0.05).astype(np.float32), "w")
    bias = numpy_helper.from_array(np.zeros(cout, np.float32), "b")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], dilations=list(dilation), kernel_shape=[3, 3],
                              pads=[dilation[0], dilation[1], dilation[0], dilation[1]]),
             helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), sess_options=ort_session_options(threads=threads),
                                providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--widths", default="16,32,48,64,128")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "conv_width.json"))
    args = ap.parse_args()
    rows = []
    for stage, cin, h, w in STAGES:
        x = np.random.default_rng(0).standard_normal((1, cin, h, w), dtype=np.float32)
        full = conv_session(cin, FULL, h, w, (1, 1), args.threads)
        for width in [int(v) for v in args.widths.split(",")]:
            for dil in DILATIONS:
                narrow = conv_session(cin, width, h, w, dil, args.threads)
                t = time_interleaved(lambda: full.run(None, {"x": x}), lambda: narrow.run(None, {"x": x}),
                                     pairs=args.pairs, warmup_s=0.5)
                r, scale = t.ratio, FULL / width
                row = {"stage": stage, "input": [1, cin, h, w], "width": width, "dilation": list(dil),
                       "per_channel_ratio": r.median * scale, "ci95": [r.ci_low * scale, r.ci_high * scale],
                       "full_p50_ms": t.baseline.p50, "narrow_p50_ms": t.transformed.p50, "pairs": args.pairs}
                rows.append(row)
                print(f"{stage} width {width:>3} d{dil}: per-channel {row['per_channel_ratio']:.2f} "
                      f"({row['ci95'][0]:.2f}-{row['ci95'][1]:.2f})  full {t.baseline.p50:.2f} ms  "
                      f"narrow {t.transformed.p50:.2f} ms", flush=True)
    import onnxruntime as ort

    record = {"command": " ".join(["python", "benchmarks/conv_width.py", *sys.argv[1:]]), "threads": args.threads,
              "ort": ort.__version__, "full_width": FULL, "machine": machine_info(), "results": rows}
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"`{record['command']}`", "", f"ORT {ort.__version__}, fp32, {args.threads} threads; per-channel "
             f"cost of a Conv of `width` outputs over a {FULL}-wide dilation-1 Conv on the same input", "",
             "| stage (input) | width | " + " | ".join(f"d{d[0]},{d[1]}" for d in DILATIONS) + " |",
             "| --- | --- | " + " | ".join("---" for _ in DILATIONS) + " |"]
    for stage, cin, h, w in STAGES:
        for width in [int(v) for v in args.widths.split(",")]:
            cells = [f"{r['per_channel_ratio']:.2f}" for r in rows if r["stage"] == stage and r["width"] == width]
            lines.append(f"| {stage} (1x{cin}x{h}x{w}) | {width} | " + " | ".join(cells) + " |")
    Path(args.out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.md')}")


if __name__ == "__main__":
    main()
