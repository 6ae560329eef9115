#!/usr/bin/env python3
"""One table of barecnn against PyTorch: the same nets side by side, grouped by (net, batch).

    python3 profiling/perf_table.py RUN_DIR... TORCH.json... [--check]
    python3 profiling/perf_table.py gpu_check_out/ --check
    python3 profiling/perf_table.py --selftest

Inputs (files or folders; folders are searched recursively):
  - `summary.json` of `barecnn train --out DIR` runs: "arch" (the canonical spec), "device"
    ("cuda (NVIDIA H100 ...)" or "cpu"), "seed", "test_accuracy", "epochs": [{"epoch", "seconds",
    "images_per_second", "test_accuracy", ...}], and, where present, "peak_device_bytes" and
    "batch". The summary has no batch field yet, so the batch is taken from the first of: the
    summary's "batch", the "batch" in the __metadata__ of `checkpoint.safetensors` next to it
    (written by every run), a `b64` / `batch64` / `batch-64` in the folder's name.
  - JSON written by `profiling/compare_pytorch.py --json` (schema_version 1: "framework":
    "pytorch", one entry of "runs" per seed).
Other JSON files found in folders are skipped; a file named on the command line must be one of
these two.

Each row is one (framework, mode, device) of one (net, batch), with every run (seed) in it:
  s/epoch best   the fastest epoch of all runs; s/epoch mean: the mean over every epoch of every
                 run (the first epoch holds warm-up, autotuning and, for torch.compile, the
                 compilation);
  img/s          images per second at the fastest epoch;
  test acc       the test accuracy after the last epoch, mean ± sample standard deviation
                 (ddof=1) over the runs, in percent, and n, the number of runs;
  peak MiB       barecnn: peak_device_bytes; PyTorch on CUDA: torch.cuda.max_memory_allocated
                 (tensors only, no CUDA context or allocator cache); PyTorch on the CPU: the
                 process's peak RSS (marked "rss", never compared with a device figure);
  ratios         against the fastest barecnn row of the same net, batch and device: time per
                 image (so runs with different --limit still compare), img/s, accuracy difference
                 in points, peak memory.

--check prints the issue's targets, each met / NOT MET / n/a, for what the inputs hold:
  - paper, batch 64, CUDA: barecnn >= 5x the images/s of PyTorch eager, and more than
    torch.compile(mode="reduce-overhead");
  - deep, CUDA (each batch present): barecnn faster than PyTorch eager;
  - every net/batch/device with both: test accuracy within 0.5 points of PyTorch's mean after the
    same number of epochs (flagged "weak" when either side has a single seed or the seed counts
    differ: one run can be lucky);
  - CUDA: barecnn's peak device memory <= PyTorch's.
It exits 1 when a target is not met (0 otherwise). --selftest builds sample inputs in a temporary
folder and asserts the table and the checks; it exits 1 on the first mismatch.
"""
import argparse
import json
import math
import os
import re
import struct
import sys
import tempfile

PRESETS = {
    "paper": "conv(32,5,pad=2) relu maxpool(2) dense(128) relu dense(10)",
    "lenet5": "conv(6,5,pad=2) tanh avgpool(2) conv(16,5) tanh avgpool(2) dense(120) tanh dense(84) tanh dense(10)",
    "deep": "conv(32,3,pad=1) relu conv(32,3,pad=1) relu maxpool(2) conv(64,3,pad=1) relu conv(64,3,pad=1) relu "
            "maxpool(2) dense(256) relu dense(10)",
}
ACC_TOLERANCE_POINTS = 0.5
PAPER_B64_EAGER_SPEEDUP = 5.0
MIB = 2 ** 20


class InputError(Exception):
    pass


# ---- reading the inputs --------------------------------------------------------------------------

def normalize_spec(spec):
    """A spec written without defaults, so barecnn's canonical spec (which lists the implicit
    flatten and may spell a pool's stride) equals the preset it came from."""
    layers = []
    for m in re.finditer(r"([a-z_0-9]+)(?:\(([^)]*)\))?", spec.lower()):
        name, args = m.group(1), m.group(2)
        parts = [a.strip() for a in args.split(",")] if args else []
        if name == "flatten":
            continue
        if name == "conv":
            parts = [p for p in parts if p not in ("stride=1", "pad=0")]
        if name in ("maxpool", "avgpool", "l2pool") and parts:
            parts = [p for p in parts if p != f"stride={parts[0]}"]
        layers.append(name + (f"({','.join(parts)})" if parts else ""))
    return " ".join(layers)


