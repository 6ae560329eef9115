#!/usr/bin/env python3
"""The yardstick: train the same nets as barecnn in PyTorch, with the same data, batch size,
optimizer and epochs, over one or several seeds, and report seconds per epoch, images/s, test
accuracy (mean and standard deviation over the seeds) and peak memory.

    python3 profiling/compare_pytorch.py --device cpu --arch paper --batch 64 --epochs 1 \
        --limit 12000 --threads 2 --seeds 1,2 --json /tmp/torch-cpu-paper.json
    python3 profiling/compare_pytorch.py --device cuda --mode compile --arch deep --epochs 3 \
        --seeds 1,2,3 --data data-local/fashion-mnist --json torch-deep-compile.json
    python3 profiling/compare_pytorch.py --device cuda --epochs 5 --seeds 1,2,3 --lr 0.05 \
        --arch "conv(32,3,pad=1) batchnorm relu maxpool(2) dropout(0.25) dense(128) relu dense(10)" \
        --weight-decay 5e-4 --lr-schedule cosine --warmup-epochs 1 --augment crop:2,flip --json torch-bn.json

What is the same as `barecnn train`:
  - the net: torch.nn.Sequential with the layers of the barecnn arch spec (presets paper, lenet5,
    deep, fashion, or any spec of the grammar in DESIGN.md), a Flatten before the first dense layer that
    follows a 4-D tensor, softmax cross-entropy on the logits; `batchnorm` is nn.BatchNorm2d after a
    4-D tensor and nn.BatchNorm1d after a flat one (momentum 0.1, eps 1e-5, weight 1, bias 0, as
    barecnn's), `dropout(p)` is nn.Dropout(p) (p 0.5 by default); training runs in model.train()
    (batch statistics, dropout on), the test evaluation in model.eval() (running statistics, no
    dropout). Dropout's masks come from torch's generator (seeded with the run's seed), not
    barecnn's counter hash: the same distribution, other draws;
  - the initialization (--init barecnn, the default): He normal before ReLU-like nonlinearities,
    Xavier uniform otherwise, zero biases (docs/MATH.md); the numbers come from torch's generator,
    so only the distributions are the same. --init torch keeps PyTorch's default init;
  - the data: Fashion-MNIST IDX .gz files read with gzip + numpy (no download, no torchvision),
    --limit N keeps the first N training images, the test set stays whole; images are normalized
    as (x/255 - mean)/std with the mean/std of the training images used, one batch at a time from
    a uint8 copy, as barecnn's gather_normalize does;
  - the schedule: a new permutation each epoch, batches of --batch, drop_last (barecnn's epoch has
    floor(n/batch) steps); SGD (momentum 0.9, lr 0.01) or Adam, float32; --weight-decay W is
    torch.optim's weight_decay (W * theta added to every parameter's gradient, biases and
    batchnorm's weight and bias included, as barecnn's; not AdamW's decoupled decay);
  - the rate of every step (--lr-schedule constant|step:E1,E2,...:GAMMA|cosine[:E],
    --warmup-epochs N): lr_at() below is barecnn's lr_at (include/barecnn/optim.h, docs/MATH.md
    "Learning-rate schedules") line for line, in double from the float32 --lr and GAMMA, rounded
    to float32 once, with the same floor(n/batch) steps per epoch; it is written into the
    optimizer's param groups before every step (no torch lr_scheduler). `cosine` anneals over
    --epochs and is recorded as cosine:EPOCHS; --warmup-epochs must be less than --epochs and a
    cosine:E must cover --epochs, as barecnn refuses otherwise. The constant schedule without
    warmup trains at --lr itself, as before these flags;
  - the augmentation (--augment none|crop:P|flip|crop:P,flip): torchvision's
    RandomCrop((H, W), padding=P) then RandomHorizontalFlip() per sample, on the raw uint8 pixels
    before the normalization (so a padding pixel becomes (0 - mean)/std, like barecnn's), with
    plain tensor indexing (no torchvision). The shifts dy, dx (uniform in -P..P) and the flips
    (probability 1/2) of a whole epoch are drawn at its start, before the clock, from a CPU
    torch.Generator seeded with seed + 1000003 (not the permutation's generator, so the batches
    are those of --augment none): barecnn's distribution, not its draws. Evaluation never augments;
  - on CUDA the whole data set stays on the GPU (uint8), indexed by the epoch's permutation, and
    the loss/accuracy sums stay on the device until the end of the epoch (no host sync inside).

Seeds. Each seed of --seeds is one run from scratch: torch.manual_seed(seed) before the weights
are drawn (on the CPU, as nn.Module's default init does), and a permutation generator seeded with
the same seed. The net (and with --mode compile the compiled graph) is built once; each run copies
its freshly drawn weights into it in place and gets a new optimizer, so a second seed does not
compile again. Comparing accuracy over several seeds is the point: one run can be lucky by a few
tenths of a point.

Timing. The epoch time covers the training steps only (as barecnn's), not the test-set
evaluation. On CUDA, torch.backends.cudnn.benchmark is on (PyTorch's fastest setting for fixed
shapes); its autotuning, like torch.compile's compilation, lands in the first epoch of the first
run, which is why the summary reports the fastest epoch as well as the mean. TF32: by default
PyTorch lets cuDNN convolutions use TF32 tensor cores (torch.backends.cudnn.allow_tf32 = True)
while float32 matmuls stay IEEE (torch.backends.cuda.matmul.allow_tf32 = False); barecnn computes
in plain FP32. Both flags are recorded; --no-tf32 switches both off (a like-for-like FP32 run).

JSON (--json FILE; field names are stable, schema_version 1):
  framework "pytorch", schema_version 1, torch_version, python_version,
  mode "eager"|"compile", compile_mode ("reduce-overhead" or null),
  device "cpu"|"cuda", device_name (GPU name, or the CPU model), threads,
  arch (as given: preset name or spec), spec (the arch spec), batch, epochs (count), seeds [..],
  optimizer, lr, momentum (null for adam), init ("barecnn": barecnn's He/Xavier init with zero
  biases, the default; "torch": PyTorch's own), limit, train_images, steps_per_epoch, images_per_epoch,
  weight_decay (0 when off), lr_schedule (the --lr-schedule text as barecnn's summary.json writes it:
  "constant", "step:E1,...:GAMMA", "cosine:E" with its epochs), warmup_epochs (0 when off),
  augment (the --augment text, "none" when off),
  tf32_matmul, tf32_cudnn, float32_matmul_precision, cudnn_benchmark (null where not applicable),
  runs: one per seed, each {seed, epochs: [{epoch, seconds, images_per_second, train_loss,
        train_accuracy, test_accuracy, lr (the rate of the epoch's last step, as barecnn's
        "lr")}], epoch_seconds [..], fastest_epoch_seconds,
        images_per_second (at the fastest epoch), test_accuracy (after the last epoch),
        peak_memory_bytes (of that run), peak_train_memory_bytes (CUDA: the training steps only,
        without the test-set evaluation at batch 1000; else null)},
  fastest_epoch_seconds (over all runs), mean_epoch_seconds (over all epochs of all runs),
  images_per_second (at the fastest epoch), seconds_per_60000_image_epoch (fastest, scaled),
  test_accuracy (mean over runs of the last epoch's test accuracy, 0..1),
  test_accuracy_std (sample standard deviation, ddof=1; null with one run), test_accuracies [..],
  peak_memory_bytes (max over runs), peak_memory_kind ("torch.cuda.max_memory_allocated": tensors
  only, the data set included, not the CUDA context or the allocator's cache; on the CPU
  "ru_maxrss": the process's peak resident set, not comparable with a GPU figure),
  peak_train_memory_bytes (max over runs; CUDA only),
  peak_memory_reserved_bytes (CUDA: torch.cuda.max_memory_reserved; else null),
  dataset_device_bytes (bytes of the uint8 images and int64 labels held on the device).
The last line printed is a one-line summary.
"""
import argparse
import gzip
import json
import math
import os
import platform
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
    "fashion": "conv(32,3,pad=1) batchnorm relu conv(32,3,pad=1) batchnorm relu maxpool(2) dropout(0.25) "
               "conv(64,3,pad=1) batchnorm relu conv(64,3,pad=1) batchnorm relu maxpool(2) dropout(0.25) "
               "dense(256) batchnorm relu dropout(0.5) dense(10)",
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
        elif name == "batchnorm":  # per channel after an image, per feature after a vector
            mods.append(nn.BatchNorm2d(c) if flat is None else nn.BatchNorm1d(flat))
        elif name == "dropout":
            mods.append(nn.Dropout(pos[0] if pos else 0.5))
        else:
            fail(f"--arch: layer '{name}' has no PyTorch equivalent here (conv, maxpool, avgpool, l2pool, flatten, "
                 f"dense, relu, tanh, sigmoid, leaky_relu, elu, softplus, identity, batchnorm, dropout)")
    return nn.Sequential(*mods)


