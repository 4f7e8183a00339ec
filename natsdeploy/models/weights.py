"""The one loader of backbone weights: a file, 'imagenet' or a state dict -> a checked torchvision-layout state dict.

Every command's `--weights` and `build_backbone` / `build_trunks` in Python come here (through
`natsdeploy.models.build.resolve_weights`). The layout is found from the keys, never the file name:

- torchvision classification ResNet/ResNeXt (`conv1`, `layer1-4`, `fc`); timm's resnet*/resnext* use the
  same names (timm/models/resnet.py), and timm's train checkpoints wrap them in `state_dict`;
- torchvision detection (Faster/Mask R-CNN, RetinaNet): `backbone.body.*` (FrozenBatchNorm2d buffers, no
  `num_batches_tracked`), beside `backbone.fpn`, `rpn`, `roi_heads`, `head`, which are left out;
- mmdetection / mmengine: `state_dict` (beside `meta`, `message_hub`, ...) with `backbone.*` in
  torchvision's names: open-mmlab/mmdetection mmdet/models/backbones/resnet.py (`conv1`, `norm1_name` 'bn1'
  from build_norm_layer, `layer{i}`, ResLayer's `downsample.0/1`) and resnext.py (grouped `conv2`);
- detectron2 (`model` of a DetectionCheckpointer .pth, fvcore/common/checkpoint.py `Checkpointer.save`):
  `backbone.bottom_up.stem.conv1.*`, `res2`-`res5`, `conv*.norm.*`, `shortcut` (detectron2/modeling/
  backbone/resnet.py `BasicStem`, `BottleneckBlock`, `BasicBlock`; the renames are the inverse of
  detectron2/tools/convert-torchvision-to-d2.py and match detectron2/checkpoint/c2_model_loading.py);
- natsdeploy's own train checkpoints (`natsdeploy.models.trained.backbone_weights`);
- any of these as `.safetensors`.

Where a downsampling bottleneck strides: torchvision and timm on the 3x3 conv; detectron2's MSRA weights
(detectron2/config/defaults.py: `RESNETS.STRIDE_IN_1X1 = True`, the default) and mmdetection's
style='caffe' on the 1x1 conv. Same shapes, a different network: such weights are refused (a faithful
build is out of scope). A detectron2 .pth does not say which it is: the caller says (`stride`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torchvision.models import resnet as tv_resnet

from natsdeploy.checkpoint import FORMATS, TRAIN, check_checkpoint
from natsdeploy.cli_values import WEIGHTS_STRIDES, WeightsFile
from natsdeploy.errors import WeightsError
from natsdeploy.models.skeleton import reference_state_dict
from natsdeploy.models.weights_file import read_weights_file
from natsdeploy.specs import BACKBONES, BackboneSpec

__all__ = ["LoadedWeights", "Weights", "load_weights", "LAYOUTS", "guess_backbone"]

log = logging.getLogger("natsdeploy")

LAYOUTS = ("torchvision classification (conv1, layer1-4, fc; also timm resnet*/resnext*)",
           "torchvision detection (backbone.body.*)", "mmdetection/mmengine (state_dict: backbone.*)",
           "detectron2 (model: backbone.bottom_up.stem, res2-res5)", "natsdeploy train checkpoint")
_IMAGENET = {
    "resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights", "resnet50": "ResNet50_Weights",
    "resnet101": "ResNet101_Weights", "resnext101_32x8d": "ResNeXt101_32X8D_Weights",
}


@dataclass(frozen=True)
class LoadedWeights:
    """Weights read by `load_weights`: the torchvision-layout state dict and what was done to get it."""

    state_dict: dict[str, torch.Tensor]
    """Every key of the backbone's torchvision ResNet, in its order (an absent fc gets nn.Linear's init)."""
    backbone: str
    layout: str
    """e.g. 'torchvision detection layout (backbone.body.*)'."""
    source: str
    """The path, 'imagenet', or 'state dict passed in'."""
    taken: int
    """Tensors of the file that became backbone tensors."""
    left_out: tuple[tuple[str, int], ...] = ()
    """(part, tensors) of the file not used, in file order: neck, heads, ..."""
    notes: tuple[str, ...] = ()

    @property
    def summary(self) -> str:
        """One line for the console and the report."""
        line = f"weights: {self.layout}, {self.taken} backbone tensors taken"
        if self.left_out:
            line += ", left out: " + ", ".join(f"{part} ({n})" for part, n in self.left_out)
        return line + "".join(f"; {n}" for n in self.notes)


Weights = Union[None, str, os.PathLike, Mapping[str, torch.Tensor], LoadedWeights]


@dataclass(frozen=True)
class _Found:
    """A layout matched by the keys: torchvision names for the backbone keys, the rest grouped."""

    name: str  # e.g. "torchvision detection"
    where: str  # e.g. "backbone.body.*"
    renamed: dict[str, str]
    unmapped: list[str]
    left_out: dict[str, int]
    stride: str | None  # "3x3" / "1x1" as the file says, None where it cannot tell
    stride_why: str

    @property
    def layout(self) -> str:
        return f"{self.name} layout ({self.where})"


def load_weights(weights: Weights, spec: BackboneSpec, *, stride: str = "auto",
                 flag: str | None = None) -> LoadedWeights | None:
    """`weights` (None, 'imagenet', a path, a `WeightsFile`, a state dict or checkpoint dict, a LoadedWeights)
    as a torchvision-layout state dict checked against `spec`; None stays None.

    `stride`: where the file's downsampling bottlenecks stride: 'auto' (read from the file where it says),
    '3x3' or '1x1' (refused). Every problem is one `WeightsError` line naming `flag` ('--weights' for files).
    A file's summary line is logged at INFO on the 'natsdeploy' logger (the CLI prints it).
    """
    if weights is None:
        return None
    if isinstance(weights, LoadedWeights) and weights.backbone == spec.name:
        return weights
    if isinstance(weights, WeightsFile):
        weights, stride = weights.path, weights.stride if weights.stride != "auto" else stride
    if stride not in WEIGHTS_STRIDES:
        raise WeightsError(f"stride: got {stride!r}, expected one of {list(WEIGHTS_STRIDES)}")
    if isinstance(weights, str) and weights == "imagenet":
        loaded = _imagenet(spec, stride=stride)
    elif isinstance(weights, (str, os.PathLike)):
        path = Path(weights)
        flag = flag or "--weights"
        read = read_weights_file(path, flag=flag)
        notes = (f"read with {', '.join(read.admitted)} admitted (data only)",) if read.admitted else ()
        notes += ("safetensors",) if read.container == "safetensors" else ()
        loaded = _from_object(read.obj, spec, stride=stride, flag=flag, source=str(path), path=path, notes=notes)
    elif isinstance(weights, Mapping):
        loaded = _from_object(weights, spec, stride=stride, flag=flag or "weights", source="state dict passed in")
    elif isinstance(weights, LoadedWeights):
        loaded = _from_object(weights.state_dict, spec, stride=stride, flag=flag or "weights", source=weights.source)
    else:
        raise WeightsError(f"weights: got {type(weights).__name__}, expected None, 'imagenet', a path or a state dict")
    log.log(logging.DEBUG if loaded.source == "state dict passed in" else logging.INFO, loaded.summary)
    return loaded


def _imagenet(spec: BackboneSpec, *, stride: str) -> LoadedWeights:
    enum_name = _IMAGENET.get(spec.name)
    if enum_name is None:
        raise WeightsError(f"--weights: got 'imagenet' for {spec.name}, expected a local .pth file "
                           "(torchvision publishes no ImageNet weights for this backbone)")
    _check_stride(spec, file_says="3x3", why="torchvision's ImageNet weights", asked=stride, flag="--weights")
    weights = getattr(tv_resnet, enum_name).IMAGENET1K_V1
    try:
        sd = weights.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # offline, proxy, partial download ...
        local = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name  # where torchvision caches it
        raise WeightsError(f"--weights: could not download torchvision's {enum_name}.IMAGENET1K_V1 "
                           f"({type(e).__name__}); fetch {weights.url} elsewhere and pass a local file instead: "
                           f"--weights {local}") from None
    out, taken = _checked(sd, {k: k for k in sd}, spec, kind="torchvision ImageNet", flag="--weights")
    return LoadedWeights(out, spec.name, f"torchvision ImageNet layout ({enum_name}.IMAGENET1K_V1)", "imagenet", taken)


def _from_object(obj: Any, spec: BackboneSpec, *, stride: str, flag: str, source: str, path: Path | None = None,
                 notes: tuple[str, ...] = ()) -> LoadedWeights:
    shown = repr(source) if path is not None else "a state dict"
    fmt = obj.get("format") if isinstance(obj, Mapping) else None
    if isinstance(fmt, str) and fmt.startswith("natsdeploy-"):
        return _natsdeploy(obj, spec, stride=stride, flag=flag, source=source, path=path, shown=shown)
    sd, container, meta = _unwrap(obj, flag=flag, shown=shown)
    if any(".branches." in k for k in sd):
        raise WeightsError(f"{flag}: got a transformed-layout state dict, expected torchvision layout "
                           "(convert with natsdeploy.transformed_state_dict_to_baseline)")
    found = _detect(sd, meta=meta, flag=flag, shown=shown)
    if found.unmapped:
        raise WeightsError(f"{flag}[{found.unmapped[0]!r}]: a tensor of the {found.layout} backbone with no torchvision "
                           f"ResNet counterpart ({len(found.unmapped)} such), expected a plain ResNet/ResNeXt backbone "
                           "(no deformable convs, plugins, SE or GN)")
    picked = {found.renamed[k]: sd[k] for k in found.renamed}
    out, taken = _checked(picked, {v: k for k, v in found.renamed.items()}, spec, kind=found.name, flag=flag)
    _check_stride(spec, file_says=found.stride, why=found.stride_why, asked=stride, flag=flag)  # after: right backbone
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in picked.values()
                     if v.is_floating_point() and v.dtype != torch.float32})
    extra = (f"{'/'.join(dtypes)} -> float32",) if dtypes else ()
    if spec.block == "bottleneck" and (found.stride_why or stride != "auto"):
        extra += (f"stride on the 3x3 conv ({found.stride_why if stride == 'auto' else 'as stated: ' + stride})",)
    return LoadedWeights(out, spec.name, f"{found.layout}{container}", source, taken,
                         tuple(found.left_out.items()), notes + extra)


def _unwrap(obj: Any, *, flag: str, shown: str) -> tuple[dict[str, torch.Tensor], str, Any]:
    """(state dict with wrapper prefixes removed, " under 'KEY' of ..." or '', mmengine/mmcv meta or None)."""
    expected = "a state dict (str -> tensor) or a checkpoint holding one under 'state_dict' or 'model'"
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{flag}: got {shown} holding {type(obj).__name__}, expected {expected}")
    container, meta = "", None
    if not all(isinstance(v, (torch.Tensor, np.ndarray)) for v in obj.values()):
        key = next((k for k in ("state_dict", "model", "model_state") if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            keys = [str(k) for k in list(obj)[:6]]
            raise WeightsError(f"{flag}: got {shown} holding a dict with keys {keys}{' ...' if len(obj) > 6 else ''}, "
                               f"expected {expected}")
        meta = obj.get("meta") if isinstance(obj.get("meta"), Mapping) else None
        kind = ("an mmengine checkpoint" if "message_hub" in obj or (meta and "mmengine_version" in meta) else
                "an mmcv checkpoint" if meta is not None else
                f"a timm train checkpoint ({obj['arch']})" if isinstance(obj.get("arch"), str) and key == "state_dict"
                else "a checkpoint")
        container, obj = f" under {key!r} of {kind}", obj[key]
        bad = next((k for k, v in obj.items() if not isinstance(v, (torch.Tensor, np.ndarray))), None)
        if bad is not None:
            raise WeightsError(f"{flag}: got {shown} whose {key!r} holds {type(obj[bad]).__name__} at {bad!r}, "
                               "expected only tensors")
    sd = {}
    for k, v in obj.items():
        k = str(k)
        while k.startswith(("module.", "_orig_mod.")):  # DDP and torch.compile wrappers (timm's clean_state_dict)
            k = k.split(".", 1)[1]
        sd[k] = torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
    return sd, container, meta


# detectron2 -> torchvision names (detectron2/modeling/backbone/resnet.py; the inverse of
# detectron2/tools/convert-torchvision-to-d2.py: stem.conv1.norm <- bn1, resN <- layerN-1, shortcut <- downsample)
_D2_RULES = (
    (re.compile(r"stem\.conv1\.weight"), lambda m: "conv1.weight"),
    (re.compile(r"stem\.conv1\.norm\.(\w+)"), lambda m: f"bn1.{m[1]}"),
    (re.compile(r"res([2-5])\.(\d+)\.conv([1-3])\.weight"), lambda m: f"layer{int(m[1]) - 1}.{m[2]}.conv{m[3]}.weight"),
    (re.compile(r"res([2-5])\.(\d+)\.conv([1-3])\.norm\.(\w+)"), lambda m: f"layer{int(m[1]) - 1}.{m[2]}.bn{m[3]}.{m[4]}"),
    (re.compile(r"res([2-5])\.(\d+)\.shortcut\.weight"), lambda m: f"layer{int(m[1]) - 1}.{m[2]}.downsample.0.weight"),
    (re.compile(r"res([2-5])\.(\d+)\.shortcut\.norm\.(\w+)"),
     lambda m: f"layer{int(m[1]) - 1}.{m[2]}.downsample.1.{m[3]}"),
    (re.compile(r"linear\.(weight|bias)"), lambda m: f"fc.{m[1]}"),
)


def _d2_name(key: str) -> str | None:
    for pattern, name in _D2_RULES:
        m = pattern.fullmatch(key)
        if m:
            return name(m)
    return None


def _group(key: str) -> str:
    head = (key[len("backbone."):] if key.startswith("backbone.") else key).split(".")[0]
    return "fpn" if head.startswith("fpn_") else head


def _found(name: str, where: str, sd: Mapping[str, Any], backbone: dict[str, str],
           rename: Callable[[str], str | None], stride: str | None, why: str) -> _Found:
    """`backbone`: {source key: name relative to the backbone}; every other key is left out."""
    renamed, unmapped = {}, []
    for k, rel in backbone.items():
        tv_name = rename(rel)
        if tv_name is None:
            unmapped.append(k)
        else:
            renamed[k] = tv_name
    left: dict[str, int] = {}
    for k in sd:
        if k not in backbone:
            left[_group(k)] = left.get(_group(k), 0) + 1
    return _Found(name, where, renamed, unmapped, left, stride, why)


def _detect(sd: Mapping[str, Any], *, meta: Any, flag: str, shown: str) -> _Found:
    keys = set(sd)
    for prefix in ("backbone.bottom_up.", "backbone.", ""):
        if f"{prefix}stem.conv1.weight" in keys:
            backbone = {k: k[len(prefix):] for k in sd if k.startswith(prefix)}
            if prefix == "backbone." and not any(k.startswith("backbone.res5.") for k in keys):
                backbone.update({k: k[len("roi_heads."):] for k in sd if k.startswith("roi_heads.res5.")})  # C4 models
            return _found("detectron2", f"{prefix}stem, res2-res5", sd, backbone, _d2_name, None, "")
    if "backbone.body.conv1.weight" in keys:
        backbone = {k: k[len("backbone.body."):] for k in sd if k.startswith("backbone.body.")}
        return _found("torchvision detection", "backbone.body.*", sd, backbone, str, "3x3", "")
    for prefix, name, where in (("backbone.", "mmdetection", "backbone.*"),
                                ("", "torchvision/timm classification", "conv1, layer1-4, fc")):
        if f"{prefix}conv1.0.weight" in keys or f"{prefix}stem.0.weight" in keys:
            raise WeightsError(f"{flag}: got {shown} with a deep stem ({prefix}conv1.0 / {prefix}stem.0: timm's "
                               "resnet*d/*s or mmdetection's ResNetV1d), expected torchvision's 7x7 stem "
                               f"({prefix}conv1.weight)")
        if f"{prefix}conv1.weight" in keys and f"{prefix}layer1.0.conv1.weight" in keys:
            backbone = {k: k[len(prefix):] for k in sd if k.startswith(prefix)}
            stride, why = _mm_style(meta) if prefix else ("3x3", "")
            return _found(name, where, sd, backbone, str, stride, why)
    first = sorted(keys)[:5]
    raise WeightsError(f"{flag}: got {shown} whose keys match no known layout (first keys: {first}, {len(keys)} in "
                       f"all), expected one of: {'; '.join(LAYOUTS)}")


def _mm_style(meta: Any) -> tuple[str | None, str]:
    """Where mmdetection's ResNet strides, from the config text mmengine (meta['cfg']) or mmcv (meta['config'])
    saves: style='pytorch' (the default: 3x3) or 'caffe' (1x1); (None, '') when the file has no config."""
    text = (meta.get("cfg") or meta.get("config")) if isinstance(meta, Mapping) else None
    if not isinstance(text, str):
        return None, ""
    styles = set(re.findall(r"""\bstyle['"]?\s*[=:]\s*['"](pytorch|caffe)['"]""", text))
    if styles == {"caffe"}:
        return "1x1", "its meta config has style='caffe'"
    if styles == {"pytorch"}:
        return "3x3", "its meta config has style='pytorch'"
    if not styles and re.search(r"""type['"]?\s*[=:]\s*['"]ResNe(X)?t['"]""", text):
        return "3x3", "its meta config sets no style: mmdetection's default 'pytorch'"
    return None, ""


def _check_stride(spec: BackboneSpec, *, file_says: str | None, why: str, asked: str, flag: str) -> None:
    """Refuse weights whose downsampling bottlenecks stride in the 1x1 conv, or where nothing says where."""
    if spec.block != "bottleneck":
        return  # basic blocks stride in their first 3x3 conv in every library
    stride_flag = "--weights-stride" if flag.startswith("--") else "stride"
    if asked == "auto" and file_says is None:
        raise WeightsError(f"{stride_flag}: got auto for {spec.name} weights that do not say where their downsampling "
                           "bottlenecks stride (a detectron2 .pth, or an mmdetection file without its config), expected "
                           "3x3 (torchvision-initialised, detectron2 RESNETS.STRIDE_IN_1X1=False, mmdetection "
                           "style='pytorch') or 1x1 (detectron2's default STRIDE_IN_1X1=True, MSRA weights; "
                           f"mmdetection style='caffe'): pass {stride_flag}")
    if asked != "auto" and file_says is not None and why and asked != file_says:
        raise WeightsError(f"{stride_flag}: got {asked}, but the weights stride in the {file_says} conv ({why}), "
                           f"expected {file_says} or auto")
    if (file_says if asked == "auto" else asked) == "1x1":
        said = why or f"{stride_flag} 1x1"
        raise WeightsError(f"{flag}: got {spec.name} weights whose downsampling bottlenecks stride in the 1x1 conv "
                           f"({said}), expected the stride in the 3x3 conv as torchvision builds it (same shapes, a "
                           "different network; building it faithfully is out of scope)")


def _natsdeploy(ck: Mapping, spec: BackboneSpec, *, stride: str, flag: str, source: str, path: Path | None,
                shown: str) -> LoadedWeights:
    from natsdeploy.models.trained import backbone_weights, read_checkpoint

    if ck["format"].startswith("natsdeploy-search-checkpoint/"):
        raise WeightsError(f"{flag}: got {shown}, a natsdeploy search checkpoint (a super-net), expected a train "
                           "checkpoint or plain weights (decode the search, train the arch, pass that checkpoint)")
    if ck["format"] == FORMATS[TRAIN] or path is None:
        check_checkpoint(ck, TRAIN, where=f"{flag}: {source}")
    else:  # an older or newer train format: read_checkpoint upgrades "/1" and refuses newer ones
        ck = read_checkpoint(path, flag=flag)
    sd = backbone_weights(dict(ck))
    out, taken = _checked(sd, {k: f"backbone.body.{k}" for k in sd}, spec, kind="natsdeploy train", flag=flag)
    _check_stride(spec, file_says="3x3", why="natsdeploy trains torchvision's ResNet", asked=stride, flag=flag)
    left: dict[str, int] = {}
    for k in ck["model"]:
        if not k.startswith("backbone.body."):
            left[_group(k)] = left.get(_group(k), 0) + 1
    layout = f"natsdeploy train checkpoint ({ck['detector']}, arch on {ck['arch'].get('backbone')}: backbone.body.*)"
    return LoadedWeights(out, spec.name, layout, source, taken, tuple(left.items()))


def guess_backbone(sd: Mapping[str, Any]) -> tuple[str | None, str]:
    """(name of the natsdeploy backbone whose structure `sd` has, or None; the structure in words), read from
    a torchvision-layout state dict's block counts, block type and grouped-conv width."""
    counts = []
    for li in range(1, 5):
        idx = {int(m[1]) for k in sd if (m := re.match(rf"layer{li}\.(\d+)\.", k))}
        counts.append(max(idx) + 1 if idx else 0)
    bottleneck = any(re.fullmatch(r"layer\d\.\d+\.conv3\.weight", k) for k in sd)
    groups, wpg = 1, 64
    w = sd.get("layer1.0.conv2.weight")
    if bottleneck and w is not None and len(w.shape) == 4 and w.shape[1]:
        groups = max(1, w.shape[0] // w.shape[1])
        wpg = w.shape[0] // groups
    structure = ("bottleneck" if bottleneck else "basic", tuple(counts), groups, wpg)
    name = next((s.name for s in BACKBONES.values() if _structure(s) == structure), None)
    return name, _describe(structure)


def _structure(spec: BackboneSpec) -> tuple:
    return (spec.block, tuple(spec.layers), spec.groups, spec.width_per_group if spec.block == "bottleneck" else 64)


def _describe(structure: tuple) -> str:
    block, counts, groups, wpg = structure
    words = f"{block} blocks {'-'.join(map(str, counts))}"
    return words + (f", {groups} groups of {wpg} channels" if (groups, wpg) != (1, 64) else "")


def _missing_init(ref: Mapping[str, torch.Tensor], missing: set[str]) -> dict[str, torch.Tensor]:
    """Values for keys weights may omit: the classifier gets nn.Linear's init, a BN counter 0."""
    out = {k: torch.zeros((), dtype=ref[k].dtype) for k in missing if k.endswith(".num_batches_tracked")}
    if missing & {"fc.weight", "fc.bias"}:
        out_features, in_features = ref["fc.weight"].shape
        with torch.random.fork_rng(devices=[]):  # passing weights must not shift the caller's RNG
            fc = torch.nn.Linear(in_features, out_features, device="cpu")  # the CPU RNG, which fork_rng restores
        out.update({k: v.detach() for k, v in (("fc.weight", fc.weight), ("fc.bias", fc.bias)) if k in missing})
    return out


def _checked(sd: Mapping[str, torch.Tensor], origin: Mapping[str, str], spec: BackboneSpec, *, kind: str,
             flag: str) -> tuple[dict[str, torch.Tensor], int]:
    """(every key of `spec`'s torchvision state dict, in order; tensors taken from `sd`), or one WeightsError line.
    `origin`: the file's name for each torchvision key, to show in messages."""
    ref = reference_state_dict(spec)  # shapes only: no init work, no RNG draws

    def at(k: str) -> str:  # the key as the file names it, and as torchvision does where they differ
        return f"{flag}[{origin.get(k, k)!r}]" + (f" (torchvision {k!r})" if origin.get(k, k) != k else "")

    problem = None
    for k, v in ref.items():
        if k not in sd and not (k.startswith("fc.") or k.endswith(".num_batches_tracked")):
            problem = f"{at(k)}: missing"  # detector backbones carry no classifier, frozen BN no counter
        elif k in sd and tuple(sd[k].shape) != tuple(v.shape):
            problem = f"{at(k)}: got shape {tuple(sd[k].shape)}, expected {tuple(v.shape)}"
        if problem:
            break
    extra = sorted(set(sd) - set(ref))
    if problem is None and extra:
        problem = f"{at(extra[0])}: unexpected key ({len(extra)} in all)"
    if problem is not None:
        name, words = guess_backbone(sd)
        if words != _describe(_structure(spec)):
            like = f"look like {name} weights" if name else "look like no natsdeploy backbone"
            raise WeightsError(f"{problem}; these {kind} weights {like} ({words}), expected {spec.name} weights "
                               f"({_describe(_structure(spec))}) for this arch")
        raise WeightsError(f"{problem}, expected a {spec.name} state dict")
    out = _missing_init(ref, set(ref) - set(sd))
    out.update({k: v.detach().to(ref[k].dtype) for k, v in sd.items()})
    return {k: out[k] for k in ref}, len(sd)
