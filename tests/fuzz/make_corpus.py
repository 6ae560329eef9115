#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets: tests/fuzz/corpus/{idx,safetensors,arch}/.

Each seed is a small, hand-chosen file: valid ones (so the fuzzer starts from inputs that get past
every check) and invalid ones that stop at each check once. The bytes are committed; this script
is how they were made, rerun it only to change them. Regression seeds (inputs that once found a
bug) are added by hand as corpus/<target>/regress-*, and this script never touches them.
"""
import gzip
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def gz(data):
    # mtime=0: the same bytes on every run
    return gzip.compress(data, mtime=0)


# ---- IDX: magic 0,0,type,ndims; one big-endian uint32 per dimension; unsigned bytes ------------
def idx_images(count, rows, cols, pixels=None):
    if pixels is None:
        pixels = bytes((i * 37 + 11) % 256 for i in range(count * rows * cols))
    return struct.pack(">IIII", 0x803, count, rows, cols) + pixels


def idx_labels(count, labels=None):
    if labels is None:
        labels = bytes(i % 10 for i in range(count))
    return struct.pack(">II", 0x801, count) + labels


img = idx_images(3, 4, 5)
lab = idx_labels(7)
write("idx", "images-3x4x5.idx", img)
write("idx", "images-3x4x5.idx.gz", gz(img))
write("idx", "labels-7.idx", lab)
write("idx", "labels-7.idx.gz", gz(lab))
write("idx", "images-1x1x1.idx", idx_images(1, 1, 1))
write("idx", "labels-concatenated-members.idx.gz", gz(lab[:5]) + gz(lab[5:]))
write("idx", "images-truncated-data.idx", img[:-3])
write("idx", "images-extra-data.idx", img + b"\x00\x01")
write("idx", "images-truncated-header.idx", img[:10])
write("idx", "images-zero-count.idx", idx_images(0, 4, 5, b""))
write("idx", "images-absurd-size.idx", struct.pack(">IIII", 0x803, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF))
write("idx", "images-absurd-size.idx.gz", gz(struct.pack(">IIII", 0x803, 60000, 65536, 65536)))
write("idx", "labels-absurd-count.idx", struct.pack(">II", 0x801, 0x80000000) + b"\x01")
write("idx", "labels-wrong-magic-images.idx", img)  # an images file where labels are expected
write("idx", "labels-float-type.idx", struct.pack(">II", 0x00000D01, 2) + b"\0" * 8)
write("idx", "not-idx.txt", "hello, this is not an IDX file\n")
write("idx", "empty", b"")
write("idx", "gz-truncated.idx.gz", gz(img)[:-6])
write("idx", "gz-trailing-garbage.idx.gz", gz(lab) + b"GARBAGE")
bad_crc = bytearray(gz(lab))
bad_crc[-6] ^= 0xFF
write("idx", "gz-bad-crc.idx.gz", bytes(bad_crc))
write("idx", "gz-magic-only", b"\x1f\x8b")


# ---- safetensors: u64 LE header length, JSON header, tensor bytes --------------------------------
def safetensors(header, data, pad=True, length=None):
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * ((8 - len(text) % 8) % 8)
    n = len(text) if length is None else length
    return struct.pack("<Q", n) + text + data


w = struct.pack("<6f", 0.5, -1.25, 2.0, 3.5, -0.75, 1e-3)
b = struct.pack("<2f", 0.1, -0.2)
valid_header = {
    "__metadata__": {"arch": "conv(2,1) relu dense(2)", "mean": "0.286", "std": "0.353"},
    "0.weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
    "0.bias": {"dtype": "F32", "shape": [2], "data_offsets": [24, 32]},
}
write("safetensors", "valid-f32.safetensors", safetensors(valid_header, w + b))
write("safetensors", "valid-mixed-dtypes.safetensors", safetensors({
    "a": {"dtype": "F64", "shape": [2], "data_offsets": [0, 16]},
    "b": {"dtype": "I64", "shape": [1], "data_offsets": [16, 24]},
    "c": {"dtype": "I32", "shape": [1, 1], "data_offsets": [24, 28]},
    "d": {"dtype": "U8", "shape": [3], "data_offsets": [28, 31]},
    "e": {"dtype": "F32", "shape": [0, 4], "data_offsets": [31, 31]},
    "f": {"dtype": "F32", "shape": [], "data_offsets": [31, 35]},
}, struct.pack("<2d", 1.5, -2.5) + struct.pack("<q", -7) + struct.pack("<i", 9) + b"\x01\x02\x03"
   + struct.pack("<f", 4.0)))
write("safetensors", "valid-empty-header.safetensors", safetensors({}, b""))
write("safetensors", "valid-unpadded.safetensors",
      safetensors({"x": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}, b"\x05\x06", pad=False))
write("safetensors", "short-file", b"\x10\x00\x00")
write("safetensors", "header-length-beyond-file.safetensors", safetensors(valid_header, w + b, length=1 << 40))
write("safetensors", "malformed-json.safetensors", struct.pack("<Q", 9) + b'{"a": [1,' + w)
write("safetensors", "header-is-array.safetensors", safetensors([1, 2, 3], b""))
write("safetensors", "overlap.safetensors", safetensors({
    "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
    "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
}, w[:12]))
write("safetensors", "gap.safetensors", safetensors({
    "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
}, w[:8]))
write("safetensors", "offsets-past-end.safetensors", safetensors({
    "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
}, w[:8]))
write("safetensors", "unknown-dtype.safetensors", safetensors({
    "a": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]},
}, w[:4]))
write("safetensors", "shape-mismatch.safetensors", safetensors({
    "a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]},
}, w[:8]))
write("safetensors", "negative-shape.safetensors", safetensors({
    "a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]},
}, w[:8]))
write("safetensors", "huge-shape.safetensors", safetensors({
    "a": {"dtype": "F64", "shape": [4294967296, 4294967296, 16], "data_offsets": [0, 8]},
}, w[:8]))
write("safetensors", "metadata-not-string.safetensors", safetensors({
    "__metadata__": {"epochs": 3},
    "a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
}, b"\x00"))
write("safetensors", "missing-offsets.safetensors", safetensors({
    "a": {"dtype": "U8", "shape": [1]},
}, b"\x00"))
write("safetensors", "offsets-negative.safetensors", safetensors({
    "a": {"dtype": "U8", "shape": [1], "data_offsets": [-1, 0]},
}, b"\x00"))

# ---- --arch specs ---------------------------------------------------------------------------------
arch = {
    "preset-paper": "paper",
    "preset-lenet5": "lenet5",
    "preset-deep": "deep",
    "preset-fashion": "fashion",
    "paper-spelled-out": "conv(32,5,pad=2) relu maxpool(2) dense(128) relu dense(10)",
    "strides-and-windows": "conv(4,3x2,stride=2,pad=1) leaky_relu(0.1) maxpool(2x3,stride=1) l2pool(2) dense(10)",
    "activations": "conv(3,3) elu(0.5) avgpool(2) flatten sigmoid dense(7) tanh dense(5) softplus arctan "
                   "identity binary_step dense(3) softmax",
    "spaces-and-case": "  CONV (8, 3 , pad = 1)\tRelu\nMaxPool(2)   dense( 10 )  ",
    "no-dense": "conv(2,3) relu",
    "batchnorm-dropout": "conv(4,3,pad=1) batchnorm relu maxpool(2) dropout(0.25) dense(16) batchnorm relu dropout "
                         "dense(10)",
    "err-dropout-p-one": "conv(4,3) dropout(1.0) dense(10)",
    "err-unknown-layer": "conv2d(3,3) relu dense(10)",
    "err-missing-paren": "conv(32,5 relu dense(10)",
    "err-stray-paren": "relu) dense(10)",
    "err-nested-paren": "conv(3,(5)) dense(10)",
    "err-bad-key": "conv(3,5,padding=2) dense(10)",
    "err-too-big-kernel": "conv(3,13) dense(10)",
    "err-rect-pool-no-stride": "maxpool(2x3) dense(10)",
    "err-dense-before-conv": "dense(10) conv(3,3)",
    "err-negative-pad": "conv(3,3,pad=-1) dense(10)",
    "err-huge-numbers": "conv(1000000,1,pad=1000000) dense(1000000)",
    "err-float-args": "leaky_relu(1e400) dense(2)",
    "err-empty": "",
}
for name, spec in arch.items():
    write("arch", name, spec)
