#!/usr/bin/env python3
"""Comparisons for tests/emu/e2e.sh (standard library only).

  compare_models.py weights  A.safetensors B.safetensors ATOL RTOL
      every tensor of B within atol + rtol * |A| of A (same names, dtypes, shapes, metadata)
  compare_models.py metrics  A/summary.json B/summary.json ATOL RTOL
      per-epoch train_loss, train_accuracy, test_accuracy, test_loss and the final test figures;
      ATOL = RTOL = 0 asks for equality
  compare_models.py predictions REF.csv OUT.csv LABELS.idx[.gz] REF_EVAL.json OUT_EVAL.json ATOL RTOL LOSS_RTOL
      predict's CSVs of one model on two devices: logits within atol + rtol * |ref|, the same
      predicted class wherever the reference's top two logits are further apart than that
      tolerance, each CSV's class the argmax of its own logits; each device's eval --json accuracy
      equals its predictions' accuracy against LABELS, the counts agree, and the two eval losses
      agree within LOSS_RTOL (relative)
  compare_models.py summary-eval SUMMARY.json EVAL.json LOSS_RTOL
      eval's accuracy of a model equals the test accuracy its training run reported; loss within LOSS_RTOL

Prints one line of details; exits 0 when the comparison holds, 1 when it does not, 2 on bad input.
"""
import csv
import gzip
import json
import math
import struct
import sys
from array import array

_DTYPES = {"F32": ("f", 4), "F64": ("d", 8), "I32": ("i", 4), "I64": ("q", 8)}


class BadInput(Exception):
    pass


def read_safetensors(path):
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise BadInput(f"{path}: {e.strerror}")
    if len(raw) < 8:
        raise BadInput(f"{path}: {len(raw)} bytes, too short for a safetensors header")
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        raise BadInput(f"{path}: header of {n} bytes in a file of {len(raw)}")
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    body = raw[8 + n :]
    tensors = {}
    for name, t in header.items():
        if t["dtype"] not in _DTYPES:
            raise BadInput(f"{path}: tensor {name} has dtype {t['dtype']}")
        code, size = _DTYPES[t["dtype"]]
        a, b = t["data_offsets"]
        count = math.prod(t["shape"]) if t["shape"] else 1
        if b - a != count * size or b > len(body):
            raise BadInput(f"{path}: tensor {name}: offsets {a}..{b} do not hold shape {t['shape']}")
        values = array(code)
        values.frombytes(body[a:b])
        if sys.byteorder != "little":
            values.byteswap()
        tensors[name] = (t["dtype"], list(t["shape"]), values)
    return meta, tensors


def fmt_index(flat, shape):
    idx = []
    for s in reversed(shape):
        idx.append(flat % s)
        flat //= s
    return "[" + ",".join(str(i) for i in reversed(idx)) + "]"


def cmd_weights(a_path, b_path, atol, rtol):
    atol, rtol = float(atol), float(rtol)
    meta_a, ta = read_safetensors(a_path)
    meta_b, tb = read_safetensors(b_path)
    problems = []
    if meta_a != meta_b:
        keys = sorted(k for k in set(meta_a) | set(meta_b) if meta_a.get(k) != meta_b.get(k))
        problems.append("metadata differs in " + ", ".join(f"{k} ({meta_a.get(k)!r} vs {meta_b.get(k)!r})" for k in keys))
    if set(ta) != set(tb):
        problems.append(f"tensor names differ: only in A {sorted(set(ta) - set(tb))}, only in B {sorted(set(tb) - set(ta))}")
    details = []
    total = 0
    for name in sorted(set(ta) & set(tb), key=lambda s: (len(s), s)):
        da, sa, va = ta[name]
        db, sb, vb = tb[name]
        if (da, sa) != (db, sb):
            problems.append(f"{name}: {da}{sa} vs {db}{sb}")
            continue
        bad, worst_abs, worst_rel, worst_excess, worst_i, first = 0, 0.0, 0.0, -math.inf, 0, []
        for i, (x, y) in enumerate(zip(va, vb)):
            err = abs(x - y)
            lim = atol + rtol * abs(x)
            ok = err <= lim and math.isfinite(x) == math.isfinite(y)
            excess = err - lim if math.isfinite(err) else math.inf
            if excess > worst_excess:
                worst_excess, worst_i = excess, i
            worst_abs = max(worst_abs, err) if math.isfinite(err) else math.inf
            if x != 0 and math.isfinite(err):
                worst_rel = max(worst_rel, err / abs(x))
            if not ok:
                bad += 1
                if len(first) < 3:
                    first.append(f"{name}{fmt_index(i, sa)} {x!r} vs {y!r}")
        total += len(va)
        details.append(f"{name} max|d| {worst_abs:.3g} max rel {worst_rel:.3g}")
        if bad:
            problems.append(f"{name}: {bad} of {len(va)} values outside atol {atol:g} + rtol {rtol:g} "
                            f"(worst {name}{fmt_index(worst_i, sa)}: {va[worst_i]!r} vs {vb[worst_i]!r}); first: "
                            + "; ".join(first))
    if problems:
        print("; ".join(problems) + " | " + "; ".join(details))
        return 1
    print(f"{total} values within atol {atol:g} + rtol {rtol:g}: " + "; ".join(details))
    return 0