PRESET_BY_NORM = {normalize_spec(v): k for k, v in PRESETS.items()}


def arch_name(arch, spec=None):
    if arch in PRESETS:
        return arch
    for s in (spec, arch):
        if s and normalize_spec(s) in PRESET_BY_NORM:
            return PRESET_BY_NORM[normalize_spec(s)]
    return normalize_spec(spec or arch)


def safetensors_metadata(path):
    """The __metadata__ of a safetensors file: u64 little-endian header length, then JSON."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return {}
        (n,) = struct.unpack("<Q", head)
        if n > 100 * MIB:
            return {}
        try:
            return json.loads(f.read(n)).get("__metadata__", {}) or {}
        except (ValueError, AttributeError):
            return {}


def batch_of_barecnn_run(path, summary, ckpt_meta):
    if isinstance(summary.get("batch"), int):
        return summary["batch"]
    if str(ckpt_meta.get("batch", "")).isdigit():
        return int(ckpt_meta["batch"])
    folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
    m = re.search(r"(?:^|[^a-z])(?:b|batch[-_]?)(\d+)(?:$|[^0-9])", folder.lower())
    if m:
        return int(m.group(1))
    raise InputError(f"{path}: no batch size (the summary has no \"batch\", there is no checkpoint.safetensors "
                     f"next to it, and the folder name holds no b64/batch64); name the run folder e.g. paper-b64-s1")


def read_barecnn(path, summary):
    folder = os.path.dirname(os.path.abspath(path))
    ckpt = os.path.join(folder, "checkpoint.safetensors")
    meta = safetensors_metadata(ckpt) if os.path.exists(ckpt) else {}
    epochs = summary.get("epochs") or []
    if not epochs or "seconds" not in epochs[0] or "images_per_second" not in epochs[0]:
        raise InputError(f"{path}: a barecnn summary.json needs \"epochs\" with \"seconds\" and \"images_per_second\"")
    device = str(summary.get("device", "?"))
    m = re.match(r"\s*([a-z]+)\s*(?:\((.*)\))?", device)
    dev_type, dev_name = (m.group(1), m.group(2) or "") if m else (device, "")
    secs = [float(e["seconds"]) for e in epochs]
    best = min(range(len(epochs)), key=lambda i: secs[i])
    images = round(float(epochs[best]["images_per_second"]) * secs[best])
    mode = ""
    if "cuda_graph" in summary:
        mode = "graph" if summary["cuda_graph"] in (True, "on", 1) else "no graph"
    if summary.get("fuse") in (True, "on", 1):
        mode = (mode + ", fused").lstrip(", ")
    peak = summary.get("peak_device_bytes")

    def num(k):
        try:
            return float(meta[k])
        except (KeyError, ValueError):
            return None
    return [{
        "source": path, "framework": "barecnn", "mode": mode, "device": dev_type, "device_name": dev_name,
        "arch": arch_name(summary.get("arch", "?")), "batch": batch_of_barecnn_run(path, summary, meta),
        "seed": summary.get("seed"), "epochs": len(epochs), "epoch_seconds": secs, "images_per_epoch": images,
        "test_accuracy": float(summary.get("test_accuracy", epochs[-1].get("test_accuracy", float("nan")))),
        "peak_bytes": int(peak) if isinstance(peak, (int, float)) else None, "peak_kind": "device",
        "lr": num("lr"), "momentum": num("momentum"), "optimizer": meta.get("optimizer"),
        "limit": int(num("limit")) if num("limit") is not None else None, "tf32": None,
    }]


def read_torch(path, d):
    if d.get("schema_version") != 1 or not isinstance(d.get("runs"), list):
        raise InputError(f"{path}: a compare_pytorch.py file without \"schema_version\": 1 and \"runs\" "
                         f"(an older format); rerun profiling/compare_pytorch.py")
    out = []
    kind = "device" if d.get("peak_memory_kind") == "torch.cuda.max_memory_allocated" else "rss"
    for r in d["runs"]:
        secs = [float(s) for s in r["epoch_seconds"]]
        out.append({
            "source": path, "framework": "pytorch", "mode": d.get("mode", "eager"), "device": d.get("device", "?"),
            "device_name": d.get("device_name") or "", "arch": arch_name(d.get("arch", "?"), d.get("spec")),
            "batch": int(d["batch"]), "seed": r.get("seed"), "epochs": len(secs), "epoch_seconds": secs,
            "images_per_epoch": int(d["images_per_epoch"]), "test_accuracy": float(r["test_accuracy"]),
            "peak_bytes": r.get("peak_memory_bytes"), "peak_kind": kind, "lr": d.get("lr"),
            "momentum": d.get("momentum"), "optimizer": d.get("optimizer"), "limit": d.get("limit"),
            "tf32": (d.get("tf32_cudnn"), d.get("tf32_matmul")) if d.get("device") == "cuda" else None,
        })
    return out


def read_file(path, explicit):
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        if explicit:
            raise InputError(f"{path}: not readable JSON ({e})")
        return []
    if isinstance(d, dict) and d.get("framework") == "pytorch":
        return read_torch(path, d)
    if isinstance(d, dict) and "epochs" in d and "test_accuracy" in d and "arch" in d:
        return read_barecnn(path, d)
    if explicit:
        raise InputError(f"{path}: neither a barecnn summary.json nor a compare_pytorch.py JSON")
    return []


def collect(paths):
    """(runs, warnings). A file named on the command line must be readable; one found in a folder
    is skipped with a warning, so one odd run does not hide the others."""
    runs, warnings = [], []
    for p in paths:
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for name in sorted(files):
                    if name.endswith(".json"):
                        try:
                            runs += read_file(os.path.join(root, name), explicit=False)
                        except InputError as e:
                            warnings.append(f"skipped {e}")
        elif os.path.exists(p):
            runs += read_file(p, explicit=True)
        else:
            raise InputError(f"{p}: no such file or folder")
    return runs, warnings


# ---- aggregation ---------------------------------------------------------------------------------

def mean_std(xs):
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, None
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def make_row(runs):
    fastest = min(runs, key=lambda r: min(r["epoch_seconds"]))
    best = min(fastest["epoch_seconds"])
    all_secs = [s for r in runs for s in r["epoch_seconds"]]
    acc_mean, acc_std = mean_std([r["test_accuracy"] for r in runs])
    peaks = [r["peak_bytes"] for r in runs if r["peak_bytes"] is not None]
    r0 = runs[0]
    return {
        "framework": r0["framework"], "mode": r0["mode"], "device": r0["device"],
        "device_name": ", ".join(sorted({r["device_name"] for r in runs if r["device_name"]})),
        "runs": runs, "n": len(runs), "seeds": sorted(r["seed"] for r in runs if r["seed"] is not None),
        "epochs": r0["epochs"], "images_per_epoch": fastest["images_per_epoch"],
        "best_s": best, "mean_s": sum(all_secs) / len(all_secs),
        "ips": fastest["images_per_epoch"] / best, "s_per_image": best / fastest["images_per_epoch"],
        "acc": acc_mean, "acc_std": acc_std, "peak": max(peaks) if peaks else None, "peak_kind": r0["peak_kind"],
    }


FRAMEWORK_ORDER = {"barecnn": 0, "pytorch": 1}
MODE_ORDER = {"eager": 0, "compile": 1}


def build_groups(runs):
    """{(arch, batch): [rows]}: one row per (framework, mode, device, epochs) with all its runs."""
    by_key = {}
    for r in runs:
        row_key = (r["framework"], r["mode"], r["device"], r["epochs"])
        by_key.setdefault((r["arch"], r["batch"]), {}).setdefault(row_key, []).append(r)
    groups = {}
    for key in sorted(by_key, key=lambda k: (list(PRESETS).index(k[0]) if k[0] in PRESETS else 99, k[0], k[1])):
        rows = [make_row(v) for v in by_key[key].values()]
        rows.sort(key=lambda r: (r["device"] != "cuda", r["device"], FRAMEWORK_ORDER.get(r["framework"], 9),
                                 MODE_ORDER.get(r["mode"], 5), r["mode"], r["epochs"]))
        for row in rows:
            # Speed and memory: against the fastest barecnn row on the device. Accuracy: against
            # the barecnn row after the same number of epochs (the fastest, if several).
            refs = [x for x in rows if x["framework"] == "barecnn" and x["device"] == row["device"]]
            row["ref"] = min(refs, key=lambda x: x["s_per_image"]) if refs else None
            same = [x for x in refs if x["epochs"] == row["epochs"]]
            row["acc_ref"] = min(same, key=lambda x: x["s_per_image"]) if same else None
        groups[key] = rows
    return groups


# ---- the table -----------------------------------------------------------------------------------

def fnum(x):
    if x is None:
        return "–"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def row_cells(arch, batch, row):
    name = row["framework"] + (f" {row['mode']}" if row["mode"] else "")
    dev = row["device"] + (f" ({row['device_name']})" if row["device_name"] else "")
    acc = f"{100 * row['acc']:.2f}" + (f" ± {100 * row['acc_std']:.2f}" if row["acc_std"] is not None else "") \
        + f" (n={row['n']})"
    if row["peak"] is None:
        peak = "–"
    else:
        peak = f"{row['peak'] / MIB:.0f}" + (" rss" if row["peak_kind"] == "rss" else "")
    ref, aref = row["ref"], row["acc_ref"]
    t_ratio = ips_ratio = dacc = m_ratio = "–"
    if ref is not None:
        t_ratio = f"{row['s_per_image'] / ref['s_per_image']:.2f}×"
        ips_ratio = f"{row['ips'] / ref['ips']:.2f}×"
        if row["peak"] is not None and ref["peak"] and row["peak_kind"] == "device" and ref["peak_kind"] == "device":
            m_ratio = f"{row['peak'] / ref['peak']:.2f}×"
    if aref is not None:
        dacc = f"{100 * (row['acc'] - aref['acc']):+.2f}"
    return [arch, str(batch), name, dev, str(row["epochs"]), str(row["images_per_epoch"]), fnum(row["best_s"]),
            fnum(row["mean_s"]), f"{row['ips']:,.0f}", acc, peak, t_ratio, ips_ratio, dacc, m_ratio]


HEADER = ["net", "batch", "framework / mode", "device", "epochs", "images/epoch", "s/epoch best", "s/epoch mean",
          "img/s", "test acc % (mean ± std, n)", "peak MiB", "time/img ÷ barecnn", "img/s ÷ barecnn",
          "acc − barecnn (pts)", "peak ÷ barecnn"]


def render_table(groups):
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for (arch, batch), rows in groups.items():
        for row in rows:
            lines.append("| " + " | ".join(row_cells(arch, batch, row)) + " |")
    return "\n".join(lines)


def same_values(a, b):
    """Equal lists, numbers to float32 precision (barecnn stores lr and momentum as float)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, (int, float)) and isinstance(y, (int, float)):
            if abs(x - y) > 1e-6 * max(abs(x), abs(y), 1e-30):
                return False
        elif x != y:
            return False
    return True