def init_like_barecnn(model, torch, nn):
    """barecnn's initialization (docs/MATH.md, Net::init_params) in place: the weights of a conv or
    dense layer whose next nonlinearity is ReLU, leaky ReLU or ELU are He normal N(0, 2/fan_in),
    others Xavier uniform U(-a, a), a = sqrt(6/(fan_in + fan_out)); biases 0. Drawn from torch's
    generator (so not barecnn's numbers, only its distributions). A batchnorm or dropout between
    the layer and its nonlinearity is looked past (neither is one); batchnorm keeps torch's weight 1
    and bias 0, which are barecnn's."""
    mods = list(model)
    acts = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Softplus, nn.Identity)
    with torch.no_grad():
        for j, m in enumerate(mods):
            if not isinstance(m, (nn.Conv2d, nn.Linear)):
                continue
            nxt = next((x for x in mods[j + 1:] if isinstance(x, acts)), None)
            relu_after = isinstance(nxt, (nn.ReLU, nn.LeakyReLU, nn.ELU))
            k = m.weight[0, 0].numel() if isinstance(m, nn.Conv2d) else 1
            fan_in, fan_out = m.weight.shape[1] * k, m.weight.shape[0] * k
            if relu_after:
                m.weight.normal_(0.0, (2.0 / fan_in) ** 0.5)
            else:
                a = (6.0 / (fan_in + fan_out)) ** 0.5
                m.weight.uniform_(-a, a)
            if m.bias is not None:
                m.bias.zero_()


