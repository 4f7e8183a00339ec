"""The export report: typed sections (`to_dict()` is what report.json holds) and the printed table.

`ExportReport` holds one section per finding: `CostSection` (params and MACs of both graphs),
`ParitySection` (both graphs against PyTorch, and OpenVINO's rows), `LatencySection` (interleaved
timing), `Int8Section` (`export --precision int8`), `TensorRTSection` (`export --engine`), and the
`Verdict` they add up to. `format_report` prints a report (the dict, as report.json holds it); every
table row goes through `table_row`, so ONNX Runtime's and OpenVINO's rows read alike.

Torch-free at import: the section types name `Counts`, `ParityResult` and `PairedTiming` only for typing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from natsdeploy.timing.latency import PairedTiming
    from natsdeploy.verify.count import Counts
    from natsdeploy.verify.parity import ParityResult

__all__ = ["CostSection", "ParitySection", "LatencySection", "Int8Section", "TensorRTSection", "Verdict",
           "ExportReport", "table_row", "format_report", "format_parity", "format_latency", "format_int8",
           "format_tensorrt"]

COUNTED_FROM = "ONNX graphs (Conv/Gemm MACs from inferred shapes; params = initializer elements)"
PARITY_REFERENCE = "PyTorch eval-mode modules (unfolded BN) on the same seeded input"
TRT_LAYERS_FROM = "builder log (ProfilingVerbosity.DETAILED, verbose logger)"
NOISY_CV = 0.025
"""Above this coefficient of variation the printed latency carries a warning (the machine is noisy)."""


# -- sections --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CostSection:
    """Params and MACs of model.onnx and baseline.onnx, counted from the graphs."""

    model: Counts
    baseline: Counts
    counted_from: str = COUNTED_FROM

    @property
    def equal(self) -> bool:
        return (self.model.params, self.model.macs) == (self.baseline.params, self.baseline.macs)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "baseline": self.baseline.to_dict(), "equal": self.equal,
                "counted_from": self.counted_from}


@dataclass(frozen=True)
class ParitySection:
    """Both graphs on ONNX Runtime against PyTorch; `openvino`: the same on OpenVINO CPU (None: not run)."""

    runtime: str
    model: ParityResult
    baseline: ParityResult
    openvino: dict[str, Any] | None = None
    reference: str = PARITY_REFERENCE

    @property
    def passed(self) -> bool:
        return bool(self.model.passed and self.baseline.passed and (self.openvino or {}).get("passed", True))

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "runtime": self.runtime, "model": self.model.to_dict(),
                "baseline": self.baseline.to_dict(), "openvino": self.openvino}


@dataclass(frozen=True)
class LatencySection:
    """Baseline/model interleaved timing on ONNX Runtime CPU; `openvino`: the same on OpenVINO CPU."""

    timing: PairedTiming
    runtime: str
    intra_op_threads: int
    input_shape: tuple[int, ...]
    provider: str = "CPUExecutionProvider"
    inter_op_threads: int = 1
    allow_spinning: bool = False
    openvino: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {**self.timing.to_dict(), "runtime": self.runtime, "provider": self.provider,
               "intra_op_threads": self.intra_op_threads, "inter_op_threads": self.inter_op_threads,
               "allow_spinning": self.allow_spinning, "input_shape": list(self.input_shape)}
        if self.openvino is not None:
            out["openvino"] = self.openvino
        return out


@dataclass(frozen=True)
class Int8Section:
    """`export --precision int8`: calibration, quantizer, QDQ audit, accuracy against fp32, cost, OpenVINO's
    conv precisions (None: `--openvino off`), int8 latency, and the int8 verdict (`natsdeploy.export.int8`)."""

    calibration: dict[str, Any]
    quantizer: dict[str, Any]
    qdq: dict[str, Any]
    accuracy: dict[str, Any]
    cost: dict[str, Any]
    openvino: dict[str, Any] | None
    latency: dict[str, Any] | None
    verdict: dict[str, Any]

    @property
    def passed(self) -> bool:
        return bool(self.verdict["passed"])

    def to_dict(self) -> dict[str, Any]:
        return {"calibration": self.calibration, "quantizer": self.quantizer, "qdq": self.qdq,
                "accuracy": self.accuracy, "cost": self.cost, "openvino": self.openvino, "latency": self.latency,
                "verdict": self.verdict}


@dataclass(frozen=True)
class TensorRTSection:
    """`export --engine`: the TensorRT API, both engines (build, optimization profiles, layers, the model's
    Concat audit, or for int8 its Int8 convs and requantize audit against the baseline, and the optimizer
    decisions the log holds), and `run`: parity against ONNX Runtime where a GPU ran them, else why not
    (`natsdeploy.export.tensorrt`)."""

    flavour: str
    module: str
    version: str
    typing: str
    precision: str
    max_aux_streams: int | None
    model: dict[str, Any]
    baseline: dict[str, Any]
    run: str | dict[str, Any]
    layers_from: str = TRT_LAYERS_FROM

    @property
    def layer_audit(self) -> dict[str, Any]:
        """The model engine's layer-list audit: `requantize_audit` for int8, else `concat_audit`."""
        return self.model["requantize_audit"] if "requantize_audit" in self.model else self.model["concat_audit"]

    @property
    def audit_passed(self) -> bool:
        """The design's claim: no Concat survives in the model's engine, nor (int8) any requantize or copy
        layer the baseline's conv lacks; and where the optimizer logged its decisions, no copy for them."""
        logged = self.model.get("optimizer_log", {}).get("passed")
        return bool(self.layer_audit["passed"]) and logged is not False

    def to_dict(self) -> dict[str, Any]:
        return {"flavour": self.flavour, "module": self.module, "version": self.version, "typing": self.typing,
                "precision": self.precision, "max_aux_streams": self.max_aux_streams,
                "layers_from": self.layers_from, "model": self.model, "baseline": self.baseline, "run": self.run}


