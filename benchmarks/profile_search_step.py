"""Where a search training step's time goes: torch profiler, baseline vs a super-net mode, per op (issue 14).

Builds the step of `benchmarks/search_cost.py` (same models, same inputs, lr 0) for the baseline and
for `--mode`, profiles `--steps` steps of each after 2 warm-up steps, and prints the ops whose
self CPU time per step grew the most.

    .venv/bin/python benchmarks/profile_search_step.py [--target detector|backbone] [--mode gumbel]
        [--size 320] [--groups 16] [--steps 3] [--threads 2] [--equal-rois]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO.parent))
sys.path.insert(0, str(REPO))


def main() -> None:
    import torch
    from torch.profiler import profile

    import search_cost

    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="detector", choices=["detector", "backbone"])
    ap.add_argument("--mode", default="gumbel", choices=["softmax", "gumbel"])
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--preset", default="NATS-C")
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--groups", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--equal-rois", action="store_true")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    per_step: dict[str, dict[str, float]] = {}
    for mode in ("baseline", args.mode):
        torch.manual_seed(0)
        step = search_cost.make_step(args, mode, args.target, torch.device("cpu"))
        for _ in range(2):
            step()
        with profile() as prof:
            for _ in range(args.steps):
                step()
        per_step[mode] = {e.key: e.self_cpu_time_total / 1e3 / args.steps for e in prof.key_averages()}
        print(f"{mode}: {sum(per_step[mode].values()):.1f} ms self CPU per step")
    base, other = per_step["baseline"], per_step[args.mode]
    keys = sorted(set(base) | set(other), key=lambda k: base.get(k, 0.0) - other.get(k, 0.0))
    print(f"{'op':<56}{'baseline ms':>12}{args.mode + ' ms':>12}")
    for k in keys[:args.top]:
        print(f"{k[:55]:<56}{base.get(k, 0.0):>12.1f}{other.get(k, 0.0):>12.1f}")


if __name__ == "__main__":
    main()
