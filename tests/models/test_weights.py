"""natsdeploy.models.weights: every layout `--weights` reads gives the same backbone as the same weights in
torchvision layout (c2..c5 bit-equal), or the library's own network (within a stated bound); bad and
ambiguous files are one line, exit 2, through the CLI.

Files of torchvision detection and timm are written by those libraries. mmdetection and detectron2 do not
install here: their files are written in the key layout their sources define (cited at each writer).
"""

from __future__ import annotations

import argparse
import collections
import json
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from natsdeploy.arch import Arch, load_arch
from natsdeploy.checkpoint import FORMATS, SEARCH, TRAIN, save_checkpoint
from natsdeploy.cli import main
from natsdeploy.errors import WeightsError
from natsdeploy.models.build import build_backbone, build_baseline, resolve_weights
from natsdeploy.models.weights import LoadedWeights, guess_backbone, load_weights
from natsdeploy.specs import BACKBONES
from tests.conftest import EXAMPLES
from tests.helpers import assert_exit_2, model_features, seeded_state_dict

R18, R50 = BACKBONES["resnet18"], BACKBONES["resnet50"]
ARCH18, ARCH50 = str(EXAMPLES / "resnet18_nats_c.json"), str(EXAMPLES / "resnet50_nats_c.json")
X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def c2_c5(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        feats = model_features(model, X)
    return {k: feats[k] for k in ("c2", "c3", "c4", "c5")}


def assert_bit_equal(backbone: str, weights, reference_sd) -> None:
    """The backbone built from `weights` computes exactly what the one built from `reference_sd`
    (the same weights in torchvision layout) computes."""
    got, want = c2_c5(build_baseline(backbone, weights)), c2_c5(build_baseline(backbone, reference_sd))
    for k in want:
        assert torch.equal(got[k], want[k]), k


def backbone_only(sd: dict) -> dict:
    """What a detector's backbone holds of a classification state dict: no fc, and (FrozenBatchNorm2d) no BN counter."""
    return {k: v for k, v in sd.items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}


def export_fails(argv: list[str], capsys, tmp_path, contains) -> str:
    """`natsdeploy export ...` exits 2 with one line and writes nothing (the weights are checked before any work)."""
    return assert_exit_2(["export", *argv, "--out", str(tmp_path / "out")], capsys, contains=contains,
                         absent=[tmp_path / "out"])


# -- torchvision detection: written by torchvision ---------------------------------------------------------------
def _randomize_frozen_bn(model: torch.nn.Module) -> None:
    """FrozenBatchNorm2d starts at ones/zeros: give it statistics, so a swapped buffer would show."""
    from torchvision.ops import FrozenBatchNorm2d

    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            n = m.weight.numel()
            m.weight.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)


def _detector(kind: str):
    from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    torch.manual_seed(0)
    if kind == "retinanet":  # torchvision's retinanet_resnet50_fpn backbone, on a ResNet-18
        body = resnet_fpn_backbone(backbone_name="resnet18", weights=None, returned_layers=[2, 3, 4],
                                   extra_blocks=LastLevelP6P7(256, 256))
        return RetinaNet(body, num_classes=91).eval()
    body = resnet_fpn_backbone(backbone_name="resnet18", weights=None)
    return (FasterRCNN if kind == "faster_rcnn" else MaskRCNN)(body, num_classes=91).eval()


@pytest.mark.parametrize("kind, heads", [("faster_rcnn", {"fpn", "rpn", "roi_heads"}),
                                         ("mask_rcnn", {"fpn", "rpn", "roi_heads"}),
                                         ("retinanet", {"fpn", "head"})])
