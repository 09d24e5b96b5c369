#!/usr/bin/env python3
"""OT-Flow mixed-precision training benchmark: the PyTorch + torchdiffeq peer.

The model is the original OT-Flow (EmoryMLIP/OT-Flow, src/Phi.py and
src/OTFlowProblem.py) re-typed here: the ResNet N with the activation log(2 cosh u)
computed stably, Phi(s) = w'N(s) + 1/2 s'A'As + c(s), its gradient and exact Hessian
trace by the explicit formulas of `trHess` (MATH.md §1; no double backward), and the
augmented right-hand side `odefun` for y = [z, l, c_L, c_H]:

    dz/dt   = -grad_x Phi / alpha_L           dl/dt   = -trace_x Hess Phi / alpha_L
    dc_L/dt = 1/2 |dz/dt|^2                    dc_H/dt = |-d_t Phi + alpha_L * dc_L/dt|

(the original scales the velocity and the log-determinant by 1/alph[0] = 1/alpha_L and
multiplies the kinetic term inside the HJB residual back by alpha_L; socflow's OtFlowRhs
does the same). NLL = 1/2|z(1)|^2 + d/2 log 2 pi - l(1); the objective is
J = alpha_L mean c_L(1) + alpha_C mean NLL + alpha_R mean c_H(1), with alpha in the
original's order `alph = [alpha_L, alpha_C, alpha_R]` (config.json's "alpha").

What it does, on the folder WEIGHTS that socflow exports (config.json, one float64 .npy
per parameter named by the original state_dict, x.npy the batch, reference.json):

1. Validation in float64 (exit status 1 if a check fails, before any benchmark):
   a. every case of shared/reference/otflow_phi_golden.json (made by the original
      code): Phi, grad Phi, trace, one odefun evaluation and the whole objective (classic
      RK4) to 1e-12 relative;
   b. a hand-written classic RK4 loop (the original's stepRK4, nt steps on [0, 1]) at the
      WEIGHTS parameters and batch against reference.json: J, NLL, c_L, c_H and the
      gradient of J with respect to every parameter (autograd through the whole solve)
      to 1e-9 relative (norm-wise per parameter).
   It also reports, as information, how far torchdiffeq's 'rk4' (the 3/8-rule variant)
   is from classic RK4 in J, and computes the float64 torchdiffeq gradient that the
   low-precision gradients are compared with.
2. Benchmark per precision (f32, bf16, f16, f16-noscale): float32 nn.Parameters,
   torchdiffeq.odeint(method='rk4', step_size=1/nt) with direct backpropagation through
   the solver (no adjoint), loss, backward, Adam. bf16: autocast bfloat16; f16: autocast
   float16 with torch.amp.GradScaler (dynamic loss scaling); f16-noscale: autocast float16
   alone. Median seconds per iteration after warm-up, and the peak memory of one
   iteration (CUDA: max_memory_allocated growth; CPU: peak RSS growth, each precision in
   its own subprocess).
3. A short training run per precision (same batch every iteration): first and last loss,
   first non-finite loss or gradient, GradScaler's skipped steps.

Usage:
    python bench_otflow.py --weights DIR [--device cpu|cuda] [--threads N]
        [--precisions f32,bf16,f16,f16-noscale] [--iters 10] [--warmup 2]
        [--train-iters 50] [--out FILE.json] [--torchdiffeq-path DIR]
        [--golden FILE | --skip-golden] [--skip-reference] [--validate-only]
    python bench_otflow.py --make-test-weights DIR [--d 5] [--m 16] [--batch 32]
        [--n-th 2] [--nt 14] [--seed 0]
The second form writes random weights and a batch, and a reference.json computed by
this script's own float64 classic-RK4 path: a self-test of the plumbing only, not an
independent reference (it also checks the autograd gradient against central
differences).
"""

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

