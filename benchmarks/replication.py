"""Small-scale NATS replication on the synthetic multi-scale set, with controls: arms under one recipe.

The paper's pipeline, shrunk to what a 2-core CPU can run:

1. **pretrain** - there is no network for ImageNet weights, so the "pretrained" backbone is a
   baseline ResNet-18 Faster R-CNN trained from its initialisation (trainable BN, every layer) on a
   *separate* synthetic set (other seed); its backbone is saved in torchvision layout.
2. **search** - `natsdeploy search` (NATS-C, 16 groups, channel-level super-net) from those weights on
   the target training split: softmax for `--search-epochs`, and gumbel `local` for `--gumbel-epochs`
   (its per-epoch decodes, `history.json` -> `changed_filters`, show when the arch stopped changing).
3. **retrain** - `natsdeploy train` of each arm from the same weights (weight transfer, paper 3.4),
   frozen BN and stem, identical recipe, for each seed; pycocotools AP, AP50, AP75, APs, APm, APl on
   the target val split after every epoch. Arms (`--arms`, run in the order given): baseline; random
   (a new uniform draw from NATS-C per seed, `natsdeploy.search.decode.sample_arch`); gumbel; softmax;
   gumbel_a32 (`decode --align 32` of the gumbel search); hand_d2_layer4 (dilation 2 on every layer4
   3x3 conv); and two ablations of the gumbel arch that separate where its cost sits: gumbel_layer4 (its
   layer4 choices only, layer2/3 back to dilation 1) and gumbel_sym (every filter's dilation (a, b) made
   symmetric at max(a, b): the same reach on both axes, a larger change than the asymmetric one).

Every stage is a `natsdeploy` command (printed and recorded); a stage whose output exists is skipped
(train stages resume), so an interrupted run continues. Outputs are keyed by folder only: after
changing any setting, use a new `--work`. Results (rewritten after every pair of runs, so partial
results are readable): `results/replication_controls.{json,md}` with per-arm mean ± std, paired
differences against baseline and random with a Student-t interval, and the searches' convergence.
`--import-runs EARLIER.json` adds an earlier record's finished runs (arm, seed pairs not run in `--work`,
which are then not re-run; each marked `imported_from`, the earlier config/commands/machine kept under
`imported`); it refuses a record of another recipe. Valid only from the same pretrained backbone:
re-run one of its runs to check.
`--report-only` runs nothing and writes the results of what has finished (`unfinished` lists the rest).

    python benchmarks/replication.py --work /tmp/nats-replication
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
ARMS = ("baseline", "random", "gumbel", "softmax", "gumbel_a32", "hand_d2_layer4", "gumbel_layer4", "gumbel_sym")
GUMBEL_DERIVED = ("gumbel_a32", "gumbel_layer4", "gumbel_sym")  # need the gumbel search; paired against it too


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
    p.add_argument("--gumbel-epochs", type=int, default=12, help="gumbel search epochs (convergence: see history.json)")
    p.add_argument("--arms", nargs="+", default=list(ARMS), help=f"in priority order, from {ARMS}")
    p.add_argument("--out", default=str(HERE / "results" / "replication_controls"), help="result path stem")
    p.add_argument("--import-runs", default=None,
                   help="an earlier results .json: its finished runs (and searches) of arms/seeds not run in --work "
                        "join the tables, marked imported, and are not re-run (only valid from the same pretrained "
                        "backbone and recipe)")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: write the results from the runs already finished in --work")
    a = p.parse_args(argv)
    earlier = _check_import(a) if a.import_runs else {}

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
        if done.exists() or a.report_only:
            print(f"[{name}] {'done already' if done.exists() else 'not run (--report-only)'} ({done})", flush=True)
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
    if not weights.exists() and not a.report_only:
        import torch

        from natsdeploy.train import backbone_weights

        torch.save(backbone_weights(pre / "checkpoint.pth"), weights)
    if weights.exists():
        (pre / "metrics.json.done").touch()
    commands.append(f"python -c \"import torch, natsdeploy.train as t; torch.save(t.backbone_weights('{pre}/checkpoint.pth'), "
                    f"'{weights}')\"")

    # the searches: softmax (the paper's super-net, today's default run) and gumbel `local` for longer, at once
    searches = {"softmax": (work / "search", ["--epochs", str(a.search_epochs)]),
                "gumbel": (work / "search_gumbel", ["--sampling", "gumbel", "--estimator", "local",
                                                    "--epochs", str(a.gumbel_epochs)])}
    todo_search = []
    for kind, (out, extra) in searches.items():
        if kind not in a.arms and not (kind == "gumbel" and set(GUMBEL_DERIVED) & set(a.arms)):
            continue
        cmd = _nd("search", "--backbone", a.backbone, "--data", str(tgt), "--weights", str(weights),
                  "--preset", "NATS-C", "--groups", "16", *extra, "--warmup-epochs", str(a.search_warmup_epochs),
                  "--seed", "0", "--resume", "--out", str(out), "--min-size", str(a.min_size), "--max-size",
                  str(a.max_size), "--batch-size", str(a.batch_size), *heads, "--no-progress")
        commands.append("natsdeploy " + " ".join(cmd[3:]))
        if not (out / "arch.json").exists():
            todo_search.append((f"search {kind}", cmd, out))
    threads = max(1, (os.cpu_count() or 1) // max(1, a.jobs))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if todo_search and not a.report_only:
        seconds.update(_run_parallel(todo_search, env))

    arch_of: dict[str, dict[int, Path | None]] = {}
    for arm in a.arms:
        arch_of[arm] = {}
        for seed in a.seeds:
            if arm == "baseline":
                arch_of[arm][seed] = None
            elif arm in ("softmax", "gumbel"):
                arch_of[arm][seed] = searches[arm][0] / "arch.json"
            elif arm == "gumbel_a32":
                path = work / "search_gumbel" / "arch_a32.json"
                if seed == a.seeds[0]:
                    stage("decode gumbel a32", _nd("decode", str(work / "search_gumbel" / "checkpoint.pth"),
                                                   "--align", "32", "-o", str(path)), path)
                arch_of[arm][seed] = path
            elif arm == "random":  # a new uniform draw per seed (recorded), seed 1000 + retrain seed
                path = work / "random" / f"arch_seed{seed}.json"
                if not path.exists():
                    from natsdeploy.search.decode import sample_arch

                    path.parent.mkdir(parents=True, exist_ok=True)
                    sample_arch(a.backbone, preset="NATS-C", groups=16, seed=1000 + seed).save(path)
                commands.append(f"python -c \"from natsdeploy.search.decode import sample_arch; sample_arch("
                                f"'{a.backbone}', preset='NATS-C', groups=16, seed={1000 + seed}).save('{path}')\"")
                arch_of[arm][seed] = path
            elif arm in ("gumbel_layer4", "gumbel_sym"):
                path = work / "search_gumbel" / f"arch_{arm[len('gumbel_'):]}.json"
                if not path.exists() and not a.report_only:
                    from natsdeploy.arch import load_arch

                    src_arch = load_arch(work / "search_gumbel" / "arch.json")
                    (_layer4_only(src_arch) if arm == "gumbel_layer4" else _symmetric(src_arch)).save(path)
                commands.append(f"cd benchmarks && python -c \"import replication as r, natsdeploy.arch as a; r."
                                f"{'_layer4_only' if arm == 'gumbel_layer4' else '_symmetric'}("
                                f"a.load_arch('{work / 'search_gumbel' / 'arch.json'}')).save('{path}')\"")
                arch_of[arm][seed] = path
            elif arm == "hand_d2_layer4":  # dilation 2 on every layer4 3x3 conv, one branch each
                path = work / "hand" / "arch.json"
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    _hand_arch(a.backbone).save(path)
                arch_of[arm][seed] = path
            else:
                raise SystemExit(f"--arms: got {arm!r}, expected some of {ARMS}")

    todo = []
    for arm in a.arms:  # arms in the given order (priority), their seeds together
        for seed in a.seeds:
            out = work / f"{arm}_seed{seed}"
            arch = [str(arch_of[arm][seed])] if arch_of[arm][seed] else ["--backbone", a.backbone]
            cmd = _nd("train", *arch, "--data", str(tgt), "--weights", str(weights), "--epochs", str(a.epochs),
                      *sched(a.epochs), "--warmup-iters", "50", "--seed", str(seed), "--resume", "--out", str(out),
                      *common)
            commands.append("natsdeploy " + " ".join(cmd[3:]))
            if str(seed) in earlier.get("runs", {}).get(arm, {}) and not (out / "metrics.json.done").exists():
                print(f"[{arm} seed {seed}] imported from {a.import_runs}: not re-run", flush=True)
            elif not (out / "metrics.json.done").exists():
                todo.append((f"{arm} seed {seed}", cmd, out))
    for i in range(0, 0 if a.report_only else len(todo), max(1, a.jobs)):  # a.jobs at a time, own cores each
        seconds.update(_run_parallel(todo[i:i + a.jobs], env))
        _write(a, work, arch_of, commands, seconds, threads, earlier)
    _write(a, work, arch_of, commands, seconds, threads, earlier)
    return 0


def _hand_arch(backbone: str):
    """Dilation 2 on every 3x3 conv of layer4 (one branch: no permutation needed), a classic hand-made scheme."""
    from natsdeploy.arch import Arch, Branch, ConvTransform
    from natsdeploy.specs import BACKBONES

    spec = BACKBONES[backbone]
    convs = {n: ConvTransform((Branch((2, 2), info.out_channels),)) for n, info in spec.convs.items()
             if info.stage == "layer4"}
    return Arch(backbone=backbone, convs=convs, provenance={"hand_made": "dilation 2 on every layer4 3x3 conv"})


def _from_filter_dilations(dils: list[tuple[int, int]]):
    """A ConvTransform giving baseline filter i dilation dils[i]: one branch per dilation, in order of
    first use, filters in baseline order within a branch (None when every filter keeps dilation 1)."""
    from natsdeploy.arch import Branch, ConvTransform

    if all(d == (1, 1) for d in dils):
        return None
    order = list(dict.fromkeys(dils))
    perm = [i for d in order for i, di in enumerate(dils) if di == d]
    return ConvTransform(tuple(Branch(d, dils.count(d)) for d in order), tuple(perm))


def _map_filters(arch, fn, note: str):
    """`arch` with every searched filter's dilation replaced by fn(conv name, dilation)."""
    from natsdeploy.align import filter_dilations
    from natsdeploy.arch import Arch

    convs = {}
    for name, ct in arch.convs.items():
        new = _from_filter_dilations([fn(name, d) for d in filter_dilations(ct, arch.spec.convs[name])])
        if new is not None:
            convs[name] = new
    prov = dict(arch.provenance) if isinstance(arch.provenance, dict) else {"source": arch.provenance}
    return Arch(backbone=arch.backbone, convs=convs, provenance={**prov, "ablation": note})