def notes(groups):
    """Warnings about comparisons that are not like for like."""
    out = []
    for (arch, batch), rows in groups.items():
        for row in rows:
            where = f"{arch} b{batch} {row['framework']} {row['mode']} {row['device']} {row['epochs']} epochs"
            where = where.replace("  ", " ")
            if len(set(row["seeds"])) != len(row["seeds"]):
                out.append(f"{where}: a seed appears more than once ({row['seeds']})")
            on = sorted({what for r in row["runs"] if r["tf32"]
                         for what, flag in zip(("cuDNN convolutions", "matmuls"), r["tf32"]) if flag})
            if on:
                out.append(f"{where}: TF32 was on for {' and '.join(on)}; barecnn computes in FP32 "
                           f"(compare_pytorch.py --no-tf32 for like-for-like numerics)")
            ref = row["ref"]
            if ref is None or ref is row:
                continue
            for k in ("lr", "momentum", "optimizer", "limit"):
                a = sorted({r[k] for r in ref["runs"] if r[k] is not None})
                b = sorted({r[k] for r in row["runs"] if r[k] is not None})
                if not a or not b or same_values(a, b):
                    continue
                why = "accuracy not comparable (time per image still is)" if k == "limit" else "not the same training"
                out.append(f"{where}: {k} {b} but barecnn used {a}: {why}")
    return out