PRECISIONS = ("f32", "bf16", "f16", "f16-noscale")
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
GOLDEN_CANDIDATES = (
    os.path.join(REPO, "shared", "reference", "otflow_phi_golden.json"),
    os.path.join(os.path.dirname(REPO), "shared", "reference", "otflow_phi_golden.json"),
)
GOLDEN_TOL = 1e-12
REFERENCE_TOL = 1e-9


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="OT-Flow training benchmark: the PyTorch + torchdiffeq peer",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Usage:")[1] if "Usage:" in __doc__ else None,
    )
    p.add_argument("--weights", help="folder exported by socflow (config.json, *.npy, x.npy, reference.json)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda if available")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--precisions", default=",".join(PRECISIONS),
                   help="comma-separated subset of " + ",".join(PRECISIONS))
    p.add_argument("--iters", type=int, default=10, help="timed iterations per precision")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    p.add_argument("--train-iters", type=int, default=50, help="training-check iterations (0: skip)")
    p.add_argument("--out", help="write all numbers to this JSON file")
    p.add_argument("--torchdiffeq-path", help="folder prepended to sys.path before importing torchdiffeq")
    p.add_argument("--golden", help="otflow_phi_golden.json (default: shared/reference/ beside or in the repo)")
    p.add_argument("--skip-golden", action="store_true", help="skip check 1a (golden file not at hand)")
    p.add_argument("--skip-reference", action="store_true",
                   help="skip check 1b; only for a WEIGHTS folder without reference.json")
    p.add_argument("--validate-only", action="store_true", help="run the checks and stop")
    p.add_argument("--f64-chunk", type=int, default=64,
                   help="float64 solves run the batch in chunks of this many rows (0: whole batch)")
    p.add_argument("--no-accuracy", action="store_true",
                   help="skip the float64 torchdiffeq gradient the precisions are compared with")
    # Self-test weights.
    p.add_argument("--make-test-weights", metavar="DIR",
                   help="write random test weights + x + a self-computed reference.json, then exit")
    p.add_argument("--d", type=int, default=5)
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--n-th", type=int, default=2)
    p.add_argument("--nt", type=int, default=14)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-fd-check", dest="fd_check", action="store_false",
                   help="skip the central-difference check of the self-test gradient (2 more solves)")
    # Internal: one precision in this process (CPU runs each precision in a subprocess).
    p.add_argument("--single", choices=PRECISIONS, help=argparse.SUPPRESS)
    p.add_argument("--single-out", help=argparse.SUPPRESS)
    p.add_argument("--accuracy-ref", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.make_test_weights and not args.weights:
        p.error("--weights DIR is required (or --make-test-weights DIR)")
    precs = [s.strip() for s in args.precisions.split(",") if s.strip()]
    for s in precs:
        if s not in PRECISIONS:
            p.error(f"unknown precision {s!r} (choose from {','.join(PRECISIONS)})")
    args.precision_list = precs
    if args.iters < 1 or args.warmup < 0 or args.train_iters < 0:
        p.error("--iters must be >= 1, --warmup and --train-iters >= 0")
    return args


ARGS = parse_args(sys.argv[1:])
if ARGS.torchdiffeq_path:
    sys.path.insert(0, os.path.abspath(ARGS.torchdiffeq_path))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from torch.nn.functional import pad  # noqa: E402

try:
    import torchdiffeq  # noqa: E402
    from torchdiffeq import odeint  # noqa: E402
except ImportError as e:  # the f64 checks need no torchdiffeq; the benchmark does
    torchdiffeq = None
    odeint = None
    TORCHDIFFEQ_ERROR = str(e)


# ---------------------------------------------------------------------------------
# The model: src/Phi.py of EmoryMLIP/OT-Flow.
# ---------------------------------------------------------------------------------

def antiderivTanh(x):
    """The activation, log(exp(x) + exp(-x)) = log(2 cosh x), computed stably."""
    return torch.abs(x) + torch.log(1 + torch.exp(-2.0 * torch.abs(x)))


def derivTanh(x):
    """act'' = 1 - tanh^2."""
    return 1 - torch.pow(torch.tanh(x), 2)


class ResNN(nn.Module):
    def __init__(self, d, m, nTh=2):
        super().__init__()
        if nTh < 2:
            raise ValueError("nTh must be an integer >= 2")
        self.d = d
        self.m = m
        self.nTh = nTh
        self.layers = nn.ModuleList([nn.Linear(d + 1, m, bias=True)])
        for _ in range(nTh - 1):
            self.layers.append(nn.Linear(m, m, bias=True))
        self.act = antiderivTanh
        self.h = 1.0 / (self.nTh - 1)  # the ResNet's step size

    def forward(self, x):
        x = self.act(self.layers[0].forward(x))
        for i in range(1, self.nTh):
            x = x + self.h * self.act(self.layers[i](x))
        return x


class Phi(nn.Module):
    """Phi(s) = w'N(s) + 1/2 s'A'As + c.weight s + c.bias, s = [x, t]."""

    def __init__(self, nTh, m, d, r=10):
        super().__init__()
        self.m = m
        self.nTh = nTh
        self.d = d
        r = min(r, d + 1)
        self.A = nn.Parameter(torch.zeros(r, d + 1))
        self.c = nn.Linear(d + 1, 1, bias=True)
        self.w = nn.Linear(m, 1, bias=False)
        self.N = ResNN(d, m, nTh=nTh)

    def forward(self, x):
        symA = torch.matmul(torch.t(self.A), self.A)
        return (self.w(self.N(x))
                + 0.5 * torch.sum(torch.matmul(x, symA) * x, dim=1, keepdim=True)
                + self.c(x))

    def trHess(self, x, justGrad=False):
        """(grad_s Phi (nex x (d+1)), trace of the Hessian in x (nex)): the original's
        explicit forward/backward sweep (MATH.md §1)."""
        N = self.N
        m = N.layers[0].weight.shape[0]
        nex = x.shape[0]
        d = x.shape[1] - 1
        symA = torch.matmul(self.A.t(), self.A)
        u = []
        z = N.nTh * [None]
        opening = N.layers[0].forward(x)  # K_0 s + b_0
        u.append(N.act(opening))
        feat = u[0]
        for i in range(1, N.nTh):
            feat = feat + N.h * N.act(N.layers[i](feat))
            u.append(feat)
        tanhopen = torch.tanh(opening)
        for i in range(N.nTh - 1, 0, -1):
            term = self.w.weight.t() if i == N.nTh - 1 else z[i + 1]
            z[i] = term + N.h * torch.mm(N.layers[i].weight.t(),
                                         torch.tanh(N.layers[i].forward(u[i - 1])).t() * term)
        z[0] = torch.mm(N.layers[0].weight.t(), tanhopen.t() * z[1])
        grad = z[0] + torch.mm(symA, x.t()) + self.c.weight.t()
        if justGrad:
            return grad.t()
        # trace of the Hessian over x
        Kopen = N.layers[0].weight[:, 0:d]
        temp = derivTanh(opening.t()) * z[1]
        trH = torch.sum(temp.reshape(m, -1, nex) * torch.pow(Kopen.unsqueeze(2), 2), dim=(0, 1))
        temp = tanhopen.t()
        Jac = Kopen.unsqueeze(2) * temp.unsqueeze(1)  # m x d x nex
        for i in range(1, N.nTh):
            KJ = torch.mm(N.layers[i].weight, Jac.reshape(m, -1))
            KJ = KJ.reshape(m, -1, nex)
            term = self.w.weight.t() if i == N.nTh - 1 else z[i + 1]
            temp = N.layers[i].forward(u[i - 1]).t()  # K_i u_{i-1} + b_i
            t_i = torch.sum((derivTanh(temp) * term).reshape(m, -1, nex) * torch.pow(KJ, 2), dim=(0, 1))
            trH = trH + N.h * t_i
            Jac = Jac + N.h * torch.tanh(temp).reshape(m, -1, nex) * KJ
        return grad.t(), trH + torch.trace(symA[0:d, 0:d])


# ---------------------------------------------------------------------------------
# The problem: src/OTFlowProblem.py.
# ---------------------------------------------------------------------------------

def odefun(x, t, net, alph):
    """Right-hand side of y = [z, l, c_L, c_H] (nex x (d+3)); t a float or a 0-dim
    tensor (torchdiffeq passes a tensor: it is appended as a column, no host sync)."""
    nex, d_extra = x.shape
    d = d_extra - 3
    if torch.is_tensor(t):
        z = torch.cat((x[:, :d], t.to(x.dtype).expand(nex, 1)), 1)
    else:
        z = pad(x[:, :d], (0, 1, 0, 0), value=t)
    gradPhi, trH = net.trHess(z)
    dx = -(1.0 / alph[0]) * gradPhi[:, 0:d]
    dl = -(1.0 / alph[0]) * trH.unsqueeze(1)
    dv = 0.5 * torch.sum(torch.pow(dx, 2), 1, keepdim=True)
    dr = torch.abs(-gradPhi[:, -1].unsqueeze(1) + alph[0] * dv)
    return torch.cat((dx, dl, dv, dr), 1)


def stepRK4(z, net, alph, t0, t1):
    """The original's classic RK4 step (weights 1/6, 2/6, 2/6, 1/6)."""
    h = t1 - t0
    z0 = z
    K = h * odefun(z0, t0, net, alph)
    z = z0 + (1.0 / 6.0) * K
    K = h * odefun(z0 + 0.5 * K, t0 + (h / 2), net, alph)
    z = z + (2.0 / 6.0) * K
    K = h * odefun(z0 + 0.5 * K, t0 + (h / 2), net, alph)
    z = z + (2.0 / 6.0) * K
    K = h * odefun(z0 + K, t0 + h, net, alph)
    z = z + (1.0 / 6.0) * K
    return z


def nll_of(z):
    """The original's C(z): per-sample NLL = 1/2|z|^2 + d/2 log 2 pi - l."""
    d = z.shape[1] - 3
    l = z[:, d]
    return -(torch.sum(-0.5 * math.log(2 * math.pi) - torch.pow(z[:, 0:d], 2) / 2, 1, keepdim=True)
             + l.unsqueeze(1))


def objective(zT, alph):
    """(J, [costL, costC, costR]) of the final states, batch means, in alph's order."""
    costC = torch.mean(nll_of(zT))
    costL = torch.mean(zT[:, -2])
    costR = torch.mean(zT[:, -1])
    cs = [costL, costC, costR]
    J = alph[0] * costL + alph[1] * costC + alph[2] * costR
    return J, cs


def otflow_problem_rk4(x, net, nt, alph, tspan=(0.0, 1.0)):
    """OTFlowProblem with the classic RK4 stepper: t accumulated as the original does."""
    h = (tspan[1] - tspan[0]) / nt
    z = pad(x, (0, 3, 0, 0), value=0)
    tk = tspan[0]
    for _ in range(nt):
        z = stepRK4(z, net, alph, tk, tk + h)
        tk += h
    return objective(z, alph)


class OdeFunc(nn.Module):
    """odefun in torchdiffeq's func(t, y) form, counting evaluations."""

    def __init__(self, net, alph):
        super().__init__()
        self.net = net
        self.alph = alph
        self.nfe = 0

    def forward(self, t, y):
        self.nfe += 1
        return odefun(y, t, self.net, self.alph)


def torchdiffeq_loss(func, x, nt, grid):
    """J through torchdiffeq's 'rk4' (3/8 rule), direct backpropagation through it."""
    y0 = pad(x, (0, 3, 0, 0), value=0)
    if grid is None:
        t = torch.tensor([0.0, 1.0], device=x.device)
        yT = odeint(func, y0, t, method="rk4", options={"step_size": 1.0 / nt})[-1]
    else:
        yT = odeint(func, y0, grid, method="rk4")[-1]
    return objective(yT, func.alph)


# ---------------------------------------------------------------------------------
# Weights.
# ---------------------------------------------------------------------------------

def param_names(n_th):
    names = [f"N.layers.{i}.weight" for i in range(n_th)]
    names += [f"N.layers.{i}.bias" for i in range(n_th)]
    return names + ["w.weight", "A", "c.weight", "c.bias"]


def load_weights(folder):
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    for k in ("d", "m", "n_th", "nt", "alpha"):
        if k not in cfg:
            raise SystemExit(f"{folder}/config.json lacks {k!r}")
    cfg.setdefault("r", min(10, cfg["d"] + 1))
    cfg.setdefault("lr", 0.01)
    arrays = {}
    for name in param_names(cfg["n_th"]):
        path = os.path.join(folder, name + ".npy")
        arrays[name] = np.load(path).astype(np.float64)
    x = np.load(os.path.join(folder, "x.npy")).astype(np.float64)
    if x.ndim != 2 or x.shape[1] != cfg["d"]:
        raise SystemExit(f"x.npy has shape {x.shape}, expected (batch, {cfg['d']})")
    if "batch" in cfg and cfg["batch"] != x.shape[0]:
        raise SystemExit(f"x.npy holds {x.shape[0]} rows, config.json says batch {cfg['batch']}")
    return cfg, arrays, x


def build_net(cfg, arrays, dtype, device):
    """Phi with the given parameters (reshaped to the state_dict shapes) in `dtype`."""
    net = Phi(cfg["n_th"], cfg["m"], cfg["d"], r=cfg["r"]).to(dtype=dtype)  # before loading:
    # load_state_dict copies into the parameters' dtype, so a float32 module would round
    if net.A.shape[0] != cfg["r"]:
        raise SystemExit(f"rank r = {cfg['r']} exceeds d + 1 = {cfg['d'] + 1}")
    sd = net.state_dict()
    new = {}
    for name, ref in sd.items():
        a = np.asarray(arrays[name], dtype=np.float64)
        if a.size != ref.numel():
            raise SystemExit(f"{name}: {a.size} values, the model needs {tuple(ref.shape)}")
        new[name] = torch.from_numpy(a.reshape(tuple(ref.shape)).copy())
    net.load_state_dict(new)
    return net.to(device=device)


def grad_of(p):
    """p.grad, or zeros where autograd left it None (c.bias: Phi's constant never
    reaches the dynamics, so its gradient is exactly 0)."""
    return p.grad.detach() if p.grad is not None else torch.zeros_like(p.detach())


def rel(a, b):
    """Norm-wise relative error |a - b| / |b| (absolute when b = 0)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    nb = np.linalg.norm(b)
    err = np.linalg.norm(a - b)
    return float(err / nb) if nb > 0 else float(err)


# ---------------------------------------------------------------------------------
# 1. Validation in float64.
# ---------------------------------------------------------------------------------

def check_golden(path):
    with open(path) as f:
        g = json.load(f)
    worst = 0.0
    rows = []
    for ci, c in enumerate(g["cases"]):
        d, m, nTh = c["d"], c["m"], c["nTh"]
        arrays = {k: np.asarray(v, dtype=np.float64) for k, v in c["state_dict"].items()}
        cfg = {"d": d, "m": m, "n_th": nTh, "r": c.get("r", min(10, d + 1))}
        net = build_net(cfg, arrays, torch.float64, "cpu")
        s = torch.tensor(c["s"], dtype=torch.float64)
        with torch.no_grad():
            phi = net(s).squeeze(1)
            grad, trH = net.trHess(s)
            alph = c["otflow_problem"]["alph"]
            zin = torch.tensor(c["odefun_in"], dtype=torch.float64)
            out = odefun(zin, c["odefun_t"], net, alph)
            prob = c["otflow_problem"]
            J, cs = otflow_problem_rk4(zin[:, :d], net, prob["nt"], alph)
        errs = {
            "phi": rel(phi, c["phi"]),
            "grad": rel(grad, c["grad"]),
            "trace": rel(trH, c["trH"]),
            "odefun": rel(out, c["odefun_out"]),
            "J": rel(J.item(), prob["J"]),
            "costL": rel(cs[0].item(), prob["costL"]),
            "costC": rel(cs[1].item(), prob["costC"]),
            "costR": rel(cs[2].item(), prob["costR"]),
        }
        w = max(errs.values())
        worst = max(worst, w)
        rows.append({"case": ci, "d": d, "m": m, "nTh": nTh, "nex": len(c["s"]), **errs})
        print(f"  golden case {ci} (d={d}, m={m}, nTh={nTh}, nex={len(c['s'])}): "
              + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
    ok = worst <= GOLDEN_TOL
    print(f"  golden: worst relative error {worst:.2e} (tolerance {GOLDEN_TOL:g}): {'ok' if ok else 'FAILED'}")
    return {"file": path, "worst": worst, "tolerance": GOLDEN_TOL, "ok": ok, "cases": rows}


def f64_chunks(x, chunk, device):
    """(rows as a float64 tensor on `device`, weight rows/batch) per chunk of the batch:
    J is a batch mean, so the chunks' J and gradients, weighted and summed, are the
    batch's (to round-off), in a fraction of the memory."""
    n = x.shape[0]
    step = n if not chunk or chunk <= 0 else chunk
    for i in range(0, n, step):
        xc = x[i:i + step]
        yield torch.from_numpy(np.ascontiguousarray(xc)).to(device), xc.shape[0] / n


def f64_classic(cfg, arrays, x, device, chunk=None):
    """J, costs and gradient (dict name -> float64 array) of the classic-RK4 objective."""
    net = build_net(cfg, arrays, torch.float64, device)
    vals = {"J": 0.0, "cL": 0.0, "nll": 0.0, "cH": 0.0}
    for xt, w in f64_chunks(x, chunk, device):
        J, cs = otflow_problem_rk4(xt, net, cfg["nt"], cfg["alpha"])
        (w * J).backward()
        for k, v in zip(("J", "cL", "nll", "cH"), (J, cs[0], cs[1], cs[2])):
            vals[k] += w * v.item()
        del J, cs
    grads = {n: grad_of(p).cpu().numpy().copy() for n, p in net.named_parameters()}
    return vals, grads, net


def check_reference(cfg, arrays, x, folder, device, chunk):
    with open(os.path.join(folder, "reference.json")) as f:
        ref = json.load(f)
    vals, grads, _ = f64_classic(cfg, arrays, x, device, chunk)
    errs = {k: rel(vals[k], ref[k]) for k in ("J", "nll", "cL", "cH") if k in ref}
    missing = [k for k in ("J", "nll", "cL", "cH") if k not in ref]
    gerrs = {}
    for name, g in grads.items():
        if name not in ref.get("grad", {}):
            missing.append("grad/" + name)
            continue
        r = np.asarray(ref["grad"][name], dtype=np.float64).ravel()
        if r.size != g.size:
            raise SystemExit(f"reference.json grad {name}: {r.size} values, expected {g.size}")
        gerrs[name] = rel(g, r)
    print("  reference: " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items())
          + f"  (J = {vals['J']:.15g}, reference {ref.get('J')})")
    for name, e in gerrs.items():
        print(f"    grad {name:<22s} rel {e:.1e}")
    worst = max(list(errs.values()) + list(gerrs.values()) + [0.0])
    ok = worst <= REFERENCE_TOL and not missing
    if missing:
        print(f"  reference.json lacks: {', '.join(missing)}")
    print(f"  reference: worst relative error {worst:.2e} (tolerance {REFERENCE_TOL:g}): {'ok' if ok else 'FAILED'}")
    return {"worst": worst, "tolerance": REFERENCE_TOL, "ok": ok, "values": errs,
            "grad": gerrs, "missing": missing, "J_here": vals["J"]}


