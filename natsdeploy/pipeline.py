"""`natsdeploy export`: transformed + baseline ONNX, proven equal in cost and numerics, timed.

Everything is computed in memory first (build, fold, rewrite, check, count, parity, latency);
files are written at the end through a staging folder and atomic renames, so a bad input or an
interrupted run leaves no partial output.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from natsdeploy.arch import Arch, load_arch
from natsdeploy.export.int8_cli import add_int8_arguments
from natsdeploy.export.onnx import FEATURE_OUTPUTS, FORMS, Form
from natsdeploy.files import atomic_write_text
from natsdeploy.cli_values import (add_weights_arguments, format_shape, parse_float, parse_input_shape, parse_int,
                                   weights_value)
from natsdeploy.errors import UsageError

__all__ = ["ExportResult", "export_arch", "add_export_arguments", "export_cli", "DEFAULT_FORM"]

DEFAULT_FORM: Form = "branches"
CLI_FORMS = (*FORMS, "auto")  # auto: rows or branches per conv, whichever ORT CPU runs faster here


@dataclass
class ExportResult:
    out_dir: Path
    files: dict[str, Path]
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.report["verdict"]["passed"])


def export_arch(arch: Arch, *, weights: Any = None, out_dir: str | os.PathLike[str],
           input_shape: Sequence[int] = (1, 3, 800, 1216), dynamic: bool = False, opset: int | None = None,
           form: Form = DEFAULT_FORM, logits: bool = False, tolerance: float | None = None,
           latency_pairs: int = 20, warmup_s: float = 2.0, threads: int | None = None, seed: int = 0,
           engine: bool = False, precision: str = "fp32", trt: str = "auto", trt_aux_streams: int | None = None,
           target: Any = None, openvino: str | None = "f32", calibration: str | None = None,
           calibration_images: int = 64, int8_activations: str = "s8", log=print) -> ExportResult:
    """Export `arch` (and its baseline) to ONNX in `out_dir` and verify cost, numerics and latency.

    `target` (a `natsdeploy.targets.Target` or its name; default: this machine's CPU) decides the
    channel block that the report's `alignment` entry checks branch widths against.
    `openvino` (f32, bf16 or f16; None skips) adds OpenVINO CPU rows to parity and latency at that precision.
    `precision` fp16 writes fp16 graphs with fp32 inputs/outputs behind casts (`onnx_utils.to_fp16`);
    `engine` builds TensorRT engines with the API `trt` names (`natsdeploy.export.tensorrt_export`).
    `precision` int8: QDQ graphs (`int8_activations` s8 or u8) calibrated on `calibration` (`export/int8_report.py`)."""
    import onnxruntime as ort

    from natsdeploy.align import alignment_entry
    from natsdeploy.export.fold import fold_trunk, iter_splits, rewrite
    from natsdeploy.export.onnx import check_onnx, trunk_to_onnx
    from natsdeploy.models.build import build_trunks
    from natsdeploy.onnx_utils import inline_functions, to_fp16
    from natsdeploy.runners import TorchRunner, ort_session_options
    from natsdeploy.timing.latency import time_interleaved
    from natsdeploy.timing.machine import machine_info
    from natsdeploy.verify.count import count_onnx
    from natsdeploy.verify.parity import DEFAULT_TOLERANCE, compare

    trt_api = None
    if engine:  # refuse rows/auto and a missing TensorRT before any work
        from natsdeploy.export.tensorrt_export import check_engine_request

        trt_api = check_engine_request(form, trt, trt_aux_streams)
    shape = tuple(int(d) for d in input_shape)
    opset = int(opset) if opset is not None else (18 if form in ("rows", "auto") else 17)
    threads = int(threads or os.cpu_count() or 1)
    tol = float(tolerance if tolerance is not None else DEFAULT_TOLERANCE.get(precision, DEFAULT_TOLERANCE["fp32"]))
    out_names = FEATURE_OUTPUTS + (("logits",) if logits else ())

    transformed, baseline, weight_source = build_trunks(arch, weights, seed)
    trunks = {"model": rewrite(fold_trunk(transformed)), "baseline": rewrite(fold_trunk(baseline))}
    emit_form, rows_only, autotune = form, None, None
    if form == "auto":
        from natsdeploy.export.autotune import choose_rows

        log(f"autotune: timing branches vs rows per block at {format_shape(shape)} on ONNX Runtime CPU, {threads} threads")
        rows_only, autotune = choose_rows(trunks["model"], shape, threads=threads, log=log)
        emit_form = "rows"
    protos = {k: trunk_to_onnx(t, input_shape=shape, dynamic=dynamic, opset=opset, form=emit_form, logits=logits,
                               graph_name=f"{arch.backbone}-{k}", rows_only=rows_only) for k, t in trunks.items()}
    if precision == "fp16":
        protos = {k: to_fp16(p) for k, p in protos.items()}
    blobs = {k: p.SerializeToString(deterministic=True) for k, p in protos.items()}
    for b in blobs.values():
        check_onnx(b)  # the bytes: serialising a large graph once, not twice, is 0.2 s a model

    counts = {k: count_onnx(p, shape if dynamic else None) for k, p in protos.items()}
    cost_equal = (counts["model"].params, counts["model"].macs) == (counts["baseline"].params, counts["baseline"].macs)

    sessions = {k: ort.InferenceSession(b, sess_options=ort_session_options(threads=threads),
                                        providers=["CPUExecutionProvider"]) for k, b in blobs.items()}
    x = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    parity, refs = {}, {}
    for key, module in (("model", transformed), ("baseline", baseline)):
        refs[key] = ref = TorchRunner(module, output_names=out_names).run({"images": x})
        got = dict(zip(out_names, sessions[key].run(list(out_names), {"images": x})))
        parity[key] = compare(got, ref, tolerance=tol)

    latency = None
    if latency_pairs > 0 and precision != "int8":  # int8: the int8 section times int8 against fp32
        feed = {"images": x}
        log(f"timing ONNX Runtime CPU, {threads} threads: {latency_pairs} interleaved pairs after {warmup_s:g}s warm-up")
        timing = time_interleaved(lambda: sessions["baseline"].run(None, feed), lambda: sessions["model"].run(None, feed),
                                  pairs=latency_pairs, warmup_s=warmup_s)
        latency = timing.to_dict()
        latency.update({"runtime": f"onnxruntime {ort.__version__}", "provider": "CPUExecutionProvider",
                        "intra_op_threads": threads, "inter_op_threads": 1, "allow_spinning": False,
                        "input_shape": list(shape)})
    ov_parity = None
    if openvino is not None and precision != "int8":
        from natsdeploy.export.openvino_rows import openvino_entries

        ov_parity, ov_latency = openvino_entries(protos, refs, x, precision=openvino, threads=threads, tolerance=tol,
                                                 latency_pairs=latency_pairs, warmup_s=warmup_s, log=log)
        if latency is not None:
            latency["openvino"] = ov_latency

    splits = list(iter_splits(trunks["model"]))
    report: dict[str, Any] = {
        "arch": {"backbone": arch.backbone, "transformed_convs": len(arch.convs),
                 "provenance": arch.provenance},
        "weights": weight_source,
        "export": {"form": form, "precision": precision, "opset": opset, "dynamic": dynamic, "input_shape": list(shape),
                   "io_dtype": "float32" + (" (Cast to/from float16 in the graph)" if precision == "fp16" else ""),
                   "outputs": list(out_names),
                   "rewrites": ["fold BatchNorm into conv (per branch)", "ReLU into branches",
                                "permutation folded into weights", "merge branches sharing a dilation"],
                   "transformed_convs_in_graph": len(splits),
                   "branches_in_graph": sum(len(s.branches) for s in splits),
                   "conv_nodes": {k: sum(n.op_type == "Conv" for n in inline_functions(p).graph.node)
                                  for k, p in protos.items()},
                   "function_nodes": sum(n.domain == "natsdeploy" for n in protos["model"].graph.node),
                   "autotune": autotune},
        "cost": {"model": counts["model"].to_dict(), "baseline": counts["baseline"].to_dict(), "equal": cost_equal,
                 "counted_from": "ONNX graphs (Conv/Gemm MACs from inferred shapes; params = initializer elements)"},
        "parity": {"reference": "PyTorch eval-mode modules (unfolded BN) on the same seeded input",
                   "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider",
                   **{k: v.to_dict() for k, v in parity.items()}, "openvino": ov_parity},
        "latency": latency,
        "alignment": alignment_entry(arch, target, shape, counts["model"].macs),
        "machine": machine_info(),
    }
    parity_passed = parity["model"].passed and parity["baseline"].passed and (ov_parity or {}).get("passed", True)
    report["verdict"] = {"passed": cost_equal and parity_passed, "cost_equal": cost_equal, "parity_passed": parity_passed}

    if precision == "int8":  # the files are the int8 graphs; the fp32 ones they come from passed parity above
        from natsdeploy.export.int8_report import add_int8_section

        blobs = add_int8_section(report, protos, calibration=calibration, calibration_images=calibration_images,
                                 shape=shape, threads=threads, latency_pairs=latency_pairs, warmup_s=warmup_s,
                                 activations=int8_activations, log=log)
    files = _write_outputs(Path(out_dir), blobs, report)
    result = ExportResult(Path(out_dir), files, report)
    if engine:
        from natsdeploy.export.tensorrt_export import build_engines_for_export

        report["tensorrt"] = build_engines_for_export(result.out_dir, trt_api, precision=precision, dynamic=dynamic,
                                                      input_shape=shape, aux_streams=trt_aux_streams,
                                                      split_names=[s.name for s in splits if len(s.branches) > 1])
        files.update({f"{k}_engine": Path(report["tensorrt"][k]["engine"]) for k in ("model", "baseline")})
        audit = report["tensorrt"]["model"]["concat_audit"]["passed"]  # the design's claim: no Concat survives
        report["verdict"].update(tensorrt_audit_passed=audit, passed=report["verdict"]["passed"] and audit)
        atomic_write_text(files["report"], json.dumps(report, indent=2, default=_json_default) + "\n")
    return result


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def _write_outputs(out_dir: Path, blobs: dict[str, bytes], report: dict) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".natsdeploy-staging-", dir=out_dir))
    try:
        names = {"model": "model.onnx", "baseline": "baseline.onnx", "report": "report.json"}
        (stage / names["model"]).write_bytes(blobs["model"])
        (stage / names["baseline"]).write_bytes(blobs["baseline"])
        (stage / names["report"]).write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
        files = {}
        for key, name in names.items():
            os.replace(stage / name, out_dir / name)
            files[key] = out_dir / name
        return files
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# -- presentation --------------------------------------------------------------------------
def format_report(report: dict) -> str:
    e, c, p, lat = report["export"], report["cost"], report["parity"], report["latency"]
    lines = [f"natsdeploy export: {report['arch']['backbone']} ({report['arch']['transformed_convs']} transformed convs, "
             f"{e['branches_in_graph']} branches after merging, {e['conv_nodes']['model']} Conv nodes"
             f"{', %d MixedDilationConv nodes' % e['function_nodes'] if e.get('function_nodes') else ''}), "
             f"form={e['form']}, {e.get('precision', 'fp32')}, opset {e['opset']}, "
             f"input {format_shape(tuple(e['input_shape']))}{' (dynamic)' if e['dynamic'] else ''}",
             f"weights: {report['weights']}", "",
             f"  {'':<22}{'model.onnx':>18}{'baseline.onnx':>18}  verdict"]
    for label, key in (("params", "params"), ("MACs", "macs")):
        a, b = c["model"][key], c["baseline"][key]
        lines.append(f"  {label:<22}{a:>18,}{b:>18,}  {'equal' if a == b else 'DIFFERENT'}")
    al = report.get("alignment")
    if al:
        lines.append(f"  alignment ({al['target']}, block {al['block']}): " + (
            "every branch aligned" if al["aligned"] else
            f"{len(al['unaligned_branches'])} branches not a multiple of {al['block']} carry {al['mac_share']:.1%} "
            f"of MACs (warning; fix: natsdeploy align ARCH.json --multiple {al['block']})"))
        if al.get("narrow_branches") and al.get("full_rate", al["block"]) != al["block"]:
            fix = (f"natsdeploy align ARCH.json --multiple {al['full_rate']}" if al.get("full_rate_alignable")
                   else "not alignable to it")
            lines.append(f"  full rate ({al['full_rate']} channels): {len(al['narrow_branches'])} narrower branches "
                         f"carry {al['narrow_share']:.1%} of MACs (for the baseline's speed: {fix})")
    lines.append("")
    lines.append(f"  parity vs PyTorch ({p['runtime']}), max|err| / max|ref|:")
    for key in ("model", "baseline"):
        outs = p[key]["outputs"]
        cells = "  ".join(f"{n} {o['rel_err']:.1e}" for n, o in outs.items())
        tol = next(iter(outs.values()))["tolerance"]
        lines.append(f"  {key:<10}{cells}  (tol {tol:.0e}) {'pass' if p[key]['passed'] else 'FAIL'}")
    if p.get("openvino"):
        from natsdeploy.export.openvino_rows import format_openvino_parity

        lines += format_openvino_parity(p["openvino"])
    if lat:
        lines.append("")
        lines.append(f"  latency, {lat['runtime']} CPU, {lat['intra_op_threads']} threads, {lat['pairs']} interleaved pairs:")
        lines.append(f"  {'':<10}{'p50 ms':>10}{'p90 ms':>10}{'cv':>8}")
        for key, label in (("baseline_ms", "baseline"), ("transformed_ms", "model")):
            s = lat[key]
            lines.append(f"  {label:<10}{s['p50']:>10.2f}{s['p90']:>10.2f}{s['cv']:>8.1%}")
        lines.append(f"  {lat['verdict']}")
        if max(lat["baseline_ms"]["cv"], lat["transformed_ms"]["cv"]) > 0.025:
            lines.append("  warning: coefficient of variation above 2.5%; the machine is noisy, rerun with more pairs")
        if lat.get("openvino"):
            from natsdeploy.export.openvino_rows import format_openvino_latency

            lines += format_openvino_latency(lat["openvino"])
    if report.get("tensorrt"):
        from natsdeploy.export.tensorrt_export import format_tensorrt

        lines += format_tensorrt(report["tensorrt"])
    if report.get("int8"):
        from natsdeploy.export.int8_report import format_int8

        lines += format_int8(report["int8"])
    lines.append("")
    v = report["verdict"]
    lines.append("verdict: PASS (cost equal, numerics within tolerance)" if v["passed"] else
                 f"verdict: FAIL (cost equal: {v['cost_equal']}, parity passed: {v['parity_passed']}"
                 + "".join(f", {k.replace('_', ' ')}: {v[k]}" for k in ("int8_passed", "tensorrt_audit_passed") if k in v) + ")")
    return "\n".join(lines)


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("arch", help="arch.json")
    add_weights_arguments(p, default="seeded init")
    p.add_argument("--input-shape", default="1x3x800x1216", help="NxCxHxW (default 1x3x800x1216)")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width")
    p.add_argument("--opset", default=None, help="ONNX opset (default 17; 18 for --form rows, which needs Col2Im)")
    p.add_argument("--form", default=DEFAULT_FORM, help=f"transformed conv form: {', '.join(CLI_FORMS)} (default branches)")
    p.add_argument("--outputs", default="features", help="features (c2..c5) or logits (c2..c5 and logits)")
    p.add_argument("--out", default=None, help="output folder (default: ./export-<arch file stem>)")
    p.add_argument("--tolerance", default=None, help="parity bound on max|err|/max|ref| (fp32 default 1e-4)")
    p.add_argument("--latency-pairs", default="20", help="interleaved timing pairs on ORT CPU (0 skips timing)")
    p.add_argument("--warmup-s", default="2", help="warm-up seconds before timing")
    p.add_argument("--threads", default=None, help="ORT intra-op threads (default: all logical CPUs)")
    p.add_argument("--seed", default="0", help="seed for the init (without --weights) and the parity input")
    p.add_argument("--precision", default=None, help="fp32 (default), fp16: fp16 graphs (fp32 inputs/outputs "
                   "behind casts) and, with --engine, fp16 engines, or int8: static QDQ graphs (needs --calibration)")
    add_int8_arguments(p)
    p.add_argument("--fp16", action="store_true", help="alias of --precision fp16")
    p.add_argument("--engine", action="store_true", help="also build and audit TensorRT engines (extras trt-rtx, trt)")
    p.add_argument("--trt", default="auto", help="TensorRT API for --engine: auto (default), tensorrt or rtx")
    p.add_argument("--trt-aux-streams", default=None, help="TensorRT max_aux_streams (0: no auxiliary streams)")
    p.add_argument("--openvino", default="f32", help="OpenVINO CPU rows in parity and latency at this precision: "
                   "f32 (default), bf16, f16, or off")
    p.add_argument("--target", default=None, help="ort-cpu, openvino-cpu, ort-cpu-int8, openvino-cpu-int8, cuda-fp16 "
                   "or cuda-int8: report branches that are not a multiple of its channel block (default: ort-cpu)")


def export_cli(args: argparse.Namespace) -> int:
    import onnx

    arch = load_arch(args.arch)
    shape = parse_input_shape(args.input_shape)
    if args.form not in CLI_FORMS:
        raise UsageError(f"--form: got {args.form!r}, expected one of {list(CLI_FORMS)}")
    default_opset = "18" if args.form in ("rows", "auto") else "17"
    opset = parse_int("--opset", args.opset if args.opset is not None else default_opset, 13,
                 onnx.defs.onnx_opset_version())
    if args.form in ("rows", "auto") and opset < 18:
        raise UsageError(f"--opset: got {opset}, expected 18 or newer for form 'rows' (Col2Im)")
    if args.outputs not in ("features", "logits"):
        raise UsageError(f"--outputs: got {args.outputs!r}, expected 'features' or 'logits'")
    precision = args.precision or ("fp16" if args.fp16 else "fp32")
    if precision not in ("fp32", "fp16", "int8") or (args.fp16 and precision != "fp16"):
        raise UsageError(f"--precision: got {args.precision!r}{' with --fp16' if args.fp16 else ''}, expected fp32, "
                         "fp16 or int8")
    from natsdeploy.export.int8 import check_int8_request

    n_calib = check_int8_request(precision, args.calibration, args.calibration_images, form=args.form,
                                 dynamic=args.dynamic, engine=args.engine, activations=args.int8_activations)
    aux = parse_int("--trt-aux-streams", args.trt_aux_streams, 0) if args.trt_aux_streams is not None else None
    if args.engine:  # before any work: rows/auto, a missing TensorRT
        from natsdeploy.export.tensorrt_export import check_engine_request

        check_engine_request(args.form, args.trt, aux)
    tol = parse_float("--tolerance", args.tolerance, 0.0) if args.tolerance is not None else None
    pairs = parse_int("--latency-pairs", args.latency_pairs, 0)
    warm = parse_float("--warmup-s", args.warmup_s, 0.0)
    threads = parse_int("--threads", args.threads, 1) if args.threads is not None else None
    seed = parse_int("--seed", args.seed, 0)
    if args.openvino not in ("f32", "bf16", "f16", "off"):
        raise UsageError(f"--openvino: got {args.openvino!r}, expected f32, bf16, f16 or off")
    from natsdeploy.targets import get_target

    target = get_target(args.target, field="--target") if args.target else None
    out = Path(args.out) if args.out else Path(f"export-{Path(args.arch).stem}")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: got {str(out)!r}, an existing file, expected a folder")
    weights = weights_value(args)
    if weights is not None and weights != "imagenet":
        from natsdeploy.models.build import resolve_weights

        resolve_weights(weights, arch.spec)  # fail before any work or output
    result = export_arch(arch, weights=weights, out_dir=out, input_shape=shape, dynamic=args.dynamic, opset=opset,
                    form=args.form, logits=args.outputs == "logits", tolerance=tol, latency_pairs=pairs,
                    warmup_s=warm, threads=threads, seed=seed, engine=args.engine, precision=precision, trt=args.trt,
                    trt_aux_streams=aux, target=target, calibration=args.calibration, calibration_images=n_calib,
                    int8_activations=args.int8_activations or "s8", openvino=None if args.openvino == "off" else args.openvino)
    print(format_report(result.report))
    print(f"wrote {', '.join(str(p) for p in result.files.values())}")
    return 0 if result.passed else 1
