"""One benchmark job in one framework, printed as a JSON object (driven by bench/run.py).

    python bench/worker.py train --framework ours|torch --arch PRESET --epochs 3 --batch-size 100 --threads 2
    python bench/worker.py eval  --framework ours|torch --arch PRESET --threads 2

Both frameworks run the same network, optimizer (AdamW, cosine schedule), batch size and thread
count on the same uint8 MNIST arrays (GGML_MNIST_DATA or --data). Epoch times exclude start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time

import numpy as np

import ggml_mnist as gm


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load(data: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    from ggml_mnist import load_mnist

    return load_mnist(data, split)


# ---- ours -------------------------------------------------------------------------------------
def ours_train(args: argparse.Namespace) -> dict:
    import ggml_mnist as gm

    x, y = load(args.data, "train")
    if args.limit:
        x, y = x[: args.limit], y[: args.limit]
    times: list[float] = []
    _, history = gm.train(
        x,
        y,
        arch=args.arch,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=1e-3,
        weight_decay=0.0,
        lr_schedule="cosine",
        val_split=0.0,
        threads=args.threads,
        device="cpu",
        physical_batch_size=args.physical_batch_size,
        progress=False,
        augment="none",
        on_epoch=lambda s, _m: times.append(s.seconds),
    )
    return {"epoch_seconds": times, "final_train_loss": history[-1].train_loss}


def ours_eval(args: argparse.Namespace) -> dict:
    import ggml_mnist as gm

    x, y = load(args.data, "test")
    model = gm.Model.create(args.arch, device="cpu", threads=args.threads, seed=1)
    model.predict_proba(x[:1000])
    full = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        model.predict_proba(x)
        full.append(time.perf_counter() - t0)
    one = []
    model.predict_proba(x[:1])
    for i in range(200):
        t0 = time.perf_counter()
        model.predict_proba(x[i : i + 1])
        one.append(time.perf_counter() - t0)
    return {"images_per_second": len(x) / statistics.median(full), "latency_ms": 1e3 * statistics.median(one)}


# ---- PyTorch ----------------------------------------------------------------------------------
def torch_net(arch: str):
    """The preset's network in PyTorch, layer for layer (PyTorch's own channel-first flatten)."""
    import torch.nn as nn

    import ggml_mnist as gm
    from ggml_mnist import layers as L

    model = gm.Model.create(arch, threads=1)
    modules, channels, flat = [], 1, False
    for layer, (_h, _w, c, _) in zip(model.layers, model.layer_info()):
        if isinstance(layer, L.Conv2d):
            modules.append(nn.Conv2d(channels, c, layer.kernel_size, layer.stride, layer.padding))
        elif isinstance(layer, (L.MaxPool2d, L.AvgPool2d)):
            pool = nn.MaxPool2d if isinstance(layer, L.MaxPool2d) else nn.AvgPool2d
            modules.append(pool(layer.kernel_size, layer.stride, layer.padding))
        elif isinstance(layer, L.Dense):
            if not flat:
                modules.append(nn.Flatten())
            modules.append(nn.LazyLinear(c))
            flat = True
        elif isinstance(layer, L.Dropout):
            modules.append(nn.Dropout(layer.p))
        else:
            modules.append(
                {L.ReLU: nn.ReLU, L.SiLU: nn.SiLU, L.Tanh: nn.Tanh, L.GELU: lambda: nn.GELU(approximate="tanh")}[
                    type(layer)
                ]()
            )
        channels = c
    net = nn.Sequential(*modules)
    import torch

    net(torch.zeros(1, 1, 28, 28))  # materialise the lazy layers
    return net


def torch_train(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(42)
    x8, y8 = load(args.data, "train")
    x = torch.from_numpy(x8.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    y = torch.from_numpy(y8.astype(np.int64))
    net = torch_net(args.arch)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.0)
    steps = len(x) // args.batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs * steps)
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    for _ in range(args.epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(len(x))
        total = 0.0
        for i in range(steps):
            idx = perm[i * args.batch_size : (i + 1) * args.batch_size]
            loss = loss_fn(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        times.append(time.perf_counter() - t0)
    return {"epoch_seconds": times, "final_train_loss": total / steps}


def torch_eval(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    x8, _ = load(args.data, "test")
    net = torch_net(args.arch).eval()

    def predict(a: np.ndarray):
        with torch.inference_mode():
            t = torch.from_numpy(a.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
            return torch.softmax(net(t), dim=1).numpy()

    predict(x8[:1000])
    full = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        predict(x8)
        full.append(time.perf_counter() - t0)
    one = []
    predict(x8[:1])
    for i in range(200):
        t0 = time.perf_counter()
        predict(x8[i : i + 1])
        one.append(time.perf_counter() - t0)
    return {"images_per_second": len(x8) / statistics.median(full), "latency_ms": 1e3 * statistics.median(one)}


JOBS = {
    ("ours", "train"): ours_train,
    ("ours", "eval"): ours_eval,
    ("torch", "train"): torch_train,
    ("torch", "eval"): torch_eval,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("job", choices=["train", "eval"])
    p.add_argument("--framework", choices=["ours", "torch"], required=True)
    p.add_argument("--arch", choices=list(gm.presets()), required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--physical-batch-size", type=int, default=None)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--limit", type=int, default=0, help="train on the first N images only (profiling)")
    p.add_argument("--data", default=os.environ.get("GGML_MNIST_DATA", "data/mnist"))
    args = p.parse_args()
    out = JOBS[(args.framework, args.job)](args)
    out.update(
        job=args.job,
        framework=args.framework,
        arch=args.arch,
        threads=args.threads,
        batch_size=args.batch_size,
        peak_rss_mb=peak_rss_mb(),
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
