#!/usr/bin/env python3
"""Roofline floor of one training epoch of the barecnn presets (profiling/RESULTS.md).

FLOPs per image and step: convolution forward 2*K*OH*OW*C*kh*kw; its weight gradient the same; its
input gradient the same except for the first layer (nothing needs it); dense likewise with
2*IN*OUT. Pooling, activations, loss and optimizer are counted as bytes, not FLOPs (they are
memory-bound and small).
Fewest bytes per step: the parameters and the momentum buffer each read and written once
(16 bytes per parameter: gradients never leave the chip in the ideal fused step), plus each input
image (1 byte per pixel) and label read once. Everything else could in principle stay on chip.
"""
import argparse

PRESETS = {
    "paper": "conv(32,5,pad=2) relu maxpool(2) dense(128) relu dense(10)",
    "lenet5": "conv(6,5,pad=2) tanh avgpool(2) conv(16,5) tanh avgpool(2) dense(120) tanh dense(84) tanh dense(10)",
    "deep": "conv(32,3,pad=1) relu conv(32,3,pad=1) relu maxpool(2) conv(64,3,pad=1) relu conv(64,3,pad=1) relu "
            "maxpool(2) dense(256) relu dense(10)",
}
CARDS = {  # FP32 (non-tensor-core) peak FLOP/s and HBM bandwidth, from the vendor data sheets
    "H100 SXM": (67e12, 3.35e12),
    "H100 PCIe": (51e12, 2.0e12),
    "H200": (67e12, 4.8e12),
}


def layers(spec):
    for tok in spec.split():
        name, _, args = tok.partition("(")
        args = args.rstrip(")").split(",") if args else []
        pos = [a for a in args if "=" not in a]
        kw = dict(a.split("=") for a in args if "=" in a)
        yield name, pos, kw


def count(spec, c=1, h=28, w=28):
    flops, params, first = 0, 0, True
    shape = (c, h, w)
    for name, pos, kw in layers(spec):
        if name == "conv":
            k_out, k = int(pos[0]), int(pos[1])
            s, p = int(kw.get("stride", 1)), int(kw.get("pad", 0))
            C, H, W = shape
            oh, ow = (H - k + 2 * p) // s + 1, (W - k + 2 * p) // s + 1
            f = 2 * k_out * oh * ow * C * k * k
            flops += f * (2 if first else 3)
            params += k_out * C * k * k + k_out
            shape, first = (k_out, oh, ow), False
        elif name in ("maxpool", "avgpool", "l2pool"):
            k = int(pos[0]); s = int(kw.get("stride", k))
            C, H, W = shape
            shape = (C, (H - k) // s + 1, (W - k) // s + 1)
        elif name == "dense":
            n_in = 1
            for d in shape:
                n_in *= d
            out = int(pos[0])
            flops += 2 * n_in * out * (2 if first else 3)
            params += n_in * out + out
            shape, first = (out,), False
    return flops, params


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=60000)
    a = ap.parse_args()
    print("| preset | params | GFLOP/image (train) | GFLOP/epoch | batch | GB/epoch (fewest) | "
          + " | ".join(f"floor {c} (ms)" for c in CARDS) + " |")
    print("|---|---|---|---|---|---|" + "---|" * len(CARDS))
    for name, spec in PRESETS.items():
        f, p = count(spec)
        for batch in (64, 256, 1024):
            steps = a.images // batch
            flop = f * steps * batch
            byts = 16 * p * steps + (784 + 1) * steps * batch
            floors = []
            for peak, bw in CARDS.values():
                floors.append(max(flop / peak, byts / bw) * 1e3)
            print(f"| {name} | {p:,} | {f/1e9:.5f} | {flop/1e9:.1f} | {batch} | {byts/1e9:.2f} | "
                  + " | ".join(f"{x:.2f}" for x in floors) + " |")


if __name__ == "__main__":
    main()