def test_torchvision_detection_checkpoint_computes_its_detectors_c2_c5(tmp_path, kind, heads):
    det = _detector(kind)
    _randomize_frozen_bn(det)
    # torchvision's references/detection/train.py saves model, optimizer, lr_scheduler, args (a Namespace), epoch
    torch.save({"model": det.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "lr_scheduler": {},
                "args": argparse.Namespace(model=f"{kind}_resnet18_fpn", lr=0.02, weights=None), "epoch": 25},
               tmp_path / "det.pth")
    before = set(torch.serialization.get_safe_globals())
    loaded = load_weights(tmp_path / "det.pth", R18)
    assert set(torch.serialization.get_safe_globals()) == before  # the allow-list was scoped to that one load
    body = {k[len("backbone.body."):]: v for k, v in det.state_dict().items() if k.startswith("backbone.body.")}
    assert loaded.taken == len(body) == 100 and {p for p, _ in loaded.left_out} == heads
    assert loaded.summary.startswith("weights: torchvision detection layout (backbone.body.*) under 'model' of a "
                                     "checkpoint, 100 backbone tensors taken, left out: ")
    assert "argparse.Namespace admitted" in loaded.summary
    assert_bit_equal("resnet18", tmp_path / "det.pth", body)
    # and the torchvision detector's own trunk (FrozenBatchNorm2d: x * scale + shift, a different rounding than
    # BatchNorm2d's kernel): within 1e-5 of the largest activation
    with torch.no_grad():
        out = det.backbone.body(X)  # {return name: feature} of the layers it returns (RetinaNet: layer2-4)
        ref = {f"c{int(layer[-1]) + 1}": out[name] for layer, name in det.backbone.body.return_layers.items()}
    got = c2_c5(build_baseline("resnet18", loaded))
    for k, v in ref.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-5 * v.abs().max().item())


def test_torchvision_fasterrcnn_resnet50_fpn_takes_265_backbone_tensors(tmp_path):
    """The published COCO Faster R-CNN's structure: fasterrcnn_resnet50_fpn with trained weights builds its ResNet
    with FrozenBatchNorm2d (no BN counters), as resnet_fpn_backbone does by default."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    torch.manual_seed(0)
    det = FasterRCNN(resnet_fpn_backbone(backbone_name="resnet50", weights=None), num_classes=91).eval()
    _randomize_frozen_bn(det)
    torch.save(det.state_dict(), tmp_path / "frcnn_r50.pth")
    loaded = load_weights(tmp_path / "frcnn_r50.pth", R50)
    assert loaded.summary == ("weights: torchvision detection layout (backbone.body.*), 265 backbone tensors taken, "
                              "left out: fpn (16), rpn (6), roi_heads (8)")
    body = {k[len("backbone.body."):]: v for k, v in det.state_dict().items() if k.startswith("backbone.body.")}
    assert_bit_equal("resnet50", loaded, body)


# -- timm: written by timm -------------------------------------------------------------------------------------
def test_timm_resnet_checkpoint_and_safetensors(tmp_path):
    timm = pytest.importorskip("timm", reason="timm (dev extra) writes the timm files")
    safetensors_torch = pytest.importorskip("safetensors.torch", reason="safetensors (core dependency) reads .safetensors files")
    torch.manual_seed(0)
    m = timm.create_model("resnet18", pretrained=False).eval()
    g = torch.Generator().manual_seed(1)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
    sd = m.state_dict()
    # timm/utils/checkpoint_saver.py `CheckpointSaver._save`: epoch, arch, optimizer, version, args, state_dict, ...
    torch.save({"epoch": 3, "arch": "resnet18", "optimizer": {"state": {}, "param_groups": []}, "version": 2,
                "args": argparse.Namespace(model="resnet18", lr=0.1), "state_dict": {f"module.{k}": v for k, v in sd.items()},
                "metric": 71.2}, tmp_path / "timm.pth.tar")
    safetensors_torch.save_file(sd, str(tmp_path / "model.safetensors"))
    a, b = load_weights(tmp_path / "timm.pth.tar", R18), load_weights(tmp_path / "model.safetensors", R18)
    assert "under 'state_dict' of a timm train checkpoint (resnet18), 122 backbone tensors taken" in a.summary
    assert b.summary.startswith("weights: torchvision/timm classification layout") and "safetensors" in b.summary
    assert_bit_equal("resnet18", tmp_path / "timm.pth.tar", sd)
    assert_bit_equal("resnet18", tmp_path / "model.safetensors", sd)
    with torch.no_grad():  # timm's own network: the same modules in the same order
        x = m.maxpool(m.act1(m.bn1(m.conv1(X))))
        ref = {}
        for i in range(1, 5):
            x = getattr(m, f"layer{i}")(x)
            ref[f"c{i + 1}"] = x
    got = c2_c5(build_baseline("resnet18", b))
    for k, v in ref.items():
        torch.testing.assert_close(got[k], v, rtol=1e-6, atol=1e-6 * v.abs().max().item())


def test_safetensors_in_half_precision_is_widened_and_said(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch", reason="safetensors (core dependency) reads .safetensors files")
    sd = seeded_state_dict("resnet18")
    safetensors_torch.save_file({f"backbone.body.{k}": v.half() for k, v in backbone_only(sd).items()},
                                str(tmp_path / "half.safetensors"))
    loaded = load_weights(tmp_path / "half.safetensors", R18)
    assert "float16 -> float32" in loaded.summary and loaded.state_dict["conv1.weight"].dtype == torch.float32
    assert torch.equal(loaded.state_dict["layer1.0.conv1.weight"], sd["layer1.0.conv1.weight"].half().float())


# -- mmdetection / mmengine: open-mmlab/mmdetection mmdet/models/backbones/resnet.py names ------------------------
def mmdet_state_dict(sd: dict) -> dict:
    """A detector's state dict as mmdetection names it: ResNet under `backbone.` with torchvision's names (conv1,
    `bn1` from build_norm_layer's 'bn' abbreviation, layer{i}, ResLayer's downsample.0/1), no fc; then neck and heads."""
    out = {f"backbone.{k}": v for k, v in sd.items() if not k.startswith("fc.")}
    out.update({"neck.lateral_convs.0.conv.weight": torch.zeros(256, 64, 1, 1), "neck.fpn_convs.0.conv.bias": torch.zeros(256),
                "rpn_head.rpn_conv.weight": torch.zeros(256, 256, 3, 3),
                "roi_head.bbox_head.fc_cls.weight": torch.zeros(81, 1024)})
    return out


def mm_config(style: str | None) -> str:
    """mmengine's Runner.save_checkpoint stores `self.cfg.pretty_text` as meta['cfg'] (mmengine/runner/runner.py)."""
    s = f", style='{style}'" if style else ""
    return (f"model = dict(\n    type='FasterRCNN',\n    backbone=dict(\n        type='ResNet',\n        depth=50{s},\n"
            "        norm_cfg=dict(type='BN', requires_grad=True)),\n    neck=dict(type='FPN'))\n")