# ---- rate schedule and augmentation ------------------------------------------------------------

def f32(x):
    """x rounded to float32 (as a Python float)."""
    return float(np.float32(x))


def parse_lr_schedule(text, epochs):
    """{"kind": "constant"|"step"|"cosine", "milestones": [..], "gamma": float32, "epochs": E} of an
    --lr-schedule text, with barecnn's rules (host/train/run_spec.cpp parse_lr_schedule; a bare
    cosine takes E = epochs)."""
    forms = "constant, step:E1,E2,...:GAMMA (e.g. step:30,60:0.1) or cosine[:E]"

    def bad(what):
        fail(f"--lr-schedule: expected {forms}; {what} in '{text}'")

    def whole(t):
        return int(t) if re.fullmatch(r"[0-9]{1,9}", t) and int(t) >= 1 else -1

    name, colon, rest = text.partition(":")
    name = name.lower()
    if name == "constant":
        if colon:
            bad(f"constant takes no arguments, found ':{rest}'")
        return {"kind": "constant", "milestones": [], "gamma": f32(0.1), "epochs": 0}
    if name == "cosine":
        e = epochs
        if colon:
            e = whole(rest)
            if e < 1:
                bad(f"cosine:E takes a whole number of epochs >= 1, found '{rest}'")
        return {"kind": "cosine", "milestones": [], "gamma": f32(0.1), "epochs": e}
    if name == "step":
        if ":" not in rest:
            bad("step needs its milestones and GAMMA, as step:E1,E2,...:GAMMA")
        lst, _, g = rest.partition(":")
        if not lst:
            bad(f"no milestone epochs before ':{g}'")
        ms = []
        for m in lst.split(","):
            e = whole(m)
            if e < 1:
                bad(f"a milestone should be a whole number of epochs >= 1, found '{m}'")
            if ms and e <= ms[-1]:
                bad(f"the milestones should increase, found {e} after {ms[-1]}")
            if len(ms) == 16:
                bad("at most 16 milestones")
            ms.append(e)
        try:
            gamma = f32(float(g))
        except ValueError:
            gamma = float("nan")
        if not (math.isfinite(gamma) and gamma > 0):
            bad(f"GAMMA should be a number > 0, found '{g}'")
        return {"kind": "step", "milestones": ms, "gamma": gamma, "epochs": 0}
    bad(f"unknown schedule '{name}'")


