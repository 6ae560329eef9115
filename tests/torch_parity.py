#!/usr/bin/env python3
"""Loads a barecnn model.safetensors into the equivalent torch.nn.Sequential with
load_state_dict(strict=True) and checks that PyTorch's logits and predictions equal those of
`barecnn predict` (a CSV). Exit 0: equal; 1: different; 77: PyTorch is not installed (skip).

usage: torch_parity.py MODEL.safetensors IMAGES.idx[.gz] PREDICTIONS.csv
"""
import gzip
import json
import re
import struct
import sys

try:
    import numpy as np
    import torch
    import torch.nn as nn
except ImportError as e:  # pragma: no cover
    print(f"skip: {e}")
    sys.exit(77)


def read_safetensors(path):
    """The format by hand (no safetensors package needed): u64 header length, JSON, raw bytes."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = blob[8 + n:]
    dt = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32, "U8": np.uint8}
    tensors = {}
    for name, t in header.items():
        b, e = t["data_offsets"]
        arr = np.frombuffer(data[b:e], dtype=dt[t["dtype"]]).reshape(t["shape"])
        tensors[name] = torch.from_numpy(arr.copy())
    return tensors, meta


class BinaryStep(nn.Module):
    def forward(self, x):
        return (x >= 0).to(x.dtype)


class Arctan(nn.Module):
    def forward(self, x):
        return torch.atan(x)


def build(spec, input_chw):
    """torch.nn.Sequential for a canonical barecnn spec (the model's __metadata__ "arch")."""
    c, h, w = input_chw
    mods = []
    shape = (c, h, w)
    for tok in re.findall(r"[a-z_0-9]+(?:\([^)]*\))?", spec):
        name, _, args = tok.partition("(")
        args = [a for a in args.rstrip(")").split(",") if a]
        pos = [a for a in args if "=" not in a]
        kw = dict(a.split("=") for a in args if "=" in a)
        if name == "conv":
            k = pos[1].split("x")
            kh, kw_ = int(k[0]), int(k[-1])
            s, p = int(kw.get("stride", 1)), int(kw.get("pad", 0))
            mods.append(nn.Conv2d(shape[0], int(pos[0]), (kh, kw_), stride=s, padding=p))
            shape = (int(pos[0]), (shape[1] - kh + 2 * p) // s + 1, (shape[2] - kw_ + 2 * p) // s + 1)
        elif name in ("maxpool", "avgpool", "l2pool"):
            k = pos[0].split("x")
            kh, kw_ = int(k[0]), int(k[-1])
            s = int(kw.get("stride", kh))
            m = {"maxpool": nn.MaxPool2d((kh, kw_), s), "avgpool": nn.AvgPool2d((kh, kw_), s),
                 "l2pool": nn.LPPool2d(2, (kh, kw_), s)}[name]
            mods.append(m)
            shape = (shape[0], (shape[1] - kh) // s + 1, (shape[2] - kw_) // s + 1)
        elif name == "flatten":
            mods.append(nn.Flatten())
            shape = (int(np.prod(shape)),)
        elif name == "dense":
            mods.append(nn.Linear(shape[0], int(pos[0])))
            shape = (int(pos[0]),)
        else:
            a = float(pos[0]) if pos else None
            mods.append({"relu": nn.ReLU(), "sigmoid": nn.Sigmoid(), "tanh": nn.Tanh(), "softplus": nn.Softplus(),
                         "identity": nn.Identity(), "softmax": nn.Softmax(dim=1), "binary_step": BinaryStep(),
                         "arctan": Arctan(), "leaky_relu": nn.LeakyReLU(a if a is not None else 0.01),
                         "elu": nn.ELU(a if a is not None else 1.0)}[name])
    return nn.Sequential(*mods)


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
    tensors, meta = read_safetensors(model_path)
    chw = tuple(int(x) for x in meta["input"].split("x"))
    net = build(meta["arch"], chw)
    net.load_state_dict(tensors, strict=True)
    net.eval()
    x = read_idx_images(images_path).astype(np.float32) / 255.0
    x = (x - np.float32(meta["normalize_mean"])) / np.float32(meta["normalize_std"])
    with torch.no_grad():
        logits = net(torch.from_numpy(x)).numpy()
    rows = np.loadtxt(csv_path, delimiter=",", skiprows=1, ndmin=2)
    theirs, pred = rows[:, 2:], rows[:, 1].astype(int)
    ok = True
    if theirs.shape != logits.shape:
        print(f"shape: barecnn {theirs.shape} vs torch {logits.shape}")
        return 1
    diff = np.abs(theirs - logits).max()
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
