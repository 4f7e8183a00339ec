"""Cost of a search step, softmax super-net vs gumbel super-net vs the baseline, and planted recovery (issue 14).

Three measurements, side by side in one run:

1. Step time, per target (`backbone`: forward of the ResNet's layer1..4 + backward + SGD step on a
   random batch, BN in training mode; `detector`: a torchvision Faster R-CNN FPN training step on
   random images with random boxes). All modes of a target live in one process and are timed
   interleaved: each round runs one step of every mode, the order rotating round by round; the
   ratio is the median over rounds of mode/baseline, with a bootstrap 95% interval.
2. Peak memory per (target, mode), each in a fresh subprocess so the peak is its own
   (CUDA: torch.cuda.max_memory_allocated; CPU: process max RSS, and its growth over the RSS after
   building the model, which leaves out torch itself).
3. Planted-arch recovery (`natsdeploy.search.planted`) for softmax, gumbel (the default "local"
   estimator) and gumbel-st (GDAS's straight-through one) on --recovery-backbone at --recovery-size.

Modes: baseline, softmax, softmax-recompute, gumbel ("local" estimator), gumbel-st.

Gumbel starts from alpha = 0, so every group draws uniformly and a conv runs up to one narrow conv
per genotype: the early-search case, the most expensive for it.

    .venv/bin/python benchmarks/search_cost.py [--backbone resnet50] [--size 320] [--rounds 10]
        [--targets backbone,detector] [--modes baseline,softmax,gumbel] [--device cpu]
        [--recovery-backbone resnet50 --recovery-size 224 --recovery-steps 200] [--threads N]
        [--out benchmarks/results/search_cost.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MODES = ("baseline", "softmax", "softmax-recompute", "gumbel", "gumbel-st")  # gumbel: the "local" estimator


def macs(backbone: str, size: int, mode: str, preset: str) -> int:
    """Backbone MACs at size x size (analytic): the softmax super-net runs every genotype of each searched conv."""
    from natsdeploy import build_baseline, count
    from natsdeploy.specs import BACKBONES
    from natsdeploy.search.decode import genotypes, searchable_convs

    c = count(build_baseline(backbone), (1, 3, size, size))
    total = c.macs - c.per_module.get("fc", (0, 0))[1]
    if mode == "supernet":
        for name in searchable_convs(backbone):
            g = len(genotypes(preset, BACKBONES[backbone].convs[name].stage))
            total += (g - 1) * c.per_module[name][1]
    return total


def fvcore_conv_macs(args, mode: str) -> int:
    """Conv MACs of one training-mode backbone forward, counted by fvcore on the traced graph."""
    import torch
    from fvcore.nn import FlopCountAnalysis

    torch.manual_seed(0)
    model = _backbone(args, mode).train()
    x = torch.randn(1, 3, args.size, args.size)
    fca = FlopCountAnalysis(model, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return int(fca.by_operator()["conv"])


def _backbone(args, mode: str):
    from natsdeploy.models.build import build_baseline
    from natsdeploy.search.supernet import build_supernet_backbone

    if mode == "baseline":
        return build_baseline(args.backbone)
    return build_supernet_backbone(args.backbone, preset=args.preset, groups=args.groups,
                                   recompute=mode == "softmax-recompute",
                                   sampling="gumbel" if mode.startswith("gumbel") else "softmax", tau=1.0,
                                   estimator="st" if mode == "gumbel-st" else "local")


def make_step(args, mode: str, target: str, device):
    """A zero-argument training step of `mode` on `target` (model built from torch's current RNG)."""
    import torch

    bb = _backbone(args, mode)
    g = torch.Generator().manual_seed(0)
    if target == "backbone":
        model = bb.to(device).train()
        x = torch.randn(args.batch_size, 3, args.size, args.size, generator=g).to(device)

        def loss_fn():
            h = model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x)))))
            feats = [h]
            for layer in (model.layer2, model.layer3, model.layer4):
                feats.append(layer(feats[-1]))
            return sum(f.square().mean() for f in feats)
    else:
        from natsdeploy.models.detectors import build_detector

        # equal RoI work in every mode: with RPN NMS off (threshold 1.0) every mode keeps its
        # post_nms_top_n proposals and samples the same number of RoIs; with NMS on, the count
        # depends on how alike an untrained model's boxes are, which differs between modes
        extra = {"rpn_nms_thresh": 1.0} if getattr(args, "equal_rois", False) else {}
        model = build_detector("faster_rcnn", bb, num_classes=4, min_size=args.size,
                               max_size=args.size, **extra).to(device).train()
        images = [torch.rand(3, args.size, args.size, generator=g).to(device) for _ in range(args.batch_size)]
        s = args.size / 320
        box = torch.tensor([[10.0, 20.0, 120.0, 200.0], [150.0, 40.0, 300.0, 90.0]]) * s
        targets = [{"boxes": box.to(device), "labels": torch.tensor([1, 2], device=device)}
                   for _ in range(args.batch_size)]

        def loss_fn():
            return sum(model(images, targets).values())
    # lr = 0: the optimiser step runs in full, but the parameters stay put, so every step of a mode does
    # the same work (a training detector's proposals, and so its cost, drift as its weights move)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0, momentum=0.9,
                          weight_decay=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    return step


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def child_time(args) -> dict:
    """Interleaved rounds over every mode of one target; per-mode times and ratios to the baseline."""
    import torch

    from natsdeploy.timing.stats import paired_ratio

    device = torch.device(args.device)
    modes = args.mode_list
    steps = {}
    for m in modes:
        torch.manual_seed(0)  # every mode from the same baseline init
        steps[m] = make_step(args, m, args.target, device)
    for m in modes:  # warm-up
        steps[m]()
    times: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(args.rounds):
        order = modes[r % len(modes):] + modes[:r % len(modes)]
        if r % 2:
            order = order[::-1]
        for m in order:
            torch.manual_seed(1000 + r)  # the same gumbel draws for every run of a round
            t0 = time.perf_counter()
            steps[m]()
            times[m].append(time.perf_counter() - t0)
    base = times["baseline"]
    return {"target": args.target, "step_s": times,
            "ratio_over_baseline": {m: paired_ratio(base, times[m]).to_dict() for m in modes if m != "baseline"}}


