#!/usr/bin/env python3
"""The yardstick: train the same nets as barecnn in PyTorch, with the same data, batch size,
optimizer and epochs, and report seconds per epoch, images/s, test accuracy and peak memory.

    python3 profiling/compare_pytorch.py --device cpu --arch paper --batch 64 --epochs 1 \
        --limit 12000 --threads 2 --json /tmp/torch-cpu-paper.json
    python3 profiling/compare_pytorch.py --device cuda --mode compile --arch deep --epochs 3

What is the same as `barecnn train`:
  - the net: torch.nn.Sequential with the layers of the barecnn arch spec (presets paper, lenet5,
    deep, or any spec of the grammar in DESIGN.md), a Flatten before the first dense layer that
    follows a 4-D tensor, softmax cross-entropy on the logits;
  - the data: Fashion-MNIST IDX .gz files read with gzip + numpy (no download, no torchvision),
    --limit N keeps the first N training images, the test set stays whole; images are normalized
    as (x/255 - mean)/std with the mean/std of the training images used, one batch at a time from
    a uint8 copy, as barecnn's gather_normalize does;
  - the schedule: a new permutation each epoch, batches of --batch, drop_last (barecnn's epoch has
    floor(n/batch) steps); SGD (momentum 0.9, lr 0.01) or Adam, float32;
  - on CUDA the whole data set stays on the GPU (uint8), indexed by the epoch's permutation, and
    the loss/accuracy sums stay on the device until the end of the epoch (no host sync inside).

The epoch time covers the training steps only (as barecnn's), not the test-set evaluation. With
--mode compile (torch.compile(mode="reduce-overhead"), PyTorch >= 2) the first epoch includes the
compilation; the summary takes the fastest epoch. The last line printed is a one-line summary.
"""
import argparse
import gzip
import json
import os
import re
import resource
import struct
import sys
import time

try:
    import numpy as np
except ImportError as e:
    print(f"compare_pytorch: numpy is not importable ({e}); on Debian: apt-get install python3-numpy python3-torch "
          f"(and run /usr/bin/python3)", file=sys.stderr)
    sys.exit(2)

PRESETS = {
    "paper": "conv(32,5,pad=2) relu maxpool(2) dense(128) relu dense(10)",
    "lenet5": "conv(6,5,pad=2) tanh avgpool(2) conv(16,5) tanh avgpool(2) dense(120) tanh dense(84) tanh dense(10)",
    "deep": "conv(32,3,pad=1) relu conv(32,3,pad=1) relu maxpool(2) conv(64,3,pad=1) relu conv(64,3,pad=1) relu "
            "maxpool(2) dense(256) relu dense(10)",
}
DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"


def fail(msg, code=2):
    print(f"compare_pytorch: {msg}", file=sys.stderr)
    sys.exit(code)


# ---- data ----------------------------------------------------------------------------------------

