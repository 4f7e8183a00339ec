#!/usr/bin/env python
"""Benchmark ONNX graph forms of a NATS/IC-Conv split 3x3 conv on ONNX Runtime CPU.

One "block" = conv2 (3x3, split into dilated branches, BN folded -> bias, ReLU)
followed by conv3 (1x1, C -> 4C).  Every allowed form has exactly the MACs and
params of the plain conv (checked from the Conv nodes of the graph); reference
forms that change MACs are labelled ``REF``.

Run from the repo root:  .venv/bin/python benchmarks/ort_forms/ort_forms.py
Options: --quick (fewer pairs), --only SUBSTR (filter cases), --dump DIR
(write ORT-optimised graphs and print their op histograms), --trunk/--no-trunk.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ICCONV_JSON = "/work/shared/reference/icconv/detection_ic_resnet50_k9.json"
OPSET = 18  # Col2Im needs opset 18
BLOCK = 16  # NCHWc block size on AVX-512 (MlasNchwcGetBlockSize)

# spatial output sizes at 800x1216 input, per ResNet-50 stage
STAGES = {1: (64, 200, 304), 2: (128, 100, 152), 3: (256, 50, 76), 4: (512, 25, 38)}
BLOCKS_PER_STAGE = [3, 4, 6, 3]


# ----------------------------------------------------------------------------
# branch tables
# ----------------------------------------------------------------------------
def icconv_blocks():
    """list of (name, C, Hout, Wout, stride, branches); branches=[(w,(dh,dw))]"""
    with open(ICCONV_JSON) as f:
        table = json.load(f)
    out, i = [], 0
    for s, nb in enumerate(BLOCKS_PER_STAGE, start=1):
        C, H, W = STAGES[s]
        for b in range(nb):
            d = table[i]
            br = []
            for k, v in d.items():
                if v > 0:
                    a, bb = (int(t) for t in k.strip("()").split(","))
                    br.append((int(v), (a + 1, bb + 1)))
            assert sum(w for w, _ in br) == C, (i, C)
            stride = 2 if (b == 0 and s > 1) else 1
            out.append((f"ic_layer{s}.{b}", C, H, W, stride, br))
            i += 1
    return out


DILS = [(1, 1), (1, 2), (2, 1), (2, 2), (1, 3), (3, 1), (3, 3), (2, 3), (3, 2),
        (1, 4), (4, 1), (4, 4), (2, 4), (4, 2), (3, 4), (4, 3)]


def synth(widths):
    return [(w, DILS[i % len(DILS)]) for i, w in enumerate(widths)]


# ----------------------------------------------------------------------------
# graph builder
# ----------------------------------------------------------------------------
class G:
    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0
        self.residual, self.res_used = None, False

    def name(self, p):
        self.n += 1
        return f"{p}_{self.n}"

    def const(self, arr, p="w"):
        nm = self.name(p)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), nm))
        return nm

    def op(self, op_type, inputs, p=None, n_out=1, **attrs):
        outs = [self.name(p or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.name("n_" + op_type), **attrs))
        return outs[0] if n_out == 1 else outs

    def conv(self, x, W, B=None, dil=(1, 1), stride=1, p="conv"):
        kh, kw = W.shape[2], W.shape[3]
        ph, pw = dil[0] * (kh // 2), dil[1] * (kw // 2)
        ins = [x, self.const(W.astype(np.float32))]
        if B is not None:
            ins.append(self.const(B.astype(np.float32), "b"))
        return self.op("Conv", ins, p, dilations=list(dil), strides=[stride, stride],
                       pads=[ph, pw, ph, pw], kernel_shape=[kh, kw])

    def model(self, x_shape, y, name):
        if self.residual and not self.res_used:
            y = self.op("Add", [y, self.residual])
            self.res_used = True
        ins = [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))]
        if self.residual:
            ins.append(helper.make_tensor_value_info(self.residual, TensorProto.FLOAT, None))
        Y = helper.make_tensor_value_info(y, TensorProto.FLOAT, None)
        graph = helper.make_graph(self.nodes, name, ins, [Y], self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        m.ir_version = 9
        return m


class Weights:
    """canonical weights of one split block (branch order = table order)."""

    def __init__(self, C, branches, seed):
        rng = np.random.default_rng(seed)
        self.C, self.branches = C, branches
        sc = 1.0 / np.sqrt(9 * C)
        self.Wb = [rng.standard_normal((w, C, 3, 3), dtype=np.float32) * sc for w, _ in branches]
        self.Bb = [rng.standard_normal(w, dtype=np.float32) * 0.1 for w, _ in branches]
        self.W3 = rng.standard_normal((4 * C, C, 1, 1), dtype=np.float32) / np.sqrt(C)
        self.B3 = rng.standard_normal(4 * C, dtype=np.float32) * 0.1
        offs = np.cumsum([0] + [w for w, _ in branches])
        self.sl = [slice(int(offs[i]), int(offs[i + 1])) for i in range(len(branches))]


def parts_from(Wt: Weights, order, split_aligned):
    """list of parts (W, B, dil, cols-of-W3); optional floor16/remainder split."""
    parts = []
    for i in order:
        w, dil = Wt.branches[i]
        cols = np.arange(Wt.sl[i].start, Wt.sl[i].stop)
        W, B = Wt.Wb[i], Wt.Bb[i]
        if split_aligned and w % BLOCK and w > BLOCK:
            a = (w // BLOCK) * BLOCK
            parts.append((W[:a], B[:a], dil, cols[:a]))
            parts.append((W[a:], B[a:], dil, cols[a:]))
        else:
            parts.append((W, B, dil, cols))
    return parts


def split_direct_rows(Wt, order, T):
    """direct (A) parts: floor16 of branches with width >= T; the rest -> rows (U)."""
    parts = parts_from(Wt, order, True)
    A, U = [], []
    for p in parts:
        (A if (p[0].shape[0] % BLOCK == 0 and Wt.C and _orig_w(Wt, p) >= T) else U).append(p)
    return A, U


def _orig_w(Wt, p):
    for (w, d), sl in zip(Wt.branches, Wt.sl):
        if sl.start <= p[3][0] < sl.stop:
            return w
    raise KeyError


def form_T(form):
    if "_t" in form:
        return int(form.split("_t")[-1])
    if "rows_all" in form:
        return 10 ** 9
    return BLOCK


def build_baseline(C, Hin, Win, stride, seed=0, residual=False):
    rng = np.random.default_rng(seed + 999)
    g = G()
    g.residual = "S" if residual else None
    W = rng.standard_normal((C, C, 3, 3), dtype=np.float32) / np.sqrt(9 * C)
    B = rng.standard_normal(C, dtype=np.float32) * 0.1
    y = g.op("Relu", [g.conv("X", W, B, (1, 1), stride)])
    W3 = rng.standard_normal((4 * C, C, 1, 1), dtype=np.float32) / np.sqrt(C)
    out = g.conv(y, W3, rng.standard_normal(4 * C, dtype=np.float32) * 0.1)
    return g.model([1, C, Hin, Win], out, "baseline")


def _branch(g, part, stride):
    W, B, dil, cols = part
    return g.op("Relu", [g.conv("X", W, B, dil, stride)])


def _concat_conv3(g, Wt, parts, ys, with_bias):
    cols = np.concatenate([p[3] for p in parts])
    y = ys[0] if len(ys) == 1 else g.op("Concat", ys, axis=1)
    return g.conv(y, Wt.W3[:, cols], Wt.B3 if with_bias else None)


def _add_all(g, terms, use_sum=False):
    # residual first: Add(S, conv3_A) fuses S into conv3_A's NCHWc Sum input,
    # Add(that, conv3_R) fuses into conv3_R, and a following Relu fuses too.
    if g.residual and not g.res_used:
        terms = [g.residual] + list(terms)
        g.res_used = True
    if len(terms) == 1:
        return terms[0]
    if use_sum:
        return g.op("Sum", terms)
    acc = terms[0]
    for t in terms[1:]:
        acc = g.op("Add", [acc, t])
    return acc


def build_form(form, C, Hin, Win, stride, branches, seed=0, residual=False):
    """residual=True adds graph input S (shortcut) summed into the output (trunk use)."""
    Wt = Weights(C, branches, seed)
    g = G()
    g.residual = "S" if residual else None
    nb = len(branches)
    table_order = list(range(nb))
    by_width = sorted(table_order, key=lambda i: -branches[i][0])
    aligned_first = sorted(table_order, key=lambda i: (branches[i][0] % BLOCK != 0, -branches[i][0]))

    if form in ("naive", "naive_sorted", "naive_concat_relu"):
        order = table_order if form != "naive_sorted" else aligned_first
        parts = parts_from(Wt, order, False)
        if form == "naive_concat_relu":
            ys = [g.conv("X", p[0], p[1], p[2], stride) for p in parts]
            cols = np.concatenate([p[3] for p in parts])
            y = g.op("Relu", [g.op("Concat", ys, axis=1)])
            out = g.conv(y, Wt.W3[:, cols], Wt.B3)
        else:
            ys = [_branch(g, p, stride) for p in parts]
            out = _concat_conv3(g, Wt, parts, ys, True)

    elif form in ("sum1x1_add", "sum1x1_sum"):
        parts = parts_from(Wt, aligned_first, False)
        terms = []
        for k, p in enumerate(parts):
            y = _branch(g, p, stride)
            terms.append(g.conv(y, Wt.W3[:, p[3]], Wt.B3 if k == 0 else None))
        out = _add_all(g, terms, use_sum=form.endswith("sum"))

    elif form in ("partition", "split_partition"):
        # aligned (multiple-of-16) branch outputs -> one Concat (stays NCHWc) -> conv3_A
        # the rest (total width is then a multiple of 16) -> Concat -> conv3_U ; Add
        parts = parts_from(Wt, aligned_first, form == "split_partition")
        A = [p for p in parts if p[0].shape[0] % BLOCK == 0]
        U = [p for p in parts if p[0].shape[0] % BLOCK != 0]
        terms = []
        for k, grp in enumerate([A, U]):
            if grp:
                ys = [_branch(g, p, stride) for p in grp]
                terms.append(_concat_conv3(g, Wt, grp, ys, with_bias=not terms))
        out = _add_all(g, terms)

    elif form in ("tap_col2im", "tap_col2im_sumcols"):
        # aligned floor16 parts: ordinary dilated Conv (NCHWc, no padding waste)
        # remainders (<16 ch each): ONE 1x1 Conv producing all 9 taps of all
        # remainder channels (same MACs/params), then per-dilation Col2Im
        # (= shift-and-add, no MACs), Concat, +bias, ReLU, conv3_R.
        assert stride == 1
        parts = parts_from(Wt, aligned_first, True)
        A = [p for p in parts if p[0].shape[0] % BLOCK == 0]
        U = [p for p in parts if p[0].shape[0] % BLOCK != 0]
        terms = []
        if A:
            ys = [_branch(g, p, stride) for p in A]
            terms.append(_concat_conv3(g, Wt, A, ys, with_bias=True))
        if U:
            H, W_ = Hin, Win
            R = sum(p[0].shape[0] for p in U)
            # tap weight row (part, c, kh, kw) = W[c, :, 2-kh, 2-kw]  (flip for Col2Im)
            Wtap = np.concatenate([p[0][:, :, ::-1, ::-1].transpose(0, 2, 3, 1).reshape(-1, C) for p in U])
            z = g.conv("X", Wtap.reshape(9 * R, C, 1, 1), None, (1, 1), 1, p="tap")
            z = g.op("Reshape", [z, g.const(np.array([1, 9 * R, H * W_], np.int64), "shape")])
            zs = g.op("Split", [z, g.const(np.array([9 * p[0].shape[0] for p in U], np.int64), "split")],
                      n_out=len(U), axis=1) if len(U) > 1 else [z]
            img = g.const(np.array([H, W_], np.int64), "img")
            blk = g.const(np.array([3, 3], np.int64), "blk")
            ys = [g.op("Col2Im", [zi, img, blk], dilations=list(p[2]),
                       pads=[p[2][0], p[2][1], p[2][0], p[2][1]], strides=[1, 1])
                  for zi, p in zip(zs, U)]
            y = ys[0] if len(ys) == 1 else g.op("Concat", ys, axis=1)
            bias = np.concatenate([p[1] for p in U]).reshape(1, R, 1, 1)
            y = g.op("Relu", [g.op("Add", [y, g.const(bias, "bias")])])
            cols = np.concatenate([p[3] for p in U])
            terms.append(g.conv(y, Wt.W3[:, cols], None if A else Wt.B3))
        out = _add_all(g, terms)

    elif form.startswith("rows_col2im") and "s2" not in form or form.startswith("rows_all") and "s2" not in form:
        # aligned floor16 parts: ordinary dilated Conv (NCHWc, no padding waste).
        # remainders (<16 ch each) grouped by horizontal dilation dw: ONE 1x3 Conv
        # per group (dilation (1,dw)) producing the 3 kernel rows of every
        # remainder channel in the group (same MACs/params as the 3x3 convs),
        # then per-branch Col2Im(block [3,1], dilation [dh,1]) = vertical
        # shift-and-add (no MACs), Concat, +bias, ReLU, conv3_R, Add.
        # "_h" variant: group by dh, 3x1 convs, horizontal Col2Im.
        assert stride == 1
        vert = "_h" not in form
        A, U = split_direct_rows(Wt, aligned_first, form_T(form))
        terms = []
        if A:
            ys = [_branch(g, p, stride) for p in A]
            terms.append(_concat_conv3(g, Wt, A, ys, with_bias=True))
        if U:
            H, W_ = Hin, Win
            groups = collections.OrderedDict()
            for p in sorted(U, key=lambda p: (p[2][1] if vert else p[2][0])):
                groups.setdefault(p[2][1] if vert else p[2][0], []).append(p)
            img = g.const(np.array([H, W_], np.int64), "img")
            blk = g.const(np.array([3, 1] if vert else [1, 3], np.int64), "blk")
            ys, Uo = [], []
            for gd, grp in groups.items():
                Rg = sum(p[0].shape[0] for p in grp)
                if vert:   # rows i (flipped) of each channel: kernel [1,3]
                    Wr = np.concatenate([p[0][:, :, ::-1, :].transpose(0, 2, 1, 3).reshape(-1, C, 1, 3) for p in grp])
                    z = g.conv("X", Wr, None, (1, gd), 1, p="rows")
                else:      # columns j (flipped): kernel [3,1]
                    Wr = np.concatenate([p[0][:, :, :, ::-1].transpose(0, 3, 1, 2).reshape(-1, C, 3, 1) for p in grp])
                    z = g.conv("X", Wr, None, (gd, 1), 1, p="cols")
                z = g.op("Reshape", [z, g.const(np.array([1, 3 * Rg, H * W_], np.int64), "shape")])
                zs = g.op("Split", [z, g.const(np.array([3 * p[0].shape[0] for p in grp], np.int64), "split")],
                          n_out=len(grp), axis=1) if len(grp) > 1 else [z]
                for zi, p in zip(zs, grp):
                    d = p[2][0] if vert else p[2][1]
                    dil = [d, 1] if vert else [1, d]
                    pads = [d, 0, d, 0] if vert else [0, d, 0, d]
                    ys.append(g.op("Col2Im", [zi, img, blk], dilations=dil, pads=pads, strides=[1, 1]))
                    Uo.append(p)
            y = ys[0] if len(ys) == 1 else g.op("Concat", ys, axis=1)
            R = sum(p[0].shape[0] for p in Uo)
            bias = np.concatenate([p[1] for p in Uo]).reshape(1, R, 1, 1)
            y = g.op("Relu", [g.op("Add", [y, g.const(bias, "bias")])])
            cols = np.concatenate([p[3] for p in Uo])
            terms.append(g.conv(y, Wt.W3[:, cols], None if A else Wt.B3))
        out = _add_all(g, terms)

    elif "s2" in form:
        # stride-2 version of rows_col2im (vertical phase split, same MACs):
        # per dw group, Conv_e (kernel [1,3], stride 2) on X gives every tap row
        # whose vertical offset is even; Conv_o on X[:, :, 1:, :] (Slice) gives the
        # odd-offset rows.  dh even: Col2Im([3,1], dil dh/2, pads dh/2).
        # dh odd: centre row used directly + Col2Im([2,1], dil dh,
        # pads [(dh-1)/2,0,(dh+1)/2,0]) of rows (2,0) from Conv_o, then Add.
        assert stride == 2 and Hin % 2 == 0 and Win % 2 == 0
        Ho, Wo = Hin // 2, Win // 2
        A, U = split_direct_rows(Wt, aligned_first, form_T(form))
        terms = []
        if A:
            ys = [_branch(g, p, stride) for p in A]
            terms.append(_concat_conv3(g, Wt, A, ys, with_bias=True))
        if U:
            groups = collections.OrderedDict()
            for p in sorted(U, key=lambda p: p[2][1]):
                groups.setdefault(p[2][1], []).append(p)
            xo = g.op("Slice", ["X", g.const(np.array([1], np.int64), "st"),
                                g.const(np.array([Hin], np.int64), "en"), g.const(np.array([2], np.int64), "ax")])
            img = g.const(np.array([Ho, Wo], np.int64), "img")
            blk3 = g.const(np.array([3, 1], np.int64), "blk")
            blk2 = g.const(np.array([2, 1], np.int64), "blk")
            shp4 = {}
            ys, Uo = [], []

            def rows_conv(src, Wlist, dw):
                Wr = np.concatenate(Wlist).astype(np.float32)
                n = Wr.shape[0]
                z = g.op("Conv", [src, g.const(np.ascontiguousarray(Wr))], "rows", dilations=[1, dw],
                         strides=[2, 2], pads=[0, dw, 0, dw], kernel_shape=[1, 3])
                return g.op("Reshape", [z, g.const(np.array([1, n, Ho * Wo], np.int64), "shape")]), n

            def split(z, sizes):
                if len(sizes) == 1:
                    return [z]
                return g.op("Split", [z, g.const(np.array(sizes, np.int64), "split")], n_out=len(sizes), axis=1)

            for dw, grp in groups.items():
                ev_w, ev_sz, od_w, od_sz = [], [], [], []
                for p in grp:
                    Wb, dh = p[0], p[2][0]
                    r = Wb.shape[0]
                    if dh % 2 == 0:   # rows (2,1,0) per channel, all even offsets
                        ev_w.append(Wb[:, :, ::-1, :].transpose(0, 2, 1, 3).reshape(-1, C, 1, 3)); ev_sz.append(3 * r)
                    else:             # centre row even; rows (2,0) odd
                        ev_w.append(Wb[:, :, 1:2, :].reshape(r, C, 1, 3)); ev_sz.append(r)
                        od_w.append(Wb[:, :, [2, 0], :].transpose(0, 2, 1, 3).reshape(-1, C, 1, 3)); od_sz.append(2 * r)
                ze, _ = rows_conv("X", ev_w, dw)
                zes = split(ze, ev_sz)
                zos = split(rows_conv(xo, od_w, dw)[0], od_sz) if od_w else []
                io = 0
                for zi, p in zip(zes, grp):
                    dh, r = p[2][0], p[0].shape[0]
                    if dh % 2 == 0:
                        y = g.op("Col2Im", [zi, img, blk3], dilations=[dh // 2, 1],
                                 pads=[dh // 2, 0, dh // 2, 0], strides=[1, 1])
                    else:
                        if r not in shp4:
                            shp4[r] = g.const(np.array([1, r, Ho, Wo], np.int64), "shape")
                        c = g.op("Reshape", [zi, shp4[r]])
                        o = g.op("Col2Im", [zos[io], img, blk2], dilations=[dh, 1],
                                 pads=[(dh - 1) // 2, 0, (dh + 1) // 2, 0], strides=[1, 1])
                        io += 1
                        y = g.op("Add", [c, o])
                    ys.append(y); Uo.append(p)
            y = ys[0] if len(ys) == 1 else g.op("Concat", ys, axis=1)
            R = sum(p[0].shape[0] for p in Uo)
            bias = np.concatenate([p[1] for p in Uo]).reshape(1, R, 1, 1)
            y = g.op("Relu", [g.op("Add", [y, g.const(bias, "bias")])])
            cols = np.concatenate([p[3] for p in Uo])
            terms.append(g.conv(y, Wt.W3[:, cols], None if A else Wt.B3))
        out = _add_all(g, terms)

    elif form == "REF_pad16":
        # REFERENCE ONLY (more MACs): each branch zero-padded to a multiple of 16 outputs
        parts = parts_from(Wt, aligned_first, False)
        ys, cols3 = [], []
        for p in parts:
            w = p[0].shape[0]
            wp = -(-w // BLOCK) * BLOCK
            Wp = np.zeros((wp, C, 3, 3), np.float32); Wp[:w] = p[0]
            Bp = np.zeros(wp, np.float32); Bp[:w] = p[1]
            ys.append(g.op("Relu", [g.conv("X", Wp, Bp, p[2], stride)]))
            c3 = np.zeros((4 * C, wp, 1, 1), np.float32); c3[:, :w] = Wt.W3[:, p[3]]
            cols3.append(c3)
        out = g.conv(g.op("Concat", ys, axis=1), np.concatenate(cols3, 1), Wt.B3)
    else:
        raise ValueError(form)
    return g.model([1, C, Hin, Win], out, form)


# ----------------------------------------------------------------------------
# MAC counting from Conv/Gemm nodes
# ----------------------------------------------------------------------------
def conv_macs(model):
    m = onnx.shape_inference.infer_shapes(model)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input)}
    inits = {i.name: i for i in m.graph.initializer}
    macs = params = 0
    for n in m.graph.node:
        if n.op_type == "Conv":
            Wd = list(inits[n.input[1]].dims)
            out = shapes[n.output[0]]
            macs += int(np.prod(out)) * int(np.prod(Wd[1:]))
            params += int(np.prod(Wd))
        elif n.op_type == "Gemm":
            raise NotImplementedError
    return macs, params


# ----------------------------------------------------------------------------
# ORT helpers
# ----------------------------------------------------------------------------
def sess_opts(level="all", optimized_path=None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    }[level]
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    return so


def session(model, level="all", optimized_path=None):
    return ort.InferenceSession(model.SerializeToString(), sess_opts(level, optimized_path),
                                providers=["CPUExecutionProvider"])


def run_once(s, feed):
    t = time.perf_counter()
    s.run(None, feed)
    return time.perf_counter() - t


def bench_pair(s_base, s_var, feed, pairs, warm=2):
    for _ in range(warm):
        run_once(s_base, feed); run_once(s_var, feed)
    tb, tv, r = [], [], []
    for i in range(pairs):
        if i % 2:
            a = run_once(s_base, feed); b = run_once(s_var, feed)
        else:
            b = run_once(s_var, feed); a = run_once(s_base, feed)
        tb.append(a); tv.append(b); r.append(b / a)
    return statistics.median(tb) * 1e3, statistics.median(tv) * 1e3, statistics.median(r)


def op_hist(path):
    m = onnx.load(path)
    c = collections.Counter(f"{n.op_type}" for n in m.graph.node)
    return dict(sorted(c.items()))


# ----------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--pairs", type=int, default=None)
    ap.add_argument("--only", default=None)
    ap.add_argument("--forms", default=None, help="comma list")
    ap.add_argument("--dump", default=None)
    ap.add_argument("--trunk", dest="trunk", action="store_true", default=True)
    ap.add_argument("--no-trunk", dest="trunk", action="store_false")
    ap.add_argument("--trunk-forms", default="naive,rows_col2im,rows_col2im_t48")
    ap.add_argument("--levels", default="all,extended")
    args = ap.parse_args()
    pairs = args.pairs or (8 if args.quick else 15)

    print(f"onnxruntime {ort.__version__}, onnx {onnx.__version__}, numpy {np.__version__}")
    ic = icconv_blocks()
    cases = [
        ("syn256_4x64", 256, 50, 76, 1, synth([64] * 4)),
        ("syn256_16x16", 256, 50, 76, 1, synth([16] * 16)),
        ("syn128_16x8", 128, 100, 152, 1, synth([8] * 16)),
        ("syn128_64+4x16", 128, 100, 152, 1, synth([64, 16, 16, 16, 16])),
        ("natsc128_8s", 128, 100, 152, 1, synth([40, 24, 24, 16, 16, 8])),
        ("natsc256_8s", 256, 50, 76, 1, synth([88, 56, 40, 32, 24, 16])),
    ]
    pick = {"ic_layer1.0", "ic_layer2.0", "ic_layer2.1", "ic_layer3.0", "ic_layer3.2", "ic_layer4.0"}
    cases += [c for c in ic if c[0] in pick]
    if args.only:
        cases = [c for c in cases if args.only in c[0]]
    forms = ["naive", "naive_sorted", "naive_concat_relu", "sum1x1_add", "sum1x1_sum",
             "partition", "split_partition", "tap_col2im", "rows_col2im", "rows_col2im_h",
             "rows_col2im_t48", "rows_all", "REF_pad16"]
    if args.forms:
        forms = args.forms.split(",")
    levels = args.levels.split(",")

    rows = []
    for (cname, C, H, W, stride, branches) in cases:
        Hin, Win = H * stride, W * stride
        feed = {"X": np.random.default_rng(1).standard_normal((1, C, Hin, Win), dtype=np.float32)}
        base = build_baseline(C, Hin, Win, stride)
        bmacs, bparams = conv_macs(base)
        widths = [w for w, _ in branches]
        print(f"\n== {cname}: C={C} out {H}x{W} stride {stride} widths={widths}", flush=True)
        ref_out = None
        for level in levels:
            s_base = session(base, level)
            done = set()
            for form in forms:
                if level != "all" and form not in EXT_FORMS:
                    continue
                if stride != 1 and form in STRIDE2_FALLBACK:
                    form = STRIDE2_FALLBACK[form]
                if ("s2" in form and stride != 2) or form in done:
                    continue
                done.add(form)
                m = build_form(form, C, Hin, Win, stride, branches)
                macs, params = conv_macs(m)
                same = (macs == bmacs and params == bparams)
                if not form.startswith("REF"):
                    assert same, (form, macs, bmacs, params, bparams)
                dump = None
                if args.dump and level == "all":
                    os.makedirs(args.dump, exist_ok=True)
                    dump = os.path.join(args.dump, f"{cname}__{form}.onnx")
                s_var = session(m, level, dump)
                out = s_var.run(None, feed)[0]
                if ref_out is None:
                    ref_out = out
                err = float(np.abs(out - ref_out).max() / np.abs(ref_out).max())
                ok = err < 1e-4
                tb, tv, r = bench_pair(s_base, s_var, feed, pairs)
                hist = op_hist(dump) if dump else None
                rows.append(dict(case=cname, C=C, widths=widths, level=level, form=form, ratio=r,
                                 base_ms=tb, var_ms=tv, relerr=err, ok=ok, same_macs=same, hist=hist))
                print(f"  [{level:8s}] {form:20s} ratio {r:5.3f}  base {tb:7.2f} ms  var {tv:7.2f} ms"
                      f"  relerr {err:.1e}{'' if ok else ' WRONG'}{'' if same else ' (MACs differ: REF)'}",
                      flush=True)
                if hist:
                    print("      optimised graph:", hist)
                del s_var

    if args.trunk:
        tforms = args.trunk_forms.split(",")
        print("\n== trunk (IC-Conv ResNet-50 layers1-4, 1x64x200x304 input) ==", flush=True)
        feed = {"X": np.random.default_rng(1).standard_normal((1, 64, 200, 304), dtype=np.float32)}
        base = build_trunk_perblock(ic, lambda st: "baseline")
        s_base = session(base, "all")
        bm = conv_macs(base)
        for form in tforms:
            # tap form only where stride 1; stride-2 block falls back to split_partition
            m = build_trunk_mixed(ic, form)
            mm = conv_macs(m)
            assert mm == bm, (form, mm, bm)
            s_var = session(m, "all")
            tb, tv, r = bench_pair(s_base, s_var, feed, max(6, pairs // 2), warm=1)
            rows.append(dict(case="trunk_icconv", C=0, widths=[], level="all", form=form, ratio=r,
                             base_ms=tb, var_ms=tv, relerr=0.0, ok=True, same_macs=True, hist=None))
            s_var = None
            print(f"  trunk {form:24s} ratio {r:5.3f}  base {tb:7.1f} ms  var {tv:7.1f} ms", flush=True)

    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "last_run.json")
    with open(out, "w") as f:
        json.dump(rows, f, indent=1)
    print("wrote", out)


def build_trunk_mixed(blocks, form):
    """form for stride-1 blocks; stride-2 blocks use STRIDE2_FALLBACK[form]."""
    if form in STRIDE2_FALLBACK:
        fb = STRIDE2_FALLBACK[form]
        return build_trunk_perblock(blocks, lambda st: form if st == 1 else fb)
    return build_trunk_perblock(blocks, lambda st: form)


EXT_FORMS = {"naive", "rows_col2im"}   # forms also timed at ORT_ENABLE_EXTENDED
STRIDE2_FALLBACK = {"rows_col2im": "rows_col2im_s2", "rows_col2im_h": "rows_col2im_s2",
                    "rows_col2im_t64": "rows_col2im_s2_t64", "rows_col2im_t48": "rows_col2im_s2_t48",
                    "rows_all": "rows_all_s2", "tap_col2im": "naive"}


def build_trunk_perblock(blocks, choose):
    rng = np.random.default_rng(0)
    g = G()
    x = "X"
    for (name, C, H, W, stride, branches) in blocks:
        cin = 4 * C if not name.endswith(".0") else (64 if C == 64 else 2 * C)
        h1 = g.op("Relu", [g.conv(x, rng.standard_normal((C, cin, 1, 1), dtype=np.float32) / np.sqrt(cin),
                                 rng.standard_normal(C, dtype=np.float32) * 0.1)])
        Hin, Win = H * stride, W * stride
        form = choose(stride)
        if name.endswith(".0"):
            sc = g.conv(x, rng.standard_normal((4 * C, cin, 1, 1), dtype=np.float32) / np.sqrt(cin),
                        np.zeros(4 * C, np.float32), stride=stride)
        else:
            sc = x
        sub = build_baseline(C, Hin, Win, stride, residual=True) if form == "baseline" else \
            build_form(form, C, Hin, Win, stride, branches, residual=True)
        pre = name.replace(".", "_") + "_"
        ren = lambda s, h1=h1, pre=pre, sc=sc: h1 if s == "X" else (sc if s == "S" else (pre + s if s else s))
        for n in sub.graph.node:
            nn = helper.make_node(n.op_type, [ren(i) for i in n.input], [ren(o) for o in n.output],
                                  name=pre + n.name)
            nn.attribute.extend(n.attribute)
            g.nodes.append(nn)
        for ini in sub.graph.initializer:
            t = onnx.TensorProto(); t.CopyFrom(ini); t.name = pre + ini.name
            g.inits.append(t)
        x = g.op("Relu", [ren(sub.graph.output[0].name)])
    return g.model([1, 64, 200, 304], x, "trunk")


if __name__ == "__main__":
    main()
