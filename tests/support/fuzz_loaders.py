"""Fuzzing of the IDX and GGUF loaders with mutation recipes.

A recipe is a JSON-able dict that says how to damage a freshly generated valid base file:

    {"kind": "idx", "base": "images", "gz": true, "ops": [["set_dim", 0, 0]], "gz_ops": [["flip", 12, 3]]}
    {"kind": "gguf", "base": "fc", "ops": [["t_dims", "fc1.bias", [0]]], "byte_ops": [["truncate", 100]]}

IDX bases are written by ``ggml_mnist.write_idx``; ``ops`` change the uncompressed bytes and, for
``gz`` recipes, ``gz_ops`` then change the compressed ones. GGUF bases are small models written by
``Model.save``; ``ops`` edit the parsed file (header counts, keys, values, tensor infos, data) and
``byte_ops`` then edit the serialized bytes. The property: every recipe loads correctly or raises
the documented exception (IdxFormatError/DataError for IDX, ModelFormatError for GGUF), never
anything else, and the process never dies. A file that loads must also predict (GGUF) or equal
what ``write_idx`` writes for the array it loaded (IDX).

Mutated files run in worker subprocesses that journal each case before running it, so a crash
(a signal such as SIGABRT from a GGML_ASSERT) names the recipe that caused it. Workers also run
under an address-space limit, so a loader that tries a large allocation fails the property.

    python tests/support/fuzz_loaders.py --cases 5000             # 5000 generated cases per kind, plus sweeps
    python tests/support/fuzz_loaders.py --kind gguf --cases 300 --derandomize
    python tests/support/fuzz_loaders.py --replay recipes.json    # a JSON list of recipes

tests/test_fuzz_loaders.py runs bounded, derandomized versions in CI together with the
regression corpus tests/support/fuzz_corpus.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from ggml_mnist import (
    DataError,
    IdxFormatError,
    Model,
    ModelFormatError,
    OutOfMemoryError,
    load_idx_pair,
    read_idx,
    write_idx,
)

HERE = Path(__file__).resolve()
CORPUS = HERE.parent / "fuzz_corpus.json"
THREADS = 1
DATA_CAP = 1 << 20  # at most this many data bytes are written per tensor, whatever its shape claims
MAX_EXTRA_MB = 1024  # address space a worker may add after its warm-up before allocations fail
HANG_SECONDS = 60.0
CHUNK = 1000  # generated cases per worker process

Recipe = dict[str, Any]


# ---- IDX ---------------------------------------------------------------------------------------------
def _idx_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "images": rng.integers(0, 256, size=(4, 28, 28), dtype=np.uint8),
        "labels": rng.integers(0, 10, size=4, dtype=np.uint8),
        "i8-2d": rng.integers(-128, 128, size=(3, 4), dtype=np.int8),
        "i16-2d": rng.integers(-30000, 30000, size=(2, 3), dtype=np.int16),
        "i32-1d": rng.integers(-(2**31), 2**31, size=5, dtype=np.int32),
        "f32-3d": rng.standard_normal((2, 2, 3)).astype(np.float32),
        "f64-1d": rng.standard_normal(3),
    }


IDX_BASES = tuple(_idx_arrays())
IDX_PARTNER = {"images": "labels", "labels": "images"}  # loaded together with load_idx_pair
_IDX_CODES = (0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E)


class Workspace:
    """A directory holding the freshly generated base files and the mutated case files."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._idx: dict[tuple[str, bool], bytes] = {}
        self._gguf: dict[str, dict[str, Any]] = {}

    def idx_base(self, name: str, gz: bool = False) -> Path:
        """Path of base ``name`` written by write_idx (gzip-compressed when gz)."""
        path = self.dir / f"base-{name}.idx{'.gz' if gz else ''}"
        if not path.exists():
            write_idx(path, _idx_arrays()[name])
        return path

    def idx_bytes(self, name: str) -> bytes:
        """Uncompressed bytes of base ``name``."""
        if (name, False) not in self._idx:
            self._idx[name, False] = self.idx_base(name).read_bytes()
        return self._idx[name, False]

    def gguf_base(self, name: str) -> dict[str, Any]:
        """Base ``name`` saved by Model.save, parsed."""
        if name not in self._gguf:
            path = self.dir / f"base-{name}.gguf"
            GGUF_BASES[name]().save(path, metadata={"note": "fuzz base", "history": [{"epoch": 1, "train_loss": 0.5}]})
            self._gguf[name] = parse_gguf(path.read_bytes())
        return self._gguf[name]


def _pos(data: bytes | bytearray, pos: int, extra: int = 0) -> int:
    return pos % (len(data) + extra) if len(data) + extra > 0 else 0


def apply_byte_ops(data: bytes, ops: list[list[Any]], endian: str = "<") -> bytes:
    """Apply byte-level ops: truncate, flip, set_byte, set_u32, set_u64, insert, delete, append."""
    buf = bytearray(data)
    for op, *args in ops:
        if op == "truncate":
            del buf[_pos(buf, args[0], 1) :]
        elif op == "flip" and buf:
            buf[_pos(buf, args[0])] ^= 1 << (args[1] % 8)
        elif op == "set_byte" and buf:
            buf[_pos(buf, args[0])] = args[1] % 256
        elif op in ("set_u32", "set_u64") and buf:
            size = 4 if op == "set_u32" else 8
            at = _pos(buf, args[0])
            buf[at : at + size] = (args[1] % 2 ** (8 * size)).to_bytes(size, "little" if endian == "<" else "big")
        elif op == "insert":
            at = _pos(buf, args[0], 1)
            buf[at:at] = bytes.fromhex(args[1])
        elif op == "delete" and buf:
            at = _pos(buf, args[0])
            del buf[at : at + args[1]]
        elif op == "append":
            buf += bytes.fromhex(args[0])
        elif op not in ("flip", "set_byte", "set_u32", "set_u64", "delete"):
            raise ValueError(f"unknown byte op {op!r}")
    return bytes(buf)


