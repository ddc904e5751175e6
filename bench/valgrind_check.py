"""Run a short train / evaluate / save / load cycle under valgrind memcheck and report the shim's memory errors.

    python bench/valgrind_check.py --make-venv /tmp/venv-valgrind     # once: ggml without AVX-512, ~2 minutes
    python bench/valgrind_check.py --python /tmp/venv-valgrind/bin/python [--json OUT] [--timeout SECONDS]

The workload trains a tiny fc and a tiny cnn for one epoch on 100 synthetic images (threads=1),
evaluates, saves, loads and predicts, then takes the error paths (truncated files, a save into a
missing directory, a diverging run), ``--cycles`` times, with PYTHONMALLOC=malloc so that valgrind
sees every allocation; a leak per cycle shows up ``--cycles`` times. It runs under
``valgrind --tool=memcheck --leak-check=full --errors-for-leak-kinds=definite`` with XML output. An error counts as the shim's when a frame of its stack is one of the shim's
``gmn_*`` functions or lies in a libggml library; the rest (Python, numpy, libc start-up) is counted
but not held against us. Prints a JSON summary; exits 1 when the shim has invalid reads or
writes, other memory errors or definite leaks, 2 when valgrind could not run.

valgrind 3.19 cannot decode AVX-512, and ggml-python builds ggml for the building machine
(GGML_NATIVE), so on an AVX-512 machine the default install dies with SIGILL under valgrind.
--make-venv builds a separate environment whose ggml-python is compiled with -DGGML_NATIVE=OFF
(SSE4.2/AVX/AVX2/FMA, which valgrind handles) and installs this project into it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

WORKLOAD = textwrap.dedent("""
    import os, sys, tempfile
    import numpy as np
    import ggml_mnist as gm
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(100, 28, 28), dtype=np.uint8)
    y = (np.arange(100) % 10).astype(np.uint8)
    directory = tempfile.mkdtemp()
    path = os.path.join(directory, "m.gguf")
    cycles = int(sys.argv[1])
    for cycle in range(cycles):
        for arch, shape in (("fc", dict(hidden=8)), ("cnn", dict(conv_channels=(2, 2)))):
            model, history = gm.train(x, y, arch=arch, epochs=1, batch_size=20, val_split=0.2, threads=1,
                                      progress=False, seed=cycle, **shape)
            result = gm.evaluate(model, x, y)
            model.save(path, metadata={"cycle": cycle})
            with gm.load(path, threads=1) as loaded:
                assert (loaded.predict(x[:10]) == model.predict(x[:10])).all()
                loaded.predict_proba(x[:3].astype(np.float32) / 255)
            model.close()
            print(arch, "accuracy", result.accuracy, flush=True)
        # error paths free what they allocated, too
        with open(path, "rb") as f:
            data = f.read()
        for cut in (10, 200, len(data) // 2):
            with open(path, "wb") as f:
                f.write(data[:cut])
            try:
                gm.load(path, threads=1)
            except gm.ModelFormatError:
                pass
        try:
            gm.Model.create("fc", hidden=4, threads=1).save(os.path.join(directory, "missing", "m.gguf"))
        except gm.ModelIOError:
            pass
        try:
            gm.train(x, y, arch="fc", hidden=8, epochs=1, lr=1e3, threads=1, progress=False)
        except gm.TrainingDivergedError:
            pass
    os.unlink(path)
""")

GGML = "libggml"  # frames in these libraries, or in a gmn_* function of the _native module, are the shim's
MEMORY_ERRORS = (
    "InvalidRead",
    "InvalidWrite",
    "InvalidFree",
    "MismatchedFree",
    "Overlap",
    "UninitCondition",
    "UninitValue",
    "SyscallParam",
    "ClientCheck",
    "InvalidJump",
)


def frames(error: ET.Element) -> list[dict[str, str]]:
    """The stack of an error as [{"fn", "obj", "file", "line"}], innermost first."""
    stack = error.find("stack")
    out = []
    for frame in stack.findall("frame") if stack is not None else []:
        out.append({k: (frame.findtext(k) or "") for k in ("fn", "obj", "file", "line")})
    return out


def is_ours(stack: list[dict[str, str]]) -> bool:
    """Whether a stack runs through ggml or through the shim's own C code (not cffi's module set-up)."""
    return any(
        GGML in Path(f["obj"]).name or ("_native" in Path(f["obj"]).name and f["fn"].startswith("gmn_")) for f in stack
    )


def analyse(xml_path: Path) -> dict[str, Any]:
    """Count valgrind's errors by kind, in total and those attributable to the shim; keep the shim's stacks."""
    root = ET.parse(xml_path).getroot()
    total, ours, examples = Counter(), Counter(), []
    leaked = Counter()
    for error in root.findall("error"):
        kind = error.findtext("kind") or "?"
        stack = frames(error)
        total[kind] += 1
        if not is_ours(stack):
            continue
        ours[kind] += 1
        if kind.startswith("Leak_"):
            leaked[kind] += int(error.findtext("xwhat/leakedbytes") or 0)
        if len(examples) < 20:
            text = error.findtext("what") or error.findtext("xwhat/text") or kind
            examples.append(
                {
                    "kind": kind,
                    "what": text,
                    "stack": [
                        f"{f['fn']} ({Path(f['obj']).name}{':' + f['line'] if f['line'] else ''})" for f in stack[:12]
                    ],
                }
            )
    return {
        "errors_total": dict(total),
        "errors_shim": dict(ours),
        "leaked_bytes_shim": dict(leaked),
        "examples": examples,
    }


def make_venv(directory: Path) -> None:
    """Create a venv with ggml-python built without AVX-512 (-DGGML_NATIVE=OFF) and this project installed."""
    root = Path(__file__).resolve().parent.parent
    python = directory / "bin" / "python"
    subprocess.run([sys.executable, "-m", "venv", str(directory)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run(pip + ["numpy", "cffi>=1.17", "scikit-build-core>=0.10"], check=True)
    env = {**os.environ, "CMAKE_ARGS": "-DGGML_NATIVE=OFF", "CMAKE_BUILD_PARALLEL_LEVEL": "2"}
    subprocess.run(pip + ["--no-binary", "ggml-python", "--no-cache-dir", "ggml-python==0.0.45"], check=True, env=env)
    subprocess.run(pip + ["--no-build-isolation", str(root)], check=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--python", default=sys.executable, help="interpreter with ggml_mnist installed (default: this one)")
    p.add_argument("--make-venv", metavar="DIR", help="build the valgrind-friendly environment in DIR, then exit")
    p.add_argument("--cycles", type=int, default=3, help="train/evaluate/save/load cycles (default 3)")
    p.add_argument("--json", help="also write the summary here")
    p.add_argument("--timeout", type=float, default=1800, help="seconds before valgrind is stopped (default 1800)")
    p.add_argument("--keep", help="directory to keep valgrind's XML and the workload's output in")
    args = p.parse_args()
    if args.make_venv:
        make_venv(Path(args.make_venv))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    work = Path(args.keep or tempfile.mkdtemp(prefix="valgrind-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "workload.py").write_text(WORKLOAD)
    xml_path = work / "memcheck.xml"
    cmd = [
        "valgrind",
        "--tool=memcheck",
        "--leak-check=full",
        "--errors-for-leak-kinds=definite",
        "--show-leak-kinds=definite",
        "--num-callers=40",
        "--xml=yes",
        f"--xml-file={xml_path}",
        args.python,
        str(work / "workload.py"),
        str(args.cycles),
    ]
    env = {**os.environ, "PYTHONMALLOC": "malloc", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    t0 = time.monotonic()
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        print(f"valgrind did not finish within {args.timeout:.0f}s", file=sys.stderr)
        return 2
    summary = {
        "seconds": round(time.monotonic() - t0, 1),
        "workload_exit": run.returncode,
        "workload_output": run.stdout.strip().splitlines(),
        **analyse(xml_path),
    }
    (work / "workload.stderr").write_text(run.stderr)
    if "unhandled instruction bytes: 0x62" in run.stderr:
        summary["note"] = (
            "valgrind met an AVX-512 instruction it cannot decode; use an environment made with "
            "--make-venv (ggml built with -DGGML_NATIVE=OFF)"
        )
    text = json.dumps(summary, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    shim = summary["errors_shim"]
    bad = sum(n for kind, n in shim.items() if kind in MEMORY_ERRORS or kind == "Leak_DefinitelyLost")
    return 0 if run.returncode == 0 and bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