def lr_schedule_str(sched):
    """The schedule's text as barecnn's lr_schedule_str writes it (summary.json "lr_schedule")."""
    if sched["kind"] == "step":
        g = sched["gamma"]
        for prec in range(1, 10):  # barecnn's shortest_float: the first %.*g that reads back as the float32
            text = "%.*g" % (prec, g)
            if f32(float(text)) == g:
                break
        return "step:" + ",".join(str(m) for m in sched["milestones"]) + ":" + text
    if sched["kind"] == "cosine":
        return f"cosine:{sched['epochs']}"
    return "constant"


def lr_at(lr, sched, warmup_epochs, t, spe):
    """barecnn's lr_at (include/barecnn/optim.h): the rate of optimizer step t (1-based) with spe
    steps per epoch, in double from the float32 base rate, rounded to float32 once. The constant
    schedule without warmup is the base rate itself (here the --lr as given)."""
    if sched["kind"] == "constant" and warmup_epochs <= 0:
        return lr
    spe = max(spe, 1)
    i = t - 1 if t > 0 else 0
    W = max(warmup_epochs, 0) * spe
    r = f32(lr)
    if sched["kind"] == "step":
        done = i // spe  # epochs done before step t
        for m in sched["milestones"]:
            if m <= done:
                r *= sched["gamma"]
    elif sched["kind"] == "cosine":
        S = sched["epochs"] * spe - W
        k = i - W if i > W else 0
        r = 0.0 if k >= S else r * (1.0 + math.cos(3.14159265358979323846 * k / S)) * 0.5
    if i < W:
        r = r * (i + 1) / W
    return f32(r)


def parse_augment(text):
    """(pad, flip) of an --augment text, with barecnn's rules (run_spec.cpp parse_augment)."""
    def bad(what):
        fail(f"--augment: expected none, or crop:P (P a whole number of pixels >= 1), flip, or both as "
             f"crop:P,flip; {what} in '{text}'")

    if not text:
        bad("found nothing")
    if text.lower() == "none":
        return 0, False
    pad, flip = 0, False
    for item in text.split(","):
        name, colon, arg = item.partition(":")
        name = name.lower()
        if not item:
            bad("an empty item")
        if name == "flip":
            if colon:
                bad(f"flip takes no arguments, found '{item}'")
            if flip:
                bad("flip twice")
            flip = True
        elif name == "crop":
            if pad:
                bad("crop twice")
            if not colon:
                bad("crop needs its padding, as crop:P (e.g. crop:4)")
            if not re.fullmatch(r"[0-9]{1,9}", arg) or int(arg) < 1:
                bad(f"the padding P of crop:P should be a whole number of pixels >= 1, found '{arg}'")
            pad = int(arg)
        elif name == "none":
            bad("none goes alone")
        else:
            bad(f"unknown augmentation '{item}'")
    return pad, flip


def augment_str(pad, flip):
    """The --augment text as barecnn's summary.json writes it."""
    parts = ([f"crop:{pad}"] if pad else []) + (["flip"] if flip else [])
    return ",".join(parts) or "none"