# ---- the targets -------------------------------------------------------------------------

def check_targets(groups):
    """[(target, status, detail)], status in met / NOT MET / n/a."""
    out = []

    def find(rows, framework, mode, device):
        """The fastest such row (rows of several epoch counts may exist)."""
        found = [r for r in rows if r["framework"] == framework and r["mode"] == mode and r["device"] == device]
        return min(found, key=lambda r: r["s_per_image"]) if found else None

    def speed(target, ref, other, label, factor, strictly):
        if ref is None or other is None:
            missing = "barecnn" if ref is None else f"pytorch {label}"
            out.append((target, "n/a", f"no {missing} run on cuda"))
            return
        ratio = ref["ips"] / other["ips"]
        ok = ratio > factor if strictly else ratio >= factor
        out.append((target, "met" if ok else "NOT MET",
                    f"barecnn {ref['ips']:,.0f} img/s vs pytorch {label} {other['ips']:,.0f} img/s: "
                    f"{ratio:.2f}x (target {'>' if strictly else '>='} {factor:g}x)"))

    paper = groups.get(("paper", 64), [])
    bc = next((r["ref"] for r in paper if r["device"] == "cuda" and r["ref"]), None)
    speed("speed paper b64: barecnn >= 5x pytorch eager", bc, find(paper, "pytorch", "eager", "cuda"), "eager",
          PAPER_B64_EAGER_SPEEDUP, False)
    speed("speed paper b64: barecnn faster than torch.compile", bc, find(paper, "pytorch", "compile", "cuda"),
          "compile", 1.0, True)
    deep = [(k, rows) for k, rows in groups.items() if k[0] == "deep"]
    if not deep:
        out.append(("speed deep: barecnn faster than pytorch eager", "n/a", "no deep runs"))
    for (arch, batch), rows in deep:
        bc = next((r["ref"] for r in rows if r["device"] == "cuda" and r["ref"]), None)
        speed(f"speed deep b{batch}: barecnn faster than pytorch eager", bc, find(rows, "pytorch", "eager", "cuda"),
              "eager", 1.0, True)

    for (arch, batch), rows in groups.items():
        for row in rows:
            ref = row["ref"]
            if row["framework"] != "pytorch" or ref is None:
                continue
            what = f"{arch} b{batch} {row['device']} vs pytorch {row['mode']}"
            aref = row["acc_ref"]
            if aref is None:
                out.append((f"accuracy {what}, {row['epochs']} epochs", "n/a",
                            f"no barecnn run of {row['epochs']} epochs to compare with"))
            else:
                ref = aref
                what_acc = f"{what}, {row['epochs']} epochs"
                d = 100 * (ref["acc"] - row["acc"])
                weak = []
                if ref["n"] < 2 or row["n"] < 2:
                    weak.append("a single seed on one side")
                if ref["n"] != row["n"]:
                    weak.append(f"seed counts differ ({ref['n']} vs {row['n']})")
                out.append((f"accuracy {what_acc}", "met" if abs(d) <= ACC_TOLERANCE_POINTS else "NOT MET",
                            f"barecnn {100 * ref['acc']:.2f}% (n={ref['n']}) vs pytorch {100 * row['acc']:.2f}% "
                            f"(n={row['n']}): {d:+.2f} points (target within ±{ACC_TOLERANCE_POINTS})"
                            + (f"; weak: {', '.join(weak)}" if weak else "")))
            ref = row["ref"]
            if row["device"] == "cuda" and f"memory {what}" not in {t for t, _, _ in out}:
                if ref["peak"] is None:
                    out.append((f"memory {what}", "n/a", "the barecnn summary has no peak_device_bytes"))
                elif row["peak"] is None or row["peak_kind"] != "device":
                    out.append((f"memory {what}", "n/a", "no device peak from pytorch"))
                else:
                    out.append((f"memory {what}", "met" if ref["peak"] <= row["peak"] else "NOT MET",
                                f"barecnn {ref['peak'] / MIB:.1f} MiB vs pytorch {row['peak'] / MIB:.1f} MiB "
                                f"(target <=)"))
    return out


