"""Cost of a super-net search step vs the baseline detector's training step (issue: search cost).

Each configuration runs in a fresh subprocess so its peak memory (ru_maxrss on CPU,
torch.cuda.max_memory_allocated on CUDA) is its own. Step = forward + backward + SGD step of a
torchvision Faster R-CNN FPN in training mode on random images with random boxes.

    .venv/bin/python benchmarks/search_cost.py [--backbone resnet50] [--size 320] [--steps 5] [--device cpu]
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


def macs(backbone: str, size: int, mode: str, preset: str) -> int:
    """Backbone MACs at size x size: the super-net runs every genotype of each searched conv."""
    from natsdeploy import build_baseline, count
    from natsdeploy.search.decode import genotypes, searchable_convs
    from natsdeploy.models.specs import BACKBONES

    c = count(build_baseline(backbone), (1, 3, size, size))
    total = c.macs - c.per_module.get("fc", (0, 0))[1]
    if mode == "supernet":
        for name in searchable_convs(backbone):
            g = len(genotypes(preset, BACKBONES[backbone].convs[name].stage))
            total += (g - 1) * c.per_module[name][1]
    return total


def child(args) -> None:
    import torch

    from natsdeploy.models.build import build_baseline
    from natsdeploy.models.detectors import build_detector
    from natsdeploy.search.supernet import build_supernet_backbone

    torch.manual_seed(0)
    device = torch.device(args.device)
    if args.mode == "baseline":
        bb = build_baseline(args.backbone)
    else:
        bb = build_supernet_backbone(args.backbone, preset=args.preset, groups=16, recompute=args.mode == "supernet-recompute")
    det = build_detector("faster_rcnn", bb, num_classes=4, min_size=args.size, max_size=args.size).to(device).train()
    opt = torch.optim.SGD([p for p in det.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, args.size, args.size, generator=g).to(device)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 120.0, 200.0], [150.0, 40.0, 300.0, 90.0]], device=device),
                "labels": torch.tensor([1, 2], device=device)}]

    def step():
        opt.zero_grad(set_to_none=True)
        loss = sum(det(images, targets).values())
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    times.sort()
    print(json.dumps({"mode": args.mode, "step_s_median": times[len(times) // 2], "step_s": times,
                      "peak_bytes": peak, "peak_kind": "cuda max_memory_allocated" if device.type == "cuda"
                      else "process max RSS (includes ~0.5 GB of torch itself)"}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--preset", default="NATS-C")
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mode", default=None)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "search_cost.json"))
    args = ap.parse_args()
    if args.mode:
        return child(args)
    rows = {}
    for mode in ("baseline", "supernet", "supernet-recompute"):
        cmd = [sys.executable, __file__, "--mode", mode, "--backbone", args.backbone, "--preset", args.preset,
               "--size", str(args.size), "--steps", str(args.steps), "--device", args.device]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows[mode] = json.loads(out)
        print(mode, rows[mode]["step_s_median"], rows[mode]["peak_bytes"] / 2**30, flush=True)
    from natsdeploy.bench.machine import machine_info

    mac_ratio = macs(args.backbone, args.size, "supernet", args.preset) / macs(args.backbone, args.size, "baseline", args.preset)
    base = rows["baseline"]
    summary = {m: {"step_time_ratio": r["step_s_median"] / base["step_s_median"],
                   "peak_memory_ratio": r["peak_bytes"] / base["peak_bytes"]} for m, r in rows.items()}
    record = {"command": " ".join(["python", "benchmarks/search_cost.py", *sys.argv[1:]]),
              "backbone_mac_ratio_supernet_over_baseline": mac_ratio, "summary": summary, "runs": rows,
              "settings": vars(args), "machine": machine_info()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({"mac_ratio": mac_ratio, **summary}, indent=1))


if __name__ == "__main__":
    main()