def published_mmdet(sd: dict, style: str | None = "pytorch") -> dict:
    """A published mmdetection checkpoint: meta and state_dict only (optimizer stripped for release)."""
    meta = {"epoch": 12, "iter": 87960, "mmengine_version": "0.10.4", "dataset_meta": {"classes": ("person", "car")}}
    if style != "none":
        meta["cfg"] = mm_config(style)
    return {"meta": meta, "state_dict": mmdet_state_dict(sd)}


def test_published_mmdetection_checkpoint(tmp_path):
    sd = seeded_state_dict("resnet50")
    torch.save(published_mmdet(sd), tmp_path / "mm.pth")
    loaded = load_weights(tmp_path / "mm.pth", R50)
    assert loaded.summary.startswith("weights: mmdetection layout (backbone.*) under 'state_dict' of an mmengine "
                                     f"checkpoint, {len(sd) - 2} backbone tensors taken, left out: neck (2), "
                                     "rpn_head (1), roi_head (1); ")
    assert "stride on the 3x3 conv (its meta config has style='pytorch')" in loaded.summary
    assert_bit_equal("resnet50", tmp_path / "mm.pth", sd)
    torch.save(published_mmdet(sd, style=None), tmp_path / "default.pth")  # mmdet's ResNet default: 'pytorch'
    assert "mmdetection's default 'pytorch'" in load_weights(tmp_path / "default.pth", R50).summary


HISTORY_BUFFER = '''
import numpy as np


class HistoryBuffer:
    """open-mmlab/mmengine mmengine/logging/history_buffer.py, as far as pickling goes: numpy arrays, and a
    __getstate__ that adds the class's statistics methods (functions, so pickle protocol 2 writes
    getattr(HistoryBuffer, 'min'))."""

    _statistics_methods = dict()

    def __init__(self, log_history=(), count_history=(), max_length=1000000):
        self.max_length = max_length
        self._set_default_statistics()
        self._log_history = np.array(log_history)
        self._count_history = np.array(count_history)

    def _set_default_statistics(self):
        self._statistics_methods.setdefault("min", HistoryBuffer.min)
        self._statistics_methods.setdefault("max", HistoryBuffer.max)
        self._statistics_methods.setdefault("current", HistoryBuffer.current)
        self._statistics_methods.setdefault("mean", HistoryBuffer.mean)

    def update(self, log_val, count=1):
        self._log_history = np.append(self._log_history, log_val)
        self._count_history = np.append(self._count_history, count)

    def min(self, window_size=None):
        return self._log_history.min()

    def max(self, window_size=None):
        return self._log_history.max()

    def mean(self, window_size=None):
        return self._log_history.mean()

    def current(self):
        return self._log_history[-1]

    def __getstate__(self):
        self.__dict__.update(statistics_methods=self._statistics_methods)
        return self.__dict__
'''


