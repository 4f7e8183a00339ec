"""Shared test helpers: random valid archs, seeded weights, an independent reference, and `assert_exit_2`.

The reference re-implements ARCH_FORMAT.md with torch.nn.functional only and the dense form of
a dilated conv (a zero-filled (2dh+1)x(2dw+1) kernel), computing each transformed channel as its
baseline filter over the full input; it shares no code with natsdeploy.models.
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import resnet as tv_resnet

from natsdeploy.arch import Arch, Branch, ConvTransform
from natsdeploy.specs import BACKBONES

SMALL = ["resnet18", "resnet34"]
ALL = ["resnet18", "resnet34", "resnet50", "resnet101", "resnext101_32x4d"]
# ALL for parametrize, the two large ones marked `slow` (pyproject): `pytest -m "not slow"` is the quick loop
ALL_PARAMS = [pytest.param(b, marks=pytest.mark.slow) if b in ("resnet101", "resnext101_32x4d") else b for b in ALL]


def plain_model(backbone: str) -> tv_resnet.ResNet:
    spec = BACKBONES[backbone]
    block = tv_resnet.BasicBlock if spec.block == "basic" else tv_resnet.Bottleneck
    return tv_resnet.ResNet(block, list(spec.layers), groups=spec.groups, width_per_group=spec.width_per_group)


def seeded_state_dict(backbone: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """torchvision init plus non-trivial BN statistics, so permutation mistakes show.

    Drawn once per (backbone, seed) and process: later calls return copies and leave the global RNG
    where the first call left it, so a caller sees exactly what drawing it again would give (the
    draw, kaiming init of up to 44M weights, was ~7% of the suite's time).
    """
    if (backbone, seed) not in _SEEDED:
        _SEEDED[(backbone, seed)] = (_draw_seeded_state_dict(backbone, seed), torch.get_rng_state())
    sd, rng_after = _SEEDED[(backbone, seed)]
    torch.set_rng_state(rng_after)
    return {k: v.clone() for k, v in sd.items()}


_SEEDED: dict[tuple[str, int], tuple[dict[str, torch.Tensor], torch.Tensor]] = {}


def _draw_seeded_state_dict(backbone: str, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    sd = plain_model(backbone).state_dict()
    g = torch.Generator().manual_seed(seed + 1)
    for k, v in sd.items():
        if k.endswith("running_mean"):
            sd[k] = torch.randn(v.shape, generator=g) * 0.1
        elif k.endswith("running_var"):
            sd[k] = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith(".weight") and v.ndim == 1:
            sd[k] = torch.rand(v.shape, generator=g) * 0.5 + 0.5
        elif k.endswith(".bias") and v.ndim == 1 and not k.startswith("fc"):
            sd[k] = torch.randn(v.shape, generator=g) * 0.1
    return sd


def _split(total: int, unit: int, rng: random.Random, max_parts: int) -> list[int]:
    units = total // unit
    parts = rng.randint(1, min(max_parts, units))
    cuts = sorted(rng.sample(range(1, units), parts - 1)) if parts > 1 else []
    bounds = [0, *cuts, units]
    return [(b - a) * unit for a, b in zip(bounds, bounds[1:])]


def random_arch(backbone: str, rng: random.Random, *, p_conv: float = 0.6, max_branches: int = 5,
                max_dilation: int = 3, dilation_one: bool = False) -> Arch:
    """A random valid arch: random splits, dilations (incl. asymmetric), group-wise permutations."""
    spec = BACKBONES[backbone]
    convs = {}
    for name, info in spec.convs.items():
        if rng.random() > p_conv:
            continue
        k = info.channels_per_group
        widths = _split(info.out_channels, k, rng, max_branches)
        branches = tuple(
            Branch((1, 1) if dilation_one else (rng.randint(1, max_dilation), rng.randint(1, max_dilation)), w)
            for w in widths
        )
        perm = None
        if info.permutable and rng.random() < 0.7:
            blocks = list(range(info.groups if info.groups > 1 else info.out_channels))
            rng.shuffle(blocks)
            perm = tuple(c for b in blocks for c in range(b * k, b * k + k)) if info.groups > 1 else tuple(blocks)
        convs[name] = ConvTransform(branches, perm)
    return Arch(backbone=backbone, convs=convs)


# -- the independent reference ---------------------------------------------------------------
def dense_kernel(w: torch.Tensor, dh: int, dw: int) -> torch.Tensor:
    """A dilated 3x3 kernel as a zero-filled (2dh+1)x(2dw+1) kernel."""
    out = w.new_zeros(w.shape[0], w.shape[1], 2 * dh + 1, 2 * dw + 1)
    out[:, :, ::dh, ::dw] = w
    return out


def _bn(x, sd, p, perm=None):
    idx = (lambda t: t[perm]) if perm is not None else (lambda t: t)
    return F.batch_norm(x, idx(sd[f"{p}.running_mean"]), idx(sd[f"{p}.running_var"]),
                        idx(sd[f"{p}.weight"]), idx(sd[f"{p}.bias"]), False, 0.0, 1e-5)


def _conv3x3(x, sd, arch: Arch, name: str, stride: int, groups: int):
    """Returns (output, permutation or None) per ARCH_FORMAT.md semantics 1-5."""
    w = sd[f"{name}.weight"]
    ct = arch.convs.get(name)
    if ct is None:
        return F.conv2d(x, w, stride=stride, padding=1, groups=groups), None
    perm = torch.tensor(ct.perm())
    outs, o = [], 0
    for b in ct.branches:
        dh, dw = b.dilation
        full = F.conv2d(x, dense_kernel(w, dh, dw), stride=stride, padding=(dh, dw), groups=groups)
        outs.append(full[:, perm[o:o + b.channels]])
        o += b.channels
    return torch.cat(outs, 1), perm


def reference_features(sd: dict[str, torch.Tensor], arch: Arch, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """c2..c5 and logits of the transformed network, from a torchvision-layout state dict."""
    spec = arch.spec
    x = F.relu(_bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), sd, "bn1"))
    x = F.max_pool2d(x, 3, 2, 1)
    feats = {}
    for li, blocks in enumerate(spec.layers, start=1):
        for bi in range(blocks):
            p = f"layer{li}.{bi}"
            stride = 2 if (li > 1 and bi == 0) else 1
            if f"{p}.downsample.0.weight" in sd:
                idn = _bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride), sd, f"{p}.downsample.1")
            else:
                idn = x
            if spec.block == "basic":
                y, perm = _conv3x3(x, sd, arch, f"{p}.conv1", stride, 1)
                y = F.relu(_bn(y, sd, f"{p}.bn1", perm))
                w2 = sd[f"{p}.conv2.weight"]
                w2 = w2[:, perm] if perm is not None else w2
                sd2 = dict(sd)
                sd2[f"{p}.conv2.weight"] = w2
                y, _ = _conv3x3(y, sd2, arch, f"{p}.conv2", 1, 1)
                y = _bn(y, sd, f"{p}.bn2")
            else:
                y = F.relu(_bn(F.conv2d(x, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1"))
                y, perm = _conv3x3(y, sd, arch, f"{p}.conv2", stride, spec.groups)
                y = F.relu(_bn(y, sd, f"{p}.bn2", perm))
                w3 = sd[f"{p}.conv3.weight"]
                y = _bn(F.conv2d(y, w3[:, perm] if perm is not None else w3), sd, f"{p}.bn3")
            x = F.relu(y + idn)
        feats[f"c{li + 1}"] = x
    feats["logits"] = F.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1), sd["fc.weight"], sd["fc.bias"])
    return feats


def model_features(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """c2..c5 and logits of a torchvision-compatible ResNet module."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    feats = {}
    for i in range(1, 5):
        x = getattr(model, f"layer{i}")(x)
        feats[f"c{i + 1}"] = x
    feats["logits"] = model.fc(torch.flatten(model.avgpool(x), 1))
    return feats


def assert_features_close(actual: dict, expected: dict, rel: float = 1e-4) -> None:
    for k, ref in expected.items():
        scale = ref.abs().max().item()
        torch.testing.assert_close(actual[k], ref, rtol=rel, atol=rel * max(scale, 1e-6), msg=lambda m: f"{k}: {m}")


def ort_outputs(model, x, *, input_name: str = "images", optimize: bool = True):
    """Run an ONNX ModelProto on ONNX Runtime CPU (the runtime reference): {output name: array}.
    `optimize=False` runs the graph as written (no fusions: QDQ pairs stay float Quantize/Dequantize ops)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, {input_name: x})))


def assert_ort_parity(model_pt, proto, shape, rel=1e-4, seed=0):
    """The graph's outputs on ORT equal the PyTorch model's features (rtol `rel`, atol `rel` x max |ref|)."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    got = ort_outputs(proto, x.numpy())
    with torch.no_grad():
        ref = model_features(model_pt, x)
    compared = [k for k in ref if k in got]
    assert compared, f"no graph output among {sorted(ref)}; graph has {sorted(got)}"
    for k in compared:
        v = ref[k]
        scale = float(v.abs().max())
        torch.testing.assert_close(torch.from_numpy(got[k]), v, rtol=rel, atol=rel * scale, msg=lambda m: f"{k}: {m}")


# -- the CLI's bad-input contract ------------------------------------------------------------------
def tree_snapshot(root) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of everything under `root`: equal snapshots mean nothing was written."""
    from pathlib import Path

    root = Path(root)
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def assert_exit_2(argv: list[str], capsys=None, *, contains: str | list[str] = (), absent=(), unchanged=None,
                  process: bool = False, cwd=None) -> str:
    """Run `natsdeploy argv` and assert the bad-input contract; return the stderr line.

    Exit status 2, exactly one stderr line starting `natsdeploy: error: `, no traceback, each of `contains`
    in it; no path in `absent` exists afterwards and the tree under `unchanged` (a folder) is untouched.
    In-process through `natsdeploy.cli.main` (pass pytest's `capsys`), or with `process=True` as the real
    console command in a fresh interpreter (warnings, logging and tracebacks would show on its stderr).
    """
    import os
    import subprocess
    import sys
    from pathlib import Path

    before = tree_snapshot(unchanged) if unchanged is not None else None
    if process:
        repo = Path(__file__).resolve().parent.parent
        r = subprocess.run([sys.executable, "-m", "natsdeploy.cli", *map(str, argv)], cwd=cwd, capture_output=True,
                           text=True, env={**os.environ, "PYTHONPATH": str(repo)}, timeout=300)
        rc, err = r.returncode, r.stderr
    else:
        from natsdeploy.cli import main

        capsys.readouterr()  # only this call's output counts
        rc = main([str(a) for a in argv])
        err = capsys.readouterr().err
    assert rc == 2, (rc, err)
    assert err.count("\n") == 1 and err.startswith("natsdeploy: error: ") and "Traceback" not in err, err
    for text in [contains] if isinstance(contains, str) else contains:
        assert text in err, (text, err)
    for path in absent:
        assert not Path(path).exists(), f"{path} was written"
    if before is not None:
        assert tree_snapshot(unchanged) == before, f"files under {unchanged} changed"
    return err.rstrip("\n")


def torch_cuda() -> bool:
    """True where torch sees a CUDA GPU (TensorRT engines and CUDA timings can run)."""
    return torch.cuda.is_available()


def trt_importable() -> bool:
    """True where some TensorRT Python API (tensorrt or tensorrt_rtx) is installed."""
    import importlib.util

    return any(importlib.util.find_spec(m) is not None for m in ("tensorrt", "tensorrt_rtx"))


def cli_parsers(parser=None, prefix: tuple[str, ...] = ()):
    """(command path, parser) of every `natsdeploy` subcommand, nested ones (`data synth`) included."""
    import argparse

    from natsdeploy.cli import build_parser

    parser = build_parser() if parser is None else parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from cli_parsers(sub, (*prefix, name))


def flag_help(parser, action) -> str:
    """The help text `--help` prints for `action` (with the default and choices the formatter adds), one line."""
    return " ".join(parser._get_formatter()._expand_help(action).split())


def command_flag_help(path: tuple[str, ...], flag: str) -> str:
    """`flag_help` of `flag` in the subcommand at `path`, e.g. (("data", "synth"), "--classes")."""
    parser = dict(cli_parsers())[path]
    return flag_help(parser, next(a for a in parser._actions if flag in a.option_strings))


def int8_arms(*, images: int, missed: dict | None = None) -> dict:
    """Per-image COCO matches of four constructed detectors, from real pycocotools `evaluate()` runs: `images`
    images with one object each (20, 60 and 150 px in turn: small, medium and large), every arm
    (("model" | "baseline", "fp32" | "int8")) finding each exactly, except in the images (indices) that
    `missed[arm]` lists, where it reports a same-class box elsewhere instead (a false positive and a miss).

    Returns {arm: (metrics 0-1, PerImageMatches)}: what `parity --precision int8` evaluates per arm.
    """
    import contextlib
    import io

    from pycocotools.coco import COCO

    from natsdeploy.data.per_image_ap import coco_evaluate_per_image

    missed = missed or {}
    sides = (20.0, 60.0, 150.0)
    imgs = [{"id": i + 1, "file_name": f"{i + 1}.png", "height": 256, "width": 256} for i in range(images)]
    anns = [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [10.0, 10.0, sides[i % 3], sides[i % 3]],
             "area": sides[i % 3] ** 2, "iscrowd": 0} for i in range(images)]
    gt = COCO()
    gt.dataset = {"images": imgs, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    out = {}
    for arm in (("model", "fp32"), ("baseline", "fp32"), ("model", "int8"), ("baseline", "int8")):
        miss = set(missed.get(arm, ()))
        dets = [{"image_id": a["image_id"], "category_id": 1, "score": 0.9,
                 "bbox": [200.0, 200.0, 40.0, 40.0] if i in miss else list(a["bbox"])} for i, a in enumerate(anns)]
        out[arm] = coco_evaluate_per_image(gt, dets)
    return out
