"""Untrusted files: tiny files that claim huge contents are refused before anything large is allocated,
and loading a model runs no code: metadata is plain data."""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ggml_mnist import Model, cli, load, write_idx
from support import fuzz_loaders as fz
from support.helpers import THREADS
from support.reliability import run_child

# The child caps its address space at what it uses after importing, plus 256 MB: a loader that tried a
# huge allocation would fail with MemoryError/OutOfMemoryError instead of the expected format error.
_LOAD_CAPPED = """
    import resource
    import ggml_mnist as gm
    kind, path = sys.argv[1], sys.argv[2]
    gm.Model.create("fc", hidden=4, threads=1).predict([[0] * 784])  # warm-up
    with open("/proc/self/status") as f:
        vm_kb = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, ((vm_kb + 256 * 1024) * 1024, resource.RLIM_INFINITY))
    before = rss()
    reset_peak()
    try:
        if kind == "gguf":
            gm.load(path, threads=1)
        elif kind == "idx":
            gm.read_idx(path)
        else:
            gm.load_mnist(path)
        error, message = None, ""
    except Exception as e:
        error, message = type(e).__name__, str(e)
    print(json.dumps({"error": error, "message": message, "growth": peak() - before}))
"""


def load_capped(kind: str, path: Path) -> dict:
    return run_child(_LOAD_CAPPED, kind, path, timeout=120)