@dataclass(frozen=True)
class Verdict:
    """What passed; `int8_passed` / `tensorrt_audit_passed` are None where that step did not run."""

    cost_equal: bool
    parity_passed: bool
    int8_passed: bool | None = None
    tensorrt_audit_passed: bool | None = None

    @property
    def passed(self) -> bool:
        return all(v is not False for v in (self.cost_equal, self.parity_passed, self.int8_passed,
                                            self.tensorrt_audit_passed))

    def to_dict(self) -> dict[str, Any]:
        out = {"passed": self.passed, "cost_equal": self.cost_equal, "parity_passed": self.parity_passed}
        out.update({k: v for k, v in (("int8_passed", self.int8_passed),
                                      ("tensorrt_audit_passed", self.tensorrt_audit_passed)) if v is not None})
        return out


@dataclass(frozen=True)
class ExportReport:
    """The whole report: `arch`, `weights`, `export` (what was written and how), `alignment` and `machine`
    as plain entries, the typed sections, and the verdict they add up to."""

    arch: dict[str, Any]
    weights: str
    export: dict[str, Any]
    cost: CostSection
    parity: ParitySection
    latency: LatencySection | None
    alignment: dict[str, Any]
    machine: dict[str, Any]
    int8: Int8Section | None = None
    tensorrt: TensorRTSection | None = None

    @property
    def verdict(self) -> Verdict:
        return Verdict(cost_equal=self.cost.equal, parity_passed=self.parity.passed,
                       int8_passed=self.int8.passed if self.int8 is not None else None,
                       tensorrt_audit_passed=self.tensorrt.audit_passed if self.tensorrt is not None else None)

    def to_dict(self) -> dict[str, Any]:
        """What report.json holds (and `ExportResult.report`)."""
        out = {"arch": self.arch, "weights": self.weights, "export": self.export, "cost": self.cost.to_dict(),
               "parity": self.parity.to_dict(), "latency": self.latency.to_dict() if self.latency else None,
               "alignment": self.alignment, "machine": self.machine, "verdict": self.verdict.to_dict()}
        if self.int8 is not None:
            out["int8"] = self.int8.to_dict()
        if self.tensorrt is not None:
            out["tensorrt"] = self.tensorrt.to_dict()
        return out