def child_memory(args) -> dict:
    """Peak memory of `--steps` training steps of one mode on one target (run in its own process)."""
    import torch

    device = torch.device(args.device)
    torch.manual_seed(0)
    step = make_step(args, args.mode, args.target, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = _rss_now()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        return {"peak_bytes": torch.cuda.max_memory_allocated(), "peak_kind": "cuda max_memory_allocated"}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_bytes": peak, "growth_bytes": peak - before,
            "peak_kind": "process max RSS (includes torch itself); growth: over the RSS after building the model"}


def _child(args, **kw) -> dict:
    cmd = [sys.executable, __file__, "--backbone", args.backbone, "--preset", args.preset, "--size", str(args.size),
           "--groups", str(args.groups), "--batch-size", str(args.batch_size), "--device", args.device,
           "--rounds", str(args.rounds), "--steps", str(args.steps), "--modes", args.modes]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.equal_rois:
        cmd += ["--equal-rois"]
    for k, v in kw.items():
        cmd += [f"--{k}", str(v)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"child {kw} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def recovery_rows(args) -> list[dict]:
    from natsdeploy.search.planted import recover_planted

    rows = []
    for relaxation in ("softmax", "gumbel", "gumbel-st"):
        sampling, _, estimator = relaxation.partition("-")
        r = recover_planted(args.recovery_backbone, groups=args.recovery_groups, preset=args.preset,
                            input_size=args.recovery_size, steps=args.recovery_steps, lr=0.1, seed=0,
                            sampling=sampling, estimator=estimator or "local", batch_size=2, device=args.device)
        rows.append(dict(r.to_dict(), relaxation=relaxation))
        print(f"recovery {relaxation}: {r.recovery:.3f} {r.per_stage} ({r.steps} steps, {r.wall_s:.1f} s)",
              flush=True)
    return rows


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--preset", default="NATS-C")
    ap.add_argument("--groups", type=int, default=16)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds (one step of every mode each)")
    ap.add_argument("--steps", type=int, default=3, help="steps per memory measurement")
    ap.add_argument("--targets", default="backbone,detector")
    ap.add_argument("--modes", default="baseline,softmax,gumbel", help=f"some of {','.join(MODES)}; baseline first")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--equal-rois", action="store_true",
                    help="detector: RPN NMS off, so every mode's RoI heads do the same work")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--recovery-backbone", default="resnet50")
    ap.add_argument("--recovery-groups", type=int, default=16)
    ap.add_argument("--recovery-size", type=int, default=224)
    ap.add_argument("--recovery-steps", type=int, default=200, help="0: skip the recovery part")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "search_cost.json"))
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--target", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.mode_list[:1] != ["baseline"] or any(m not in MODES for m in args.mode_list):
        ap.error(f"--modes: got {args.modes!r}, expected baseline first, then some of {','.join(MODES[1:])}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.phase:
        print(json.dumps(child_time(args) if args.phase == "time" else child_memory(args)))
        return
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    timing, memory = {}, {}
    for t in targets:
        timing[t] = _child(args, phase="time", target=t)
        print(t, {m: round(v["median"], 3) for m, v in timing[t]["ratio_over_baseline"].items()}, flush=True)
        memory[t] = {m: _child(args, phase="memory", target=t, mode=m) for m in args.mode_list}
        base = memory[t]["baseline"]
        for m, v in memory[t].items():
            v["peak_ratio"] = v["peak_bytes"] / base["peak_bytes"]
            if "growth_bytes" in v:
                v["growth_ratio"] = v["growth_bytes"] / base["growth_bytes"]
        print(t, "memory", {m: round(v.get("growth_ratio", v["peak_ratio"]), 3) for m, v in memory[t].items()},
              flush=True)
    recovery = recovery_rows(args) if args.recovery_steps else []
    from natsdeploy.files import atomic_write_text
    from natsdeploy.timing.machine import machine_info

    mac_ratio = macs(args.backbone, args.size, "supernet", args.preset) / macs(args.backbone, args.size, "baseline",
                                                                                args.preset)
    fv = {m: fvcore_conv_macs(args, m) for m in ("baseline", "softmax", "gumbel")}
    summary = {t: {m: {"step_time_ratio": timing[t]["ratio_over_baseline"].get(m, {}).get("median", 1.0),
                       "peak_memory_ratio": memory[t][m]["peak_ratio"],
                       **({"memory_growth_ratio": memory[t][m]["growth_ratio"]} if "growth_ratio" in memory[t][m]
                          else {})}
                   for m in args.mode_list} for t in targets}
    record = {"command": " ".join(["python", "benchmarks/search_cost.py", *(sys.argv[1:] if argv is None else argv)]),
              "backbone_mac_ratio_supernet_over_baseline": mac_ratio,
              "backbone_conv_macs_fvcore_train_mode": fv, "summary": summary, "timing": timing, "memory": memory,
              "recovery": recovery,
              "settings": {k: v for k, v in vars(args).items() if k not in ("phase", "target", "mode")},
              "machine": machine_info()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.out), json.dumps(record, indent=2) + "\n")
    print(json.dumps({"mac_ratio_softmax": mac_ratio, "fvcore_conv_macs": fv, **summary}, indent=1))


if __name__ == "__main__":
    main()