def torchdiffeq_grid(nt, device):
    """None when odeint(step_size=1/nt) makes exactly nt steps (checked by counting
    evaluations); else the explicit grid linspace(0, 1, nt+1) to use instead."""
    n = [0]

    def f(t, y):
        n[0] += 1
        return -y

    odeint(f, torch.ones(1, device=device), torch.tensor([0.0, 1.0], device=device),
           method="rk4", options={"step_size": 1.0 / nt})
    if n[0] == 4 * nt:
        return None
    print(f"  note: torchdiffeq step_size=1/{nt} made {n[0] / 4:g} steps; using the explicit grid")
    return torch.linspace(0.0, 1.0, nt + 1, device=device)


def f64_torchdiffeq(cfg, arrays, x, device, grid, chunk=None):
    """J and gradient of the 3/8-rule objective in float64 (the precisions' reference)."""
    net = build_net(cfg, arrays, torch.float64, device)
    func = OdeFunc(net, cfg["alpha"])
    Jt, chunks = 0.0, 0
    for xt, w in f64_chunks(x, chunk, device):
        J, _ = torchdiffeq_loss(func, xt, cfg["nt"], grid)
        (w * J).backward()
        Jt += w * J.item()
        chunks += 1
        del J
    grads = {n: grad_of(p).cpu().numpy().copy() for n, p in net.named_parameters()}
    return Jt, grads, func.nfe // chunks


