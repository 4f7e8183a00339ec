"""Baseline and transformed ResNet/ResNeXt backbones."""

from natsdeploy.models.specs import BACKBONES, BackboneSpec, ConvInfo, get_spec

__all__ = ["BACKBONES", "BackboneSpec", "ConvInfo", "get_spec"]
