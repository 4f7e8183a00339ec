"""GPU measurement: NATS-transformed convs and trunks against their baselines on one CUDA GPU.

The product says a NATS-transformed backbone (each listed 3x3 conv split into parallel dilated convs,
concatenated) runs at the baseline's speed. On a GPU that had never been measured, and there are reasons
to doubt it: cuDNN has run a dilated 3x3 conv several times slower than a dense one (pytorch/pytorch#15054),
and TensorRT runs parallel branches one after another on one stream unless it uses auxiliary streams
(NVIDIA/TensorRT#4094, #2828). One run measures, inside a time budget:

- ``conv_genotypes``: each transformed 3x3 conv of the example arch (its branches, concatenated) against
  a dense dilation-1 conv of the same width, stride and input (the conv's input shape at HxW);
- ``conv_widths``: one dilated conv of width 8..512 against a dense conv of the same width, at the
  stride-1 conv shapes of layer2..layer4;
- ``trunks``: the whole trunk (stem to layer4, outputs c2..c5) transformed against baseline with the same
  weights, eager and replayed as a CUDA graph (no launch overhead: what the GPU itself spends), for the
  example arch, its aligned-16/32/64 versions and IC-Conv R50;
- ``ort_cuda`` and ``tensorrt``: the exported trunks (branches form) on ONNX Runtime's CUDA provider and on
  TensorRT where importable, with parity against PyTorch / ONNX Runtime;
- ``trunks_compile``: the trunks under ``torch.compile`` (each compile inside the section's budget).

Settings: fp32 (cuDNN's TF32 allowed, as torch ships it) and fp16, NCHW and channels_last, batch 1 and 8,
``torch.backends.cudnn.benchmark = True``. Timing: CUDA events around ``repeats`` back-to-back calls,
warm-up first, pairs in alternating order, the median of per-pair ratios subject/baseline with a
bootstrap 95% interval (`natsdeploy.timing.stats`, as on the CPU). Each section gets a share of
``--budget-s``; a part that does not fit what is left is recorded as skipped for time, a part that fails
as failed with its message, a section that cannot run at all as skipped with its reason. The JSON and
Markdown are rewritten after every section, so a run killed by its timeout keeps what it measured.

    PYTHONPATH=. timeout 540 python3 benchmarks/gpu.py [--out benchmarks/results] [--budget-s 480]
        [--icconv ../shared/reference/icconv/detection_ic_resnet50_k9.json]
    PYTHONPATH=. python benchmarks/gpu.py --smoke --out /tmp/gpu_smoke   # CPU, tiny shapes, seconds

Writes ``<out>/gpu_<device>.json`` and ``.md`` (device: a slug of the GPU's name; ``smoke_cpu`` for --smoke).
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

T_START = time.monotonic()  # the budget counts from here: importing torch is part of the run
REPO = Path(__file__).resolve().parent.parent
for _path in (REPO, REPO / "benchmarks"):  # natsdeploy from the source tree; gpu_report beside this file
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from natsdeploy import align_arch, build_backbone, build_baseline, load_arch  # noqa: E402
from natsdeploy.arch import Arch  # noqa: E402
from natsdeploy.cli_values import parse_float  # noqa: E402
from natsdeploy.errors import InputError, UsageError  # noqa: E402
from natsdeploy.models.mixed_conv import MixedDilationConv  # noqa: E402
from natsdeploy.timing.stats import paired_ratio, summarize  # noqa: E402

from gpu_report import device_slug, machine_record, write  # noqa: E402

FORMAT, VERSION = "natsdeploy-gpu-bench", 1
ICCONV_NAME = "detection_ic_resnet50_k9.json"
ICCONV_DEFAULTS = (REPO.parent / "shared" / "reference" / "icconv" / ICCONV_NAME,
                   REPO / "shared" / "reference" / "icconv" / ICCONV_NAME)
TIME = "time: did not fit in what was left of this section's share of --budget-s"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
SECTIONS = ("ort_cuda", "conv_genotypes", "conv_widths", "trunks", "tensorrt", "trunks_compile")
"""Run order: sections that usually skip at once first (their share then goes to the rest), compile last
(one compile can run long; what came before is already written)."""


@dataclass(frozen=True)
class Setting:
    dtype: str  # fp32 | fp16
    layout: str  # nchw | channels_last
    batch: int

    @property
    def key(self) -> str:
        return f"{self.dtype}/{self.layout}/b{self.batch}"


# priority order: a section short of time drops the settings at the end of this list
ALL_SETTINGS = tuple(Setting(d, lay, b) for d, lay, b in (
    ("fp16", "channels_last", 1), ("fp32", "nchw", 1), ("fp16", "channels_last", 8), ("fp32", "nchw", 8),
    ("fp16", "nchw", 1), ("fp32", "channels_last", 1), ("fp16", "nchw", 8), ("fp32", "channels_last", 8)))


@dataclass(frozen=True)
class Timing:
    pairs: int
    sample_ms: float
    """Each sample times `repeats` back-to-back calls, `repeats` chosen so a sample lasts about this long."""
    warmup_s: float
    min_warmup: int
    max_repeats: int


@dataclass(frozen=True)
class Plan:
    """What one run measures; `gpu_plan` and `smoke_plan` are the two there are."""

    smoke: bool
    hw: tuple[int, int]
    example: str
    conv_settings: tuple[Setting, ...]
    trunk_settings: tuple[Setting, ...]
    compile_settings: tuple[Setting, ...]
    engine_settings: tuple[Setting, ...]
    widths: tuple[int, ...]
    dilations: tuple[tuple[int, int], ...]
    trunk_archs: tuple[str, ...]
    compile_archs: tuple[str, ...]
    engine_archs: tuple[str, ...]
    conv_timing: Timing
    trunk_timing: Timing
    compile_backend: str
    first_estimates: dict[str, float]
    """Seconds a part of each kind is assumed to take before one has been seen."""
    shares: dict[str, float] = field(default_factory=dict)


def gpu_plan(example: str) -> Plan:
    return Plan(
        smoke=False, hw=(800, 1216), example=example, conv_settings=ALL_SETTINGS, trunk_settings=ALL_SETTINGS,
        compile_settings=ALL_SETTINGS[:4], engine_settings=(Setting("fp32", "nchw", 1), Setting("fp16", "nchw", 1)),
        widths=(8, 16, 32, 64, 128, 256, 512), dilations=((2, 2), (1, 3), (3, 1), (5, 5)),
        trunk_archs=("example", "aligned32", "icconv", "aligned16", "aligned64"),
        compile_archs=("example", "aligned32", "icconv", "aligned16", "aligned64"),
        engine_archs=("example", "aligned32", "icconv"),
        conv_timing=Timing(pairs=10, sample_ms=1.0, warmup_s=0.03, min_warmup=3, max_repeats=200),
        trunk_timing=Timing(pairs=10, sample_ms=20.0, warmup_s=0.3, min_warmup=3, max_repeats=50),
        compile_backend="inductor",
        first_estimates={"conv": 0.3, "trunk_b1": 3.0, "trunk_b8": 6.0, "compile": 45.0, "engine": 90.0,
                         "ort": 15.0},
        shares={"ort_cuda": 0.06, "conv_genotypes": 0.12, "conv_widths": 0.16, "trunks": 0.28, "tensorrt": 0.10,
                "trunks_compile": 0.28})


def smoke_plan(example: str) -> Plan:
    one = (Setting("fp32", "nchw", 1),)
    return Plan(
        smoke=True, hw=(32, 32), example=example,
        conv_settings=(Setting("fp32", "nchw", 1), Setting("fp16", "channels_last", 1)), trunk_settings=one,
        compile_settings=one, engine_settings=one, widths=(8, 16), dilations=((2, 2), (1, 3)),
        trunk_archs=("example", "aligned32"), compile_archs=("example",), engine_archs=("example",),
        conv_timing=Timing(pairs=3, sample_ms=0.0, warmup_s=0.0, min_warmup=1, max_repeats=1),
        trunk_timing=Timing(pairs=3, sample_ms=0.0, warmup_s=0.0, min_warmup=1, max_repeats=1),
        compile_backend="eager",
        first_estimates={"conv": 0.0, "trunk_b1": 0.0, "trunk_b8": 0.0, "compile": 0.0, "engine": 0.0, "ort": 0.0},
        shares={s: 1.0 for s in SECTIONS})


# -- budget and sections ------------------------------------------------------------------------------
class Budget:
    """The global deadline, shared out: a section starting gets its share of whatever time is left."""

    def __init__(self, total_s: float, shares: dict[str, float], *, reserve_s: float, t0: float) -> None:
        self.t0 = t0
        self.end = self.t0 + total_s - reserve_s
        self.shares = dict(shares)

    def deadline(self, section: str) -> float:
        share = self.shares.pop(section)
        rest = share + sum(self.shares.values())
        now = time.monotonic()
        return now + max(0.0, self.end - now) * share / rest

    def elapsed(self) -> float:
        return time.monotonic() - self.t0


def one_line(e: BaseException) -> str:
    """An exception as one short line (compile errors span pages; their first lines say what broke)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {' | '.join(lines[:3])}"[:500]