def apply_idx_ops(data: bytes, ops: list[list[Any]]) -> bytes:
    """Apply IDX header ops (set_type, set_ndim, set_dim) and byte ops (big-endian) to raw IDX bytes."""
    buf = bytearray(data)
    for op in ops:
        name, *args = op
        if name == "set_type" and len(buf) > 2:
            buf[2] = args[0] % 256
        elif name == "set_ndim" and len(buf) > 3:
            buf[3] = args[0] % 256
        elif name == "set_dim":
            at = 4 + 4 * args[0]
            if len(buf) < at + 4:
                buf += bytes(at + 4 - len(buf))
            buf[at : at + 4] = (args[1] % 2**32).to_bytes(4, "big")
        else:
            buf = bytearray(apply_byte_ops(bytes(buf), [op], endian=">"))
    return bytes(buf)


def build_idx(ws: Workspace, recipe: Recipe) -> bytes:
    """The bytes of the mutated IDX file of recipe."""
    raw = apply_idx_ops(ws.idx_bytes(recipe["base"]), recipe.get("ops", []))
    if not recipe.get("gz"):
        return raw
    return apply_byte_ops(gzip.compress(raw, compresslevel=6, mtime=0), recipe.get("gz_ops", []))


def check_idx(ws: Workspace, recipe: Recipe) -> tuple[str, str]:
    """Load the mutated IDX file; return (outcome, message). Raises AssertionError for a wrong load.

    Outcomes: "ok", "IdxFormatError" or "DataError" (from load_idx_pair); any other exception propagates.
    """
    path = ws.dir / "case.idx"
    path.unlink(missing_ok=True)  # a new file: arrays still mapped from the last case keep their pages; and fast
    path.write_bytes(build_idx(ws, recipe))
    try:
        array = read_idx(path)
    except IdxFormatError as e:
        return "IdxFormatError", str(e)
    oracle = ws.dir / "oracle.idx"
    write_idx(oracle, array)
    content = path.read_bytes()
    if content[:2] == b"\x1f\x8b":
        content = gzip.decompress(content)
    assert content == oracle.read_bytes(), (
        f"read_idx returned {array.dtype} {array.shape}, which is not the file's content"
    )
    partner = IDX_PARTNER.get(recipe["base"])
    if partner is not None:
        pair = (path, ws.idx_base(partner)) if recipe["base"] == "images" else (ws.idx_base(partner), path)
        try:
            load_idx_pair(*pair)
        except DataError as e:
            return type(e).__name__, str(e)
    return "ok", ""


# ---- GGUF --------------------------------------------------------------------------------------------
GGUF_BASES: dict[str, Callable[[], Model]] = {
    "fc": lambda: Model.create("fc", hidden=8, threads=THREADS, seed=1),
    "cnn": lambda: Model.create("cnn", conv_channels=(2, 2), threads=THREADS, seed=2),
    "fc-tiny": lambda: Model.create("fc", hidden=2, n_classes=2, image_size=(4, 4), threads=THREADS, seed=3),
    "cnn-tiny": lambda: Model.create(
        "cnn", conv_channels=(2, 2), n_classes=2, image_size=(4, 4), threads=THREADS, seed=4
    ),
    # quantised files: block-type dense weights (rows zero-padded to whole blocks), f16 kernels, f32 biases
    "fc-q4_0": lambda: Model.create("fc", hidden=8, threads=THREADS, seed=5).quantize("q4_0", pad=True),
    "cnn-q8_0": lambda: Model.create("cnn", conv_channels=(2, 2), threads=THREADS, seed=6).quantize("q8_0", pad=True),
    "fc-tiny-q5_0": lambda: Model.create(
        "fc", hidden=2, n_classes=2, image_size=(4, 4), threads=THREADS, seed=7
    ).quantize("q5_0", pad=True),
}
GGUF_ALIGNMENT = 32
STRING, ARRAY = 8, 9
_SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "B", 10: "Q", 11: "q", 12: "d"}
# ggml type -> (bytes per block, elements per block) for the types the fuzzer names
_GGML_TYPE_SIZES = {
    0: (4, 1),
    1: (2, 1),
    2: (18, 32),
    3: (20, 32),
    6: (22, 32),
    7: (24, 32),
    8: (34, 32),
    9: (36, 32),
    10: (84, 256),
    24: (1, 1),
    25: (2, 1),
    26: (4, 1),
    27: (8, 1),
    28: (8, 1),
    30: (2, 1),
}


def _u32(v: int) -> bytes:
    return struct.pack("<I", v % 2**32)


def _u64(v: int) -> bytes:
    return struct.pack("<Q", v % 2**64)


def _text(value: Any) -> bytes:
    """A str as UTF-8, or a list of [str, times] pieces repeated and joined (long texts in short recipes)."""
    if isinstance(value, list):
        return b"".join(_text(piece) * times for piece, times in value)
    return value.encode("utf-8", "surrogatepass")