def augment_batch(xb, off_y, off_x, flips, pad, torch):
    """RandomCrop((H, W), padding=pad) then RandomHorizontalFlip() of a uint8 batch (N, C, H, W):
    sample j's output pixel (y, x) is the zero-padded input's (off_y[j] + y, off_x[j] + x'), with
    x' = W - 1 - x where flips[j] else x, and off = pad + d for a shift d in -pad..pad (docs/MATH.md
    "Data augmentation"). off_y, off_x (int64) and flips (bool) are (N,) tensors on xb's device."""
    N, C, H, W = xb.shape
    src = torch.nn.functional.pad(xb, (pad, pad, pad, pad)) if pad else xb  # zeros: raw black pixels
    ys = torch.arange(H, device=xb.device)
    xs = torch.arange(W, device=xb.device)
    xs = torch.where(flips[:, None], xs.flip(0)[None, :], xs[None, :])  # (N, W)
    rows = (off_y[:, None] + ys[None, :])[:, :, None]  # (N, H, 1)
    cols = (off_x[:, None] + xs)[:, None, :]  # (N, 1, W)
    n = torch.arange(N, device=xb.device)[:, None, None]
    return src[n, :, rows, cols].permute(0, 3, 1, 2).contiguous()  # advanced indices first: (N, H, W, C)


# ---- training ------------------------------------------------------------------------------------

