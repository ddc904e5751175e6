"""Console script ``mnist-quantize``: convert a GGUF model's weights to f16, q8_0, q5_0 or q4_0 (argparse only)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, Optional

from ..config import DEFAULT_DEVICE
from ..errors import ConfigError
from ..layers import BatchNorm
from ..model import Model, weight_types
from ..outputs import check_output
from .common import add_version, run


def quantize_parser() -> argparse.ArgumentParser:
    """The argument parser of mnist-quantize."""
    p = argparse.ArgumentParser(
        prog="mnist-quantize",
        description="Write a copy of a GGUF model with its weights converted by ggml's quantisation routines: "
        "IN.gguf OUT.gguf --type TYPE. With IN.gguf alone, show how its tensors are stored.",
    )
    p.add_argument("input", metavar="IN.gguf", help="the model to convert (any type; it is not changed)")
    p.add_argument("output", metavar="OUT.gguf", nargs="?", help="where to write the converted model (atomically)")
    p.add_argument(
        "--type",
        choices=weight_types(),
        help="weight type: q8_0, q5_0 and q4_0 go to dense weights whose rows are whole 32-value blocks, "
        "other weights become f16 and biases stay f32; f16 converts every weight; f32 dequantises",
    )
    p.add_argument(
        "--pad",
        action="store_true",
        help="zero-pad dense weights' rows to whole blocks so every dense layer takes the block type "
        "(e.g. fc1 784 -> 800 inputs; prediction pads its inputs to match)",
    )
    p.add_argument("--device", default=DEFAULT_DEVICE, help=f"device to load the model on (default: {DEFAULT_DEVICE})")
    p.add_argument("--force", action="store_true", help="replace an existing OUT that is not a GGUF model")
    p.add_argument("--json", action="store_true", help="print the tensors and sizes as one JSON object on stdout")
    p.add_argument("--verbose", action="store_true", help="show ggml's own log on stderr")
    return add_version(p)


def storage_rows(model: Model, wanted: Optional[str]) -> list[dict[str, Any]]:
    """Per tensor: name, shape, stored type, row length, bytes, and why it is not of type ``wanted`` (or None)."""
    rows = []
    shapes = model.tensor_shapes()
    norms = tuple(f"{x.name}." for x in model.layers if isinstance(x, BatchNorm))
    for name, s in model.tensor_storage().items():
        kept = None
        if wanted is not None and s.type != wanted:
            if name.startswith(norms):
                kept = "batch normalisation tensors stay f32"
            elif name.endswith(".bias"):
                kept = "biases stay f32"
            elif name.endswith(".kernel"):
                kept = "conv kernel rows are one kernel row, too short for a block"
            else:
                kept = f"its rows ({shapes[name][-1]} inputs) are not whole blocks; --pad zero-pads them"
        rows.append(
            {
                "name": name,
                "shape": list(shapes[name]),
                "type": s.type,
                "row_length": s.row_length,
                "bytes": s.nbytes,
                "kept": kept,
            }
        )
    return rows


def _print_table(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        padded = f" (rows padded to {r['row_length']})" if r["row_length"] != r["shape"][-1] else ""
        note = f"  kept: {r['kept']}" if r["kept"] else ""
        print(f"  {r['name']:16s} {str(tuple(r['shape'])):14s} {r['type']:5s} {r['bytes']:>10,} B{padded}{note}")


def _quantize(args: argparse.Namespace) -> int:
    model = Model.load(args.input, device=args.device)
    if args.output is None:
        if args.type is not None or args.pad:
            raise ConfigError("give OUT.gguf, the file to write the converted model to")
        rows = storage_rows(model, None)
        if args.json:
            print(json.dumps({"model": args.input, "weight_type": model.weight_type, "tensors": rows}))
        else:
            print(f"{args.input}: {model.architecture}, weights {model.weight_type}")
            _print_table(rows)
        return 0
    if args.type is None:
        raise ConfigError(f"give --type, one of {', '.join(weight_types())}")
    check_output(args.output, [args.input], force=args.force, what="OUT")
    quantized = model.quantize(args.type, pad=args.pad)
    quantized.save(args.output, force=args.force)
    rows = storage_rows(quantized, args.type)
    sizes = {"input_bytes": os.path.getsize(args.input), "output_bytes": os.path.getsize(args.output)}
    if args.json:
        print(
            json.dumps(
                {
                    "model": args.output,
                    "type": args.type,
                    "pad": args.pad,
                    "architecture": quantized.architecture,
                    **sizes,
                    "tensors": rows,
                }
            )
        )
        return 0
    print(
        f"mnist-quantize: {args.input} -> {args.output} ({args.type}{', padded' if args.pad else ''}): "
        f"{sizes['input_bytes']:,} -> {sizes['output_bytes']:,} bytes "
        f"({sizes['input_bytes'] / sizes['output_bytes']:.2f}x smaller), architecture {quantized.architecture}"
    )
    _print_table(rows)
    paddable = [r["name"] for r in rows if r["kept"] and "--pad" in r["kept"] and not args.pad]
    if paddable:  # the table says why each tensor was kept; only this one has a remedy
        print(
            f"mnist-quantize: {', '.join(paddable)} stayed f32; add --pad to make {args.type} of them too",
            file=sys.stderr,
        )
    return 0


def quantize_main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of mnist-quantize."""
    return run(_quantize, quantize_parser(), argv)


if __name__ == "__main__":
    sys.exit(quantize_main())