_EPOCH_FIELDS = ("train_loss", "train_accuracy", "test_accuracy", "test_loss")


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise BadInput(f"{path}: {e}")


def close(x, y, atol, rtol):
    return abs(x - y) <= atol + rtol * abs(x)


def cmd_metrics(a_path, b_path, atol, rtol):
    atol, rtol = float(atol), float(rtol)
    a, b = load_json(a_path), load_json(b_path)
    ea, eb = a.get("epochs", []), b.get("epochs", [])
    problems, worst = [], {}
    if len(ea) != len(eb):
        problems.append(f"{len(ea)} vs {len(eb)} epochs")
    pairs = [(f"epoch {x['epoch']} {k}", x[k], y[k]) for x, y in zip(ea, eb) for k in _EPOCH_FIELDS]
    pairs += [(k, a[k], b[k]) for k in ("test_accuracy", "test_loss")]
    for what, x, y in pairs:
        field = what.split()[-1]
        worst[field] = max(worst.get(field, 0.0), abs(x - y))
        if not close(x, y, atol, rtol):
            problems.append(f"{what} {x!r} vs {y!r} (|d| {abs(x - y):.3g})")
    tol = "equal" if atol == 0 and rtol == 0 else f"within atol {atol:g} + rtol {rtol:g}"
    if problems:
        print(f"not {tol}: " + "; ".join(problems))
        return 1
    final = f"test acc {a['test_accuracy']} vs {b['test_accuracy']}, test loss {a['test_loss']:.6f} vs {b['test_loss']:.6f}"
    spread = ", ".join(f"{k} max|d| {v:.3g}" for k, v in worst.items())
    print(f"{len(ea)} epochs' metrics {tol} ({final}; {spread})")
    return 0


def read_labels(path):
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise BadInput(f"{path}: {e}")
    magic, n = struct.unpack(">II", raw[:8])
    if magic != 0x801 or len(raw) != 8 + n:
        raise BadInput(f"{path}: not an IDX label file (magic {magic:#x}, {len(raw)} bytes for {n} labels)")
    return list(raw[8:])


def read_predictions(path):
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise BadInput(f"{path}: {e.strerror}")
    if not rows:
        raise BadInput(f"{path}: empty")
    head = rows[0]
    if head[:2] != ["index", "predicted"] or not any(h.startswith("logit_") for h in head):
        raise BadInput(f"{path}: header {head[:4]}..., expected index,predicted,...,logit_0,...")
    logit_cols = [i for i, h in enumerate(head) if h.startswith("logit_")]
    out = []
    for r in rows[1:]:
        if not r:
            continue
        out.append((int(r[0]), int(r[1]), [float(r[i]) for i in logit_cols]))
    return out


def argmax(v):
    return max(range(len(v)), key=lambda i: (v[i], -i))


