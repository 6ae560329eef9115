#!/usr/bin/env python3
"""Loads a barecnn model.safetensors into the equivalent torch.nn.Sequential with
tools/barecnn_torch.py (load_state_dict(strict=True)) and checks that PyTorch's logits and predictions equal those of
`barecnn predict` (a CSV). Exit 0: equal; 1: different; 77: PyTorch is not installed (skip).

usage: torch_parity.py MODEL.safetensors IMAGES.idx[.gz] PREDICTIONS.csv
"""
import csv
import gzip
import os
import struct
import sys

try:
    import numpy as np
    import torch
except ImportError as e:  # pragma: no cover
    print(f"skip: {e}")
    sys.exit(77)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
import barecnn_torch  # noqa: E402  (the loader README shows: torch and the standard library only)


def read_idx_images(path):
    with open(path, "rb") as f:
        blob = f.read()
    if blob[:2] == b"\x1f\x8b":
        blob = gzip.decompress(blob)
    magic, n, r, c = struct.unpack(">IIII", blob[:16])
    assert magic == 0x803, hex(magic)
    return np.frombuffer(blob[16:16 + n * r * c], dtype=np.uint8).reshape(n, 1, r, c)


def main():
    model_path, images_path, csv_path = sys.argv[1:4]
    net, meta = barecnn_torch.load(model_path)  # load_state_dict(strict=True)
    x = read_idx_images(images_path).astype(np.float32) / 255.0
    x = (x - np.float32(meta["normalize_mean"])) / np.float32(meta["normalize_std"])
    with torch.no_grad():
        logits = net(torch.from_numpy(x)).numpy()
    with open(csv_path, newline="") as f:
        table = list(csv.reader(f))
    header, body = table[0], table[1:]
    logit_cols = [i for i, h in enumerate(header) if h.startswith("logit_")]
    theirs = np.array([[float(r[i]) for i in logit_cols] for r in body], dtype=np.float64).reshape(len(body), -1)
    pred = np.array([int(r[header.index("predicted")]) for r in body])
    prob = np.array([float(r[header.index("probability")]) for r in body])
    ok = True
    if theirs.shape != logits.shape:
        print(f"shape: barecnn {theirs.shape} vs torch {logits.shape}")
        return 1
    diff = np.abs(theirs - logits).max()
    # The probability column: softmax of the logits at the predicted class.
    z = logits.astype(np.float64)
    sm = np.exp(z - z.max(1, keepdims=True))
    sm /= sm.sum(1, keepdims=True)
    pdiff = np.abs(sm[np.arange(len(pred)), pred] - prob).max()
    if pdiff > 1e-4:
        print(f"probability column differs from torch's softmax by {pdiff:.3g}")
        ok = False
    mism = int((pred != logits.argmax(1)).sum())
    # float32 sums in different orders: logits agree to ~1e-5 relative
    tol = 1e-4 * max(1.0, float(np.abs(logits).max()))
    print(f"{model_path}: {len(pred)} images, max |logit diff| {diff:.3g} (tol {tol:.3g}), "
          f"{mism} different predictions")
    if diff > tol:
        ok = False
    # A prediction may only differ where the top two logits are within the tolerance.
    top2 = np.sort(logits, axis=1)[:, -2:]
    for i in np.nonzero(pred != logits.argmax(1))[0]:
        if top2[i, 1] - top2[i, 0] > tol:
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