# -- the printed table -----------------------------------------------------------------------------
def table_row(label: str, cells: Iterable[tuple[Any, str]] = (), *, width: int = 10, sep: str = "",
              tail: str = "") -> str:
    """One printed row: indented, `label` left-aligned in `width`, each (value, format spec) cell, `tail`.

    Every row of the export table goes through here, so a column moves in one place."""
    return f"  {label:<{width}}" + sep.join(format(v, spec) for v, spec in cells) + tail


def format_parity(runtime: str, entry: Mapping[str, Any]) -> list[str]:
    """Parity rows of model and baseline (`entry`: a parity section's dict, ONNX Runtime's or OpenVINO's)."""
    lines = [f"  parity vs PyTorch ({runtime}), max|err| / max|ref|:"]
    asked = entry.get("inference_precision") or {}
    if "precision" in entry and asked.get("requested", entry["precision"]) != entry["precision"]:
        lines.append(f"  ({asked['requested']} was asked for and {entry['precision']} ran: this CPU lacks it)")
    for key in ("model", "baseline"):
        outs = entry[key]["outputs"]
        tol = next(iter(outs.values()))["tolerance"]
        lines.append(table_row(key, ((f"{n} {o['rel_err']:.1e}", "") for n, o in outs.items()), sep="  ",
                               tail=f"  (tol {tol:.0e}) {'pass' if entry[key]['passed'] else 'FAIL'}"))
    return lines


def format_latency(title: str, entry: Mapping[str, Any], *, threads: int) -> list[str]:
    """Latency rows of baseline and model (`entry`: timing as `PairedTiming.to_dict` writes it) and its verdict."""
    lines = [f"  latency, {title}, {threads} threads, {entry['pairs']} interleaved pairs:",
             table_row("", (("p50 ms", ">10"), ("p90 ms", ">10"), ("cv", ">8")))]
    for key, label in (("baseline_ms", "baseline"), ("transformed_ms", "model")):
        s = entry[key]
        lines.append(table_row(label, ((s["p50"], ">10.2f"), (s["p90"], ">10.2f"), (s["cv"], ">8.1%"))))
    lines.append(f"  {entry['verdict']}")
    return lines


def _alignment_lines(al: Mapping[str, Any], arch_path: str) -> list[str]:
    from natsdeploy.align import align_command  # the command `check` prints, runnable as printed

    lines = [f"  alignment ({al['target']}, block {al['block']}): " + (
        "every branch aligned" if al["aligned"] else
        f"{len(al['unaligned_branches'])} branches not a multiple of {al['block']} carry {al['mac_share']:.1%} "
        f"of MACs (warning; fix: {align_command(arch_path, al['block'])})")]
    if al.get("narrow_branches") and al.get("full_rate", al["block"]) != al["block"]:
        fix = (align_command(arch_path, al["full_rate"]) if al.get("full_rate_alignable")
               else "not alignable to it")
        lines.append(f"  full rate ({al['full_rate']} channels): {len(al['narrow_branches'])} narrower branches "
                     f"carry {al['narrow_share']:.1%} of MACs (for the baseline's speed: {fix})")
    return lines