def cmd_predictions(ref_csv, out_csv, labels_path, ref_eval, out_eval, atol, rtol, loss_rtol):
    atol, rtol, loss_rtol = float(atol), float(rtol), float(loss_rtol)
    ref, out = read_predictions(ref_csv), read_predictions(out_csv)
    labels = read_labels(labels_path)
    er, eo = load_json(ref_eval), load_json(out_eval)
    problems = []
    if len(ref) != len(out) or len(ref) != len(labels):
        problems.append(f"{len(ref)} vs {len(out)} rows, {len(labels)} labels")
    bad_logits, worst, worst_row, flips, ties, self_bad = 0, 0.0, None, [], [], []
    for (ir, pr, lr), (io, po, lo) in zip(ref, out):
        if ir != io or len(lr) != len(lo):
            problems.append(f"row index {ir} vs {io}, {len(lr)} vs {len(lo)} logits")
            break
        for name, p, l in (("reference", pr, lr), ("output", po, lo)):
            if p != argmax(l):
                self_bad.append(f"{name} image {ir}: predicted {p}, argmax of its logits {argmax(l)}")
        for x, y in zip(lr, lo):
            err = abs(x - y)
            if err > worst:
                worst, worst_row = err, ir
            if not err <= atol + rtol * abs(x):
                bad_logits += 1
        if pr != po:
            gap = abs(lr[pr] - lr[po])
            if gap <= 2 * (atol + rtol * max(abs(lr[pr]), abs(lr[po]))):
                ties.append(f"image {ir}: {pr} vs {po} (reference logits {lr[pr]!r}, {lr[po]!r})")
            else:
                flips.append(f"image {ir}: {pr} vs {po} (reference logits {lr[pr]!r} vs {lr[po]!r}, output {lo[pr]!r} vs {lo[po]!r})")
    if bad_logits:
        problems.append(f"{bad_logits} logits outside atol {atol:g} + rtol {rtol:g} (worst |d| {worst:.3g} at image {worst_row})")
    if flips:
        problems.append(f"{len(flips)} images predicted differently beyond a tie: " + "; ".join(flips[:5]))
    if self_bad:
        problems.append(f"{len(self_bad)} rows whose class is not the argmax of their logits: " + "; ".join(self_bad[:3]))
    for name, rows, ev in (("reference", ref, er), ("output", out, eo)):
        correct = sum(1 for (i, p, _), lab in zip(rows, labels) if p == lab)
        if ev.get("count") != len(labels):
            problems.append(f"{name} eval count {ev.get('count')} vs {len(labels)} labels")
        elif round(ev["accuracy"] * ev["count"]) != correct:
            problems.append(f"{name} eval accuracy {ev['accuracy']!r} ({round(ev['accuracy'] * ev['count'])} correct) "
                            f"vs predict's {correct} correct")
    if not close(er["loss"], eo["loss"], 0.0, loss_rtol):
        problems.append(f"eval loss {er['loss']!r} vs {eo['loss']!r} (rel {abs(er['loss'] - eo['loss']) / abs(er['loss']):.3g} > {loss_rtol:g})")
    note = f"; {len(ties)} near-tie flips allowed: " + "; ".join(ties[:3]) if ties else ""
    if problems:
        print("; ".join(problems) + note)
        return 1
    print(f"{len(ref)} predictions: same classes, logits max|d| {worst:.3g} within atol {atol:g} + rtol {rtol:g}; "
          f"eval accuracy {er['accuracy']} vs {eo['accuracy']}, loss {er['loss']:.7g} vs {eo['loss']:.7g}{note}")
    return 0


def cmd_summary_eval(summary_path, eval_path, loss_rtol):
    loss_rtol = float(loss_rtol)
    s, e = load_json(summary_path), load_json(eval_path)
    problems = []
    if s["test_accuracy"] != e["accuracy"]:
        problems.append(f"test accuracy {s['test_accuracy']!r} in training vs {e['accuracy']!r} in eval")
    if not close(s["test_loss"], e["loss"], 0.0, loss_rtol):
        problems.append(f"test loss {s['test_loss']!r} in training vs {e['loss']!r} in eval (rel > {loss_rtol:g})")
    if problems:
        print("; ".join(problems))
        return 1
    print(f"eval reproduces training's test accuracy {e['accuracy']} and loss {e['loss']:.7g} (training {s['test_loss']:.7g})")
    return 0


def main(argv):
    cmds = {"weights": (cmd_weights, 4), "metrics": (cmd_metrics, 4), "predictions": (cmd_predictions, 8),
            "summary-eval": (cmd_summary_eval, 3)}
    if len(argv) < 2 or argv[1] not in cmds or len(argv) - 2 != cmds[argv[1]][1]:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        return cmds[argv[1]][0](*argv[2:])
    except BadInput as e:
        print(f"bad input: {e}")
        return 2
    except (KeyError, ValueError, TypeError) as e:
        print(f"bad input: {type(e).__name__}: {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
