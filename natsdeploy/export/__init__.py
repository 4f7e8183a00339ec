"""ONNX (and TensorRT) export of transformed backbones."""