def format_report(report: Mapping[str, Any], *, arch_path: str = "ARCH.json") -> str:
    """The printed report of `report` (report.json's dict); `arch_path` goes into the alignment hint
    (quote it for a shell, as `natsdeploy export` does with `shlex.quote`)."""
    e, c, p, lat = report["export"], report["cost"], report["parity"], report["latency"]
    lines = [f"natsdeploy export: {report['arch']['backbone']} ({report['arch']['transformed_convs']} transformed convs, "
             f"{e['branches_in_graph']} branches after merging, {e['conv_nodes']['model']} Conv nodes"
             f"{', %d MixedDilationConv nodes' % e['function_nodes'] if e.get('function_nodes') else ''}), "
             f"form={e['form']}, {e.get('precision', 'fp32')}, opset {e['opset']}, "
             f"input {'x'.join(str(d) for d in e['input_shape'])}{' (dynamic)' if e['dynamic'] else ''}",
             f"weights: {report['weights']}", "",
             table_row("", (("model.onnx", ">18"), ("baseline.onnx", ">18")), width=22, tail="  verdict")]
    for label, key in (("params", "params"), ("MACs", "macs")):
        a, b = c["model"][key], c["baseline"][key]
        lines.append(table_row(label, ((a, ">18,"), (b, ">18,")), width=22,
                               tail=f"  {'equal' if a == b else 'DIFFERENT'}"))
    if report.get("alignment"):
        lines += _alignment_lines(report["alignment"], arch_path)
    lines += ["", *format_parity(p["runtime"], p)]
    if p.get("openvino") and "skipped" in p["openvino"]:  # the openvino extra is missing: one line
        lines.append(f"  {p['openvino']['skipped']}")
    elif p.get("openvino"):
        ov = p["openvino"]
        lines += format_parity(f"{ov['runtime']}, {ov['precision']}", ov)
    if lat:
        lines += ["", *format_latency(f"{lat['runtime']} CPU", lat, threads=lat["intra_op_threads"])]
        if max(lat["baseline_ms"]["cv"], lat["transformed_ms"]["cv"]) > NOISY_CV:
            lines.append("  warning: coefficient of variation above 2.5%; the machine is noisy, rerun with more pairs")
        if lat.get("openvino"):
            ov = lat["openvino"]
            lines += format_latency(f"{ov['runtime']} ({ov['precision']})", ov, threads=ov["threads"])
    if report.get("tensorrt"):
        lines += format_tensorrt(report["tensorrt"])
    if report.get("int8"):
        lines += format_int8(report["int8"])
    lines.append("")
    v = report["verdict"]
    lines.append("verdict: PASS (cost equal, numerics within tolerance)" if v["passed"] else
                 f"verdict: FAIL (cost equal: {v['cost_equal']}, parity passed: {v['parity_passed']}"
                 + "".join(f", {k.replace('_', ' ')}: {v[k]}" for k in ("int8_passed", "tensorrt_audit_passed") if k in v) + ")")
    return "\n".join(lines)


def _profile_lines(e: Mapping[str, Any]) -> list[str]:
    return [f"  profile {i} (min / opt / max): " + " / ".join("x".join(map(str, p[k])) for k in ("min", "opt", "max"))
            for i, p in enumerate(e.get("profiles") or ())]


def _audit_lines(t: Mapping[str, Any]) -> list[str]:
    """The model engine's layer-list audit: the Concat audit (fp32, fp16) or the requantize audit (int8)."""
    m = t["model"]
    if "requantize_audit" in m:
        a = m["requantize_audit"]
        failed = ", ".join(k for k, v in a["per_conv"].items() if not v["passed"])
        kinds = ", ".join(f"{k} {v}/{a['engine']['baseline'].get(k, 0)}" for k, v in a["engine"]["model"].items())
        lines = [f"  concat/requantize audit: {a['passed_convs']}/{a['convs']} transformed convs: the branch outputs "
                 "are read by the layers that read the baseline's conv (the concat folded into that epilogue), no "
                 f"Quantize/Dequantize/Reformat/copy layer of their own{'' if not failed else ' (FAIL: ' + failed + ')'}",
                 f"  engine's non-conv layers, model/baseline: {kinds or 'none'} "
                 + ("(equal)" if a["engine"]["equal"] else f"(FAIL: model only {a['engine']['extra']}, baseline "
                                                          f"only {a['engine']['missing']})")]
    else:
        a = m["concat_audit"]
        failed = ", ".join(k for k, v in a["per_conv"].items() if not v["eliminated"])
        lines = [f"  concat audit: {a['eliminated']}/{a['convs']} transformed convs write their branches into one "
                 f"buffer with no concat/copy layer{'' if a['passed'] else ' (FAIL: ' + (failed or 'a profile') + ')'}"]
    if a.get("profiles", 1) > 1:
        lines.append(f"  audited on each of the {a['profiles']} profiles' layers"
                     + (f" (FAIL on profiles {a['failed_profiles']})" if a.get("failed_profiles") else ""))
    return lines


