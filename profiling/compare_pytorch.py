#!/usr/bin/env python3
"""The yardstick: train the same nets as barecnn in PyTorch, with the same data, batch size,
optimizer and epochs, over one or several seeds, and report seconds per epoch, images/s, test
accuracy (mean and standard deviation over the seeds) and peak memory.

    python3 profiling/compare_pytorch.py --device cpu --arch paper --batch 64 --epochs 1 \
        --limit 12000 --threads 2 --seeds 1,2 --json /tmp/torch-cpu-paper.json
    python3 profiling/compare_pytorch.py --device cuda --mode compile --arch deep --epochs 3 \
        --seeds 1,2,3 --data data-local/fashion-mnist --json torch-deep-compile.json

What is the same as `barecnn train`:
  - the net: torch.nn.Sequential with the layers of the barecnn arch spec (presets paper, lenet5,
    deep, or any spec of the grammar in DESIGN.md), a Flatten before the first dense layer that
    follows a 4-D tensor, softmax cross-entropy on the logits;
  - the initialization (--init barecnn, the default): He normal before ReLU-like nonlinearities,
    Xavier uniform otherwise, zero biases (docs/MATH.md); the numbers come from torch's generator,
    so only the distributions are the same. --init torch keeps PyTorch's default init;
  - the data: Fashion-MNIST IDX .gz files read with gzip + numpy (no download, no torchvision),
    --limit N keeps the first N training images, the test set stays whole; images are normalized
    as (x/255 - mean)/std with the mean/std of the training images used, one batch at a time from
    a uint8 copy, as barecnn's gather_normalize does;
  - the schedule: a new permutation each epoch, batches of --batch, drop_last (barecnn's epoch has
    floor(n/batch) steps); SGD (momentum 0.9, lr 0.01) or Adam, float32;
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
  tf32_matmul, tf32_cudnn, float32_matmul_precision, cudnn_benchmark (null where not applicable),
  runs: one per seed, each {seed, epochs: [{epoch, seconds, images_per_second, train_loss,
        train_accuracy, test_accuracy}], epoch_seconds [..], fastest_epoch_seconds,
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


def init_like_barecnn(model, torch, nn):
    """barecnn's initialization (docs/MATH.md, Net::init_params) in place: the weights of a conv or
    dense layer whose next nonlinearity is ReLU, leaky ReLU or ELU are He normal N(0, 2/fan_in),
    others Xavier uniform U(-a, a), a = sqrt(6/(fan_in + fan_out)); biases 0. Drawn from torch's
    generator (so not barecnn's numbers, only its distributions)."""
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
    ap.add_argument("--arch", default="paper", help="preset (paper, lenet5, deep) or an arch spec")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
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
        with torch.no_grad():
            for p, q in zip(model.parameters(), fresh.parameters()):
                p.copy_(q)
        del fresh
        if a.optimizer == "sgd":
            opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=a.momentum)
        else:
            opt = torch.optim.Adam(model.parameters(), lr=a.lr)
        gen = torch.Generator(device="cpu")
        gen.manual_seed(seed)
        epochs = []
        train_peak = eval_peak = 0  # CUDA: the peaks of the training steps and of the evaluations
        for epoch in range(1, a.epochs + 1):
            perm = torch.randperm(n, generator=gen).to(dev)  # the copy happens before the clock starts
            loss_sum = torch.zeros((), device=dev)
            correct = torch.zeros((), dtype=torch.int64, device=dev)
            sync()
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            for s in range(steps):
                idx = perm[s * B:(s + 1) * B]
                xb, yb = norm(X[idx]), Y[idx]
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
                 "test_accuracy": test_accuracy}
            epochs.append(e)
            print(f"  seed {seed} epoch {epoch}: {secs:.2f} s, {e['images_per_second']:.0f} img/s, "
                  f"train loss {e['train_loss']:.4f}, train acc {e['train_accuracy']:.4f}, "
                  f"test acc {e['test_accuracy']:.4f}")
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