def free_memory(*, collect: bool = False) -> None:
    """Return cached GPU memory; `collect` also runs the garbage collector (slow with dynamo loaded: only
    after a failure, whose traceback can hold tensors in a cycle)."""
    if collect:
        gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Section:
    """One section's rows, deadline and cost estimates; `attempt` runs a part only when it fits."""

    def __init__(self, name: str, deadline: float, estimates: dict[str, float]) -> None:
        self.name, self.deadline = name, deadline
        self.t0 = time.monotonic()
        self.estimates = dict(estimates)
        self.rows: list[dict] = []
        self.reason: str | None = None
        self.notes: dict = {}
        self.flush: Callable[[], None] = lambda: None
        """Called after a part when 15 s have passed since the last call: long sections reach the files as
        they go (a run killed by its timeout keeps them)."""
        self.flushed = time.monotonic()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def fits(self, *kinds: str) -> bool:
        return self.left() >= sum(self.estimates.get(k, 0.0) for k in kinds)

    def skip(self, what: dict, reason: str) -> None:
        self.rows.append({**what, "status": "skipped", "reason": reason})

    def attempt(self, what: dict, kind: str, work: Callable[[], dict]) -> dict | None:
        """Run `work` (build + time one part) if its estimated cost fits; its row, measured or failed."""
        if not self.fits(kind):
            self.skip(what, TIME)
            return None
        t0 = time.monotonic()
        try:
            row = {**what, **work()}
        except Exception as e:  # OOM, a missing kernel, an engine that fails: recorded, the run goes on
            row = {**what, "status": "failed", "reason": one_line(e)}
            free_memory(collect=True)
        self.estimates[kind] = 1.2 * (time.monotonic() - t0)
        self.rows.append(row)
        if time.monotonic() - self.flushed > 15:
            self.flush()
            self.flushed = time.monotonic()
        return row

    def to_dict(self) -> dict:
        measured = [r for r in self.rows if r["status"] == "measured"]
        out = {"status": "measured" if measured else "skipped", "elapsed_s": round(time.monotonic() - self.t0, 2),
               "counts": {s: sum(r["status"] == s for r in self.rows) for s in ("measured", "skipped", "failed")},
               **self.notes}
        if not measured:
            reasons = [self.reason] if self.reason else sorted({r["reason"] for r in self.rows})
            out["reason"] = "; ".join(reasons) or "nothing to measure"
        out["rows"] = self.rows
        return out