@pytest.fixture
def mmengine_module(monkeypatch):
    """A stand-in `mmengine.logging.history_buffer` module, so pickle writes the names a real file holds."""
    mods = {name: types.ModuleType(name) for name in ("mmengine", "mmengine.logging",
                                                      "mmengine.logging.history_buffer")}
    exec(HISTORY_BUFFER, mods["mmengine.logging.history_buffer"].__dict__)
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return mods["mmengine.logging.history_buffer"]


def full_mmengine_checkpoint(sd: dict, hb_module, extra_info=None) -> dict:
    """What mmengine's Runner.save_checkpoint writes (mmengine/runner/runner.py): meta, state_dict, message_hub
    (MessageHub.state_dict(): log_scalars of HistoryBuffers, runtime_info, resumed_keys), optimizer,
    param_schedulers (a MultiStepLR's milestones are a collections.Counter)."""
    loss = hb_module.HistoryBuffer()
    for v in (1.9, 1.4, 1.1):
        loss.update(v)
    info = collections.OrderedDict(epoch=12, iter=87960, best_score=np.float64(0.371), loop_stage="train",
                                   **(extra_info or {}))
    hub = {"log_scalars": collections.OrderedDict([("train/loss", loss), ("train/lr", hb_module.HistoryBuffer([0.02], [1]))]),
           "runtime_info": info, "resumed_keys": collections.OrderedDict((k, True) for k in info)}
    return {**published_mmdet(sd), "message_hub": hub,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.02, "momentum": 0.9}]},
            "param_schedulers": [{"milestones": collections.Counter([8, 11]), "gamma": 0.1, "last_step": 12}]}


def test_full_mmengine_training_checkpoint_reads_through_scoped_stand_ins(tmp_path, mmengine_module):
    sd = seeded_state_dict("resnet18")
    torch.save(full_mmengine_checkpoint(sd, mmengine_module), tmp_path / "epoch_12.pth")
    with pytest.raises(pickle.UnpicklingError):  # weights_only alone refuses it: the stand-ins are what admits it
        torch.load(tmp_path / "epoch_12.pth", weights_only=True)
    before = set(torch.serialization.get_safe_globals())
    loaded = load_weights(tmp_path / "epoch_12.pth", R18)
    assert set(torch.serialization.get_safe_globals()) == before
    assert "under 'state_dict' of an mmengine checkpoint, 120 backbone tensors taken" in loaded.summary
    assert "mmengine.logging.history_buffer.HistoryBuffer admitted (data only)" in loaded.summary
    assert_bit_equal("resnet18", loaded, sd)


def test_mmengine_checkpoint_holding_other_objects_is_refused_with_the_way_out(tmp_path, capsys, mmengine_module):
    class ConfigDict(dict):  # mmengine.config.ConfigDict: not admitted
        pass

    ConfigDict.__module__, ConfigDict.__qualname__ = "mmengine.logging.history_buffer", "ConfigDict"
    mmengine_module.ConfigDict = ConfigDict
    ck = full_mmengine_checkpoint(seeded_state_dict("resnet18"), mmengine_module, {"cfg": ConfigDict(a=1)})
    torch.save(ck, tmp_path / "epoch_12.pth")
    line = export_fails([ARCH18, "--weights", str(tmp_path / "epoch_12.pth")], capsys, tmp_path,
                        ["mmengine/mmcv checkpoint holding mmengine.logging.history_buffer.ConfigDict",
                         "not loaded, since such a file can run code", "torch.save(ck.get('state_dict'"])
    assert "Traceback" not in line