def _optimizer_log_lines(t: Mapping[str, Any]) -> list[str]:
    logs = {k: t[k].get("optimizer_log") for k in ("model", "baseline") if t[k].get("optimizer_log")}
    if not logs:
        return []
    if not any(o["logged"] for o in logs.values()):
        return ["  optimizer log: none; " + ("TensorRT-RTX logs no optimizer decisions (Concat elimination, "
                "retarget, copy), so the layer-list audit above is the only evidence" if t["flavour"] == "tensorrt-rtx"
                else "the builder logged no Concat elimination, retarget or copy line")]
    lines = []
    for key, o in logs.items():
        if not o["logged"]:
            lines.append(f"  optimizer log, {key}: no decision lines")
            continue
        ours = o.get("transformed_concats") or {}
        bad = [c for c, free in ours.items() if not free]
        lines.append(f"  optimizer log, {key}: {o['eliminated_concats']} Concats eliminated, {o['copy_free_concats']} "
                     f"with every input retargeted (no copy)" + (f"; transformed convs' Concats {len(ours) - len(bad)}/"
                                                               f"{len(ours)} copy-free" if key == "model" else "")
                     + (f" (FAIL: {', '.join(bad)})" if bad else ""))
    return lines


def format_tensorrt(t: Mapping[str, Any]) -> list[str]:
    """The TensorRT rows (`t`: the `tensorrt` section's dict)."""
    lines = ["", f"  TensorRT: {t['flavour']} {t['version']} ({t['typing']}ly typed), {t['precision']}, "
             f"max_aux_streams {t['max_aux_streams'] if t['max_aux_streams'] is not None else 'default'}"]
    lines += _profile_lines(t["model"])
    int8 = "conv_inputs" in t["model"]
    lines.append(table_row("", (("build s", ">9"), ("MB", ">9"), ("layers", ">8"), ("convs", ">7"), ("wait", ">6"),
                                ("signal", ">8"), *((("int8 convs", ">12"),) if int8 else ()))))
    for key in ("model", "baseline"):
        e = t[key]
        convs = sum(v for k, v in e["layer_counts"].items() if k.lower() in ("correlation", "convolution",
                                                                            "caskconvolution"))
        cells = [(e["build_s"], ">9.2f"), (e["engine_bytes"] / 1e6, ">9.1f"), (e["layers"], ">8"), (convs, ">7"),
                 (e["stream_sync"]["wait"], ">6"), (e["stream_sync"]["signal"], ">8")]
        if int8:
            cells.append((f"{e['conv_inputs'].get('Int8', 0)}/{sum(e['conv_inputs'].values())}", ">12"))
        lines.append(table_row(key, cells))
    if t["model"].get("layers_note"):
        lines.append(f"  ({t['model']['layers_note']})")
    lines += _audit_lines(t)
    lines += _optimizer_log_lines(t)
    run = t["run"]
    if isinstance(run, str):
        lines.append(f"  engines: {run}")
    else:
        for key, p in run["parity_vs_ort"].items():
            lines.append(table_row(key, tail=f"parity vs ONNX Runtime: {'pass' if p['passed'] else 'FAIL'}"))
    return lines