# -- timing -------------------------------------------------------------------------------------------
class Clock:
    """Milliseconds per call of `fn` over `n` back-to-back calls: CUDA events on torch's current stream, or,
    for work on other streams (ONNX Runtime, TensorRT) and on the CPU, the wall clock between device syncs."""

    def __init__(self, device: torch.device, *, events: bool = True) -> None:
        self.cuda = device.type == "cuda"
        self.events = events and self.cuda
        self.name = "cuda events" if self.events else ("wall clock, device synchronised" if self.cuda
                                                       else "perf_counter")

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, fn: Callable[[], object], n: int) -> float:
        if self.events:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(n):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / n
        self.sync()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        self.sync()
        return (time.perf_counter() - t0) * 1e3 / n


def time_pair(baseline: Callable[[], object], subject: Callable[[], object], *, clock: Clock,
              timing: Timing, calls: int = 1) -> dict:
    """Warm up (cuDNN's benchmark search happens on the first call), pick `repeats`, then `pairs` pairs,
    baseline first on even pairs and subject first on odd ones; the median of per-pair ratios. `calls`:
    module calls per run (a CUDA graph replaying several); times are per call."""
    warm, t_end = 0, time.monotonic() + timing.warmup_s
    while warm < timing.min_warmup or time.monotonic() < t_end:
        baseline()
        subject()
        warm += 1
    clock.sync()
    one = max(min(clock(baseline, 1), clock(subject, 1)), 1e-4)
    n = max(1, min(timing.max_repeats, math.ceil(timing.sample_ms / one)))
    base, subj = [], []
    for i in range(timing.pairs):
        if i % 2 == 0:
            base.append(clock(baseline, n))
            subj.append(clock(subject, n))
        else:
            subj.append(clock(subject, n))
            base.append(clock(baseline, n))
    base, subj = [v / calls for v in base], [v / calls for v in subj]
    ratio = paired_ratio(base, subj)
    return {"status": "measured", "ratio": ratio.to_dict(), "baseline_ms": summarize(base).to_dict(),
            "subject_ms": summarize(subj).to_dict(), "repeats": n, "calls_per_run": calls, "warmup_calls": warm,
            "timer": clock.name}


# -- modules and inputs -------------------------------------------------------------------------------
class Features(nn.Module):
    """A torchvision ResNet's trunk: stem to layer4, returning c2..c5 like the exported graph."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
        self.stages = nn.ModuleList([model.layer1, model.layer2, model.layer3, model.layer4])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return tuple(outs)


def place(module: nn.Module, setting: Setting, device: torch.device) -> nn.Module:
    module = module.to(device=device, dtype=DTYPES[setting.dtype]).eval()
    return module.to(memory_format=torch.channels_last) if setting.layout == "channels_last" else module


def make_input(shape: Sequence[int], setting: Setting, device: torch.device, *, seed: int = 0) -> torch.Tensor:
    """Seeded normal input drawn on the device (drawing 10^7 numbers on the host would cost more than timing)."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(tuple(shape), generator=g, device=device).to(dtype=DTYPES[setting.dtype])
    return x.contiguous(memory_format=torch.channels_last) if setting.layout == "channels_last" else x


def dense(cin: int, cout: int, *, stride: int = 1, groups: int = 1, dilation: tuple[int, int] = (1, 1)) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, groups=groups, bias=False)


def conv_input_hw(arch_or_spec, name: str, hw: tuple[int, int]) -> tuple[int, int]:
    """Spatial size of 3x3 conv `name`'s input for an image of `hw`: the stem (7x7/s2 conv, 3x3/s2 max pool)
    quarters it, each later stage halves it at its first block's strided conv."""
    spec = arch_or_spec.spec if isinstance(arch_or_spec, Arch) else arch_or_spec
    info = spec.convs[name]
    halvings = 2 + int(info.stage[len("layer"):]) - 1 - (1 if info.stride == 2 else 0)
    h, w = hw
    for _ in range(halvings):
        h, w = (h + 1) // 2, (w + 1) // 2  # ceil: kernel 3/7, padding 1/3, stride 2
    return h, w