# -- detectron2: detectron2/modeling/backbone/resnet.py names ------------------------------------------------------
def d2_state_dict(sd: dict, *, c4: bool = False) -> dict:
    """A detectron2 GeneralizedRCNN state dict: detectron2/tools/convert-torchvision-to-d2.py's renames (stem.,
    layerN -> res{N+1}, bnN -> convN.norm, downsample.0/1 -> shortcut/shortcut.norm), FrozenBN (no
    num_batches_tracked: detectron2/layers/batch_norm.py), under backbone.bottom_up. beside the FPN
    (backbone.fpn_lateral*), or for a C4 model under backbone. with res5 in roi_heads."""
    out = {}
    for k, v in backbone_only(sd).items():
        if "layer" not in k:
            k = "stem." + k
        for t in (1, 2, 3, 4):
            k = k.replace(f"layer{t}", f"res{t + 1}")
        for t in (1, 2, 3):
            k = k.replace(f"bn{t}", f"conv{t}.norm")
        k = k.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        out[("roi_heads." if c4 and k.startswith("res5.") else "backbone." if c4 else "backbone.bottom_up.") + k] = v
    out.update({"proposal_generator.rpn_head.conv.weight": torch.zeros(256, 256, 3, 3),
                "roi_heads.box_predictor.cls_score.weight": torch.zeros(81, 1024)})
    if not c4:
        out.update({"backbone.fpn_lateral2.weight": torch.zeros(256, 256, 1, 1), "backbone.fpn_output2.bias": torch.zeros(256)})
    return out


def detection_checkpointer(model_sd: dict) -> dict:
    """fvcore/common/checkpoint.py `Checkpointer.save`: model, each checkpointable's state_dict, extra (iteration)."""
    return {"model": model_sd, "optimizer": {"state": {}, "param_groups": []}, "scheduler": {"last_epoch": 89999},
            "iteration": 89999}


def test_detectron2_resnet18_needs_no_stride(tmp_path):
    sd = seeded_state_dict("resnet18")
    torch.save(detection_checkpointer(d2_state_dict(sd)), tmp_path / "model_final.pth")
    loaded = load_weights(tmp_path / "model_final.pth", R18)
    assert loaded.summary == ("weights: detectron2 layout (backbone.bottom_up.stem, res2-res5) under 'model' of a "
                              "checkpoint, 100 backbone tensors taken, left out: proposal_generator (1), roi_heads (1), "
                              "fpn (2)")
    assert dict(loaded.left_out) == {"fpn": 2, "proposal_generator": 1, "roi_heads": 1}
    assert_bit_equal("resnet18", tmp_path / "model_final.pth", backbone_only(sd))


@pytest.mark.parametrize("c4", [False, True], ids=["fpn", "c4"])
def test_detectron2_resnet50_loads_only_when_told_the_stride_is_on_the_3x3(tmp_path, c4):
    sd = seeded_state_dict("resnet50")
    torch.save(detection_checkpointer(d2_state_dict(sd, c4=c4)), tmp_path / "model_final.pth")
    with pytest.raises(WeightsError, match="stride: got auto for resnet50 weights that do not say"):
        load_weights(tmp_path / "model_final.pth", R50)
    with pytest.raises(WeightsError, match="stride in the 1x1 conv"):
        load_weights(tmp_path / "model_final.pth", R50, stride="1x1")
    loaded = load_weights(tmp_path / "model_final.pth", R50, stride="3x3")
    assert "stride on the 3x3 conv (as stated: 3x3)" in loaded.summary
    assert loaded.taken == len(backbone_only(sd))
    assert_bit_equal("resnet50", loaded, backbone_only(sd))