def format_int8(s: Mapping[str, Any]) -> list[str]:
    """The int8 rows (`s`: the `int8` section's dict); OpenVINO's only where it ran."""
    c, a = s["calibration"], s["accuracy"]
    act = s.get("quantizer", {}).get("activation_type", "s8")
    bits = " (7-bit, reduce_range)" if s.get("quantizer", {}).get("reduce_range") else ""
    lines = ["", f"  int8 (QDQ, per-channel symmetric int8 weights{bits}, {act} activations; calibrated on {c['images']} images "
                 f"of {c['data']} {c['split']}; error vs the fp32 graph on ORT CPU, {a['evaluated_on']}):",
             table_row("", [cell for o in a["model"] for cell in ((f"{o} SQNR dB", ">14"), ("rel err", ">9"))])]
    for key in ("model", "baseline"):
        lines.append(table_row(key, [cell for v in a[key].values()
                                     for cell in ((v["sqnr_db"], ">14.2f"), (v["rel_err"], ">9.1e"))]))
    if a.get("int8_pairs_saturate"):
        lines.append("  this CPU has no VNNI/AMX: ORT's int8 convs add u8 x s8 product pairs in saturating int16 "
                     "(vpmaddubsw), so these errors include that clipping"
                     + (" (7-bit weights avoid it: --int8-reduce-range)" if not bits else ""))
    q, cost = s["qdq"]["model"], s["cost"]
    lines.append(f"  QDQ: {q['one_scale']}/{q['transformed_convs']} transformed convs read one activation scale; "
                 f"{q['per_channel_int8_weights']}/{q['convs']} convs have per-channel int8 weights")
    lines.append(f"  params {cost['model']['params']:,} / {cost['baseline']['params']:,}, MACs "
                 f"{cost['model']['macs']:,} / {cost['baseline']['macs']:,} (model / baseline): "
                 f"{'unchanged by quantization' if cost['unchanged'] else 'CHANGED by quantization'}")
    ov = s.get("openvino")
    if ov and "skipped" in ov:
        lines.append(f"  {ov['skipped']}")
    elif ov and "error" in ov:
        lines.append(f"  OpenVINO: could not compile the int8 graphs ({ov['error']})")
    elif ov:
        for key in ("model", "baseline"):
            o = ov[key]
            lines.append(f"  OpenVINO runtime model, {key}: {o['int8_convs']}/{o['convs']} convs in i8/u8 "
                         f"({', '.join(f'{k} {v}' for k, v in o['precisions'].items())})")
    lat = s.get("latency")
    if lat:
        lines.append(f"  latency at {'x'.join(map(str, lat['input_shape']))}, {lat['threads']} threads, "
                     f"{lat['pairs']} interleaved pairs (median of per-pair ratios, 95% interval):")
        lines.append(table_row("", (("int8 model/baseline", ">26"), ("baseline fp32/int8", ">22"),
                                    ("model fp32/int8", ">20")), width=13))
        for rt in ("onnxruntime", "openvino"):
            if rt not in lat:
                continue
            e = lat[rt]
            r = e["int8_model_over_int8_baseline"]["ratio"]
            lines.append(table_row(rt, ((r["median"], ">12.3f"), (f" ({r['ci95'][0]:.3f}-{r['ci95'][1]:.3f})", ""),
                                        (e["baseline_speedup"], ">21.2f"), ("x", ""), (e["model_speedup"], ">19.2f"),
                                        ("x", "")), width=13))
    v = s["verdict"]
    lines.append(f"  int8 verdict: {'PASS' if v['passed'] else 'FAIL'} (worst SQNR gap to the baseline "
                 f"{v['worst_sqnr_gap_db']:+.2f} dB; bound {v['sqnr_margin_db']:g} dB)")
    return lines
