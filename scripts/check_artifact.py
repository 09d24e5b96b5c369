#!/usr/bin/env python3
"""Checks socflow files from Python: the interoperability half of runtime/tests/all/artifact.rs.

usage: check_artifact.py MANIFEST.json

The manifest (written by the Rust test) lists:

- "artifacts": socflow model files, each with the expected model card and tensors
  ({"shape": [...], "values": [...]} by name). Each file is read with
  safetensors.numpy.load_file and safe_open(..., framework="np").metadata(); the
  metadata keys, the card and every tensor (name, dtype, shape, exact values) are
  compared. With "resave", the tensors and metadata are written back with
  safetensors.numpy.save_file for the Rust side to load.
- "npy": .npy files written by socflow's npy module, read with numpy.load and compared
  (dtype, shape, C order, exact values).
- "write_npy": arrays for numpy.save to write (dtype, shape, "C" or "F" order) for the
  Rust side to read.

Exits 0 and prints "check_artifact: ok" when everything matches; otherwise prints what
differs to stderr and exits 1.
"""

import json
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

STORAGE = {"f16": np.float16, "f32": np.float32, "f64": np.float64}


def fail(msg):
    print(f"check_artifact: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check_artifact(entry):
    path = entry["path"]
    tensors = load_file(path)
    with safe_open(path, framework="np") as f:
        meta = f.metadata()
        keys = set(f.keys())
    if meta is None:
        fail(f"{path}: no __metadata__")
    if set(meta) != {"format", "format_version", "card"}:
        fail(f"{path}: metadata keys {sorted(meta)}")
    # Version 1: the base format; 2 adds a card's control_law; 3 a score model's vpsde.
    if meta["format"] != "socflow" or meta["format_version"] not in ("1", "2", "3"):
        fail(f"{path}: format {meta['format']!r} version {meta['format_version']!r}")
    card = json.loads(meta["card"])
    if card != entry["card"]:
        fail(f"{path}: card differs:\n  file:     {card}\n  expected: {entry['card']}")
    expected = entry["tensors"]
    if keys != set(expected) or set(tensors) != set(expected):
        fail(f"{path}: tensors {sorted(tensors)}, expected {sorted(expected)}")
    dtype = STORAGE[card["dtype"]]
    for name, want in expected.items():
        t = tensors[name]
        if t.dtype != dtype:
            fail(f"{path}: {name} has dtype {t.dtype}, card says {card['dtype']}")
        if list(t.shape) != want["shape"]:
            fail(f"{path}: {name} has shape {list(t.shape)}, expected {want['shape']}")
        values = np.array(want["values"], dtype=np.float64).reshape(want["shape"])
        if not np.array_equal(t.astype(np.float64), values):
            diff = np.max(np.abs(t.astype(np.float64) - values))
            fail(f"{path}: {name} values differ (max abs diff {diff})")
    if entry.get("resave"):
        save_file(tensors, entry["resave"], metadata=meta)
    print(f"artifact {path}: {card['kind']} {card['architecture']['type']} {card['dtype']}, "
          f"{len(tensors)} tensors ok")


def check_npy(entry):
    path = entry["path"]
    a = np.load(path, allow_pickle=False)
    if a.dtype.str != entry["dtype"]:
        fail(f"{path}: dtype {a.dtype.str}, expected {entry['dtype']}")
    if list(a.shape) != entry["shape"]:
        fail(f"{path}: shape {list(a.shape)}, expected {entry['shape']}")
    if not a.flags["C_CONTIGUOUS"]:
        fail(f"{path}: not C-ordered")
    want = np.array(entry["values"], dtype=np.float64).reshape(entry["shape"])
    if not np.array_equal(a.astype(np.float64), want):
        fail(f"{path}: values differ")
    print(f"npy {path}: {a.dtype.str} {list(a.shape)} ok")


def write_npy(entry):
    a = np.array(entry["values"], dtype=np.float64).reshape(entry["shape"])
    a = a.astype(entry["dtype"])
    if entry.get("order") == "F":
        a = np.asfortranarray(a)
    np.save(entry["path"], a, allow_pickle=False)


def main():
    if len(sys.argv) != 2:
        fail("usage: check_artifact.py MANIFEST.json")
    with open(sys.argv[1]) as f:
        manifest = json.load(f)
    for entry in manifest.get("artifacts", []):
        check_artifact(entry)
    for entry in manifest.get("npy", []):
        check_npy(entry)
    for entry in manifest.get("write_npy", []):
        write_npy(entry)
    n = len(manifest.get("artifacts", [])), len(manifest.get("npy", []))
    print(f"check_artifact: ok ({n[0]} artifacts, {n[1]} npy files)")


if __name__ == "__main__":
    main()