# ---------------------------------------------------------------------------------
# 2-3. Benchmark and training check of one precision.
# ---------------------------------------------------------------------------------

def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_hwm():
    """Resets the process's peak RSS (Linux clear_refs 5); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def maxrss_bytes():
    """The peak RSS: VmHWM of /proc/self/status, else getrusage's ru_maxrss (KiB)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Trainer:
    """Model, Adam and (for f16) GradScaler of one precision."""

    def __init__(self, prec, cfg, arrays, x, device, grid):
        self.prec = prec
        self.device = device
        self.cfg = cfg
        self.grid = grid
        self.net = build_net(cfg, arrays, torch.float32, device)
        self.func = OdeFunc(self.net, cfg["alpha"])
        self.x = torch.from_numpy(x).to(device=device, dtype=torch.float32)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg["lr"])
        self.scaler = torch.amp.GradScaler(device) if prec == "f16" else None
        self.amp_dtype = {"f32": None, "bf16": torch.bfloat16,
                          "f16": torch.float16, "f16-noscale": torch.float16}[prec]

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device, dtype=self.amp_dtype)

    def step(self, check=False):
        """One training iteration; with `check`, returns (loss, gradient finite, step
        skipped, unscaled gradient dict before the step)."""
        self.opt.zero_grad(set_to_none=True)
        with self.autocast():
            loss, _ = torchdiffeq_loss(self.func, self.x, self.cfg["nt"], self.grid)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if check:
                self.scaler.unscale_(self.opt)
                finite, grads = self.grad_state()
                before = self.scaler.get_scale()
            self.scaler.step(self.opt)
            self.scaler.update()
            if check:
                skipped = self.scaler.get_scale() < before
                return loss.item(), finite, skipped, grads
            return loss
        loss.backward()
        if check:
            finite, grads = self.grad_state()
        self.opt.step()
        if check:
            return loss.item(), finite, False, grads
        return loss

    def grad_state(self):
        grads = {n: grad_of(p) for n, p in self.net.named_parameters()}
        finite = all(bool(torch.isfinite(g).all()) for g in grads.values())
        return finite, grads


