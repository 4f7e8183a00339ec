"""Small-scale NATS replication on the synthetic multi-scale set: baseline vs searched arch, one recipe.

The paper's pipeline, shrunk to what a 2-core CPU finishes in about an hour:

1. **pretrain** - there is no network for ImageNet weights, so the "pretrained" backbone is a
   baseline ResNet-18 Faster R-CNN trained from its initialisation (trainable BN, every layer) on a
   *separate* synthetic set (other seed); its backbone is saved in torchvision layout.
2. **search** - `natsdeploy search` (NATS-C, channel-level super-net) from those weights on the
   target training split -> `arch.json`.
3. **retrain** - `natsdeploy train` of the baseline and of the searched arch from the same weights
   (weight transfer, paper 3.4), frozen BN and stem, identical recipe, for each seed; pycocotools AP,
   AP50, AP75, APs, APm, APl on the target val split after the last epoch.

Every stage is a `natsdeploy` command (printed and recorded); a stage whose output exists is skipped
(train stages resume), so an interrupted run continues. Outputs are keyed by folder only: after
changing any setting, use a new `--work`. Results: `results/replication.json` and
`results/replication.md`. Whatever comes out is reported as measured.

    python benchmarks/replication.py --work /tmp/nats-replication
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _run(cmd: list[str], log: Path) -> float:
    print("$ " + " ".join(cmd), flush=True)
    t = time.perf_counter()
    with open(log, "a") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)
    return time.perf_counter() - t


def _run_parallel(batch: list[tuple[str, list[str], Path]], env: dict[str, str]) -> dict[str, float]:
    """Run the commands at once (each logging to OUT/log.txt); their own wall times. On a failure
    the others are stopped before exiting, so no two processes ever write one checkpoint."""
    t0 = time.perf_counter()
    procs = []
    for name, cmd, out in batch:
        print("$ " + " ".join(cmd), flush=True)
        out.mkdir(parents=True, exist_ok=True)
        log = open(out / "log.txt", "a")
        procs.append((name, out, log, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)))
    took: dict[str, float] = {}
    try:
        while len(took) < len(procs):
            for name, out, log, proc in procs:
                if name in took or proc.poll() is None:
                    continue
                took[name] = time.perf_counter() - t0
                log.close()
                if proc.returncode != 0:
                    raise SystemExit(f"{name} failed (exit {proc.returncode}); see {out / 'log.txt'}")
                (out / "metrics.json.done").touch()
            time.sleep(1.0)
    finally:
        for _, _, log, proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
            log.close()
    return took


def _nd(*args: str) -> list[str]:
    return [sys.executable, "-m", "natsdeploy.cli", *args]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="folder for data, checkpoints and logs")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--size", default="192x256", help="synthetic image HxW")
    p.add_argument("--train-images", type=int, default=256)
    p.add_argument("--val-images", type=int, default=128)
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--min-size", type=int, default=192)
    p.add_argument("--max-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr-per-image", default="0.0025", help="lr 0.01 at batch 4 (0.02 diverged from scratch)")
    p.add_argument("--pretrain-epochs", type=int, default=10)
    p.add_argument("--search-epochs", type=int, default=5)
    p.add_argument("--search-warmup-epochs", type=int, default=1)
    p.add_argument("--epochs", type=int, default=6, help="retrain epochs (lr / 10 at 8/13 and 11/13 of them)")
    p.add_argument("--jobs", type=int, default=2, help="retrain runs at once (each with threads = cores / jobs)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default=str(HERE / "results" / "replication"), help="result path stem")
    a = p.parse_args(argv)

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    h, w = a.size.split("x")
    # fewer proposals / RoI samples than torchvision's COCO defaults (small images, few objects): about 2.5x
    # cheaper steps on CPU; identical for every run
    heads = [f"--detector-option={o}" for o in ("rpn_pre_nms_top_n_train=600", "rpn_post_nms_top_n_train=300",
                                                "rpn_pre_nms_top_n_test=300", "rpn_post_nms_top_n_test=150",
                                                "box_batch_size_per_image=128")]
    common = ["--min-size", str(a.min_size), "--max-size", str(a.max_size), "--batch-size", str(a.batch_size),
              "--lr-per-image", a.lr_per_image, *heads, "--no-progress"]
    commands: list[str] = []
    seconds: dict[str, float] = {}

    def stage(name: str, cmd: list[str], done: Path) -> None:
        commands.append("natsdeploy " + " ".join(cmd[3:]))
        if done.exists():
            print(f"[{name}] done already ({done})", flush=True)
            return
        seconds[name] = _run(cmd, log)

    src, tgt = work / "data_source", work / "data_target"
    for d, seed in ((src, 101), (tgt, 0)):
        stage(f"data {d.name}", _nd("data", "synth", "--out", str(d), "--images", str(a.train_images),
                                    "--val-images", str(a.val_images), "--size", a.size,
                                    "--classes", str(a.classes), "--seed", str(seed)), d / "annotations")

    def sched(epochs: int) -> list[str]:
        return ["--steps", str(max(1, round(epochs * 8 / 13))), str(max(1, round(epochs * 11 / 13)))]

    pre = work / "pretrain"
    stage("pretrain", _nd("train", "--backbone", a.backbone, "--data", str(src), "--epochs", str(a.pretrain_epochs),
                          *sched(a.pretrain_epochs), "--warmup-iters", "200", "--seed", "100", "--resume",
                          "--out", str(pre), *common), pre / "metrics.json.done")
    weights = work / "pretrained_backbone.pth"
    if not weights.exists():
        import torch

        from natsdeploy.train import backbone_weights

        torch.save(backbone_weights(pre / "checkpoint.pth"), weights)
    (pre / "metrics.json.done").touch()
    commands.append(f"python -c \"import torch, natsdeploy.train as t; torch.save(t.backbone_weights('{pre}/checkpoint.pth'), "
                    f"'{weights}')\"")

    search = work / "search"
    stage("search", _nd("search", "--backbone", a.backbone, "--data", str(tgt), "--weights", str(weights),
                        "--preset", "NATS-C", "--epochs", str(a.search_epochs), "--warmup-epochs",
                        str(a.search_warmup_epochs), "--seed", "0", "--resume", "--out", str(search),
                        "--min-size", str(a.min_size), "--max-size", str(a.max_size), "--batch-size",
                        str(a.batch_size), *heads, "--no-progress"), search / "arch.json")

    runs: dict[str, dict[int, dict]] = {"baseline": {}, "searched": {}}
    todo = []
    for seed in a.seeds:
        for kind in runs:
            out = work / f"{kind}_seed{seed}"
            arch = [str(search / "arch.json")] if kind == "searched" else ["--backbone", a.backbone]
            cmd = _nd("train", *arch, "--data", str(tgt), "--weights", str(weights), "--epochs", str(a.epochs),
                      *sched(a.epochs), "--warmup-iters", "50", "--seed", str(seed), "--resume", "--out", str(out),
                      *common)
            commands.append("natsdeploy " + " ".join(cmd[3:]))
            if not (out / "metrics.json.done").exists():
                todo.append((f"{kind} seed {seed}", cmd, out))
    threads = max(1, (os.cpu_count() or 1) // max(1, a.jobs))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    for i in range(0, len(todo), max(1, a.jobs)):  # a.jobs runs at a time, each on its own cores
        seconds.update(_run_parallel(todo[i:i + a.jobs], env))
    for seed in a.seeds:
        for kind in runs:
            metrics = json.loads((work / f"{kind}_seed{seed}" / "metrics.json").read_text())
            runs[kind][seed] = {"final": {k: metrics[-1][k] for k in METRICS},
                                "per_epoch_AP": [m["AP"] for m in metrics]}

    summary = {}
    for kind, by_seed in runs.items():
        summary[kind] = {}
        for k in METRICS:
            vals = [r["final"][k] for r in by_seed.values()]
            defined = [v for v in vals if v >= 0]  # -1: pycocotools' "no ground truth in that range"
            summary[kind][k] = {"mean": statistics.fmean(defined) if defined else None,
                                "std": statistics.stdev(defined) if len(defined) > 1 else None, "values": vals}
    delta = {k: [(runs["searched"][s]["final"][k] - runs["baseline"][s]["final"][k])
                 if min(runs["searched"][s]["final"][k], runs["baseline"][s]["final"][k]) >= 0 else None
                 for s in a.seeds] for k in METRICS}
    arch_doc = json.loads((search / "arch.json").read_text())
    record = {"config": vars(a), "jobs_note": f"retrain runs {a.jobs} at a time, {threads} thread(s) each", "commands": commands, "stage_seconds": seconds, "runs": runs, "summary": summary,
              "delta_searched_minus_baseline_per_seed": delta,
              "searched_arch": {"path": str(search / "arch.json"), "convs": len(arch_doc.get("convs", {})),
                                "dilation_mix": _mix(arch_doc)},
              "machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "cpus": os.cpu_count()},
              "metric_scale": "AP points (0-100), pycocotools bbox; -1 = undefined"}
    stem = Path(a.out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    stem.with_suffix(".md").write_text(_table(record) + "\n")
    print(_table(record))
    return 0


def _mix(arch_doc: dict) -> dict[str, int]:
    """Channels per dilation over every transformed conv (e.g. {'1x1': 900, '2x2': 300})."""
    mix: dict[str, int] = {}
    for ct in arch_doc.get("convs", {}).values():
        for b in ct["branches"]:
            key = "x".join(str(d) for d in b["dilation"]) if isinstance(b["dilation"], list) else str(b["dilation"])
            mix[key] = mix.get(key, 0) + int(b["channels"])
    return dict(sorted(mix.items()))


def _table(r: dict) -> str:
    seeds = r["config"]["seeds"]
    lines = [f"| arch | {' | '.join(METRICS)} |", "| --- |" + " --- |" * len(METRICS)]
    for kind in ("baseline", "searched"):
        s = r["summary"][kind]
        lines.append(f"| {kind} (mean ± std over seeds {seeds}) | "
                     + " | ".join("n/a" if s[k]["mean"] is None else
                                  f"{s[k]['mean']:.2f} ± {s[k]['std'] or 0.0:.2f}" for k in METRICS) + " |")
    d = r["delta_searched_minus_baseline_per_seed"]
    lines.append("| searched − baseline, per seed | "
                 + " | ".join(", ".join("n/a" if v is None else f"{v:+.2f}" for v in d[k]) for k in METRICS) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