def render_checks(checks):
    w = max(len(t) for t, _, _ in checks)
    return "\n".join(f"{t:<{w}}  {s:<7}  {d}" for t, s, d in checks)


# ---- self-test -----------------------------------------------------------------------------------

def _write(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def _barecnn_summary(arch_spec, seed, secs, acc, ips_images=59968, peak=None, batch=None,
                     device="cuda (NVIDIA H100 80GB HBM3)"):
    d = {"test_accuracy": acc, "test_loss": 0.3, "device": device, "arch": arch_spec, "seed": seed,
         "epochs": [{"epoch": i + 1, "train_loss": 0.4, "train_accuracy": 0.88, "test_accuracy": acc, "test_loss": 0.3,
                     "seconds": s, "images_per_second": ips_images / s} for i, s in enumerate(secs)]}
    if peak is not None:
        d["peak_device_bytes"] = peak
    if batch is not None:
        d["batch"] = batch
    return d


def _torch_json(arch, mode, device, seeds, secs, accs, peak_mib, batch=64, images=59968):
    runs = [{"seed": s, "epochs": [], "epoch_seconds": secs, "fastest_epoch_seconds": min(secs),
             "images_per_second": images / min(secs), "test_accuracy": a, "peak_memory_bytes": peak_mib * MIB}
            for s, a in zip(seeds, accs)]
    return {"framework": "pytorch", "schema_version": 1, "mode": mode, "device": device,
            "device_name": "NVIDIA H100 80GB HBM3" if device == "cuda" else "AMD EPYC", "arch": arch,
            "spec": PRESETS.get(arch, arch), "batch": batch, "epochs": len(secs), "seeds": seeds, "optimizer": "sgd",
            "lr": 0.01, "momentum": 0.9, "limit": 0, "images_per_epoch": images, "runs": runs,
            "tf32_cudnn": device == "cuda", "tf32_matmul": False,
            "peak_memory_kind": "torch.cuda.max_memory_allocated" if device == "cuda" else "ru_maxrss"}


def _cells(table):
    """The cells of each data row of a markdown table."""
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]