def encode_value(gtype: int, value: Any) -> bytes:
    """Encode a GGUF value: a scalar, a str, or [element type, [values]] for an array."""
    if gtype == STRING:
        data = _text(value)
        return _u64(len(data)) + data
    if gtype == ARRAY:
        etype, items = value
        return _u32(etype) + _u64(len(items)) + b"".join(encode_value(etype, v) for v in items)
    fmt = _SCALAR_FORMATS.get(gtype)
    if fmt is None:
        return _u64(int(value))  # an unknown type: some bytes
    if fmt in "fd":
        return struct.pack("<" + fmt, float(value))
    bits = 8 * struct.calcsize(fmt)
    v = int(value) % 2**bits
    if fmt.islower() and v >= 2 ** (bits - 1):
        v -= 2**bits
    return struct.pack("<" + fmt, v)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        out = self.data[self.at : self.at + n]
        self.at += n
        return out

    def unpack(self, fmt: str) -> Any:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def skip_value(self, gtype: int) -> None:
        if gtype == STRING:
            self.take(self.unpack("Q"))
        elif gtype == ARRAY:
            etype, n = self.unpack("I"), self.unpack("Q")
            for _ in range(n):
                self.skip_value(etype)
        else:
            self.take(struct.calcsize(_SCALAR_FORMATS[gtype]))


