"""`natsdeploy export --engine`: model and baseline engines, the report's `tensorrt` section, its table.

Without a GPU (TensorRT-RTX builds ahead of time on the CPU) the engines are built and audited, and
the report says "built, not run (no GPU)": no parity or latency row is invented. Where torch sees a
CUDA device and the engine deserialises, each engine is run once against ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["TRT_FORMS", "check_engine_request", "build_engines_for_export", "format_tensorrt", "int8_engine_check"]

TRT_FORMS = ("branches", "sum", "function")
NOT_RUN = "built, not run (no GPU)"


def check_engine_request(form: str, trt: str = "auto", aux_streams: int | None = None):
    """Refuse, before any work, what TensorRT cannot take; return the API (`TrtApi`) `--engine` will use."""
    from natsdeploy.export.tensorrt import require_tensorrt
    from natsdeploy.errors import UsageError

    if form not in TRT_FORMS:
        how = "it emits Col2Im" if form == "rows" else "it emits the rows form, Col2Im, wherever it picks rows"
        raise UsageError(f"--form: got {form!r} with --engine, expected one of {list(TRT_FORMS)} "
                         f"({how}, which TensorRT's ONNX parser rejects)")
    if aux_streams is not None and aux_streams < 0:
        raise UsageError(f"--trt-aux-streams: got {aux_streams}, expected 0 or more")
    return require_tensorrt(trt)


def build_engines_for_export(out_dir, api, *, precision: str, dynamic: bool, input_shape: Sequence[int],
                             split_names: Sequence[str], aux_streams: int | None = None) -> dict[str, Any]:
    """Engines for `out_dir`'s model.onnx and baseline.onnx (written atomically), audited from the build log."""
    from natsdeploy.export.tensorrt import build, gpu_available
    from natsdeploy.export.tensorrt_audit import audit_concats, engine_layers, layer_counts, sync_counts

    fp16 = precision == "fp16"
    report: dict[str, Any] = {**api.describe(), "precision": precision, "max_aux_streams": aux_streams,
                              "layers_from": "builder log (ProfilingVerbosity.DETAILED, verbose logger)"}
    engines = {}
    for key in ("model", "baseline"):
        r = build(api, out_dir / f"{key}.onnx", out_dir / f"{key}.{precision}.engine", fp16=fp16, dynamic=dynamic,
                  input_shape=input_shape, aux_streams=aux_streams)
        layers = engine_layers(r.log)
        entry: dict[str, Any] = {"parse": "ok (as written)", "network": r.typing, "engine": str(r.engine),
                                 "build_s": round(r.seconds, 3), "engine_bytes": r.nbytes,
                                 "layers": len(layers), "layer_counts": layer_counts(layers),
                                 "stream_sync": sync_counts(layers)}
        if key == "model":
            audit = audit_concats(layers, split_names)
            entry["concat_audit"] = {"convs": len(audit), "eliminated": sum(a["eliminated"] for a in audit.values()),
                                     "passed": all(a["eliminated"] for a in audit.values()), "per_conv": audit}
        report[key], engines[key] = entry, r.engine
    report["run"] = _run_or_not(api, out_dir, engines, input_shape, fp16) if gpu_available() else NOT_RUN
    return report


def _run_or_not(api, out_dir, engines, input_shape, fp16: bool):
    """Run each engine once against ONNX Runtime (only where a GPU is present)."""
    from natsdeploy.runners import OrtRunner, TrtRunner
    from natsdeploy.verify.parity import DEFAULT_TOLERANCE, compare

    try:
        runners = {k: TrtRunner(e, trt=api.flavour) for k, e in engines.items()}
    except RuntimeError as e:  # e.g. a TensorRT-RTX engine on a GPU it has no kernels for
        return f"built, not run ({str(e).splitlines()[0]})"
    x = np.random.default_rng(0).standard_normal(tuple(input_shape), dtype=np.float32)
    out = {}
    for key, runner in runners.items():
        ref = OrtRunner(out_dir / f"{key}.onnx").run({"images": x})
        out[key] = compare(runner.run({"images": x}), ref,
                           tolerance=DEFAULT_TOLERANCE["fp16" if fp16 else "fp32"]).to_dict()
    return {"parity_vs_ort": out}


def format_tensorrt(t: dict[str, Any]) -> list[str]:
    """The printed table's TensorRT rows."""
    lines = ["", f"  TensorRT: {t['flavour']} {t['version']} ({t['typing']}ly typed), {t['precision']}, "
             f"max_aux_streams {t['max_aux_streams'] if t['max_aux_streams'] is not None else 'default'}"]
    lines.append(f"  {'':<10}{'build s':>9}{'MB':>9}{'layers':>8}{'convs':>7}{'wait':>6}{'signal':>8}")
    for key in ("model", "baseline"):
        e = t[key]
        convs = sum(v for k, v in e["layer_counts"].items() if k.lower() in ("correlation", "convolution",
                                                                            "caskconvolution"))
        lines.append(f"  {key:<10}{e['build_s']:>9.2f}{e['engine_bytes'] / 1e6:>9.1f}{e['layers']:>8}{convs:>7}"
                     f"{e['stream_sync']['wait']:>6}{e['stream_sync']['signal']:>8}")
    a = t["model"]["concat_audit"]
    lines.append(f"  concat audit: {a['eliminated']}/{a['convs']} transformed convs write their branches into one "
                 f"buffer with no concat/copy layer{'' if a['passed'] else ' (FAIL: ' + ', '.join(k for k, v in a['per_conv'].items() if not v['eliminated']) + ')'}")
    run = t["run"]
    if isinstance(run, str):
        lines.append(f"  engines: {run}")
    else:
        for key, p in run["parity_vs_ort"].items():
            lines.append(f"  {key:<10}parity vs ONNX Runtime: {'pass' if p['passed'] else 'FAIL'}")
    return lines


def int8_engine_check(api, onnx_path, engine_path) -> dict[str, Any]:
    """What TensorRT makes of an int8 QDQ graph (`export --precision int8`): parse as written, then build.

    A build that fails is one line in `build`, not an exception; `conv_inputs` counts the engine's
    convolution layers by the data type of their first input, read from the builder's layer list
    (``Datatype: Int8`` where the conv runs in int8)."""
    import re
    from collections import Counter

    from natsdeploy.export.tensorrt import build, parse_onnx

    parsed = parse_onnx(api, onnx_path)
    out: dict[str, Any] = {**api.describe(), "parse": "ok (as written)" if parsed.ok else
                           "failed: " + "; ".join(parsed.errors[:2]), "build": "not attempted", "conv_inputs": {}}
    if not parsed.ok:
        return out
    try:
        r = build(api, onnx_path, engine_path)
    except RuntimeError as e:
        out["build"] = "not built: " + (str(e).splitlines() or [""])[0][:300]
        return out
    types: Counter = Counter()
    for _, msg in r.log:
        for line in msg.splitlines():
            if "LayerType: correlation" in line or "LayerType: Convolution" in line:
                m = re.search(r"Inputs: \[ \{.*?Datatype: (\w+)", line)
                types[m.group(1) if m else "unknown"] += 1
    out.update(build=f"ok ({r.nbytes} bytes, {r.seconds:.1f} s)", engine=str(r.engine), conv_inputs=dict(types))
    return out