# -- natsdeploy's own train checkpoint -----------------------------------------------------------------------------
def test_natsdeploy_train_checkpoint_gives_back_its_backbone(tmp_path):
    from natsdeploy.models.trained import build_train_detector
    from natsdeploy.runtime.rng import rng_state
    from tests.conftest import FAST

    arch = load_arch(ARCH18)
    sd = seeded_state_dict("resnet18")
    det = build_train_detector("faster_rcnn", arch, sd, 4, 64, 96, FAST, pretrained=True, trainable_layers=None)
    opt = {"state": {}, "param_groups": []}
    save_checkpoint(tmp_path / "checkpoint.pth", TRAIN, {
        "model": det.state_dict(), "scaler": {}, "rng": rng_state(), "epoch": 1, "pretrained": True,
        "arch": arch.to_dict(), "detector": "faster_rcnn", "num_classes": 4, "label_to_cat_id": {1: 1, 2: 2, 3: 3},
        "min_size": 64, "max_size": 96, "detector_kwargs": FAST, "trainable_layers": None, "optimizer": opt,
        "scheduler": {}, "metrics": [], "config": {}})
    loaded = load_weights(tmp_path / "checkpoint.pth", R18)
    assert loaded.summary.startswith("weights: natsdeploy train checkpoint (faster_rcnn, arch on resnet18: "
                                     "backbone.body.*), 100 backbone tensors taken, left out: ")
    assert_bit_equal("resnet18", loaded, backbone_only(sd))


# -- Python callers ---------------------------------------------------------------------------------------------
def test_build_backbone_unwraps_a_checkpoint_dict_and_reads_any_layout():
    sd = seeded_state_dict("resnet18")
    arch = Arch(backbone="resnet18")
    want = build_backbone(arch, sd).state_dict()
    for given in ({"state_dict": sd, "epoch": 3}, {"model": d2_state_dict(sd)}, mmdet_state_dict(sd)):
        got = build_backbone(arch, given).state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want if not k.startswith("fc."))
    assert isinstance(load_weights(sd, R18), LoadedWeights) and resolve_weights(None, R18) is None