def stage_convs(spec) -> dict[str, str]:
    """The first stride-1 3x3 conv of layer2..layer4: the shape most of a stage's convs run at."""
    out: dict[str, str] = {}
    for name, info in spec.convs.items():
        if info.stage in ("layer2", "layer3", "layer4") and info.stride == 1 and info.groups == 1:
            out.setdefault(info.stage, name)
    return out


def graphed(fn: Callable[[torch.Tensor], object], x: torch.Tensor, *, calls: int = 1) -> Callable[[], None]:
    """`calls` calls of `fn(x)` captured once as a CUDA graph; the returned callable replays them on the
    current stream (the GPU's own time: no Python, no launch gaps)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn(x)
    return graph.replay


def conv_runs(baseline: nn.Module, subject: nn.Module, x: torch.Tensor, clock: Clock) -> tuple[Callable, Callable, int,
                                                                                                 str]:
    """What a conv row times: on a GPU, CUDA graphs of enough calls to last ~0.5 ms (an eager call of a
    microsecond conv measures its launch, not cuDNN's kernel), eager where capture fails; on a CPU, eager."""
    eager = (lambda: baseline(x)), (lambda: subject(x))
    if not clock.cuda:
        return *eager, 1, "eager"
    for _ in range(3):  # cuDNN's benchmark search, outside the capture
        baseline(x)
        subject(x)
    clock.sync()
    one = max(min(clock(eager[0], 3), clock(eager[1], 3)), 1e-3)
    calls = max(1, min(64, math.ceil(0.5 / one)))
    try:
        return graphed(baseline, x, calls=calls), graphed(subject, x, calls=calls), calls, "cuda_graph"
    except Exception as e:
        torch.cuda.synchronize()
        return *eager, 1, f"eager (CUDA graph capture failed: {one_line(e)})"


# -- sections -----------------------------------------------------------------------------------------
CONV_MODE = ("On a GPU each run replays a CUDA graph of several calls (the kernels' own time; an eager call of a "
             "microsecond conv times its launch); each row's `mode` and `calls_per_run` say what ran.")


def timed_convs(baseline: nn.Module, subject: nn.Module, x: torch.Tensor, clock: Clock, timing: Timing) -> dict:
    run_b, run_s, calls, mode = conv_runs(baseline, subject, x, clock)
    return {**time_pair(run_b, run_s, clock=clock, timing=timing, calls=calls), "mode": mode}


def run_conv_genotypes(section: Section, plan: Plan, arch: Arch, device: torch.device, clock: Clock) -> None:
    section.notes.update(arch=plan.example, note="subject: the conv's branches concatenated (MixedDilationConv); "
                         "baseline: one dense dilation-1 conv of the same width, stride and input. " + CONV_MODE)
    for setting in plan.conv_settings:
        for name, ct in arch.convs.items():
            info = arch.spec.convs[name]
            h, w = conv_input_hw(arch, name, plan.hw)
            shape = [setting.batch, info.in_channels, h, w]
            what = {"setting": setting.key, "conv": name, "input": shape, "stride": info.stride,
                    "branches": [[list(b.dilation), b.channels] for b in ct.branches]}

            def work(info=info, ct=ct, shape=shape, setting=setting) -> dict:
                torch.manual_seed(0)
                with device:  # weights drawn where they run
                    subject = place(MixedDilationConv(info.in_channels, ct.branches, stride=info.stride,
                                                      groups=info.groups), setting, device)
                    baseline = place(dense(info.in_channels, info.out_channels, stride=info.stride,
                                           groups=info.groups), setting, device)
                x = make_input(shape, setting, device)
                return timed_convs(baseline, subject, x, clock, plan.conv_timing)

            section.attempt(what, "conv", work)


def run_conv_widths(section: Section, plan: Plan, arch: Arch, device: torch.device, clock: Clock) -> None:
    section.notes.update(note="subject: one conv of `width` outputs at `dilation`; baseline: the same conv at "
                         "dilation 1, same input. " + CONV_MODE)
    stages = stage_convs(arch.spec)
    for setting in plan.conv_settings:
        for stage, name in stages.items():
            info = arch.spec.convs[name]
            h, w = conv_input_hw(arch, name, plan.hw)
            shape = [setting.batch, info.in_channels, h, w]
            for width in [v for v in plan.widths if v <= info.out_channels]:
                for dil in plan.dilations:
                    what = {"setting": setting.key, "stage": stage, "input": shape, "width": width,
                            "dilation": list(dil)}

                    def work(shape=shape, width=width, dil=dil, setting=setting, cin=info.in_channels) -> dict:
                        torch.manual_seed(0)
                        with device:
                            subject = place(dense(cin, width, dilation=dil), setting, device)
                            baseline = place(dense(cin, width), setting, device)
                        x = make_input(shape, setting, device)
                        return timed_convs(baseline, subject, x, clock, plan.conv_timing)

                    section.attempt(what, "conv", work)


@dataclass
class Models:
    """Every arch of the run and its trunk on the CPU in fp32, with its baseline's trunk (same weights)."""

    archs: dict[str, Arch]
    trunks: dict[str, nn.Module]
    baselines: dict[str, nn.Module]  # by backbone name
    missing: dict[str, str]  # arch name -> why it is not there

    def baseline_of(self, name: str) -> nn.Module:
        return self.baselines[self.archs[name].backbone]


def load_models(plan: Plan, icconv: Path | None, names: Sequence[str]) -> Models:
    example = load_arch(REPO / plan.example)  # `plan.example` is relative to the repo, or absolute
    archs: dict[str, Arch] = {}
    missing: dict[str, str] = {}
    for name in names:
        if name == "example":
            archs[name] = example
        elif name.startswith("aligned"):
            archs[name] = align_arch(example, int(name[len("aligned"):]))
        elif name == "icconv":
            if icconv is None or not icconv.is_file():
                where = ", ".join(str(p) for p in ([icconv] if icconv else ICCONV_DEFAULTS))
                missing[name] = (f"IC-Conv R50 pattern not found at {where}: pass --icconv PATH "
                                 f"(the file {ICCONV_NAME} from shared/reference/icconv)")
            else:
                from natsdeploy.convert import load_ic_conv

                archs[name] = load_ic_conv(icconv, "resnet50")
    baselines, trunks = {}, {}
    for name, arch in archs.items():
        if arch.backbone not in baselines:
            torch.manual_seed(0)
            baselines[arch.backbone] = build_baseline(arch.backbone)
        trunks[name] = build_backbone(arch, baselines[arch.backbone].state_dict())
    return Models(archs, trunks, baselines, missing)


def run_trunks(section: Section, plan: Plan, models: Models, device: torch.device, clock: Clock) -> None:
    section.notes.update(note="subject: the transformed trunk (branches form, build_backbone); baseline: the "
                         "torchvision trunk with the same weights; outputs c2..c5. eager = module calls; "
                         "cuda_graph = the same calls captured once and replayed (no launch overhead)")
    for setting in plan.trunk_settings:
        shape = [setting.batch, 3, *plan.hw]
        kind = f"trunk_b{setting.batch}"
        placed: dict[str, nn.Module] = {}  # this setting's trunks on the device, each built once

        def on_device(key: str, module: nn.Module, setting=setting) -> nn.Module:
            if key not in placed:
                placed[key] = Features(place(copy.deepcopy(module), setting, device))
            return placed[key]

        for name in plan.trunk_archs:
            for variant in ("eager", "cuda_graph"):
                what = {"setting": setting.key, "arch": name, "variant": variant, "input": shape}
                if name in models.missing:
                    section.skip(what, models.missing[name])
                elif variant == "cuda_graph" and device.type != "cuda":
                    section.skip(what, "CUDA graphs need a CUDA device (this run is on the CPU)")
                else:
                    def work(name=name, variant=variant, setting=setting, shape=shape) -> dict:
                        baseline = on_device(f"baseline:{models.archs[name].backbone}", models.baseline_of(name))
                        subject = on_device(name, models.trunks[name])
                        x = make_input(shape, setting, device)
                        if variant == "cuda_graph":
                            run_b, run_s = graphed(baseline, x), graphed(subject, x)
                        else:
                            run_b, run_s = (lambda: baseline(x)), (lambda: subject(x))
                        return time_pair(run_b, run_s, clock=clock, timing=plan.trunk_timing)

                    section.attempt(what, kind, work)
            placed.pop(name, None)
            free_memory()
        placed.clear()
        free_memory()


def run_compile(section: Section, plan: Plan, models: Models, device: torch.device, clock: Clock) -> None:
    section.notes.update(backend=plan.compile_backend, note="torch.compile(trunk, dynamic=False) of baseline and "
                         "transformed; compile_s: the first call's wall time (compile included)")
    for setting in plan.compile_settings:
        shape = [setting.batch, 3, *plan.hw]
        torch.compiler.reset()
        compiled: dict[str, tuple[Callable, float] | str] = {}

        def compile_one(key: str, module: nn.Module, x: torch.Tensor, setting=setting) -> tuple[Callable, float]:
            if key not in compiled:
                t0 = time.monotonic()
                try:
                    fn = torch.compile(Features(place(copy.deepcopy(module), setting, device)),
                                       backend=plan.compile_backend, dynamic=False)
                    fn(x)
                    clock.sync()
                    compiled[key] = (fn, time.monotonic() - t0)
                except Exception as e:
                    compiled[key] = one_line(e)
                    free_memory(collect=True)
                section.estimates["compile"] = max(section.estimates["compile"], 1.3 * (time.monotonic() - t0))
            got = compiled[key]
            if isinstance(got, str):
                raise RuntimeError(f"{key} failed to compile: {got}")
            return got

        for name in plan.compile_archs:
            what = {"setting": setting.key, "arch": name, "variant": "compile", "input": shape}
            if name in models.missing:
                section.skip(what, models.missing[name])
                continue
            base_key = f"baseline:{models.archs[name].backbone}"
            compiles = 1 + (base_key not in compiled)
            section.estimates["compile_row"] = (compiles * section.estimates["compile"]
                                                + section.estimates.get("compile_measure", 0.0))

            def work(name=name, setting=setting, shape=shape, base_key=base_key) -> dict:
                x = make_input(shape, setting, device)
                run_b, base_s = compile_one(base_key, models.baseline_of(name), x)
                if name not in compiled and section.left() < section.estimates["compile"]:
                    return {"status": "skipped", "reason": TIME}  # the baseline compiled slower than assumed
                run_s, subj_s = compile_one(name, models.trunks[name], x)
                t0 = time.monotonic()
                row = time_pair(lambda: run_b(x), lambda: run_s(x), clock=clock, timing=plan.trunk_timing)
                section.estimates["compile_measure"] = 1.2 * (time.monotonic() - t0)
                return {**row, "compile_s": {"baseline": round(base_s, 2), "subject": round(subj_s, 2)}}

            section.attempt(what, "compile_row", work)
        compiled.clear()
        free_memory()


def export_onnx(module: nn.Module, shape: Sequence[int], path: Path, *, fp16: bool) -> Path:
    """The trunk folded (BN into convs, same-dilation branches merged) as branches-form ONNX, fp32 I/O."""
    from natsdeploy.export.fold import fold_trunk, merge_same_dilation
    from natsdeploy.export.onnx import save_onnx, trunk_to_onnx
    from natsdeploy.onnx_utils import to_fp16

    proto = trunk_to_onnx(merge_same_dilation(fold_trunk(module)), input_shape=tuple(shape))
    return save_onnx(to_fp16(proto) if fp16 else proto, path)


def reference_outputs(module: nn.Module, x: np.ndarray, device: torch.device) -> dict[str, np.ndarray]:
    """PyTorch fp32 outputs c2..c5 with TF32 off: the exact reference parity compares against."""
    prev = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        trunk = Features(copy.deepcopy(module).to(device).float().eval())
        outs = trunk(torch.from_numpy(x).to(device))
        return {f"c{i + 2}": o.float().cpu().numpy() for i, o in enumerate(outs)}
    finally:
        torch.backends.cudnn.allow_tf32 = prev


def parity_tolerance(setting: Setting, device: torch.device) -> tuple[float, str]:
    from natsdeploy.verify.parity import DEFAULT_TOLERANCE

    if setting.dtype == "fp16" or device.type == "cuda":
        return DEFAULT_TOLERANCE["fp16"], ("fp16" if setting.dtype == "fp16" else
                                           "fp32 on a GPU: TF32 allowed (10-bit mantissa, as fp16)")
    return DEFAULT_TOLERANCE["fp32"], "fp32"


def run_ort(section: Section, plan: Plan, models: Models, device: torch.device, workdir: Path) -> None:
    try:
        import onnxruntime as ort
    except Exception as e:
        section.reason = f"onnxruntime not importable: {one_line(e)}"
        return
    from natsdeploy.runners import OrtRunner
    from natsdeploy.verify.parity import compare

    available = ort.get_available_providers()
    provider = "CPUExecutionProvider" if plan.smoke else "CUDAExecutionProvider"
    section.notes.update(onnxruntime=ort.__version__, providers_available=available, provider=provider,
                         note="branches form (BN folded, same-dilation branches merged), inputs and outputs "
                              "bound on the device (IO binding); parity: ORT against PyTorch fp32 with TF32 off"
                              + ("; smoke: the CPU provider runs the CUDA provider's code path" if plan.smoke else ""))
    if provider not in available:
        section.reason = (f"{provider} not available in onnxruntime {ort.__version__} (providers: {available}; "
                          "the package onnxruntime-gpu provides it)")
        return
    device_type = "cuda" if provider == "CUDAExecutionProvider" else "cpu"
    clock = Clock(device, events=False)
    threads = 1 if plan.smoke else None
    for setting in plan.engine_settings:
        shape = [setting.batch, 3, *plan.hw]
        fp16 = setting.dtype == "fp16"
        x = make_input(shape, Setting("fp32", "nchw", setting.batch), torch.device("cpu")).numpy()
        runners: dict[str, OrtRunner] = {}  # this setting's sessions, the baseline's shared by its archs

        def runner(key: str, module: nn.Module, setting=setting, shape=shape, fp16=fp16) -> OrtRunner:
            if key not in runners:
                path = export_onnx(module, shape, workdir / f"ort_{key}_{setting.dtype}.onnx", fp16=fp16)
                runners[key] = OrtRunner(path, providers=(provider,), threads=threads)
            return runners[key]

        for name in plan.engine_archs:
            what = {"setting": setting.key, "arch": name, "input": shape}
            if name in models.missing:
                section.skip(what, models.missing[name])
                continue

            def work(name=name, setting=setting, x=x) -> dict:
                baseline = runner(f"baseline_{models.archs[name].backbone}", models.baseline_of(name))
                subject = runner(name, models.trunks[name])
                tol, why = parity_tolerance(setting, device)
                parity = compare(subject.run({"images": x}), reference_outputs(models.trunks[name], x, device),
                                 tolerance=tol)
                row = time_pair(bound_ort_call(ort, baseline.session, x, device_type),
                                bound_ort_call(ort, subject.session, x, device_type), clock=clock,
                                timing=plan.trunk_timing)
                return {**row, "parity": {**parity.to_dict(), "tolerance_for": why}}

            section.attempt(what, "ort", work)
            runners.pop(name, None)
        runners.clear()
        free_memory()


def bound_ort_call(ort, session, x: np.ndarray, device_type: str) -> Callable[[], None]:
    """One run with input and outputs already on the device (no host copies in what is timed)."""
    binding = session.io_binding()
    value = ort.OrtValue.ortvalue_from_numpy(x, device_type, 0)
    binding.bind_ortvalue_input(session.get_inputs()[0].name, value)
    for o in session.get_outputs():
        binding.bind_output(o.name, device_type)

    def call(keep=value) -> None:  # `keep` holds the input's device buffer alive
        session.run_with_iobinding(binding)

    return call


def run_tensorrt(section: Section, plan: Plan, models: Models, device: torch.device, workdir: Path) -> None:
    if device.type != "cuda":
        section.reason = "TensorRT engines run only on a CUDA GPU (this run is on the CPU)"
        return
    from natsdeploy.export.tensorrt import TrtRunner, build, require_trt_runtime

    try:
        api = require_trt_runtime("auto", field="tensorrt")
    except UsageError as e:
        section.reason = str(e)
        return
    section.notes.update(tensorrt=api.describe(), note="engines built from the branches-form ONNX; variant "
                         "'default': TensorRT's own auxiliary-stream choice, 'aux_streams=0': every layer on one "
                         "stream; parity: the subject engine against ONNX Runtime (CPU provider, fp32)")
    clock = Clock(device, events=False)
    choice = "rtx" if api.flavour == "rtx" else "tensorrt"
    for setting in plan.engine_settings:
        shape = [setting.batch, 3, *plan.hw]
        fp16 = setting.dtype == "fp16"
        x = make_input(shape, Setting("fp32", "nchw", setting.batch), torch.device("cpu")).numpy()
        engines: dict[str, tuple] = {}  # key -> (TrtRunner, onnx path, build seconds); the baseline's shared

        def engine(key: str, module: nn.Module, aux: int | None, setting=setting, shape=shape, fp16=fp16) -> tuple:
            if key not in engines:
                onnx_path = workdir / f"trt_{key.split('@')[0]}_b{setting.batch}.onnx"
                if not onnx_path.is_file():
                    export_onnx(module, shape, onnx_path, fp16=False)
                built = build(api, onnx_path, workdir / f"{key.replace('@', '_')}_{setting.dtype}.engine",
                              fp16=fp16, input_shape=shape, aux_streams=aux)
                section.estimates["engine"] = max(section.estimates["engine"], 1.2 * built.seconds)
                engines[key] = (TrtRunner(built.engine, trt=choice), onnx_path, round(built.seconds, 1))
            return engines[key]

        for name in plan.engine_archs:
            for variant, aux in (("default", None), ("aux_streams=0", 0)):
                what = {"setting": setting.key, "arch": name, "variant": variant, "input": shape}
                if name in models.missing:
                    section.skip(what, models.missing[name])
                    continue
                base_key = f"baseline_{models.archs[name].backbone}@default"
                section.estimates["engine_row"] = (1 + (base_key not in engines)) * section.estimates["engine"]

                def work(name=name, aux=aux, variant=variant, setting=setting, x=x, base_key=base_key) -> dict:
                    from natsdeploy.runners import OrtRunner
                    from natsdeploy.verify.parity import compare

                    base, _, base_s = engine(base_key, models.baseline_of(name), None)
                    subj, subj_onnx, subj_s = engine(f"{name}@{variant}", models.trunks[name], aux)
                    tol, why = parity_tolerance(setting, device)
                    parity = compare(subj.run({"images": x}), OrtRunner(subj_onnx).run({"images": x}), tolerance=tol)
                    row = time_pair(bound_trt_call(base, x), bound_trt_call(subj, x), clock=clock,
                                    timing=plan.trunk_timing)
                    return {**row, "build_s": {"baseline": base_s, "subject": subj_s},
                            "parity": {**parity.to_dict(), "tolerance_for": why}}

                section.attempt(what, "engine_row", work)
        engines.clear()
        free_memory()


def bound_trt_call(runner, x: np.ndarray) -> Callable[[], None]:
    """`execute_async_v3` with input and outputs already bound on the device (no host copies timed)."""
    trt = runner.api.trt
    kinds = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
    ctx, name = runner.context, runner.input_names[0]
    xin = torch.from_numpy(x).to(runner.device, kinds[runner.engine.get_tensor_dtype(name)])
    ctx.set_input_shape(name, tuple(xin.shape))
    ctx.set_tensor_address(name, xin.data_ptr())
    outs = []
    for o in runner.output_names:
        outs.append(torch.empty(tuple(ctx.get_tensor_shape(o)), dtype=kinds[runner.engine.get_tensor_dtype(o)],
                                device=runner.device))
        ctx.set_tensor_address(o, outs[-1].data_ptr())

    def call(keep=(xin, outs)) -> None:  # `keep` holds the bound buffers alive
        if not ctx.execute_async_v3(runner.stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")

    return call


# -- main ---------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="folder for gpu_<device>.{json,md}")
    ap.add_argument("--budget-s", default="480", help="wall-time budget of the whole run, seconds (default 480)")
    ap.add_argument("--icconv", default=None, help=f"the IC-Conv R50 pattern ({ICCONV_NAME}); default: "
                    "../shared/reference/icconv/ or shared/reference/icconv/ next to the repo")
    ap.add_argument("--example", default=None,
                    help="the example arch (default examples/resnet50_nats_c.json; --smoke: resnet18_nats_c.json)")
    ap.add_argument("--smoke", action="store_true", help="run every section on the CPU at tiny shapes (seconds)")
    return ap.parse_args(argv)


def shown(path: str | Path | None) -> str | None:
    """A path as the record shows it: relative to the repository when inside it."""
    if path is None:
        return None
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)


@contextmanager
def torch_settings(*, smoke: bool) -> Iterator[None]:
    """cuDNN's benchmark mode, no autograd and (smoke) one CPU thread, for the run only."""
    prev = torch.backends.cudnn.benchmark, torch.is_grad_enabled(), torch.get_num_threads()
    torch.backends.cudnn.benchmark = True
    torch.set_grad_enabled(False)
    if smoke:  # tiny ops on a shared CPU: one thread, or oneDNN's barriers wait on descheduled threads
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = prev[0]
        torch.set_grad_enabled(prev[1])
        torch.set_num_threads(prev[2])


def run(args: argparse.Namespace, command: str) -> Path:
    """Check the arguments, then measure with `torch_settings` (a one-line `UsageError` on bad input)."""
    budget_s = parse_float("--budget-s", args.budget_s, lo=1.0)
    if args.smoke:
        device = torch.device("cpu")
        plan = smoke_plan(shown(args.example or REPO / "examples" / "resnet18_nats_c.json"))
    else:
        if not torch.cuda.is_available():
            raise UsageError(f"device: got no CUDA GPU (torch {torch.__version__} sees none), expected one; "
                             "--smoke runs every section on the CPU")
        device = torch.device("cuda", torch.cuda.current_device())
        plan = gpu_plan(shown(args.example or REPO / "examples" / "resnet50_nats_c.json"))
    icconv = Path(args.icconv) if args.icconv else next((p for p in ICCONV_DEFAULTS if p.is_file()), None)
    with torch_settings(smoke=plan.smoke):
        return measure(plan, device, icconv=icconv, budget_s=budget_s, out_dir=Path(args.out), command=command)


def measure(plan: Plan, device: torch.device, *, icconv: Path | None, budget_s: float, out_dir: Path,
            command: str) -> Path:
    """Every section in turn, each within its share of the budget; the files rewritten after each."""
    budget = Budget(budget_s, plan.shares, reserve_s=min(10.0, 0.05 * budget_s), t0=T_START)
    slug = device_slug(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = sorted(set(plan.trunk_archs) | set(plan.compile_archs) | set(plan.engine_archs))
    models = load_models(plan, icconv, names)
    clock = Clock(device)
    record = {"format": FORMAT, "version": VERSION, "smoke": plan.smoke, "complete": False,
              "command": command, "device": str(device),
              "input_hw": list(plan.hw), "budget_s": budget_s, "elapsed_s": 0.0, "machine": machine_record(device),
              "plan": {k: v for k, v in asdict(plan).items() if k not in ("shares", "first_estimates")},
              "archs": {n: {"backbone": a.backbone, "convs": len(a.convs),
                            "branches": sum(len(c.branches) for c in a.convs.values())}
                        for n, a in models.archs.items()},
              "icconv": shown(icconv), "sections": {}}
    example = load_arch(REPO / plan.example)
    with tempfile.TemporaryDirectory(prefix="natsdeploy-gpu-") as tmp:
        steps = {"ort_cuda": lambda s: run_ort(s, plan, models, device, Path(tmp)),
                 "conv_genotypes": lambda s: run_conv_genotypes(s, plan, example, device, clock),
                 "conv_widths": lambda s: run_conv_widths(s, plan, example, device, clock),
                 "trunks": lambda s: run_trunks(s, plan, models, device, clock),
                 "tensorrt": lambda s: run_tensorrt(s, plan, models, device, Path(tmp)),
                 "trunks_compile": lambda s: run_compile(s, plan, models, device, clock)}
        for name in SECTIONS:
            section = Section(name, budget.deadline(name), plan.first_estimates)

            def flush(name=name, section=section) -> None:
                record["sections"][name] = section.to_dict()
                record["elapsed_s"] = round(budget.elapsed(), 1)
                write(out_dir, slug, record)

            section.flush = flush
            try:
                steps[name](section)
            except Exception as e:  # a section that breaks as a whole is recorded, the others still run
                section.reason = f"failed: {one_line(e)}"
                free_memory(collect=True)
            record["sections"][name] = section.to_dict()
            record["elapsed_s"] = round(budget.elapsed(), 1)
            path = write(out_dir, slug, record)
            print(f"{name}: {record['sections'][name]['status']} {record['sections'][name]['counts']} "
                  f"({section.to_dict()['elapsed_s']:.0f} s; total {record['elapsed_s']:.0f} s)", flush=True)
    record["complete"] = True
    record["elapsed_s"] = round(budget.elapsed(), 1)
    path = write(out_dir, slug, record)
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        run(args, " ".join(["python3", "benchmarks/gpu.py", *argv]))
    except InputError as e:
        print(str(e), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