def run_precision(prec, cfg, arrays, x, device, grid, warmup, iters, train_iters, acc_ref):
    res = {"precision": prec,
           "autocast": {"f32": None, "bf16": "bfloat16", "f16": "float16", "f16-noscale": "float16"}[prec],
           "grad_scaler": prec == "f16"}
    tr = Trainer(prec, cfg, arrays, x, device, grid)

    # Timing and memory (on the same model; its values drift with Adam, as in training).
    # CUDA: the memory iteration follows the warm-up (the caching allocator's statistics
    # count live tensors only). CPU: it is the first iteration of this fresh process,
    # since after warm-up glibc's heap keeps freed blocks resident and hides the
    # iteration's growth; it then counts as the first warm-up iteration.
    cpu_first = device != "cuda"
    for _ in range(0 if cpu_first else warmup):
        tr.step()
    sync(device)
    gc.collect()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        tr.step()
        sync(device)
        res["peak_mem_bytes"] = torch.cuda.max_memory_allocated() - before
        res["mem_kind"] = "cuda max_memory_allocated growth over one iteration"
    else:
        was_reset = reset_hwm()
        before = rss_bytes()
        tr.step()
        peak = maxrss_bytes()
        res["peak_mem_bytes"] = peak - before
        res["mem_kind"] = ("RSS: peak RSS (VmHWM = ru_maxrss; reset by clear_refs: "
                           + str(was_reset) + ") minus RSS before the first iteration of a "
                           "fresh process (includes one-time allocations: Adam state, "
                           "library workspaces)")
        for _ in range(max(warmup - 1, 0)):
            tr.step()
    func_nfe0 = tr.func.nfe
    times = []
    for _ in range(iters):
        sync(device)
        t0 = time.perf_counter()
        tr.step()
        sync(device)
        times.append(time.perf_counter() - t0)
    res["nfe_per_iter"] = (tr.func.nfe - func_nfe0) / iters
    res["times_s"] = times
    res["median_s"] = statistics.median(times)
    del tr
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()

    # Training check: fresh parameters, Adam and scaler.
    if train_iters > 0:
        tr = Trainer(prec, cfg, arrays, x, device, grid)
        losses, first_bad_loss, first_bad_grad, skipped = [], None, None, 0
        acc = None
        for it in range(train_iters):
            loss, finite, was_skipped, grads = tr.step(check=True)
            losses.append(loss)
            if first_bad_loss is None and not math.isfinite(loss):
                first_bad_loss = it
            if first_bad_grad is None and not finite:
                first_bad_grad = it
            skipped += int(was_skipped)
            # The parameters are still the initial ones until the first step taken
            # (GradScaler skips steps with non-finite gradients).
            if acc is None and acc_ref is not None and (not was_skipped or it == train_iters - 1):
                J64, g64 = acc_ref
                names = list(g64)
                a = np.concatenate([grads[n].double().cpu().numpy().ravel() for n in names])
                b = np.concatenate([g64[n].ravel() for n in names])
                per = {n: rel(grads[n].double().cpu().numpy(), g64[n]) for n in names}
                acc = {"at_iter": it, "loss_rel": rel(loss, J64), "grad_rel": rel(a, b),
                       "grad_rel_worst_param": max(per.items(), key=lambda kv: kv[1])}
        res["train"] = {
            "iters": train_iters, "lr": cfg["lr"], "first_loss": losses[0], "last_loss": losses[-1],
            "losses": losses, "first_nonfinite_loss": first_bad_loss,
            "first_nonfinite_grad": first_bad_grad, "skipped_steps": skipped,
            "final_scale": tr.scaler.get_scale() if tr.scaler is not None else None,
        }
        if acc is not None:
            res["first_iter_accuracy_vs_f64_torchdiffeq"] = acc
    return res


