"""Baseline and transformed ResNet/ResNeXt backbones."""

from natsdeploy.specs import BACKBONES, BackboneSpec, ConvInfo, get_spec

__all__ = ["BACKBONES", "BackboneSpec", "ConvInfo", "get_spec"]