def parse_gguf(data: bytes) -> dict[str, Any]:
    """Parse a valid GGUF file into {"version", "kv": [[key, type, payload]], "tensors": [[name, dims, type]],
    "blobs": [tensor data]} (keys and names as bytes, payloads as the encoded value bytes)."""
    r = _Reader(data)
    assert r.take(4) == b"GGUF"
    version, n_tensors, n_kv = r.unpack("I"), r.unpack("q"), r.unpack("q")
    kv = []
    for _ in range(n_kv):
        key = r.take(r.unpack("Q"))
        gtype = r.unpack("I")
        start = r.at
        r.skip_value(gtype)
        kv.append([key, gtype, data[start : r.at]])
    infos = []
    for _ in range(n_tensors):
        name = r.take(r.unpack("Q"))
        dims = [r.unpack("q") for _ in range(r.unpack("I"))]
        infos.append([name, dims, r.unpack("I"), r.unpack("Q")])
    base = -(-r.at // GGUF_ALIGNMENT) * GGUF_ALIGNMENT
    blobs = [data[base + off : base + off + _nbytes(dims, gtype)] for _, dims, gtype, off in infos]
    return {"version": version, "kv": kv, "tensors": [i[:3] for i in infos], "blobs": blobs}


def _nbytes(dims: list[int], ggml_type: int) -> int:
    elements = math.prod(max(d, 0) for d in dims)
    size, block = _GGML_TYPE_SIZES.get(ggml_type, (4, 1))
    return elements // block * size


def _index(items: list[Any], selector: Any, key: Callable[[Any], bytes]) -> Optional[int]:
    """The index of the item a selector names: an int (modulo the length) or a name."""
    if not items:
        return None
    if isinstance(selector, int):
        return selector % len(items)
    matches = [i for i, item in enumerate(items) if key(item) == _text(selector)]
    return matches[0] if matches else None


GGUF_OPS = (
    "version",
    "n_tensors",
    "n_kv",
    "align",
    "arch",
    "meta",
    "kv_add",
    "kv_drop",
    "kv_dup",
    "kv_rename",
    "kv_retype",
    "kv_set",
    "kv_count",
    "t_drop",
    "t_dup",
    "t_rename",
    "t_dims",
    "t_type",
    "t_offset",
    "t_fill",
    "t_swap",
)


def apply_gguf_ops(g: dict[str, Any], ops: list[list[Any]]) -> dict[str, Any]:
    """Apply structural ops to a parsed GGUF (a copy is changed and returned)."""
    g = {
        "version": g["version"],
        "kv": [list(e) for e in g["kv"]],
        "tensors": [[t[0], list(t[1]), t[2]] for t in g["tensors"]],
        "blobs": list(g["blobs"]),
        "offsets": {},
        "header": {},
        "alignment": GGUF_ALIGNMENT,
    }
    kv, tensors, blobs = g["kv"], g["tensors"], g["blobs"]
    for op, *args in ops:
        if op not in GGUF_OPS:
            raise ValueError(f"unknown GGUF op {op!r}")
        k = _index(kv, args[0], lambda e: e[0]) if op.startswith("kv_") and op != "kv_add" else None
        t = _index(tensors, args[0], lambda e: e[0]) if op.startswith("t_") else None
        if op in ("version", "n_tensors", "n_kv"):
            g["header"][op] = args[0]
        elif op == "align":
            g["alignment"] = args[0]
        elif op == "arch":
            k = _index(kv, "general.architecture", lambda e: e[0])
            entry = [b"general.architecture", STRING, encode_value(STRING, args[0])]
            if k is None:
                kv.insert(0, entry)
            else:
                kv[k] = entry
        elif op == "meta":  # a ggml_mnist.* string, as Model.save writes metadata
            k = _index(kv, "ggml_mnist." + args[0], lambda e: e[0])
            entry = [_text("ggml_mnist." + args[0]), STRING, encode_value(STRING, args[1])]
            if k is None:
                kv.append(entry)
            else:
                kv[k] = entry
        elif op == "kv_add":
            at = args[3] % (len(kv) + 1) if len(args) > 3 else len(kv)
            kv.insert(at, [_text(args[0]), args[1], encode_value(args[1], args[2])])
        elif k is None and op.startswith("kv_"):
            continue
        elif op == "kv_drop":
            del kv[k]
        elif op == "kv_dup":
            kv.insert(k + 1, list(kv[k]))
        elif op == "kv_rename":
            kv[k][0] = _text(args[1])
        elif op == "kv_retype":  # a new type code over the old payload bytes
            kv[k][1] = args[1]
        elif op == "kv_set":
            kv[k][1:] = [args[1], encode_value(args[1], args[2])]
        elif op == "kv_count":  # overwrite a string's length or an array's element count
            payload = bytearray(kv[k][2])
            at = 0 if kv[k][1] == STRING else 4 if kv[k][1] == ARRAY else None
            if at is not None and len(payload) >= at + 8:
                payload[at : at + 8] = _u64(args[1])
            kv[k][2] = bytes(payload)
        elif t is None:
            continue
        elif op == "t_drop":
            del tensors[t], blobs[t]
        elif op == "t_dup":
            tensors.insert(t + 1, [tensors[t][0], list(tensors[t][1]), tensors[t][2]])
            blobs.insert(t + 1, blobs[t])
        elif op == "t_rename":
            tensors[t][0] = _text(args[1])
        elif op == "t_dims":
            tensors[t][1] = list(args[1])
        elif op == "t_type":
            tensors[t][2] = args[1]
        elif op == "t_offset":  # an explicit offset instead of the consistent layout
            g["offsets"][t] = args[1]
        elif op == "t_fill":
            blobs[t] = np.full(len(blobs[t]) // 4, args[1], dtype=np.float32).tobytes()
        elif op == "t_swap":
            u = _index(tensors, args[1], lambda e: e[0])
            if u is not None:
                tensors[t], tensors[u] = tensors[u], tensors[t]
                blobs[t], blobs[u] = blobs[u], blobs[t]
    return g


def serialize_gguf(g: dict[str, Any]) -> bytes:
    """Write a (possibly mutated) parsed GGUF: tensor offsets follow the declared shapes and types
    unless overridden; each tensor's data is its old bytes cut or zero-padded to its declared size,
    at most DATA_CAP bytes (a larger claim makes the file shorter than its header says)."""
    align = g.get("alignment", GGUF_ALIGNMENT)
    pad = (lambda n: -(-n // align) * align) if isinstance(align, int) and align > 0 else (lambda n: n)
    header = g.get("header", {})
    out = [
        b"GGUF",
        _u32(header.get("version", g["version"])),
        _u64(header.get("n_tensors", len(g["tensors"]))),
        _u64(header.get("n_kv", len(g["kv"]))),
    ]
    for key, gtype, payload in g["kv"]:
        out += [_u64(len(key)), key, _u32(gtype), payload]
    offset, sizes = 0, []
    for i, (name, dims, ggml_type) in enumerate(g["tensors"]):
        size = _nbytes(dims, ggml_type)
        sizes.append(size)
        out += [_u64(len(name)), name, _u32(len(dims))] + [_u64(d) for d in dims]
        out += [_u32(ggml_type), _u64(g.get("offsets", {}).get(i, offset))]
        offset += pad(size)
    head = b"".join(out)
    data = [head + bytes(pad(len(head)) - len(head))]
    for blob, size in zip(g["blobs"], sizes):
        size = min(size, DATA_CAP)
        blob = blob[:size] + bytes(max(0, size - len(blob)))
        data.append(blob + bytes(pad(size) - size))
    return b"".join(data)


def build_gguf(ws: Workspace, recipe: Recipe) -> bytes:
    """The bytes of the mutated GGUF file of recipe."""
    g = apply_gguf_ops(ws.gguf_base(recipe["base"]), recipe.get("ops", []))
    return apply_byte_ops(serialize_gguf(g), recipe.get("byte_ops", []))


def check_gguf(ws: Workspace, recipe: Recipe) -> tuple[str, str]:
    """Load the mutated GGUF file; return (outcome, message): "ok" or "ModelFormatError".

    A model that loads must predict one image (an OutOfMemoryError there is allowed: a valid but
    huge model). Any other exception propagates; a crash kills the process.
    """
    path = ws.dir / "case.gguf"
    path.unlink(missing_ok=True)  # a new file is much faster than truncating one on ext4
    path.write_bytes(build_gguf(ws, recipe))
    try:
        model = Model.load(path, threads=THREADS)
    except ModelFormatError as e:
        return "ModelFormatError", str(e)
    with model:
        try:
            probs = model.predict_proba(np.zeros((1, *model.image_size), np.uint8))
            assert probs.shape == (1, model.n_classes)
        except OutOfMemoryError as e:
            return "ok", f"predict: {e}"
    return "ok", ""


def check_abort(ws: Workspace, recipe: Recipe) -> tuple[str, str]:
    """Self-test of the crash detection: dies the way a failed GGML_ASSERT does."""
    os.abort()


CHECKS = {"idx": check_idx, "gguf": check_gguf, "abort": check_abort}


# ---- hypothesis strategies -------------------------------------------------------------------------------
_EDGE_INTS = [
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    10,
    16,
    28,
    32,
    63,
    64,
    500,
    784,
    1000,
    1001,
    4096,
    4097,
    65535,
    65536,
    65537,
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**32,
    2**62,
    2**63 - 1,
    2**64 - 1,
    -1,
    -(2**31),
    -(2**63),
]
edge_ints = st.one_of(st.sampled_from(_EDGE_INTS), st.integers(-(2**63), 2**64 - 1))
positions = st.one_of(st.integers(0, 64), st.integers(0, 1024), st.integers(0, 2**24))
hex_bytes = st.binary(min_size=1, max_size=16).map(bytes.hex)


def byte_ops(max_size: int = 2) -> st.SearchStrategy[list[list[Any]]]:
    """Lists of byte-level ops."""
    op = st.one_of(
        st.tuples(st.just("truncate"), positions),
        st.tuples(st.just("flip"), positions, st.integers(0, 7)),
        st.tuples(st.just("set_byte"), positions, st.integers(0, 255)),
        st.tuples(st.sampled_from(["set_u32", "set_u64"]), positions, edge_ints),
        st.tuples(st.just("insert"), positions, hex_bytes),
        st.tuples(st.just("delete"), positions, st.integers(1, 64)),
        st.tuples(st.just("append"), hex_bytes),
    ).map(list)
    return st.lists(op, max_size=max_size)


@st.composite
def idx_recipes(draw: st.DrawFn) -> Recipe:
    """Mutations of the IDX bases: header fields (type, ndim, huge or zero dims), bytes, gzip stream."""
    dims = st.one_of(st.sampled_from([0, 1, 2, 3, 4, 28, 0xFFFF, 2**31, 0xFFFFFFFF]), st.integers(0, 2**32 - 1))
    header_op = st.one_of(
        st.tuples(st.just("set_type"), st.one_of(st.sampled_from(_IDX_CODES), st.integers(0, 255))),
        st.tuples(st.just("set_ndim"), st.one_of(st.integers(0, 4), st.integers(0, 255))),
        st.tuples(st.just("set_dim"), st.integers(0, 17), dims),
    ).map(list)
    ops = draw(st.lists(header_op, max_size=3)) + draw(byte_ops())
    recipe = {"kind": "idx", "base": draw(st.sampled_from(IDX_BASES)), "gz": draw(st.booleans()), "ops": ops}
    if recipe["gz"]:
        recipe["gz_ops"] = draw(byte_ops(1))
    return recipe


_KEYS = [
    "",
    "general.architecture",
    "general.alignment",
    "general.name",
    "ggml_mnist.n_classes",
    "ggml_mnist.image_height",
    "ggml_mnist.image_width",
    "ggml_mnist.hidden",
    "ggml_mnist.conv1_channels",
    "ggml_mnist.conv2_channels",
    "ggml_mnist.layers.kind",
    "ggml_mnist.layers.name",
    "ggml_mnist.layers.units",
    "ggml_mnist.layers.kernel",
    "ggml_mnist.layers.stride",
    "ggml_mnist.layers.padding",
    "ggml_mnist.layers.dropout",
    "ggml_mnist.note",
    "ggml_mnist.history",
    "ggml_mnist.config",
    "ggml_mnist.",
    "k" * 300,
]
_TENSOR_NAMES = [
    "fc1.weight",
    "fc1.bias",
    "fc2.weight",
    "fc2.bias",
    "conv1.kernel",
    "conv1.bias",
    "conv2.kernel",
    "conv2.bias",
    "dense.weight",
    "dense.bias",
    "",
    "x" * 63,
    "x" * 64,
    "fc1.weight\0junk",
]
_ARCHES = [
    "mnist-fc",
    "mnist-cnn",
    "ggml-mnist-fc",
    "ggml-mnist-cnn",
    "ggml-mnist",
    "",
    "llama",
    "mnist-fc ",
    "MNIST-FC",
    "mnist-fc\0x",
    "mnist-rnn",
]
_STRINGS = [
    "",
    "x",
    "32",
    "10",
    "null",
    "{}",
    '{"__class__": "os.system", "__reduce__": ["os.system", ["echo pwned"]]}',
    "\u00e9\u4e2d",
    "a" * 1000,
    [["[", 100_000], ["]", 100_000]],
    [["9", 5000]],
    "1e999",
    "NaN",
]
gguf_types = st.one_of(st.integers(0, 12), st.sampled_from([13, 255, 2**31, 2**32 - 1]))
ggml_types = st.one_of(
    st.sampled_from([0, 0, 1, 2, 3, 4, 5, 6, 8, 24, 26, 28, 30, 39, 40, 2**31 - 1]), st.integers(0, 2**32 - 1)
)
tensor_dims = st.lists(
    st.one_of(
        st.sampled_from([0, 1, 2, 3, 8, 9, 10, 16, 28, 784, 2**31, 2**62, 2**63 - 1, 2**63, 2**64 - 1]),
        st.integers(0, 2**64 - 1),
    ),
    max_size=5,
)
selector = st.integers(0, 31)


@st.composite
def gguf_values(draw: st.DrawFn, gtype: int) -> Any:
    """A value to encode as gtype (anything for unknown types)."""
    if gtype == STRING:
        return draw(st.one_of(st.sampled_from(_STRINGS + _ARCHES), st.text(max_size=20)))
    if gtype == ARRAY:
        etype = draw(gguf_types)
        items = gguf_values(etype) if etype != ARRAY else st.just([4, [1, 2]])  # nested arrays: one level
        return [etype, draw(st.lists(items, max_size=3))]
    if gtype in (6, 12):
        return draw(st.sampled_from([0.0, 1.5, -2.0, 1e30, float("nan"), float("inf")]))
    return draw(edge_ints)


@st.composite
def gguf_ops(draw: st.DrawFn) -> list[Any]:
    """One structural GGUF op."""
    kind = draw(st.sampled_from(GGUF_OPS))
    if kind in ("version", "n_tensors", "n_kv"):
        return [kind, draw(st.one_of(st.integers(0, 8), edge_ints))]
    if kind == "align":
        return [kind, draw(st.sampled_from([1, 8, 16, 64, 3]))]
    if kind == "arch":
        return [kind, draw(st.sampled_from(_ARCHES))]
    if kind == "meta":
        return [
            kind,
            draw(st.sampled_from(["note", "history", "config", "class_names"])),
            draw(st.sampled_from(_STRINGS)),
        ]
    if kind in ("kv_add", "kv_set"):
        gtype = draw(gguf_types)
        name = draw(st.sampled_from(_KEYS)) if kind == "kv_add" else draw(selector)
        return [kind, name, gtype, draw(gguf_values(gtype))] + ([draw(selector)] if kind == "kv_add" else [])
    if kind in ("kv_drop", "kv_dup", "t_drop", "t_dup"):
        return [kind, draw(selector)]
    if kind == "kv_rename":
        return [kind, draw(selector), draw(st.one_of(st.sampled_from(_KEYS), st.text(max_size=12)))]
    if kind == "kv_retype":
        return [kind, draw(selector), draw(gguf_types)]
    if kind == "kv_count":
        return [kind, draw(selector), draw(edge_ints)]
    if kind == "t_rename":
        return [kind, draw(selector), draw(st.sampled_from(_TENSOR_NAMES))]
    if kind == "t_dims":
        return [kind, draw(selector), draw(tensor_dims)]
    if kind == "t_type":
        return [kind, draw(selector), draw(ggml_types)]
    if kind == "t_offset":
        return [
            kind,
            draw(selector),
            draw(st.one_of(st.sampled_from([0, 1, 32, 2**63, 2**64 - 32]), st.integers(0, 2**64 - 1))),
        ]
    if kind == "t_fill":
        return [kind, draw(selector), draw(st.sampled_from([float("nan"), float("inf"), 3.0e38, 0.0]))]
    return [kind, draw(selector), draw(selector)]


@st.composite
def gguf_recipes(draw: st.DrawFn) -> Recipe:
    """Mutations of the GGUF bases: structural ops on keys and tensors, then byte ops."""
    return {
        "kind": "gguf",
        "base": draw(st.sampled_from(sorted(GGUF_BASES))),
        "ops": draw(st.lists(gguf_ops(), max_size=3)),
        "byte_ops": draw(byte_ops()),
    }


STRATEGIES = {"idx": idx_recipes, "gguf": gguf_recipes}


def hypothesis_settings(max_examples: int, derandomize: bool) -> settings:
    """Settings for a fuzzing run: no deadline, no example database, no shrinking of crashes in place."""
    return settings(
        max_examples=max_examples,
        derandomize=derandomize,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        print_blob=False,
    )


def sweep_recipes(kind: str, ws: Workspace, bases: Optional[list[str]] = None, stride: int = 1) -> list[Recipe]:
    """Truncation of each base at every offset (every ``stride``-th one past the first 2 KiB)."""
    recipes = []
    if kind == "idx":
        for base in bases or IDX_BASES:
            for gz in (False, True):
                n = len(build_idx(ws, {"base": base, "gz": gz}))
                cuts = [c for c in range(n + 1) if c < 2048 or c % stride == 0]
                recipes += [
                    {
                        "kind": "idx",
                        "base": base,
                        "gz": gz,
                        "ops": [] if gz else [["truncate", c]],
                        **({"gz_ops": [["truncate", c]]} if gz else {}),
                    }
                    for c in cuts
                ]
    else:
        for base in bases or sorted(GGUF_BASES):
            n = len(build_gguf(ws, {"base": base}))
            recipes += [
                {"kind": "gguf", "base": base, "byte_ops": [["truncate", c]]}
                for c in range(n + 1)
                if c < 2048 or c % stride == 0
            ]
    return recipes


# ---- the worker: runs cases in this process, journalling each before it runs -------------------------------------
class Journal:
    """Appends one JSON line per event to a file, unbuffered, so a crash loses nothing."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, **event: Any) -> None:
        os.write(self.fd, (json.dumps(event) + "\n").encode())


def _limit_address_space(extra_mb: int) -> None:
    with open("/proc/self/status") as f:
        vm_kb = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
    limit = (vm_kb + extra_mb * 1024) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


def worker(args: argparse.Namespace) -> int:
    """Run recipes from --replay (from --start on) or generate --cases with hypothesis; journal each case."""
    journal = Journal(Path(args.journal))
    ws = Workspace(Path(args.workdir))
    # warm up (bases, native library) before the address space is limited
    for kind in ["idx", "gguf"] if args.kind == "both" else [args.kind]:
        for name in IDX_BASES if kind == "idx" else GGUF_BASES:
            CHECKS[kind](ws, {"kind": kind, "base": name})
    _limit_address_space(args.max_extra_mb)
    if args.replay:
        recipes = json.loads(Path(args.replay).read_text())
        for i in range(args.start, len(recipes)):
            journal.write(start=i, recipe=recipes[i])
            try:
                outcome, message = CHECKS[recipes[i]["kind"]](ws, recipes[i])
            except Exception as e:  # a wrong outcome, reported, and the run goes on
                outcome, message = "failure", f"{type(e).__name__}: {e}"
            journal.write(done=i, outcome=outcome, message=message)
        return 0
    counter = iter(range(10**9))
    failing: list[Recipe] = []

    @hypothesis_settings(args.cases, args.derandomize)
    @given(STRATEGIES[args.kind]())
    def property_(recipe: Recipe) -> None:
        i = next(counter)
        journal.write(start=i, recipe=recipe)
        try:
            outcome, message = CHECKS[args.kind](ws, recipe)
        except Exception as e:
            failing[:] = [recipe]
            journal.write(done=i, outcome="failure", message=f"{type(e).__name__}: {e}")
            raise
        journal.write(done=i, outcome=outcome, message=message)

    test = property_ if args.derandomize else hypothesis_seed(args.seed)(property_)
    try:
        test()
    except Exception as e:  # hypothesis shrank it; the last failing recipe is the minimal one
        journal.write(failure=failing[0] if failing else None, error=f"{type(e).__name__}: {e}"[:2000])
        return 1
    return 0


# ---- the supervisor: runs workers, notices crashes and hangs, continues after them -------------------------------
@dataclass
class Report:
    """What a run found: case count, outcomes, and the recipes that crashed, hung or failed."""

    cases: int = 0
    outcomes: Counter = field(default_factory=Counter)
    crashes: list[dict[str, Any]] = field(default_factory=list)
    hangs: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)  # replay mode: one per recipe
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.crashes or self.hangs or self.failures)

    def merge(self, other: Report) -> None:
        self.cases += other.cases
        self.outcomes.update(other.outcomes)
        self.crashes += other.crashes
        self.hangs += other.hangs
        self.failures += other.failures
        self.results += other.results
        self.seconds += other.seconds

    def summary(self) -> str:
        lines = [
            f"{self.cases} cases in {self.seconds:.1f}s: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
        ]
        for what, items in (("CRASH", self.crashes), ("HANG", self.hangs), ("FAILURE", self.failures)):
            lines += [f"{what}: {json.dumps(item)}" for item in items]
        return "\n".join(lines)


def _run_worker(argv: list[str], workdir: Path, journal: Path) -> tuple[int, list[dict[str, Any]], str]:
    log = workdir / "worker.log"
    cmd = [sys.executable, str(HERE), "--worker", "--journal", str(journal), "--workdir", str(workdir / "ws"), *argv]
    with open(log, "wb") as out:
        env = {**os.environ, "PYTHONFAULTHANDLER": "1", "GGML_NO_BACKTRACE": "1"}  # no gdb on a GGML_ASSERT
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        size, last = -1, time.monotonic()
        while proc.poll() is None:
            time.sleep(0.05)
            now_size = journal.stat().st_size if journal.exists() else 0
            if now_size != size:
                size, last = now_size, time.monotonic()
            elif time.monotonic() - last > HANG_SECONDS:
                proc.kill()
                proc.wait()
                return -999, _read_journal(journal), _output(log)
    return proc.returncode, _read_journal(journal), _output(log)


def _output(log: Path) -> str:
    """The end of a worker's output without faulthandler's list of extension modules."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if not line.startswith("Extension modules:")]
    return "\n".join(lines)[-1500:]


def _read_journal(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _account(report: Report, events: list[dict[str, Any]], rc: int, tail: str) -> Optional[int]:
    """Add a worker's journal to report; return the index of the case that crashed or hung, if any."""
    started, last = {}, None
    for e in events:
        if "start" in e:
            started[e["start"]], last = e["recipe"], e["start"]
        elif "done" in e:
            report.cases += 1
            report.outcomes[e["outcome"]] += 1
            report.results.append({"recipe": started[e["done"]], "outcome": e["outcome"], "message": e["message"]})
            if e["outcome"] == "failure" and not any("failure" in x for x in events):
                report.failures.append({"recipe": started[e["done"]], "error": e["message"]})
            last = None
        elif "failure" in e:
            report.failures.append({"recipe": e["failure"], "error": e["error"]})
    if rc == 0 or (rc == 1 and any("failure" in e for e in events)):
        return None
    if last is None:
        report.failures.append({"recipe": None, "error": f"worker exited with status {rc} outside a case: {tail}"})
        return None
    report.cases += 1
    entry = {"recipe": started[last], "returncode": rc, "output": tail}
    (report.hangs if rc == -999 else report.crashes).append(entry)
    report.outcomes["hang" if rc == -999 else "crash"] += 1
    report.results.append({"recipe": started[last], "outcome": "hang" if rc == -999 else "crash", "message": tail})
    return last


def replay(recipes: list[Recipe], *, max_extra_mb: int = MAX_EXTRA_MB) -> Report:
    """Run recipes in worker subprocesses, restarting after each crash; report.results follows recipes' order."""
    report, t0, start = Report(), time.monotonic(), 0
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        work = Path(tmp)
        (work / "recipes.json").write_text(json.dumps(recipes))
        for attempt in range(len(recipes) + 1):
            if start >= len(recipes):
                break
            journal = work / f"journal-{attempt}.jsonl"
            rc, events, tail = _run_worker(
                [
                    "--kind",
                    "both",
                    "--replay",
                    str(work / "recipes.json"),
                    "--start",
                    str(start),
                    "--max-extra-mb",
                    str(max_extra_mb),
                ],
                work,
                journal,
            )
            crashed = _account(report, events, rc, tail)
            if crashed is None:
                break
            start = crashed + 1
    report.seconds = time.monotonic() - t0
    return report


def generate(
    kind: str,
    cases: int,
    *,
    seed: int = 0,
    derandomize: bool = False,
    time_limit: float = math.inf,
    max_extra_mb: int = MAX_EXTRA_MB,
) -> Report:
    """Run ``cases`` hypothesis-generated cases of kind in workers of at most CHUNK cases each.

    A derandomized run is one worker (the same cases every time). After a crash the next worker
    starts with the next seed; the run stops early once time_limit seconds have passed.
    """
    report, t0 = Report(), time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        work, attempt = Path(tmp), 0
        while report.cases < cases and time.monotonic() - t0 < time_limit and attempt < 10 + cases // 10:
            n = cases - report.cases if derandomize else min(CHUNK, cases - report.cases)
            journal = work / f"journal-{attempt}.jsonl"
            argv = [
                "--kind",
                kind,
                "--cases",
                str(n),
                "--seed",
                str(seed + attempt),
                "--max-extra-mb",
                str(max_extra_mb),
            ]
            rc, events, tail = _run_worker(argv + (["--derandomize"] if derandomize else []), work, journal)
            before = report.cases
            _account(report, events, rc, tail)
            attempt += 1
            if derandomize or report.cases == before:
                break  # derandomized cases would repeat; or a worker made no progress
    report.results = []
    report.seconds = time.monotonic() - t0
    return report


def minimize(recipe: Recipe, crashes: Callable[[Recipe], bool]) -> Recipe:
    """Drop ops from a crashing recipe while it still crashes."""
    changed = True
    while changed:
        changed = False
        for key in ("ops", "byte_ops", "gz_ops"):
            for i in range(len(recipe.get(key, []))):
                candidate = {**recipe, key: recipe[key][:i] + recipe[key][i + 1 :]}
                if crashes(candidate):
                    recipe, changed = candidate, True
                    break
    return recipe


def load_corpus() -> list[dict[str, Any]]:
    """The regression corpus: [{"name", "recipe", "outcome", "match"}] of cases that once failed."""
    return json.loads(CORPUS.read_text())


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--kind", choices=["idx", "gguf", "both"], default="both")
    p.add_argument("--cases", type=int, default=1000, help="generated cases per kind (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--derandomize", action="store_true", help="the same cases on every run (hypothesis derandomize)")
    p.add_argument("--no-sweep", action="store_true", help="skip the truncation-at-every-offset sweeps")
    p.add_argument("--replay", help="a JSON file with a list of recipes to run instead of generating")
    p.add_argument("--time-limit", type=float, default=1800.0, help="seconds after which no new worker starts")
    p.add_argument(
        "--max-extra-mb", type=int, default=MAX_EXTRA_MB, help="address space a worker may add after warm-up"
    )
    p.add_argument("--json", help="write the report as JSON here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--journal", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)

    kinds = ["idx", "gguf"] if args.kind == "both" else [args.kind]
    total, t0 = Report(), time.monotonic()
    if args.replay:
        total = replay(json.loads(Path(args.replay).read_text()), max_extra_mb=args.max_extra_mb)
        print(f"replay: {total.summary()}", flush=True)
    else:
        for kind in kinds:
            if not args.no_sweep:
                with tempfile.TemporaryDirectory() as tmp:
                    recipes = sweep_recipes(kind, Workspace(Path(tmp)), stride=61)
                report = replay(recipes, max_extra_mb=args.max_extra_mb)
                report.results = []
                print(f"{kind} truncation sweep: {report.summary()}", flush=True)
                total.merge(report)
            left = args.time_limit - (time.monotonic() - t0)
            report = generate(
                kind,
                args.cases,
                seed=args.seed,
                derandomize=args.derandomize,
                time_limit=left,
                max_extra_mb=args.max_extra_mb,
            )
            print(f"{kind} generated: {report.summary()}", flush=True)
            total.merge(report)
        corpus = load_corpus()
        report = replay([c["recipe"] for c in corpus], max_extra_mb=args.max_extra_mb)
        wrong = [(c["name"], r["outcome"]) for c, r in zip(corpus, report.results) if r["outcome"] != c["outcome"]]
        print(f"regression corpus: {report.summary()}" + (f"\nUNEXPECTED: {wrong}" if wrong else ""), flush=True)
        report.results = []
        total.merge(report)
        if wrong:
            total.failures.append({"recipe": None, "error": f"corpus outcomes changed: {wrong}"})
    for crash in total.crashes:
        crash["minimized"] = minimize(crash["recipe"], lambda r: replay([r]).crashes != [])
    print(f"TOTAL: {total.summary()}", flush=True)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "cases": total.cases,
                    "outcomes": total.outcomes,
                    "crashes": total.crashes,
                    "hangs": total.hangs,
                    "failures": total.failures,
                    "seconds": total.seconds,
                },
                indent=1,
            )
        )
    return 0 if total.ok else 1


if __name__ == "__main__":
    sys.exit(main())
