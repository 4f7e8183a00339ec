"""The optimizer-decision parser on real enterprise TensorRT log lines (quoted in public issue threads)."""

from __future__ import annotations

from natsdeploy.export.tensorrt_log import parse_optimizer_log

# NVIDIA/TensorRT#3254 (TensorRT 8.6 verbose log, YOLOv8 head), verbatim
YOLO = """After slice removal: 199 layers
Eliminating concatenation /model.22/Concat_5
Generating copy for /model.22/Mul_2_output_0 to output0 because of stomping hazard.
Retargeting /model.22/Sigmoid_output_0 to output0
Eliminating concatenation /model.22/Concat_4
Generating copy for /model.22/Div_1_output_0 to /model.22/Concat_4_output_0 because of stomping hazard.
Retargeting /model.22/Sub_1_output_0 to /model.22/Concat_4_output_0
Eliminating concatenation /model.22/Concat_3
Retargeting /model.22/Reshape_output_0 to /model.22/Concat_3_output_0
Retargeting /model.22/Reshape_1_output_0 to /model.22/Concat_3_output_0
Retargeting /model.22/Reshape_2_output_0 to /model.22/Concat_3_output_0
Eliminating concatenation /model.22/Concat_2
Retargeting /model.22/cv2.2/cv2.2.2/Conv_output_0 to /model.22/Concat_2_output_0
Retargeting /model.22/cv3.2/cv3.2.2/Conv_output_0 to /model.22/Concat_2_output_0
Eliminating concatenation /model.21/Concat
Generating copy for /model.21/cv1/act/Mul_output_0 to /model.21/Concat_output_0 because input is not movable.
Generating copy for /model.21/cv1/act/Mul_output_0 to /model.21/Concat_output_0 because input is not movable.
Retargeting /model.21/m.0/cv2/act/Mul_output_0 to /model.21/Concat_output_0
Retargeting /model.21/m.1/cv2/act/Mul_output_0 to /model.21/Concat_output_0"""

# dusty-nv/jetson-inference#1630 (GoogLeNet on TensorRT, jetson-inference's `[TRT]` logger prefix), verbatim
INCEPTION = """[TRT]    Merging layers: inception_5b/1x1 + inception_5b/relu_1x1 || inception_5b/3x3_reduce + inception_5b/relu_3x3_reduce || inception_5b/5x5_reduce + inception_5b/relu_5x5_reduce
[TRT]    After tensor merging: 66 layers
[TRT]    After slice removal: 66 layers
[TRT]    Eliminating concatenation inception_5b/output
[TRT]    Generating copy for inception_5b/1x1 + inception_5b/relu_1x1 || inception_5b/3x3_reduce + inception_5b/relu_3x3_reduce || inception_5b/5x5_reduce + inception_5b/relu_5x5_reduce to inception_5b/output because input is not movable.
[TRT]    Retargeting inception_5b/3x3 to inception_5b/output
[TRT]    Retargeting inception_5b/5x5 to inception_5b/output
[TRT]    Retargeting inception_5b/pool_proj to inception_5b/output"""


def test_yolo_log_groups_retargets_and_copies_under_their_concat():
    d = parse_optimizer_log(YOLO.splitlines())
    assert list(d.concats) == ["/model.22/Concat_5", "/model.22/Concat_4", "/model.22/Concat_3",
                               "/model.22/Concat_2", "/model.21/Concat"]
    c3 = d.concats["/model.22/Concat_3"]
    assert c3.copy_free and c3.retargeted == [f"/model.22/Reshape{s}_output_0" for s in ("", "_1", "_2")]
    c5 = d.concats["/model.22/Concat_5"]
    assert c5.copies == [("/model.22/Mul_2_output_0", "of stomping hazard")]
    assert c5.retargeted == ["/model.22/Sigmoid_output_0"]
    c21 = d.concats["/model.21/Concat"]
    assert [r for _, r in c21.copies] == ["input is not movable", "input is not movable"]
    assert len(c21.retargeted) == 2
    s = d.to_dict()
    assert s["logged"] and s["eliminated_concats"] == 5 and s["copy_free_concats"] == 2


def test_prefixed_lines_merges_and_a_copy_of_a_merged_producer():
    d = parse_optimizer_log(INCEPTION.splitlines())
    assert d.merged == [["inception_5b/1x1 + inception_5b/relu_1x1", "inception_5b/3x3_reduce + inception_5b/relu_3x3_reduce",
                         "inception_5b/5x5_reduce + inception_5b/relu_5x5_reduce"]]
    c = d.concats["inception_5b/output"]
    assert c.copies[0][0].startswith("inception_5b/1x1 + inception_5b/relu_1x1 || ") and c.copies[0][1] == "input is not movable"
    assert c.retargeted == ["inception_5b/3x3", "inception_5b/5x5", "inception_5b/pool_proj"]


def test_other_logger_prefixes_parse_alike():
    lines = ["[TensorRT] VERBOSE: Eliminating concatenation Concat_7",
             "[12/05/2026-06:40:00] [TRT] [V] Retargeting conv_a_out to concat_7_out",
             "[12/05/2026-06:40:00] [TRT] [V] Generating copy for conv_b_out to concat_7_out because input is not movable."]
    c = parse_optimizer_log(lines).concats["Concat_7"]
    assert c.retargeted == ["conv_a_out"] and c.copies == [("conv_b_out", "input is not movable")]


def test_a_log_without_decisions_says_so():
    """TensorRT-RTX's verbose log (layer list, tactic lines) holds no decision line."""
    d = parse_optimizer_log(["Layer(CaskConvolution): /layer1/conv, Tactic: 0x1", "Total Activation Memory: 123"])
    assert not d.logged and d.to_dict()["logged"] is False and "TensorRT-RTX logs none" in d.to_dict()["note"]