def _layer4_only(arch):
    """The arch's layer4 choices only; layer2/3 filters back to dilation 1."""
    return _map_filters(arch, lambda name, d: d if name.startswith("layer4.") else (1, 1),
                        "layer4 choices only: layer2/3 filters at dilation 1")


def _symmetric(arch):
    """Every filter's dilation (a, b) made (m, m) with m = max(a, b): symmetric, the same reach."""
    return _map_filters(arch, lambda name, d: (max(d), max(d)), "every dilation (a, b) made (max, max)")


def _t_interval(diffs: list[float]) -> list[float] | None:
    """Two-sided 95% Student-t interval of the mean paired difference (n seeds, n - 1 dof)."""
    if len(diffs) < 2:
        return None
    t = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}.get(len(diffs) - 1, 2.0)
    m, s = statistics.fmean(diffs), statistics.stdev(diffs)
    half = t * s / len(diffs) ** 0.5
    return [m - half, m + half]


def _write(a, work: Path, arch_of: dict, commands: list[str], seconds: dict[str, float], threads: int,
           earlier: dict) -> None:
    """Write results/…{json,md} from every finished run (partial while runs remain)."""
    runs: dict[str, dict[int, dict]] = {}
    for arm in a.arms:
        for seed in a.seeds:
            out = work / f"{arm}_seed{seed}"
            if not (out / "metrics.json.done").exists():
                continue
            metrics = json.loads((out / "metrics.json").read_text())
            arch_path = arch_of[arm][seed]
            runs.setdefault(arm, {})[seed] = {
                "final": {k: metrics[-1][k] for k in METRICS}, "per_epoch_AP": [m["AP"] for m in metrics],
                "per_epoch_APl": [m.get("APl") for m in metrics],
                "arch": None if arch_path is None else {"path": str(arch_path),
                                                        "dilation_mix": _mix(json.loads(arch_path.read_text()))}}
    imported = _import_runs(a, runs, earlier)
    summary = {}
    for arm, by_seed in runs.items():
        summary[arm] = {}
        for k in METRICS:
            vals = [r["final"][k] for r in by_seed.values()]
            defined = [v for v in vals if v >= 0]  # -1: pycocotools' "no ground truth in that range"
            summary[arm][k] = {"mean": statistics.fmean(defined) if defined else None,
                               "std": statistics.stdev(defined) if len(defined) > 1 else None, "values": vals}
    paired = {}
    for ref in ("baseline", "random", "gumbel"):
        for arm in runs:
            if arm == ref or ref not in runs or (ref == "gumbel" and arm not in GUMBEL_DERIVED):
                continue
            seeds = sorted(set(runs[arm]) & set(runs[ref]))  # imported seeds pair too
            paired[f"{arm} - {ref}"] = {k: {"per_seed": [runs[arm][s]["final"][k] - runs[ref][s]["final"][k]
                                                          for s in seeds],
                                            "mean": statistics.fmean([runs[arm][s]["final"][k] - runs[ref][s]["final"][k]
                                                                      for s in seeds]) if seeds else None,
                                            "t95": _t_interval([runs[arm][s]["final"][k] - runs[ref][s]["final"][k]
                                                                for s in seeds])}
                                        for k in METRICS}
    search = {}
    for kind, folder in (("softmax", "search"), ("gumbel", "search_gumbel")):
        hist = work / folder / "history.json"
        if hist.exists():
            h = json.loads(hist.read_text())
            changes = [e.get("changed_filters") for e in h]
            search[kind] = {"epochs": len(h), "changed_filters_per_epoch": changes, "filters": h[-1].get("filters"),
                            "converged_from_epoch": _converged_from(h),
                            "arch_mix": _mix(json.loads((work / folder / "arch.json").read_text()))}
        elif a.import_runs and kind in imported.get("searches", {}):
            search[kind] = {**imported["searches"][kind], "imported_from": a.import_runs}
    unfinished = [f"{arm} seed {seed}" for arm in a.arms for seed in a.seeds if seed not in runs.get(arm, {})]
    record = {"config": vars(a), "unfinished": unfinished, "jobs_note": f"retrain runs {a.jobs} at a time, {threads} thread(s) each",
              "commands": commands, "stage_seconds": seconds, "runs": runs, "summary": summary,
              "paired_differences": paired, "searches": search,
              "machine": _machine(),
              "metric_scale": "AP points (0-100), pycocotools bbox; -1 = undefined",
              "interval": "t95: two-sided 95% Student-t interval of the mean paired difference over seeds",
              "imported": None if not imported else {"path": a.import_runs, **{k: imported.get(k) for k in (
                  "config", "commands", "stage_seconds", "machine", "jobs_note", "imported")}}}
    stem = Path(a.out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    if stem.with_suffix(".json").exists():  # a re-run skips finished stages: keep their measured wall times
        record["stage_seconds"] = {**json.loads(stem.with_suffix(".json").read_text()).get("stage_seconds", {}),
                                   **seconds}
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    stem.with_suffix(".md").write_text(_table(record) + "\n")
    _plot_curves(runs, stem.parent / (stem.name + "_curves.png"))
    print(_table(record), flush=True)


_RECIPE = ("backbone", "size", "train_images", "val_images", "classes", "min_size", "max_size", "batch_size",
           "lr_per_image", "pretrain_epochs", "epochs", "search_epochs", "search_warmup_epochs", "gumbel_epochs")


def _check_import(a) -> dict:
    """The --import-runs record; refuse one that is not an earlier record of the same recipe, or is this run's output."""
    path = Path(a.import_runs)
    if path.resolve() == Path(a.out).with_suffix(".json").resolve():
        raise SystemExit(f"--import-runs: got {str(path)!r}, expected a file other than this run's output (copy it first)")
    try:
        old = json.loads(path.read_text())
        runs, config = old["runs"], old["config"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"--import-runs: got {str(path)!r}, expected an earlier replication results .json ({e})")
    for k in _RECIPE:
        if k in config and config[k] != getattr(a, k):
            raise SystemExit(f"--import-runs: got {k}={config[k]!r} in {path}, expected {getattr(a, k)!r} as in this run")
    if not isinstance(runs, dict):
        raise SystemExit(f"--import-runs: got runs of type {type(runs).__name__}, expected an object of arms")
    return old


def _import_runs(a, runs: dict, old: dict) -> dict:
    """Add an earlier record's runs for (arm, seed) pairs not finished here, each marked with its source;
    return that record ({} without --import-runs). Arms keep the earlier record's order, then the new ones."""
    if not a.import_runs:
        return {}
    merged: dict[str, dict] = {}
    for arm, by_seed in old.get("runs", {}).items():
        for seed, r in by_seed.items():
            if int(seed) not in runs.get(arm, {}):
                merged.setdefault(arm, {})[int(seed)] = {**r, "imported_from": r.get("imported_from", a.import_runs)}
    for arm, by_seed in runs.items():
        merged.setdefault(arm, {}).update(by_seed)
    runs.clear()
    runs.update({arm: dict(sorted(by_seed.items())) for arm, by_seed in merged.items()})
    return old


def _plot_curves(runs: dict, path: Path) -> None:
    """Per-epoch AP and APl of every run (one colour per arm), to see whether the retrain has stopped rising."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (arm, by_seed) in enumerate(runs.items()):
        for j, r in enumerate(by_seed.values()):
            for ax, key in zip(axes, ("per_epoch_AP", "per_epoch_APl")):
                ax.plot(range(1, len(r[key]) + 1), r[key], color=colours[i % len(colours)], alpha=0.8,
                        label=arm if j == 0 else None)
    for ax, name in zip(axes, ("AP", "APl")):
        ax.set_xlabel("retrain epoch")
        ax.set_ylabel(f"{name} (val, 0-100)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _machine() -> dict:
    from natsdeploy.timing.machine import machine_info  # the project's machine record (CPU model, ISA, versions)

    return machine_info()


def _converged_from(history: list[dict]) -> int | None:
    """First epoch after which the decoded arch never changed again (None: it changed in the last epoch)."""
    last_change = 0
    for e in history:
        if e.get("changed_filters") not in (0, None):
            last_change = e["epoch"]
    return None if last_change == history[-1]["epoch"] else last_change


def _mix(arch_doc: dict) -> dict[str, int]:
    """Channels per dilation over every transformed conv (e.g. {'1x1': 900, '2x2': 300})."""
    mix: dict[str, int] = {}
    for ct in arch_doc.get("convs", {}).values():
        for b in ct["branches"]:
            key = "x".join(str(d) for d in b["dilation"]) if isinstance(b["dilation"], list) else str(b["dilation"])
            mix[key] = mix.get(key, 0) + int(b["channels"])
    return dict(sorted(mix.items()))


def _table(r: dict) -> str:
    lines = [f"| arm | {' | '.join(METRICS)} |", "| --- |" + " --- |" * len(METRICS)]
    for arm, s in r["summary"].items():
        lines.append(f"| {arm} (mean ± std, seeds {sorted(int(k) for k in r['runs'][arm])}) | "
                     + " | ".join("n/a" if s[k]["mean"] is None else
                                  f"{s[k]['mean']:.2f} ± {s[k]['std'] or 0.0:.2f}" for k in METRICS) + " |")
    for name, d in r["paired_differences"].items():
        lines.append(f"| {name}, mean [t95] (per seed) | "
                     + " | ".join("n/a" if d[k]["mean"] is None else
                                  f"{d[k]['mean']:+.2f} "
                                  + ("" if d[k]["t95"] is None else f"[{d[k]['t95'][0]:+.2f}, {d[k]['t95'][1]:+.2f}] ")
                                  + "(" + ", ".join(f"{v:+.2f}" for v in d[k]["per_seed"]) + ")"
                                  for k in METRICS) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