def test_a_file_summary_is_logged_once_at_info(tmp_path, caplog):
    torch.save(seeded_state_dict("resnet18"), tmp_path / "w.pth")
    with caplog.at_level("INFO", logger="natsdeploy"):
        load_weights(tmp_path / "w.pth", R18)
        load_weights(seeded_state_dict("resnet18"), R18)  # a dict passed in: DEBUG only
    infos = [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
    assert infos == ["weights: torchvision/timm classification layout (conv1, layer1-4, fc), 122 backbone tensors taken"]


@pytest.mark.parametrize("backbone", ["resnet18", "resnet34", "resnet50", "resnext101_32x4d"])
def test_guess_backbone_reads_the_structure(backbone):
    from natsdeploy.models.skeleton import reference_state_dict

    assert guess_backbone(reference_state_dict(BACKBONES[backbone]))[0] == backbone


# -- the CLI: the summary line, the report, and one line for every bad or ambiguous file ---------------------------
def test_export_prints_the_summary_once_and_records_it(tmp_path, capsys):
    det = _detector("faster_rcnn")
    torch.save({"model": det.state_dict()}, tmp_path / "frcnn_r18.pth")
    out = tmp_path / "out"
    rc = main(["export", ARCH18, "--weights", str(tmp_path / "frcnn_r18.pth"), "--input-shape", "1x3x64x64",
               "--latency-pairs", "0", "--openvino", "off", "--out", str(out)])
    lines = capsys.readouterr().out.splitlines()
    line = ("weights: torchvision detection layout (backbone.body.*) under 'model' of a checkpoint, 100 backbone "
            "tensors taken, left out: fpn (16), rpn (6), roi_heads (8)")
    assert rc == 0 and lines[0] == line and lines.count(line) == 1, lines  # resolved 3 times, printed once
    report = json.loads((out / "report.json").read_text())
    assert report["weights"] == f"{line[len('weights: '):]}; file {tmp_path / 'frcnn_r18.pth'}"
    assert f"weights: {report['weights']}" in lines  # the report's text repeats it with the file


def _write(path, obj) -> str:
    torch.save(obj, path)
    return str(path)


def test_bad_and_ambiguous_files_are_one_line_exit_2(tmp_path, capsys):
    sd18, sd50 = seeded_state_dict("resnet18"), seeded_state_dict("resnet50")
    d2_50 = _write(tmp_path / "d2_r50.pth", detection_checkpointer(d2_state_dict(sd50)))
    text = tmp_path / "notes.txt"
    text.write_text("resnet50 weights: see the wiki\n")
    pkl = tmp_path / "model_final_f10217.pkl"  # detectron2 model zoo: a plain pickle of numpy arrays
    pkl.write_bytes(pickle.dumps({"model": {"backbone.bottom_up.stem.conv1.weight": np.zeros((64, 3, 7, 7), np.float32)},
                                  "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}, protocol=2))
    deep = {"conv1.0.weight": torch.zeros(32, 3, 3, 3), "conv1.1.weight": torch.ones(32),
            "layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)}  # timm resnet50d / mmdet ResNetV1d stem
    cases = [
        ([ARCH50, "--weights", str(text)], ["torch.load cannot read (a text file starting 'resnet50 weights"]),
        ([ARCH50, "--weights", _write(tmp_path / "r18.pth", sd18)],
         ["look like resnet18 weights (basic blocks 2-2-2-2), expected resnet50 weights (bottleneck blocks 3-4-6-3)"]),
        ([ARCH18, "--weights", _write(tmp_path / "other.pth", {"encoder.patch_embed.proj.weight": torch.zeros(1),
                                                                 "encoder.blocks.0.attn.qkv.weight": torch.zeros(1)})],
         ["match no known layout (first keys: ['encoder.blocks.0.attn.qkv.weight'", "torchvision detection",
          "mmdetection", "detectron2"]),
        ([ARCH50, "--weights", d2_50], ["--weights-stride: got auto for resnet50 weights", "pass --weights-stride"]),
        ([ARCH50, "--weights", d2_50, "--weights-stride", "1x1"], ["stride in the 1x1 conv", "out of scope"]),
        ([ARCH50, "--weights", _write(tmp_path / "caffe.pth", published_mmdet(sd50, "caffe"))],
         ["stride in the 1x1 conv (its meta config has style='caffe')"]),
        ([ARCH50, "--weights", _write(tmp_path / "mm_nocfg.pth", published_mmdet(sd50, "none"))],
         ["--weights-stride: got auto"]),
        ([ARCH50, "--weights", _write(tmp_path / "caffe2.pth", published_mmdet(sd50, "caffe")), "--weights-stride",
          "3x3"], ["--weights-stride: got 3x3, but the weights stride in the 1x1 conv"]),
        ([ARCH18, "--weights", str(pkl)], ["detectron2's model-zoo format", "DetectionCheckpointer(model).load"]),
        ([ARCH18, "--weights", _write(tmp_path / "deep.pth", deep)], ["deep stem", "resnet*d"]),
        ([ARCH18, "--weights", _write(tmp_path / "search.pth", {"format": FORMATS[SEARCH]})], ["search checkpoint"]),
        ([ARCH18, "--weights-stride", "3x3"], ["--weights-stride: got '3x3' without --weights"]),
        ([ARCH18, "--weights", "imagenet", "--weights-stride", "1x1"], ["with --weights imagenet"]),
        ([ARCH18, "--weights", _write(tmp_path / "d2_dcn.pth", detection_checkpointer(  # DeformBottleneckBlock's offsets
            {**d2_state_dict(sd18), "backbone.bottom_up.res3.0.conv2_offset.weight": torch.zeros(18, 128, 3, 3)}))],
         ["--weights['backbone.bottom_up.res3.0.conv2_offset.weight']: a tensor of the detectron2 layout",
          "no torchvision ResNet counterpart"]),
        ([ARCH18, "--weights", _write(tmp_path / "dcn.pth", {**mmdet_state_dict(sd18), "backbone.layer2.0.conv2.conv_offset.weight":
                                                             torch.zeros(18, 128, 3, 3)})],
         ["--weights['backbone.layer2.0.conv2.conv_offset.weight'] (torchvision 'layer2.0.conv2.conv_offset.weight'): "
          "unexpected key (1 in all), expected a resnet18 state dict"]),
    ]
    for argv, contains in cases:
        export_fails(argv, capsys, tmp_path, contains)


class _Marker:
    """Unpickling this creates `path`, as a hostile checkpoint would run os.system."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_hostile_object_in_an_mmengine_shaped_checkpoint_never_runs(tmp_path, capsys, mmengine_module):
    marker = tmp_path / "marker"
    ck = full_mmengine_checkpoint(seeded_state_dict("resnet18"), mmengine_module, {"eta": _Marker(str(marker))})
    torch.save(ck, tmp_path / "evil.pth")
    export_fails([ARCH18, "--weights", str(tmp_path / "evil.pth")], capsys, tmp_path, "not loaded")
    assert not marker.exists()