def parse_seeds(text):
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        fail(f"--seeds: expected a comma-separated list of integers such as 1,2,3, got '{text}'")
    if not seeds:
        fail(f"--seeds: no seed in '{text}' (expected e.g. 1,2,3)")
    if len(set(seeds)) != len(seeds):
        fail(f"--seeds: '{text}' repeats a seed; each seed is one independent run")
    return seeds


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mean_std(xs):
    """Mean and sample standard deviation (ddof=1; None for a single value)."""
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, None
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def torch_major(version):
    m = re.match(r"(\d+)", version)
    return int(m.group(1)) if m else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="The JSON fields are listed in the module docstring (head of this file).")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--mode", choices=["eager", "compile"], default="eager",
                    help='eager, or torch.compile(mode="reduce-overhead") (PyTorch >= 2)')
    ap.add_argument("--arch", default="paper", help="preset (paper, lenet5, deep, fashion) or an arch spec; "
                    "fashion's training recipe is not applied here: pass its flags")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    ap.add_argument("--weight-decay", type=float, default=0.0,
                    help="L2 weight decay added to the gradient (torch.optim's weight_decay, as barecnn's)")
    ap.add_argument("--lr-schedule", default="constant",
                    help="constant (default), step:E1,E2,...:GAMMA or cosine[:E]: barecnn's per-step rates")
    ap.add_argument("--warmup-epochs", type=int, default=0,
                    help="linear warmup of the rate over the first N epochs, per step (0 to --epochs - 1)")
    ap.add_argument("--augment", default="none",
                    help="none (default), crop:P, flip or crop:P,flip: RandomCrop(padding=P), RandomHorizontalFlip")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    ap.add_argument("--limit", type=int, default=0, help="train on the first N training images")
    ap.add_argument("--seeds", help="comma-separated seeds, one run each (default: 1)")
    ap.add_argument("--seed", type=int, help="one seed (the same as --seeds N)")
    ap.add_argument("--no-tf32", action="store_true",
                    help="switch TF32 off for cuDNN convolutions and matmuls (plain FP32, as barecnn)")
    ap.add_argument("--init", choices=["barecnn", "torch"], default="barecnn",
                    help="barecnn: its He/Xavier init and zero biases (the same nets); torch: PyTorch's default")
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--json", help="write the results here (atomically)")
    a = ap.parse_args()
    if a.batch < 1 or a.epochs < 1:
        fail("--batch and --epochs must be >= 1")
    if a.seeds is not None and a.seed is not None:
        fail("--seed and --seeds: give one of them")
    seeds = parse_seeds(a.seeds) if a.seeds is not None else [a.seed if a.seed is not None else 1]
    if not (a.weight_decay >= 0 and math.isfinite(a.weight_decay)):
        fail(f"--weight-decay must be a finite number >= 0, got {a.weight_decay}")
    sched = parse_lr_schedule(a.lr_schedule, a.epochs)
    if a.warmup_epochs < 0 or a.warmup_epochs >= a.epochs:
        fail(f"--warmup-epochs: expected a whole number of epochs from 0 to {a.epochs - 1} "
             f"(less than --epochs {a.epochs}), got {a.warmup_epochs}")
    if sched["kind"] == "cosine" and a.epochs > sched["epochs"]:
        fail(f"--epochs {a.epochs}: the rate schedule {lr_schedule_str(sched)} reaches 0 after epoch "
             f"{sched['epochs']}; train at most {sched['epochs']} epochs, or give --lr-schedule cosine:{a.epochs}")
    aug_pad, aug_flip = parse_augment(a.augment)
    augmenting = aug_pad > 0 or aug_flip

    try:
        import torch
        from torch import nn
    except ImportError as e:
        fail(f"PyTorch is not importable ({e}); on Debian: apt-get install python3-torch (run /usr/bin/python3)")
    if a.device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda: torch.cuda.is_available() is False (no GPU, or a CPU-only PyTorch build)")
    if a.mode == "compile" and (not hasattr(torch, "compile") or torch_major(torch.__version__) < 2):
        fail(f"--mode compile needs torch.compile, which came with PyTorch 2.0; this is PyTorch {torch.__version__}. "
             f"Run --mode eager here, or use a machine with PyTorch >= 2")
    threads = a.threads if a.threads > 0 else (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    dev = torch.device(a.device)
    spec = PRESETS.get(a.arch, a.arch)

    # Numerics and autotuning. Recorded in the JSON whatever they are, since both change the speed.
    # Only the two allow_tf32 flags are touched (matmul.allow_tf32 = False is what
    # set_float32_matmul_precision("highest") means); newer PyTorch refuses a mix of these legacy
    # flags with its fp32_precision settings, so this script uses the legacy ones only.
    if a.no_tf32:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest algorithms
    def read_flag(get):
        try:
            return get()
        except (AttributeError, RuntimeError):  # a PyTorch without it, or one that refuses the legacy read
            return None
    tf32_matmul = read_flag(lambda: bool(torch.backends.cuda.matmul.allow_tf32))
    tf32_cudnn = read_flag(lambda: bool(torch.backends.cudnn.allow_tf32))
    f32_precision = read_flag(torch.get_float32_matmul_precision)

    tr_x, tr_y, te_x, te_y = load_data(a.data, a.limit)
    n = tr_x.shape[0]
    B = min(a.batch, n)
    steps = n // B  # drop_last
    mean = float(tr_x.astype(np.float64).mean() / 255.0)
    std = float(np.sqrt(((tr_x.astype(np.float64) / 255.0 - mean) ** 2).mean()))
    # uint8 on the device; normalized one batch at a time
    X = torch.from_numpy(np.array(tr_x)).to(dev).unsqueeze(1)  # (n, 1, 28, 28) uint8
    Y = torch.from_numpy(tr_y.astype(np.int64)).to(dev)  # (n,)
    TX = torch.from_numpy(np.array(te_x)).to(dev).unsqueeze(1)  # (10000, 1, 28, 28) uint8
    TY = torch.from_numpy(te_y.astype(np.int64)).to(dev)  # (10000,)
    dataset_bytes = sum(t.numel() * t.element_size() for t in (X, Y, TX, TY))
    in_shape = (1, tr_x.shape[1], tr_x.shape[2])
    if aug_pad > min(in_shape[1], in_shape[2]) // 2:
        fail(f"--augment crop:{aug_pad}: the padding must be at most {min(in_shape[1], in_shape[2]) // 2} "
             f"(half the shorter side of the {in_shape[1]}x{in_shape[2]} images)")

    def norm(xb):
        return (xb.float() / 255.0 - mean) / std

    # One net for all seeds: a compiled graph (and its CUDA graphs) stays valid when the weights
    # are overwritten in place, so the seeds after the first do not compile again.
    model = build_net(spec, in_shape, nn).to(dev)
    loss_fn = nn.CrossEntropyLoss()
    fwd = torch.compile(model, mode="reduce-overhead") if a.mode == "compile" else model
    # With CUDA-graph trees, marking each step's start tells the compiled function that the
    # previous step's outputs are no longer needed (PyTorch >= 2.1; harmless elsewhere).
    mark_step = getattr(getattr(torch, "compiler", None), "cudagraph_mark_step_begin", None) \
        if a.mode == "compile" else None

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
          + (f" momentum {a.momentum}" if a.optimizer == "sgd" else "") + f", seeds {seeds}")
    print(f"  weight decay {a.weight_decay}, lr schedule {lr_schedule_str(sched)}"
          + (f" after {a.warmup_epochs} warmup epoch{'s' if a.warmup_epochs != 1 else ''}" if a.warmup_epochs else "")
          + f", augment {augment_str(aug_pad, aug_flip)}")
    if dev.type == "cuda":
        print(f"  {torch.cuda.get_device_name(0)}; TF32 matmul {tf32_matmul}, TF32 cuDNN {tf32_cudnn}, "
              f"cudnn.benchmark {torch.backends.cudnn.benchmark}")
    elif a.mode == "compile":
        print("  note: on the CPU, reduce-overhead has no CUDA graphs to use; this is plain inductor code")

    runs = []
    reserved_peak = 0
    for seed in seeds:
        # The weights a fresh torch.nn.Sequential gets under this seed, copied in place.
        torch.manual_seed(seed)
        fresh = build_net(spec, in_shape, nn)
        if a.init == "barecnn":
            init_like_barecnn(fresh, torch, nn)
        with torch.no_grad():  # the parameters and batchnorm's running statistics and count
            for p, q in zip(list(model.parameters()) + list(model.buffers()),
                            list(fresh.parameters()) + list(fresh.buffers())):
                p.copy_(q)
        del fresh
        if a.optimizer == "sgd":
            opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=a.momentum, weight_decay=a.weight_decay)
        else:
            opt = torch.optim.Adam(model.parameters(), lr=a.lr, weight_decay=a.weight_decay)
        gen = torch.Generator(device="cpu")
        gen.manual_seed(seed)
        aug_gen = torch.Generator(device="cpu")
        aug_gen.manual_seed(seed + 1000003)
        t = 0  # optimizer steps done in this run
        epochs = []
        train_peak = eval_peak = 0  # CUDA: the peaks of the training steps and of the evaluations
        for epoch in range(1, a.epochs + 1):
            perm = torch.randperm(n, generator=gen).to(dev)  # the copy happens before the clock starts
            if augmenting:  # the epoch's transforms, drawn and copied before the clock too
                m = steps * B
                zero = torch.full((m,), aug_pad, dtype=torch.int64)
                off_y = torch.randint(0, 2 * aug_pad + 1, (m,), generator=aug_gen).to(dev) if aug_pad else zero.to(dev)
                off_x = torch.randint(0, 2 * aug_pad + 1, (m,), generator=aug_gen).to(dev) if aug_pad else zero.to(dev)
                flips = (torch.randint(0, 2, (m,), generator=aug_gen) == 1).to(dev) if aug_flip \
                    else torch.zeros(m, dtype=torch.bool, device=dev)
            loss_sum = torch.zeros((), device=dev)
            correct = torch.zeros((), dtype=torch.int64, device=dev)
            sync()
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            for s in range(steps):
                idx = perm[s * B:(s + 1) * B]
                xb, yb = X[idx], Y[idx]
                if augmenting:
                    part = slice(s * B, (s + 1) * B)
                    xb = augment_batch(xb, off_y[part], off_x[part], flips[part], aug_pad, torch)
                xb = norm(xb)
                t += 1
                rate = lr_at(a.lr, sched, a.warmup_epochs, t, steps)
                for group in opt.param_groups:
                    group["lr"] = rate
                if mark_step is not None:
                    mark_step()
                logits = fwd(xb)
                loss = loss_fn(logits, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach()  # stays on the device: no sync inside the epoch
                correct += (logits.detach().argmax(1) == yb).sum()
            sync()
            secs = time.perf_counter() - t0
            if dev.type == "cuda":
                train_peak = max(train_peak, int(torch.cuda.max_memory_allocated()))
                reserved_peak = max(reserved_peak, int(torch.cuda.max_memory_reserved()))
                torch.cuda.reset_peak_memory_stats()
            test_accuracy = evaluate()
            if dev.type == "cuda":
                eval_peak = max(eval_peak, int(torch.cuda.max_memory_allocated()))
                reserved_peak = max(reserved_peak, int(torch.cuda.max_memory_reserved()))
            e = {"epoch": epoch, "seconds": secs, "images_per_second": steps * B / secs,
                 "train_loss": loss_sum.item() / steps, "train_accuracy": correct.item() / (steps * B),
                 "test_accuracy": test_accuracy, "lr": rate}
            epochs.append(e)
            print(f"  seed {seed} epoch {epoch}: {secs:.2f} s, {e['images_per_second']:.0f} img/s, "
                  f"train loss {e['train_loss']:.4f}, train acc {e['train_accuracy']:.4f}, "
                  f"test acc {e['test_accuracy']:.4f}, lr {rate:.6g}")
        if dev.type == "cuda":
            peak = max(train_peak, eval_peak)
        else:
            peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB
            train_peak = None
        best = min(epochs, key=lambda e: e["seconds"])
        runs.append({"seed": seed, "epochs": epochs, "epoch_seconds": [e["seconds"] for e in epochs],
                     "fastest_epoch_seconds": best["seconds"], "images_per_second": best["images_per_second"],
                     "test_accuracy": epochs[-1]["test_accuracy"], "peak_memory_bytes": peak,
                     "peak_train_memory_bytes": train_peak})

    if dev.type == "cuda":
        peak_kind = "torch.cuda.max_memory_allocated"
        reserved = reserved_peak
        device_name = torch.cuda.get_device_name(0)
    else:
        peak_kind = "ru_maxrss"
        reserved = None
        device_name = cpu_name()
    all_secs = [s for r in runs for s in r["epoch_seconds"]]
    fastest = min(all_secs)
    accs = [r["test_accuracy"] for r in runs]
    acc_mean, acc_std = mean_std(accs)
    full_epoch = fastest * (60000 // B) / steps  # scaled to the full 60,000 images
    result = {
        "framework": "pytorch", "schema_version": 1, "torch_version": torch.__version__,
        "python_version": platform.python_version(), "mode": a.mode,
        "compile_mode": "reduce-overhead" if a.mode == "compile" else None,
        "device": a.device, "device_name": device_name, "threads": threads,
        "arch": a.arch, "spec": spec, "batch": B, "epochs": a.epochs, "seeds": seeds,
        "optimizer": a.optimizer, "lr": a.lr, "momentum": a.momentum if a.optimizer == "sgd" else None,
        "init": a.init, "limit": a.limit, "train_images": n, "steps_per_epoch": steps, "images_per_epoch": steps * B,
        "weight_decay": a.weight_decay, "lr_schedule": lr_schedule_str(sched), "warmup_epochs": a.warmup_epochs,
        "augment": augment_str(aug_pad, aug_flip),
        "tf32_matmul": tf32_matmul, "tf32_cudnn": tf32_cudnn, "float32_matmul_precision": f32_precision,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if dev.type == "cuda" else None,
        "runs": runs,
        "fastest_epoch_seconds": fastest, "mean_epoch_seconds": sum(all_secs) / len(all_secs),
        "images_per_second": steps * B / fastest, "seconds_per_60000_image_epoch": full_epoch,
        "test_accuracy": acc_mean, "test_accuracy_std": acc_std, "test_accuracies": accs,
        "peak_memory_bytes": max(r["peak_memory_bytes"] for r in runs), "peak_memory_kind": peak_kind,
        "peak_train_memory_bytes": max(r["peak_train_memory_bytes"] for r in runs) if dev.type == "cuda" else None,
        "peak_memory_reserved_bytes": reserved, "dataset_device_bytes": dataset_bytes,
    }
    if a.json:
        tmp = a.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        os.replace(tmp, a.json)
    acc_txt = f"{100 * acc_mean:.2f}%" + (f" ± {100 * acc_std:.2f}" if acc_std is not None else "")
    print(f"{a.arch} b{B} {a.device} {a.mode}: {fastest:.2f} s/epoch fastest, "
          f"{result['mean_epoch_seconds']:.2f} mean ({steps} steps; {full_epoch:.2f} s per 60000-image epoch), "
          f"{result['images_per_second']:.0f} img/s, test acc {acc_txt} over {len(runs)} seed(s), "
          f"peak {result['peak_memory_bytes'] / 2**20:.0f} MiB ({peak_kind})")


if __name__ == "__main__":
    main()
