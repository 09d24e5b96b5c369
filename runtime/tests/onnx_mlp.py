"""Writes an ONNX model of socflow's MLP field v(x, t) = W_L s(... s(W_0 [x, t] + b_0) ...) + b_L
from its weights, with the `onnx` package (the tests of the runtime's `onnx` feature and
of `socflow sample MODEL.onnx` use it).

    python onnx_mlp.py SPEC.json OUT.onnx

SPEC holds d, activation (silu, tanh, softplus), weights (out x in, row-major) and biases
as in socflow's MlpParams, dtype (float32 or float64), time ("batch": t is [batch],
"batch1": [batch, 1], "scalar": []) and variant: "ok", or a deliberately wrong signature
("three_inputs", "x_rank3", "wrong_d", "fixed_batch", "mixed_dtype"), or "swapped" (inputs
in the order t, x) and "unnamed" (inputs named a, b).
"""

import json
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def main():
    spec = json.load(open(sys.argv[1]))
    out = sys.argv[2]
    d = spec["d"]
    variant = spec.get("variant", "ok")
    np_dtype = np.float32 if spec["dtype"] == "float32" else np.float64
    elem = TensorProto.FLOAT if spec["dtype"] == "float32" else TensorProto.DOUBLE
    time = spec.get("time", "batch")
    x_name, t_name = ("a", "b") if variant == "unnamed" else ("x", "t")

    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    batch = 1 if variant == "fixed_batch" else "batch"
    if variant == "x_rank3":
        x_in = helper.make_tensor_value_info(x_name, elem, [batch, 1, d])
        nodes.append(helper.make_node("Reshape", [x_name, const("x_shape", np.array([-1, d], dtype=np.int64))], ["x2"]))
        x = "x2"
    else:
        x_in = helper.make_tensor_value_info(x_name, elem, [batch, d])
        x = x_name
    t_elem = TensorProto.DOUBLE if variant == "mixed_dtype" and elem == TensorProto.FLOAT else elem
    t_shape = {"batch": [batch], "batch1": [batch, 1], "scalar": []}[time]
    t_in = helper.make_tensor_value_info(t_name, t_elem, t_shape)
    t = t_name
    if t_elem != elem:
        nodes.append(helper.make_node("Cast", [t], ["t_cast"], to=elem))
        t = "t_cast"
    # The time as a [batch, 1] column.
    if time == "batch":
        nodes.append(helper.make_node("Unsqueeze", [t, const("axis1", np.array([1], dtype=np.int64))], ["tcol"]))
    elif time == "batch1":
        nodes.append(helper.make_node("Identity", [t], ["tcol"]))
    else:
        nodes.append(
            helper.make_node(
                "Slice",
                [x, const("s0", np.array([0], dtype=np.int64)), const("s1", np.array([1], dtype=np.int64)),
                 const("s_ax", np.array([1], dtype=np.int64))],
                ["x0"],
            )
        )
        nodes.append(helper.make_node("Shape", ["x0"], ["x0_shape"]))
        nodes.append(helper.make_node("Expand", [t, "x0_shape"], ["tcol"]))
    nodes.append(helper.make_node("Concat", [x, "tcol"], ["h0"], axis=1))
    h = "h0"
    weights = spec["weights"]
    biases = spec["biases"]
    n_layers = len(weights)
    for i, (w, b) in enumerate(zip(weights, biases)):
        n_out = len(b)
        w = np.asarray(w, dtype=np.float64).reshape(n_out, -1)
        b = np.asarray(b, dtype=np.float64)
        if variant == "wrong_d" and i == n_layers - 1:
            w = np.vstack([w, w[:1]])
            b = np.concatenate([b, b[:1]])
        wn = const(f"layers.{i}.weight", w.astype(np_dtype))
        bn = const(f"layers.{i}.bias", b.astype(np_dtype))
        z = f"z{i}"
        nodes.append(helper.make_node("Gemm", [h, wn, bn], [z], transB=1))
        if i == n_layers - 1:
            h = z
            break
        a = f"a{i}"
        act = spec["activation"]
        if act == "silu":
            nodes.append(helper.make_node("Sigmoid", [z], [f"sig{i}"]))
            nodes.append(helper.make_node("Mul", [z, f"sig{i}"], [a]))
        elif act == "tanh":
            nodes.append(helper.make_node("Tanh", [z], [a]))
        elif act == "softplus":
            # log(1 + e^z) = max(z, 0) + log(1 + e^-|z|): ONNX Runtime has no float64
            # Softplus kernel.
            one = const(f"one{i}", np.array(1.0, dtype=np_dtype))
            nodes.append(helper.make_node("Relu", [z], [f"relu{i}"]))
            nodes.append(helper.make_node("Abs", [z], [f"abs{i}"]))
            nodes.append(helper.make_node("Neg", [f"abs{i}"], [f"nabs{i}"]))
            nodes.append(helper.make_node("Exp", [f"nabs{i}"], [f"exp{i}"]))
            nodes.append(helper.make_node("Add", [f"exp{i}", one], [f"onep{i}"]))
            nodes.append(helper.make_node("Log", [f"onep{i}"], [f"log{i}"]))
            nodes.append(helper.make_node("Add", [f"relu{i}", f"log{i}"], [a]))
        else:
            raise SystemExit(f"unknown activation {act}")
        h = a
    inputs = [t_in, x_in] if variant == "swapped" else [x_in, t_in]
    if variant == "three_inputs":
        inputs.append(helper.make_tensor_value_info("s", elem, [batch, 1]))
        nodes.append(helper.make_node("Add", [h, "s"], ["hs"]))
        h = "hs"
    nodes.append(helper.make_node("Identity", [h], ["v"]))
    out_d = d + 1 if variant == "wrong_d" else d
    v_out = helper.make_tensor_value_info("v", elem, [batch, out_d])
    graph = helper.make_graph(nodes, "socflow_mlp", inputs, [v_out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="socflow tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, out)


if __name__ == "__main__":
    main()
