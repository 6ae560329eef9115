#!/usr/bin/env python3
"""A barecnn model in PyTorch, with nothing but torch installed.

    import sys; sys.path.insert(0, "tools")
    import barecnn_torch
    net, meta = barecnn_torch.load("runs/latest/model.safetensors")  # strict load_state_dict, eval()
    x = (pixels / 255 - float(meta["normalize_mean"])) / float(meta["normalize_std"])  # (N, C, H, W)
    probabilities = net(x).softmax(1)

read_safetensors() reads the file's layout with the standard library (an 8-byte little-endian
header length, a JSON header, the raw tensors); build() makes the torch.nn.Sequential of a
canonical barecnn arch spec (the model's __metadata__ "arch"), one module per barecnn layer, so
the parameter names "<layer>.weight" / "<layer>.bias" (and batchnorm's buffers "<layer>.running_mean",
".running_var", ".num_batches_tracked") are those of the file. Also a command:
`python3 tools/barecnn_torch.py MODEL.safetensors` prints the Sequential.
"""
import json
import re
import struct
import sys

import torch
import torch.nn as nn

_DTYPES = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8}


def read_safetensors(path):
    """({name: tensor}, {metadata key: str}) of a .safetensors file."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = blob[8 + n:]
    tensors = {}
    for name, t in header.items():
        b, e = t["data_offsets"]
        flat = torch.frombuffer(bytearray(data[b:e]), dtype=_DTYPES[t["dtype"]])
        tensors[name] = flat.reshape(t["shape"])
    return tensors, meta


class BinaryStep(nn.Module):
    """barecnn's binary_step: 1 where x >= 0, else 0."""

    def forward(self, x):
        return (x >= 0).to(x.dtype)


class Arctan(nn.Module):
    def forward(self, x):
        return torch.atan(x)


def build(spec, input_chw):
    """torch.nn.Sequential for a canonical barecnn spec and an input of (C, H, W)."""
    c, h, w = input_chw
    mods = []
    shape = (c, h, w)
    for tok in re.findall(r"[a-z_0-9]+(?:\([^)]*\))?", spec.lower()):
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
            mods.append({"maxpool": nn.MaxPool2d((kh, kw_), s), "avgpool": nn.AvgPool2d((kh, kw_), s),
                         "l2pool": nn.LPPool2d(2, (kh, kw_), s)}[name])
            shape = (shape[0], (shape[1] - kh) // s + 1, (shape[2] - kw_) // s + 1)
        elif name == "flatten":
            mods.append(nn.Flatten())
            n = 1
            for d in shape:
                n *= d
            shape = (n,)
        elif name == "dense":
            mods.append(nn.Linear(shape[0], int(pos[0])))
            shape = (int(pos[0]),)
        elif name == "batchnorm":  # per channel after an image, per feature after a vector
            mods.append(nn.BatchNorm2d(shape[0]) if len(shape) == 3 else nn.BatchNorm1d(shape[0]))
        elif name == "dropout":
            mods.append(nn.Dropout(float(pos[0]) if pos else 0.5))
        else:
            a = float(pos[0]) if pos else None
            mods.append({"relu": nn.ReLU(), "sigmoid": nn.Sigmoid(), "tanh": nn.Tanh(), "softplus": nn.Softplus(),
                         "identity": nn.Identity(), "softmax": nn.Softmax(dim=1), "binary_step": BinaryStep(),
                         "arctan": Arctan(), "leaky_relu": nn.LeakyReLU(a if a is not None else 0.01),
                         "elu": nn.ELU(a if a is not None else 1.0)}[name])
    return nn.Sequential(*mods)


def load(path):
    """(the model's nn.Sequential with its weights, in eval mode; the file's metadata)."""
    tensors, meta = read_safetensors(path)
    # A checkpoint.safetensors holds the model's tensors and the optimizer's state besides.
    tensors = {k: v for k, v in tensors.items() if k not in ("optimizer.m", "optimizer.v", "epoch_metrics")}
    net = build(meta["arch"], tuple(int(x) for x in meta["input"].split("x")))
    net.load_state_dict(tensors, strict=True)
    return net.eval(), meta


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: barecnn_torch.py MODEL.safetensors")
    net, meta = load(sys.argv[1])
    print(net)
    print(f"input {meta['input']}, normalize (x/255 - {meta['normalize_mean']}) / {meta['normalize_std']}, "
          f"classes {meta.get('class_names')}")