def run_single_subprocess(prec, args, acc_path):
    """CPU: one precision in a fresh interpreter (so that its RSS is its own)."""
    fd, out = tempfile.mkstemp(suffix=".json", prefix=f"otflow_{prec}_")
    os.close(fd)
    cmd = [sys.executable, os.path.abspath(__file__), "--weights", args.weights,
           "--device", "cpu", "--single", prec, "--single-out", out,
           "--iters", str(args.iters), "--warmup", str(args.warmup),
           "--train-iters", str(args.train_iters)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.torchdiffeq_path:
        cmd += ["--torchdiffeq-path", args.torchdiffeq_path]
    if acc_path:
        cmd += ["--accuracy-ref", acc_path]
    rc = subprocess.run(cmd).returncode
    try:
        with open(out) as f:
            res = json.load(f)
    except (OSError, ValueError):
        res = {"precision": prec, "error": f"subprocess exited {rc} without a result"}
    os.unlink(out)
    return res


def fmt_bytes(b):
    if b is None:
        return "-"
    return f"{b / 2**20:,.1f} MiB"


def print_table(results, device):
    mem_label = "peak mem" if device == "cuda" else "peak RSS growth"
    print()
    print(f"{'precision':<12s} {'median s/iter':>14s} {mem_label:>16s} {'loss first':>12s} "
          f"{'loss last':>12s} {'1st inf loss':>12s} {'1st inf grad':>12s} {'skipped':>8s} "
          f"{'grad rel err':>13s}")
    for r in results:
        if "error" in r:
            print(f"{r['precision']:<12s} error: {r['error']}")
            continue
        t = r.get("train", {})
        acc = r.get("first_iter_accuracy_vs_f64_torchdiffeq")
        it = lambda v: "-" if v is None else f"it {v}"  # noqa: E731
        print(f"{r['precision']:<12s} {r['median_s']:>14.4f} {fmt_bytes(r['peak_mem_bytes']):>16s} "
              f"{t.get('first_loss', float('nan')):>12.6g} {t.get('last_loss', float('nan')):>12.6g} "
              f"{it(t.get('first_nonfinite_loss')):>12s} {it(t.get('first_nonfinite_grad')):>12s} "
              f"{t.get('skipped_steps', '-'):>8} "
              f"{(format(acc['grad_rel'], '.2e') if acc else '-'):>13s}")


# ---------------------------------------------------------------------------------
# Self-test weights.
# ---------------------------------------------------------------------------------

def make_test_weights(args):
    folder = args.make_test_weights
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    d, m, n_th, nt, batch = args.d, args.m, args.n_th, args.nt, args.batch
    r = min(10, d + 1)
    alpha = [2.0, 20.0, 3.0]  # alpha_L != 1, so that the velocity scaling matters
    cfg = {"d": d, "m": m, "n_th": n_th, "r": r, "nt": nt, "alpha": alpha, "batch": batch,
           "lr": 0.01, "note": "self-test weights from bench_otflow.py --make-test-weights"}
    u = lambda shape, b: rng.uniform(-b, b, size=shape)  # noqa: E731
    arrays = {"N.layers.0.weight": u((m, d + 1), 1 / math.sqrt(d + 1)),
              "N.layers.0.bias": u((m,), 1 / math.sqrt(d + 1))}
    for i in range(1, n_th):
        arrays[f"N.layers.{i}.weight"] = u((m, m), 1 / math.sqrt(m))
        arrays[f"N.layers.{i}.bias"] = u((m,), 1 / math.sqrt(m))
    arrays["w.weight"] = 1.0 + 0.1 * rng.standard_normal((1, m))
    arrays["A"] = u((r, d + 1), math.sqrt(6 / (r + d + 1)))
    arrays["c.weight"] = 0.1 * rng.standard_normal((1, d + 1))
    arrays["c.bias"] = 0.1 * rng.standard_normal((1,))
    x = rng.standard_normal((batch, d))
    for name, a in arrays.items():
        np.save(os.path.join(folder, name + ".npy"), a.astype(np.float64))
    np.save(os.path.join(folder, "x.npy"), x)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    vals, grads, net = f64_classic(cfg, arrays, x, "cpu", args.f64_chunk)
    ref = dict(vals)
    ref["grad"] = {n: g.ravel().tolist() for n, g in grads.items()}
    ref["note"] = "self-test: computed by bench_otflow.py's own float64 classic RK4, not by socflow"
    with open(os.path.join(folder, "reference.json"), "w") as f:
        json.dump(ref, f)
    print(f"wrote {folder}: d={d}, m={m}, nTh={n_th}, r={r}, nt={nt}, batch={batch}, J={vals['J']:.12g}")
    if not args.fd_check:
        return 0
    # The autograd gradient against central differences along a random direction.
    dirs = {n: rng.standard_normal(g.shape) for n, g in grads.items()}
    dJ = sum(float((grads[n] * dirs[n]).sum()) for n in grads)
    eps = 1e-5
    Js = []
    for sgn in (1, -1):
        moved = {n: (arrays[n].reshape(grads[n].shape) + sgn * eps * dirs[n]) for n in grads}
        Js.append(f64_classic(cfg, moved, x, "cpu", args.f64_chunk)[0]["J"])
    fd = (Js[0] - Js[1]) / (2 * eps)
    e = abs(fd - dJ) / abs(dJ)
    print(f"directional derivative: autograd {dJ:.12g}, central difference {fd:.12g}, rel {e:.1e}"
          f" ({'ok' if e < 1e-6 else 'FAILED'})")
    return 0 if e < 1e-6 else 1


# ---------------------------------------------------------------------------------

def versions(device):
    info = {"torch": torch.__version__,
            "torchdiffeq": getattr(torchdiffeq, "__version__", None) if torchdiffeq else None,
            "torchdiffeq_file": getattr(torchdiffeq, "__file__", None) if torchdiffeq else None,
            "numpy": np.__version__, "python": platform.python_version(),
            "host": platform.node(), "threads": torch.get_num_threads()}
    info["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    if device == "cuda":
        info["device_name"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
        info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    else:
        info["device_name"] = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        info["device_name"] = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
    return info


def main(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.make_test_weights:
        return make_test_weights(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False")
    cfg, arrays, x = load_weights(args.weights)

    if args.single:  # child process: one precision, no checks
        grid = torchdiffeq_grid(cfg["nt"], device)
        acc_ref = None
        if args.accuracy_ref:
            z = np.load(args.accuracy_ref)
            acc_ref = (float(z["__J__"]), {n: z[n] for n in z.files if n != "__J__"})
        res = run_precision(args.single, cfg, arrays, x, device, grid, args.warmup,
                            args.iters, args.train_iters, acc_ref)
        with open(args.single_out, "w") as f:
            json.dump(res, f)
        return 0

    info = versions(device)
    print(f"OT-Flow peer: torch {info['torch']}, torchdiffeq {info['torchdiffeq']}, "
          f"device {device} ({info['device_name']}), threads {info['threads']}")
    print(f"model: d={cfg['d']}, m={cfg['m']}, nTh={cfg['n_th']}, r={cfg['r']}, batch={x.shape[0]}, "
          f"nt={cfg['nt']}, alpha [L, C, R]={cfg['alpha']}, Adam lr={cfg['lr']}")
    report = {"config": cfg, "batch": int(x.shape[0]), "device": device, "versions": info,
              "solver": "torchdiffeq.odeint method='rk4' (the 3/8-rule RK4 variant, 4 evaluations "
                        "per step), step_size=1/nt on [0, 1], direct backpropagation (no adjoint)",
              "checks": {}}

    print("1. validation in float64")
    ok = True
    if args.skip_golden:
        print("  golden: skipped (--skip-golden)")
    else:
        golden = args.golden or next((p for p in GOLDEN_CANDIDATES if os.path.exists(p)), None)
        if golden is None or not os.path.exists(golden):
            print("  golden: otflow_phi_golden.json not found (give --golden FILE or --skip-golden)")
            return 2
        report["checks"]["golden"] = check_golden(golden)
        ok &= report["checks"]["golden"]["ok"]
    if args.skip_reference:
        print("  reference: skipped (--skip-reference)")
    elif not os.path.exists(os.path.join(args.weights, "reference.json")):
        print(f"  reference: {args.weights}/reference.json not found (give --skip-reference if intended)")
        return 2
    else:
        report["checks"]["reference"] = check_reference(cfg, arrays, x, args.weights, device, args.f64_chunk)
        ok &= report["checks"]["reference"]["ok"]
    if not ok:
        print("validation FAILED: not benchmarking")
        if args.out:
            with open(args.out, "w") as f:
                json.dump(report, f, indent=1)
        return 1
    if odeint is None:
        print(f"torchdiffeq cannot be imported ({TORCHDIFFEQ_ERROR}); give --torchdiffeq-path DIR")
        return 2

    grid = torchdiffeq_grid(cfg["nt"], device)
    report["torchdiffeq_grid"] = "step_size=1/nt" if grid is None else "explicit linspace(0,1,nt+1)"
    acc_path = None
    acc_ref = None
    if not args.no_accuracy:
        t0 = time.perf_counter()
        J38, g38, nfe = f64_torchdiffeq(cfg, arrays, x, device, grid, args.f64_chunk)
        Jc = report["checks"].get("reference", {}).get("J_here")
        if Jc is None:
            Jc = f64_classic(cfg, arrays, x, device, args.f64_chunk)[0]["J"]
        print(f"  torchdiffeq 'rk4' is the 3/8-rule variant (4 evaluations per step, {nfe} in all "
              f"for nt={cfg['nt']}): float64 J = {J38:.12g}, classic RK4 J = {Jc:.12g}, "
              f"rel diff {rel(J38, Jc):.1e} ({time.perf_counter() - t0:.1f} s)")
        report["torchdiffeq_f64"] = {"J": J38, "classic_J": Jc, "rel_diff": rel(J38, Jc), "nfe": nfe}
        acc_ref = (J38, g38)
        if device == "cpu":
            fd, acc_path = tempfile.mkstemp(suffix=".npz", prefix="otflow_acc_")
            os.close(fd)
            np.savez(acc_path, __J__=np.float64(J38), **g38)
    else:
        print("  (torchdiffeq 'rk4' is the 3/8-rule variant: 4 evaluations per step)")
    if args.validate_only:
        if args.out:
            with open(args.out, "w") as f:
                json.dump(report, f, indent=1)
        return 0

    print(f"2-3. benchmark: torchdiffeq.odeint(method='rk4' [3/8 rule], step_size=1/{cfg['nt']}), "
          f"backprop through the solver (no adjoint), Adam; {args.warmup} warm-up + {args.iters} timed "
          f"iterations, {args.train_iters} training iterations per precision")
    results = []
    for prec in args.precision_list:
        t0 = time.perf_counter()
        if device == "cpu":
            res = run_single_subprocess(prec, args, acc_path)
        else:
            try:
                res = run_precision(prec, cfg, arrays, x, device, grid, args.warmup, args.iters,
                                    args.train_iters, acc_ref)
            except (RuntimeError, torch.cuda.OutOfMemoryError) as e:  # OOM, unsupported op
                res = {"precision": prec, "error": f"{type(e).__name__}: {e}"}
            gc.collect()
            torch.cuda.empty_cache()
        res["wall_s"] = time.perf_counter() - t0
        if "error" in res:
            print(f"  {prec}: error: {res['error']}")
        else:
            t = res.get("train", {})
            print(f"  {prec}: median {res['median_s']:.4f} s/iter, {res['mem_kind'].split(':')[0]} "
                  f"{fmt_bytes(res['peak_mem_bytes'])}, nfe/iter {res['nfe_per_iter']:g}"
                  + (f", loss {t['first_loss']:.6g} -> {t['last_loss']:.6g}" if t else "")
                  + f" ({res['wall_s']:.0f} s)")
        results.append(res)
    if acc_path:
        os.unlink(acc_path)
    report["results"] = results
    print_table(results, device)
    print("(torchdiffeq 'rk4' = 3/8-rule RK4, 4 evaluations per step. 1st inf grad: gradient "
          "non-finite after unscaling (f16: GradScaler then skips the step). grad rel err: first "
          "step's unscaled gradient (after any skipped f16 steps, at the initial parameters) against "
          "the float64 torchdiffeq gradient)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.out}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(ARGS))