def read_idx(path):
    """An IDX file (optionally .gz) as a numpy uint8 array of its dimensions."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        fail(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        fail(f"{path}: header says {dims} ({int(np.prod(dims))} bytes) but the file holds {body.size}")
    return body.reshape(dims)


def find_idx(data_dir, stem):
    for name in (stem + ".gz", stem):
        p = os.path.join(data_dir, name)
        if os.path.exists(p):
            return p
    fail(f"{data_dir}: no {stem}[.gz] (expected the four Fashion-MNIST/MNIST IDX files; "
         f"install dataset-fashion-mnist or pass --data DIR)")


def load_data(data_dir, limit):
    tr_x = read_idx(find_idx(data_dir, "train-images-idx3-ubyte"))
    tr_y = read_idx(find_idx(data_dir, "train-labels-idx1-ubyte"))
    te_x = read_idx(find_idx(data_dir, "t10k-images-idx3-ubyte"))
    te_y = read_idx(find_idx(data_dir, "t10k-labels-idx1-ubyte"))
    if limit and limit > 0:
        tr_x, tr_y = tr_x[:limit], tr_y[:limit]
    return tr_x, tr_y, te_x, te_y


# ---- the net -------------------------------------------------------------------------------------

def parse_spec(spec):
    """[(name, [positional args], {key: value})] from a barecnn arch spec."""
    layers = []
    for m in re.finditer(r"([a-z_0-9]+)(?:\(([^)]*)\))?", spec):
        name, args = m.group(1), m.group(2)
        pos, kw = [], {}
        for a in (args.split(",") if args else []):
            a = a.strip()
            if "=" in a:
                k, v = a.split("=", 1)
                kw[k.strip()] = float(v)
            elif a:
                pos.append(float(a))
        layers.append((name, pos, kw))
    return layers


def build_net(spec, in_shape, nn):
    """torch.nn.Sequential of the spec for inputs of in_shape (C, H, W)."""
    c, h, w = in_shape
    flat = None  # features once flattened
    mods = []
    for name, pos, kw in parse_spec(spec):
        if name == "conv":
            out, k = int(pos[0]), int(pos[1])
            s, p = int(kw.get("stride", 1)), int(kw.get("pad", 0))
            mods.append(nn.Conv2d(c, out, k, stride=s, padding=p))
            c, h, w = out, (h - k + 2 * p) // s + 1, (w - k + 2 * p) // s + 1
        elif name in ("maxpool", "avgpool", "l2pool"):
            k = int(pos[0])
            s = int(kw.get("stride", k))
            mods.append({"maxpool": lambda: nn.MaxPool2d(k, s), "avgpool": lambda: nn.AvgPool2d(k, s),
                         "l2pool": lambda: nn.LPPool2d(2, k, s)}[name]())
            h, w = (h - k) // s + 1, (w - k) // s + 1
        elif name == "flatten":
            mods.append(nn.Flatten())
            flat = c * h * w
        elif name == "dense":
            if flat is None:
                mods.append(nn.Flatten())
                flat = c * h * w
            mods.append(nn.Linear(flat, int(pos[0])))
            flat = int(pos[0])
        elif name == "relu":
            mods.append(nn.ReLU())
        elif name == "tanh":
            mods.append(nn.Tanh())
        elif name == "sigmoid":
            mods.append(nn.Sigmoid())
        elif name == "leaky_relu":
            mods.append(nn.LeakyReLU(pos[0] if pos else 0.01))
        elif name == "elu":
            mods.append(nn.ELU(pos[0] if pos else 1.0))
        elif name == "softplus":
            mods.append(nn.Softplus())
        elif name == "identity":
            mods.append(nn.Identity())
        else:
            fail(f"--arch: layer '{name}' has no PyTorch equivalent here "
                 f"(conv, maxpool, avgpool, l2pool, flatten, dense, relu, tanh, sigmoid, leaky_relu, elu, softplus, identity)")
    return nn.Sequential(*mods)


# ---- training ------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--mode", choices=["eager", "compile"], default="eager")
    ap.add_argument("--arch", default="paper", help="preset (paper, lenet5, deep) or an arch spec")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    ap.add_argument("--limit", type=int, default=0, help="train on the first N training images")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    if a.batch < 1 or a.epochs < 1:
        fail("--batch and --epochs must be >= 1")

    try:
        import torch
        from torch import nn
    except ImportError as e:
        fail(f"PyTorch is not importable ({e}); on Debian: apt-get install python3-torch (run /usr/bin/python3)")
    if a.device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda: torch.cuda.is_available() is False (no GPU, or a CPU-only PyTorch build)")
    if a.mode == "compile" and not hasattr(torch, "compile"):
        fail(f"--mode compile needs torch.compile (PyTorch >= 2.0); this is PyTorch {torch.__version__}")
    threads = a.threads if a.threads > 0 else (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    torch.manual_seed(a.seed)
    dev = torch.device(a.device)
    spec = PRESETS.get(a.arch, a.arch)

    tr_x, tr_y, te_x, te_y = load_data(a.data, a.limit)
    n = tr_x.shape[0]
    B = min(a.batch, n)
    steps = n // B  # drop_last
    mean = float(tr_x.astype(np.float64).mean() / 255.0)
    std = float(np.sqrt(((tr_x.astype(np.float64) / 255.0 - mean) ** 2).mean()))
    # uint8 on the device; normalized one batch at a time
    X = torch.from_numpy(np.array(tr_x)).to(dev).unsqueeze(1)  # (n, 1, 28, 28) uint8
    Y = torch.from_numpy(tr_y.astype(np.int64)).to(dev)
    TX = torch.from_numpy(np.array(te_x)).to(dev).unsqueeze(1)
    TY = torch.from_numpy(te_y.astype(np.int64)).to(dev)

    def norm(xb):
        return (xb.float() / 255.0 - mean) / std

    model = build_net(spec, (1, tr_x.shape[1], tr_x.shape[2]), nn).to(dev)
    if a.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=a.momentum)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    loss_fn = nn.CrossEntropyLoss()
    fwd = torch.compile(model, mode="reduce-overhead") if a.mode == "compile" else model
    gen = torch.Generator(device="cpu")
    gen.manual_seed(a.seed)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def evaluate():
        model.eval()
        correct = torch.zeros((), dtype=torch.int64, device=dev)
        with torch.no_grad():
            for i in range(0, TX.shape[0], 1000):
                logits = model(norm(TX[i:i + 1000]))
                correct += (logits.argmax(1) == TY[i:i + 1000]).sum()
        model.train()
        return correct.item() / TX.shape[0]

    print(f"pytorch {torch.__version__} on {a.device} ({a.mode}, {threads} threads), arch {a.arch}: {spec}")
    print(f"  {n} training images, batch {B}, {steps} steps/epoch, {a.optimizer} lr {a.lr}"
          + (f" momentum {a.momentum}" if a.optimizer == "sgd" else ""))
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    epochs = []
    for epoch in range(1, a.epochs + 1):
        perm = torch.randperm(n, generator=gen).to(dev)
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), dtype=torch.int64, device=dev)
        sync()
        t0 = time.perf_counter()
        for s in range(steps):
            idx = perm[s * B:(s + 1) * B]
            xb, yb = norm(X[idx]), Y[idx]
            logits = fwd(xb)
            loss = loss_fn(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
            correct += (logits.detach().argmax(1) == yb).sum()
        sync()
        secs = time.perf_counter() - t0
        e = {"epoch": epoch, "seconds": secs, "images_per_second": steps * B / secs,
             "train_loss": loss_sum.item() / steps, "train_accuracy": correct.item() / (steps * B),
             "test_accuracy": evaluate()}
        epochs.append(e)
        print(f"  epoch {epoch}: {secs:.2f} s, {e['images_per_second']:.0f} img/s, train loss {e['train_loss']:.4f}, "
              f"train acc {e['train_accuracy']:.4f}, test acc {e['test_accuracy']:.4f}")

    if dev.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
        peak_kind = "torch.cuda.max_memory_allocated"
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        peak_kind = "ru_maxrss"
    best = min(epochs, key=lambda e: e["seconds"])
    full_epoch = best["seconds"] * (60000 // B) / steps  # scaled to the full 60,000 images
    result = {
        "framework": "pytorch", "torch_version": torch.__version__, "device": a.device, "mode": a.mode,
        "threads": threads, "arch": a.arch, "spec": spec, "batch": B, "optimizer": a.optimizer, "lr": a.lr,
        "momentum": a.momentum if a.optimizer == "sgd" else None, "limit": a.limit, "train_images": n,
        "steps_per_epoch": steps, "epochs": epochs, "seconds_per_epoch": best["seconds"],
        "images_per_second": best["images_per_second"], "seconds_per_60000_image_epoch": full_epoch,
        "test_accuracy": epochs[-1]["test_accuracy"], "peak_memory_mib": peak_mib, "peak_memory_kind": peak_kind,
        "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None,
    }
    if a.json:
        tmp = a.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2)
        os.replace(tmp, a.json)
    print(f"{a.arch} b{B} {a.device} {a.mode}: {best['seconds']:.2f} s/epoch ({steps} steps; "
          f"{full_epoch:.2f} s per 60000-image epoch), {best['images_per_second']:.0f} img/s, "
          f"test acc {result['test_accuracy']:.4f}, peak {peak_mib:.0f} MiB ({peak_kind})")


if __name__ == "__main__":
    main()
