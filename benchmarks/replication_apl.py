"""Which objects a transformed arch loses against the baseline (issue 22, item 2), and one hypothesis tested.

For trained checkpoints of `benchmarks/replication.py` (`WORK/<arm>_seed<N>/checkpoint.pth`), runs each
detector on the target val split and reports, per ground-truth subset, recall at IoU >= 0.5 (any
detection of the right class, top 100 per image) and pycocotools AP for size bins:

- size: sqrt(area) bins (COCO small/medium/large plus finer ones: at 192x256 "large" is > 96 px);
- border: boxes touching the image border (truncated objects) vs interior ones;
- aspect: w/h < 0.5, 0.5-2, > 2.

Hypothesis measured: large dilations over layer4's small feature map read mostly zero padding. For each
arch, the share of layer4 3x3 taps (over output positions, taps and channels) that fall inside the
feature map at the val images' layer4 size, against the baseline's; then, across arms and seeds, whether
that share tracks the APl difference to the baseline of the same seed.

    python benchmarks/replication_apl.py --work /work/repl --arms baseline random gumbel softmax \\
        --seeds 0 1 2 --out benchmarks/results/replication_apl
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SIZE_BINS = {"<32": (0, 32), "32-64": (32, 64), "64-96": (64, 96), "96-128": (96, 128), ">=128": (128, 1e5)}
ASPECT_BINS = {"w/h<0.5": (0, 0.5), "0.5-2": (0.5, 2.0), "w/h>2": (2.0, 1e9)}


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xywh boxes a [N,4] against b [M,4]."""
    ax2, ay2, bx2, by2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax2[:, None], bx2[None]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(ay2[:, None], by2[None]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    return inter / (a[:, 2:].prod(1)[:, None] + b[:, 2:].prod(1)[None] - inter + 1e-9)


def detections(ckpt: Path, data: str) -> tuple[list[dict], object]:
    import torch

    from natsdeploy.data.coco import load_dataset
    from natsdeploy.data.evaluate import to_coco_results
    from natsdeploy.models.trained import load_detector_checkpoint

    model, _, meta = load_detector_checkpoint(ckpt)
    ds = load_dataset(data, "val")
    dets: list[dict] = []
    with torch.no_grad():
        for i in range(len(ds)):
            image, target = ds[i]
            out = model([image])
            dets += to_coco_results(out, [int(target["image_id"])], meta["label_to_cat_id"])
    return dets, ds.coco


def subset_recall(coco, dets: list[dict]) -> dict[str, dict[str, float]]:
    """Recall at IoU >= 0.5 per GT subset (size, border, aspect): found / total."""
    by_img: dict[int, list[dict]] = {}
    for d in dets:
        by_img.setdefault(d["image_id"], []).append(d)
    rows = []
    for img_id, img in coco.imgs.items():
        gts = [a for a in coco.imgToAnns.get(img_id, []) if not a.get("iscrowd")]
        ds = sorted(by_img.get(img_id, []), key=lambda d: -d["score"])[:100]
        for g in gts:
            cand = np.array([d["bbox"] for d in ds if d["category_id"] == g["category_id"]], dtype=np.float64)
            hit = bool(len(cand)) and float(_iou(np.array([g["bbox"]], dtype=np.float64), cand).max()) >= 0.5
            x, y, w, h = g["bbox"]
            border = x <= 1 or y <= 1 or x + w >= img["width"] - 1 or y + h >= img["height"] - 1
            rows.append((hit, (w * h) ** 0.5, border, w / max(h, 1e-6)))
    out: dict[str, dict[str, float]] = {"size": {}, "border": {}, "aspect": {}}
    for name, (lo, hi) in SIZE_BINS.items():
        sel = [r[0] for r in rows if lo <= r[1] < hi]
        out["size"][name] = {"recall": float(np.mean(sel)) if sel else None, "n": len(sel)}
    for name, flag in (("touching border", True), ("interior", False)):
        sel = [r[0] for r in rows if r[2] == flag]
        out["border"][name] = {"recall": float(np.mean(sel)) if sel else None, "n": len(sel)}
    for name, (lo, hi) in ASPECT_BINS.items():
        sel = [r[0] for r in rows if lo <= r[3] < hi]
        out["aspect"][name] = {"recall": float(np.mean(sel)) if sel else None, "n": len(sel)}
    return out


def size_bin_ap(coco, dets: list[dict]) -> dict[str, float]:
    """pycocotools AP (0-100) per sqrt(area) bin."""
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    if not dets:
        return {k: 0.0 for k in SIZE_BINS}
    with contextlib.redirect_stdout(io.StringIO()):
        res = coco.loadRes(dets)
        ev = COCOeval(coco, res, "bbox")
        ev.params.areaRng = [[lo ** 2, hi ** 2] for lo, hi in SIZE_BINS.values()]
        ev.params.areaRngLbl = list(SIZE_BINS)
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"]  # [T, R, K, A, M]
    out = {}
    for a, name in enumerate(SIZE_BINS):
        p = prec[:, :, :, a, -1]
        out[name] = float(np.mean(p[p > -1]) * 100) if (p > -1).any() else None
    return out


def valid_tap_share(arch_doc: dict | None, hw: tuple[int, int]) -> float:
    """Share of layer4 3x3 taps (positions x taps x output channels) inside an hw feature map (same padding)."""
    from natsdeploy.specs import BACKBONES

    spec = BACKBONES["resnet18"]
    convs = (arch_doc or {}).get("convs", {})
    total = valid = 0.0
    for name, info in spec.convs.items():
        if info.stage != "layer4":
            continue
        h, w = hw
        if info.stride == 2:  # layer4.0.conv1 reads layer3's map (twice the size)
            h, w = 2 * h, 2 * w
        branches = convs.get(name, {}).get("branches") or [{"dilation": [1, 1], "channels": info.out_channels}]
        oh, ow = (h + info.stride - 1) // info.stride, (w + info.stride - 1) // info.stride
        for b in branches:
            d = b["dilation"] if isinstance(b["dilation"], list) else [b["dilation"]] * 2
            ys = np.arange(oh)[:, None] * info.stride + np.array([-1, 0, 1])[None] * d[0]
            xs = np.arange(ow)[:, None] * info.stride + np.array([-1, 0, 1])[None] * d[1]
            vy, vx = ((ys >= 0) & (ys < h)).sum(), ((xs >= 0) & (xs < w)).sum()
            valid += b["channels"] * vy * vx
            total += b["channels"] * oh * 3 * ow * 3
    return valid / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--arms", nargs="+", default=["baseline", "random", "gumbel", "softmax"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--layer4-hw", default="6x8", help="layer4 map of the val images (192x256 / 32)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "replication_apl"))
    a = ap.parse_args()
    work = Path(a.work)
    hw = tuple(int(v) for v in a.layer4_hw.split("x"))
    runs = {}
    for arm in a.arms:
        for seed in a.seeds:
            ck = work / f"{arm}_seed{seed}" / "checkpoint.pth"
            if not (work / f"{arm}_seed{seed}" / "metrics.json.done").exists():
                continue
            print(f"== {arm} seed {seed}", flush=True)
            import torch

            arch_doc = torch.load(ck, weights_only=True, map_location="cpu").get("arch")
            dets, coco = detections(ck, str(work / "data_target"))
            metrics = json.loads((work / f"{arm}_seed{seed}" / "metrics.json").read_text())[-1]
            runs[f"{arm}/{seed}"] = {"arm": arm, "seed": seed, "APl": metrics["APl"], "AP": metrics["AP"],
                                     "recall": subset_recall(coco, dets), "size_ap": size_bin_ap(coco, dets),
                                     "layer4_valid_tap_share": valid_tap_share(arch_doc, hw)}
    base = {r["seed"]: r for r in runs.values() if r["arm"] == "baseline"}
    pts = [(r["layer4_valid_tap_share"], r["APl"] - base[r["seed"]]["APl"]) for r in runs.values()
           if r["arm"] != "baseline" and r["seed"] in base]
    corr = float(np.corrcoef(np.array(pts).T)[0, 1]) if len(pts) > 2 else None
    record = {"command": "python benchmarks/replication_apl.py " + " ".join(sys.argv[1:]), "runs": runs,
              "hypothesis": {"layer4_hw": hw, "pairs(valid_tap_share, dAPl_vs_baseline)": pts,
                             "pearson_r": corr}}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    arms = list(dict.fromkeys(r["arm"] for r in runs.values()))

    def mean(arm: str, get) -> str:
        vals = [get(r) for r in runs.values() if r["arm"] == arm and get(r) is not None]
        return f"{statistics.fmean(vals):.3f}" if vals else "n/a"

    lines = [f"`{record['command']}`", "", "Recall at IoU >= 0.5 per ground-truth subset, mean over seeds (n = objects):",
             "", "| subset | n | " + " | ".join(arms) + " |", "| --- | --- |" + " --- |" * len(arms)]
    first = next(iter(runs.values()))
    for group in ("size", "border", "aspect"):
        for name, v in first["recall"][group].items():
            lines.append(f"| {group} {name} | {v['n']} | "
                         + " | ".join(mean(arm, lambda r, g=group, n=name: r["recall"][g][n]["recall"]) for arm in arms)
                         + " |")
    lines += ["", "AP (0-100) per sqrt(area) bin, mean over seeds:", "", "| bin | " + " | ".join(arms) + " |",
              "| --- |" + " --- |" * len(arms)]
    for name in SIZE_BINS:
        lines.append(f"| {name} | " + " | ".join(mean(arm, lambda r, n=name: r["size_ap"][n]) for arm in arms) + " |")
    lines += ["", f"layer4 taps inside the {hw[0]}x{hw[1]} map: "
              + ", ".join(f"{arm} {mean(arm, lambda r: r['layer4_valid_tap_share'])}" for arm in arms),
              f"Pearson r(valid tap share, APl - baseline APl of the same seed) over {len(pts)} runs: "
              + ("n/a" if corr is None else f"{corr:+.2f}")]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