def selftest():
    failures = []

    def expect(cond, what):
        if not cond:
            failures.append(what)

    canon_paper = "conv(32,5,pad=2) relu maxpool(2) flatten dense(128) relu dense(10)"
    canon_deep = ("conv(32,3,pad=1) relu conv(32,3,pad=1) relu maxpool(2) conv(64,3,pad=1) relu conv(64,3,pad=1) "
                  "relu maxpool(2) flatten dense(256) relu dense(10)")
    expect(arch_name(canon_paper) == "paper", "canonical paper spec -> paper")
    expect(arch_name("conv(32,5,stride=1,pad=2) relu maxpool(2,stride=2) dense(128) relu dense(10)") == "paper",
           "spec with explicit defaults -> paper")
    expect(arch_name("conv(8,3) relu dense(10)") == "conv(8,3) relu dense(10)", "unknown spec stays a spec")

    with tempfile.TemporaryDirectory() as tmp:
        # barecnn, paper b64 on CUDA, three seeds; the batch comes from the summary (s1), the
        # checkpoint's metadata (s2) and the folder's name (s3).
        _write(f"{tmp}/bc/run1/summary.json", _barecnn_summary(canon_paper, 1, [0.30, 0.20], 0.900, peak=100 * MIB,
                                                               batch=64))
        _write(f"{tmp}/bc/run2/summary.json", _barecnn_summary(canon_paper, 2, [0.30, 0.25], 0.904, peak=100 * MIB))
        header = json.dumps({"__metadata__": {"batch": "64", "lr": "0.01", "momentum": "0.9", "optimizer": "sgd",
                                              "limit": "0"}}).encode()
        with open(f"{tmp}/bc/run2/checkpoint.safetensors", "wb") as f:
            f.write(struct.pack("<Q", len(header)) + header)
        _write(f"{tmp}/bc/paper-b64-s3/summary.json", _barecnn_summary(canon_paper, 3, [0.30, 0.22], 0.902,
                                                                       peak=90 * MIB))
        _write(f"{tmp}/bc/deep/summary.json", _barecnn_summary(canon_deep, 1, [1.0], 0.920, batch=64))
        _write(f"{tmp}/unrelated.json", {"something": "else"})
        # PyTorch: eager (7.5x slower, +0.1 points, 2x memory), compile (slower than barecnn,
        # but 0.7 points off), deep eager (faster than barecnn), a CPU run with no barecnn row.
        _write(f"{tmp}/t/paper-eager.json", _torch_json("paper", "eager", "cuda", [1, 2, 3], [2.0, 1.5],
                                                        [0.899, 0.901, 0.903], 200))
        _write(f"{tmp}/t/paper-compile.json", _torch_json("paper", "compile", "cuda", [1, 2, 3], [30.0, 0.25],
                                                          [0.895, 0.895, 0.895], 150))
        _write(f"{tmp}/t/deep-eager.json", _torch_json("deep", "eager", "cuda", [1], [0.8], [0.921], 50))
        _write(f"{tmp}/t/lenet-cpu.json", _torch_json("lenet5", "eager", "cpu", [1], [40.0], [0.85], 600))

        runs, warnings = collect([tmp])
        expect(len(runs) == 4 + 3 + 3 + 1 + 1, f"12 runs read, got {len(runs)}")
        expect(warnings == [], f"no warnings, got {warnings}")
        groups = build_groups(runs)
        expect(list(groups) == [("paper", 64), ("lenet5", 64), ("deep", 64)], f"groups {list(groups)}")
        table = render_table(groups)
        rows = {tuple(cells[:3]): cells for cells in _cells(table)}
        bc = rows.get(("paper", "64", "barecnn"))
        eager = rows.get(("paper", "64", "pytorch eager"))
        comp = rows.get(("paper", "64", "pytorch compile"))
        lenet = rows.get(("lenet5", "64", "pytorch eager"))
        expect(bc is not None and eager is not None and comp is not None and lenet is not None, "the four rows exist")
        if bc and eager and comp and lenet:
            expect(bc[4:8] == ["2", "59968", "0.200", "0.262"],
                   f"barecnn epochs, images/epoch, s/epoch best/mean 2/59968/0.200/0.262, got {bc[4:8]}")
            expect(bc[8] == "299,840", f"barecnn img/s 299,840, got {bc[8]}")
            expect(bc[9] == "90.20 ± 0.20 (n=3)", f"barecnn accuracy cell, got {bc[9]}")
            expect(bc[10] == "100", f"barecnn peak = max over runs = 100 MiB, got {bc[10]}")
            expect(bc[11:] == ["1.00×", "1.00×", "+0.00", "1.00×"], f"barecnn ratios to itself, got {bc[11:]}")
            expect(eager[4] == "2" and eager[6] == "1.50" and eager[7] == "1.75", f"eager epochs/s: {eager[4:8]}")
            expect(eager[9] == "90.10 ± 0.20 (n=3)", f"eager accuracy cell, got {eager[9]}")
            expect(eager[11:] == ["7.50×", "0.13×", "-0.10", "2.00×"], f"eager ratios, got {eager[11:]}")
            expect(comp[11] == "1.25×" and comp[13] == "-0.70" and comp[14] == "1.50×", f"compile ratios {comp[11:]}")
            expect(lenet[10] == "600 rss" and lenet[11:] == ["–"] * 4, f"CPU row without barecnn, got {lenet[10:]}")
        checks = {t: s for t, s, _ in check_targets(groups)}
        want = {
            "speed paper b64: barecnn >= 5x pytorch eager": "met",
            "speed paper b64: barecnn faster than torch.compile": "met",
            "speed deep b64: barecnn faster than pytorch eager": "NOT MET",
            "accuracy paper b64 cuda vs pytorch eager, 2 epochs": "met",
            "accuracy paper b64 cuda vs pytorch compile, 2 epochs": "NOT MET",
            "accuracy deep b64 cuda vs pytorch eager, 1 epochs": "met",
            "memory paper b64 cuda vs pytorch eager": "met",
            "memory paper b64 cuda vs pytorch compile": "met",
            "memory deep b64 cuda vs pytorch eager": "n/a",
        }
        expect(checks == want, f"checks {checks}\n  expected {want}")
        weak = [d for t, s, d in check_targets(groups) if t == "accuracy deep b64 cuda vs pytorch eager, 1 epochs"]
        expect(weak and "weak" in weak[0], f"a single-seed accuracy check is flagged weak: {weak}")
        expect(any("TF32 was on" in n for n in notes(groups)), "a note about TF32")

        # The same checks must flip when the numbers do. A 1-epoch barecnn run, the fastest, is
        # now the speed reference: eager is only 0.5/0.15 = 3.3x slower, torch.compile exactly as
        # fast (not faster), barecnn uses more memory than torch.compile; barecnn's 2-epoch runs
        # are 1.2 points less accurate, and the 1-epoch run (50%) is not the accuracy reference
        # of the 2-epoch PyTorch rows.
        _write(f"{tmp}/t/paper-eager.json", _torch_json("paper", "eager", "cuda", [1, 2, 3], [0.6, 0.5],
                                                        [0.899, 0.901, 0.903], 200))
        _write(f"{tmp}/t/paper-compile.json", _torch_json("paper", "compile", "cuda", [1, 2, 3], [30.0, 0.15],
                                                          [0.895, 0.895, 0.895], 150))
        _write(f"{tmp}/bc/det1/summary.json", _barecnn_summary(canon_paper, 1, [0.15], 0.5, peak=180 * MIB,
                                                               batch=64))
        for i, acc in ((1, 0.880), (2, 0.884)):
            d = json.load(open(f"{tmp}/bc/run{i}/summary.json"))
            d["test_accuracy"] = acc
            d["peak_device_bytes"] = 180 * MIB
            _write(f"{tmp}/bc/run{i}/summary.json", d)
        groups = build_groups(collect([tmp])[0])
        checks = {t: s for t, s, _ in check_targets(groups)}
        expect(checks["speed paper b64: barecnn >= 5x pytorch eager"] == "NOT MET", "0.5/0.15 = 3.3x is not 5x")
        expect(checks["speed paper b64: barecnn faster than torch.compile"] == "NOT MET", "as fast is not faster")
        expect(checks["accuracy paper b64 cuda vs pytorch eager, 2 epochs"] == "NOT MET", "1.2 points off is not met")
        expect(checks["memory paper b64 cuda vs pytorch compile"] == "NOT MET", "180 MiB > 150 MiB")
        expect(len(groups[("paper", 64)]) == 4, "the 1-epoch barecnn run is a row of its own")
        rows = {tuple(cells[:5]): cells for cells in _cells(render_table(groups))}
        eager = rows.get(("paper", "64", "pytorch eager", "cuda (NVIDIA H100 80GB HBM3)", "2"))
        expect(eager is not None and eager[11:] == ["3.33×", "0.30×", "+1.23", "1.11×"],
               f"eager ratios against the 1-epoch speed reference and the 2-epoch accuracy reference, got "
               f"{eager[11:] if eager else None}")

        # Errors: a named file that is neither kind, a run whose batch cannot be found (an
        # error when named, a warning when found in a folder).
        d = json.load(open(f"{tmp}/bc/deep/summary.json"))
        del d["batch"]
        _write(f"{tmp}/bc/deep/summary.json", d)
        for bad, why in ((f"{tmp}/unrelated.json", "neither"), (f"{tmp}/bc/deep/summary.json", "no batch size")):
            try:
                collect([bad])
                expect(False, f"{bad}: an error naming '{why}'")
            except InputError as e:
                expect(why in str(e), f"{bad}: error '{e}' should say '{why}'")
        runs, warnings = collect([f"{tmp}/bc"])
        expect(len(warnings) == 1 and "no batch size" in warnings[0], f"one warning for the folder, got {warnings}")

    if failures:
        print("perf_table self-test FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    print("perf_table self-test: table, ratios, checks and errors as expected")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    ap.add_argument("paths", nargs="*", help="summary.json / compare_pytorch JSON files, or folders holding them")
    ap.add_argument("--check", action="store_true", help="also print the issue's targets, met or not")
    ap.add_argument("--selftest", action="store_true", help="run the built-in test on samples and exit")
    a = ap.parse_args()
    if a.selftest:
        return selftest()
    if not a.paths:
        ap.error("give barecnn run folders / summary.json files and compare_pytorch.py JSON files (or --selftest)")
    try:
        runs, warnings = collect(a.paths)
    except InputError as e:
        print(f"perf_table: {e}", file=sys.stderr)
        return 2
    for w in warnings:
        print(f"perf_table: {w}", file=sys.stderr)
    if not runs:
        print(f"perf_table: no barecnn summary.json or compare_pytorch.py JSON under {' '.join(a.paths)}",
              file=sys.stderr)
        return 2
    groups = build_groups(runs)
    print(render_table(groups))
    for n in notes(groups):
        print(f"note: {n}")
    if a.check:
        checks = check_targets(groups)
        print()
        print(render_checks(checks))
        return 1 if any(s == "NOT MET" for _, s, _ in checks) else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
