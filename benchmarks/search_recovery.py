"""Planted-arch recovery of the search, per stage and input size, for both relaxations (issue 14).

For each backbone, input size and relaxation (`softmax`: the paper's mixture; `gumbel`: one drawn
genotype per group with the default "local" estimator; `gumbel-st`: the same draws with GDAS's
straight-through estimator; see natsdeploy.search.estimators) a random arch is planted (seeded), the super-net's
alphas alone are trained to match the planted teacher's layer2..4 outputs on random inputs
(`natsdeploy.search.planted.recover_planted`), and the decoded arch is scored: the fraction of
channel groups whose genotype is the planted one, overall and per stage, with steps and wall time.

    .venv/bin/python benchmarks/search_recovery.py [--backbones resnet18,resnet50] [--sizes 96,128,224]
        [--samplings softmax,gumbel,gumbel-st] [--steps 200] [--gumbel-steps 200] [--seeds 0] [--threads 2]
        [--out benchmarks/results/search_recovery]

Writes OUT.json (every run, settings, machine) and OUT.md (a table).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEFAULT_GROUPS = {"resnet18": 8, "resnet34": 8}  # others: 16 (the paper's)


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def _strs(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default="resnet18,resnet50")
    ap.add_argument("--sizes", default="96,128,224", help="input sizes (px, square)")
    ap.add_argument("--samplings", default="softmax,gumbel",
                    help="relaxations: softmax, gumbel (the default 'local' estimator), gumbel-st (straight-through)")
    ap.add_argument("--groups", type=int, default=None, help="groups per conv (default: 8 for ResNet-18/34, else 16)")
    ap.add_argument("--preset", default="NATS-C")
    ap.add_argument("--steps", type=int, default=200, help="Adam steps on alpha (softmax)")
    ap.add_argument("--gumbel-steps", type=int, default=None, help="steps for gumbel (default: --steps)")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--tau", type=float, default=1.0, help="gumbel temperature (start)")
    ap.add_argument("--tau-end", type=float, default=None, help="gumbel: anneal tau exponentially to this")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--teacher-forcing", action="store_true", help="each student stage gets the teacher's input")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "search_recovery"),
                    help="output prefix: writes PREFIX.json and PREFIX.md")
    return ap.parse_args(argv)


def run(args: argparse.Namespace, *, log=print) -> list[dict]:
    """Every (backbone, size, sampling, seed) run, in that order, as RecoveryResult.to_dict() rows."""
    from natsdeploy.search.planted import recover_planted

    rows = []
    for backbone in _strs(args.backbones):
        groups = args.groups or DEFAULT_GROUPS.get(backbone, 16)
        for size in _ints(args.sizes):
            for relaxation in _strs(args.samplings):
                sampling, _, estimator = relaxation.partition("-")
                steps = args.gumbel_steps if sampling == "gumbel" and args.gumbel_steps else args.steps
                for seed in _ints(args.seeds):
                    r = recover_planted(backbone, groups=groups, preset=args.preset, input_size=size, steps=steps,
                                        lr=args.lr, seed=seed, sampling=sampling, tau=args.tau,
                                        tau_end=args.tau_end if sampling == "gumbel" else None,
                                        batch_size=args.batch_size, teacher_forcing=args.teacher_forcing,
                                        estimator=estimator or "local", device=args.device)
                    row = r.to_dict()
                    rows.append(row)
                    row["relaxation"] = relaxation
                    log(f"{backbone} {size}px {relaxation} seed {seed}: recovery {row['recovery']:.3f} "
                        f"{row['per_stage']} in {row['steps']} steps, {row['wall_s']:.1f} s")
    return rows


def markdown(rows: list[dict], command: str) -> str:
    """A table: one line per run."""
    lines = [f"`{command}`", "",
             "| backbone | groups/conv | input | relaxation | seed | steps | recovery | layer2 | layer3 | layer4 "
             "| wall s | loss first -> last |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        st = r["per_stage"]
        lines.append(f"| {r['backbone']} | {r['settings']['groups']} | {r['input_size']} px | {r.get('relaxation', r['sampling'])} "
                     f"| {r['settings']['seed']} | {r['steps']} | {r['recovery']:.1%} | "
                     + " | ".join(f"{st[s]:.1%}" if s in st else "-" for s in ("layer2", "layer3", "layer4"))
                     + f" | {r['wall_s']:.1f} | {r['loss_first']:.3g} -> {r['loss_last']:.3g} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    import torch

    from natsdeploy.files import atomic_write_text
    from natsdeploy.timing.machine import machine_info

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = run(args)
    command = " ".join(["python", "benchmarks/search_recovery.py", *(sys.argv[1:] if argv is None else argv)])
    record = {"command": command, "runs": rows, "settings": vars(args), "total_wall_s": time.perf_counter() - t0,
              "torch_threads": torch.get_num_threads(), "machine": machine_info()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    atomic_write_text(out.with_suffix(".md"), markdown(rows, command))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