def huge_fc_claim(tmp_path: Path) -> Path:
    """A GGUF of a few hundred bytes whose keys and tensor infos agree on 4096x4096 images and 5 hidden
    units: fc1.weight would be 335 MB, under the parameter limit. No tensor data follows."""
    g = fz.apply_gguf_ops(
        {"version": 3, "kv": [], "tensors": [], "blobs": []},
        [
            ["kv_add", "general.architecture", fz.STRING, "ggml-mnist-fc"],
            ["kv_add", "ggml_mnist.image_height", 4, 4096],
            ["kv_add", "ggml_mnist.image_width", 4, 4096],
            ["kv_add", "ggml_mnist.hidden", 4, 5],
        ],
    )
    g["tensors"] = [
        [b"fc1.weight", [4096 * 4096, 5], 0],
        [b"fc1.bias", [5], 0],
        [b"fc2.weight", [5, 10], 0],
        [b"fc2.bias", [10], 0],
    ]
    g["blobs"] = [b""] * 4
    data = fz.serialize_gguf(g)
    infos_end = data.index(b"fc2.bias") + len(b"fc2.bias") + 4 + 8 + 4 + 8  # n_dims, ne[0], type, offset
    path = tmp_path / "huge.gguf"
    path.write_bytes(data[: -(-infos_end // fz.GGUF_ALIGNMENT) * fz.GGUF_ALIGNMENT])  # the header, aligned
    return path


def test_a_tiny_gguf_claiming_a_100_gb_tensor_is_refused_without_allocating(tmp_path: Path) -> None:
    path = huge_fc_claim(tmp_path)
    assert path.stat().st_size < 400
    result = load_capped("gguf", path)
    assert result["error"] == "ModelFormatError", result
    assert result["message"].endswith("tensor fc1.weight lies beyond the end of the file (truncated?)")
    assert result["growth"] < 20e6, result


def test_a_100_byte_gguf_claiming_a_100_gb_tensor_is_refused_without_allocating(tmp_path: Path) -> None:
    """Only a tensor info (25 billion floats) and no keys: ggml's reader does not allocate for the claim either."""
    g = {"version": 3, "kv": [], "tensors": [[b"fc1.weight", [784, 32_000_000], 0]], "blobs": [b""]}
    path = tmp_path / "tiny.gguf"
    path.write_bytes(fz.serialize_gguf(g)[:100])
    assert path.stat().st_size == 100
    result = load_capped("gguf", path)
    assert result["error"] == "ModelFormatError", result
    assert "missing key general.architecture" in result["message"]
    assert result["growth"] < 20e6, result


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_an_idx_header_claiming_a_terabyte_is_refused_without_allocating(tmp_path: Path, gz: bool) -> None:
    header = b"\0\0\x08\x03" + struct.pack(">3I", 1_000_000, 1000, 1000)  # 10^12 bytes of uint8
    directory = tmp_path / "mnist"
    directory.mkdir()
    path = directory / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    body = header + bytes(100)
    path.write_bytes(gzip.compress(body) if gz else body)
    write_idx(directory / "train-labels-idx1-ubyte", np.zeros(3, np.uint8))
    for kind, target in (("idx", path), ("mnist", directory)):
        result = load_capped(kind, target)
        assert result["error"] == "IdxFormatError", result
        if gz:
            assert "header says 1000000000000 bytes of data, more than a" in result["message"]
        else:
            assert "header says 1000000000000 bytes of data, file has 100" in result["message"]
        assert result["growth"] < 20e6, result


# ---- metadata is data ---------------------------------------------------------------------------------------
PAYLOADS = {
    "object": {"__class__": "os.system", "__reduce__": ["os.system", ["touch PWNED"]], "py/object": "subprocess.Popen"},
    "code": "__import__('os').system('touch PWNED')",
    "yaml": "!!python/object/apply:os.system ['touch PWNED']",
    "pickle": "cos\nsystem\n(S'touch PWNED'\ntR.",
}


def test_metadata_comes_back_as_plain_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    model = Model.create("fc", hidden=4, threads=THREADS)
    model.save(tmp_path / "m.gguf", metadata=PAYLOADS)
    loaded = load(tmp_path / "m.gguf", threads=THREADS)
    assert loaded.metadata == PAYLOADS
    assert type(loaded.metadata["object"]) is dict and type(loaded.metadata["code"]) is str
    assert not (tmp_path / "PWNED").exists()


def test_foreign_metadata_strings_are_decoded_as_json_or_kept_as_text(tmp_path: Path) -> None:
    """Strings written by another tool: JSON is decoded to plain values, anything else stays a str, including
    JSON nested too deeply for the decoder (the fuzzer found that it used to escape as a RecursionError)."""
    deep = "[" * 100_000 + "]" * 100_000
    values = {
        "object": json.dumps(PAYLOADS["object"]),
        "deep": deep,
        "digits": "9" * 5000,
        "text": "not json {",
        "number": "1e999",
    }
    recipe = {"kind": "gguf", "base": "fc", "ops": [["meta", key, value] for key, value in values.items()]}
    path = tmp_path / "foreign.gguf"
    path.write_bytes(fz.build_gguf(fz.Workspace(tmp_path / "ws"), recipe))
    metadata = load(path, threads=THREADS).metadata
    assert metadata["object"] == PAYLOADS["object"] and type(metadata["object"]) is dict
    assert metadata["deep"] == deep and metadata["digits"] == "9" * 5000 and metadata["text"] == "not json {"
    assert metadata["number"] == float("inf")


def test_eval_info_prints_any_stored_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """mnist-eval --info on a file whose history is not what train() writes prints it instead of failing."""
    path = tmp_path / "m.gguf"
    history = [
        1,
        "two",
        {"epoch": 3},
        {"epoch": 4, "train_loss": "x"},
        {"epoch": 5, "train_loss": 0.25, "train_acc": 0.5, "seconds": 1.5},
    ]
    Model.create("fc", hidden=4, threads=THREADS).save(path, metadata={"history": history, **PAYLOADS})
    assert cli.eval_main([str(path), "--info", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    lines = [line.strip() for line in out.splitlines() if line.strip().startswith("history:")]
    assert lines == [
        "history: 1",
        'history: "two"',
        'history: {"epoch": 3}',
        'history: {"epoch": 4, "train_loss": "x"}',
        "history: epoch 5: train loss 0.2500 acc 50.00% (1.50s)",
    ]
    assert '"__class__": "os.system"' in out


def test_a_batch_too_big_for_memory_is_refused_not_crashed() -> None:
    # ggml-opt does not report a compute buffer it could not allocate; the shim must refuse first
    code = textwrap.dedent("""
        import resource, numpy as np, ggml_mnist as gm
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
        x = np.zeros((20000, 28, 28), np.uint8); y = np.arange(20000) % 10
        for kwargs in (dict(arch="fc", hidden=65536), dict(arch="cnn", conv_channels=(1024, 1024))):
            try:
                # (without physical_batch_size a CPU would run the batch in parts of 125, which fit)
                gm.train(x, y, epochs=1, batch_size=20000, physical_batch_size=20000, threads=1, progress=False, **kwargs)
                print("trained")
            except gm.OutOfMemoryError as e:
                assert isinstance(e, MemoryError)
                print("refused:", e)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2 and all(
        line.startswith("refused: train_init: a batch of 20000 images needs about") for line in lines
    )
    assert all("lower the (physical) batch size" in line for line in lines)
