"""A record recipe in ours and in PyTorch on the same machine, alternating, as JSON lines: test accuracy and
training time of any layer list and train() recipe (the records of docs/accuracy.md: `best` with batch
normalisation on MNIST and Fashion-MNIST).

    python bench/recipe_record.py --arch-file bench/fashion_best_bn.json --seeds 42 --threads 2 \\
        --recipe '{"epochs": 30, "lr": 4e-3, "lr_schedule": "onecycle", "weight_decay": 0.05,
                   "label_smoothing": 0.1, "augment": "light", "val_split": 0.1, "max_seconds": 1800}'
    python bench/recipe_record.py ... --dataset fashion-mnist      # data from $GGML_MNIST_DATA/../fashion-mnist
    python bench/recipe_record.py ... --only torch                 # one side only (ours: mnist-train does the same)

Each run is a fresh subprocess; seeds run in the order given, ours and PyTorch alternating which goes first. The
data is loaded before the clock starts; the time runs to the saved model from the call to train() (ours: its
checks and set-up included) or from the network's creation (PyTorch).

PyTorch gets the same network (the layer list translated module by module: Conv2d, BatchNorm2d/1d, pooling, Linear,
activations, Dropout, residual blocks with their 1x1 or dense projection; PyTorch's default init is ours,
U(+-1/sqrt(fan_in))), the same validation split (the same images held out), AdamW with the same hyperparameters
and decoupled weight decay on every parameter, the shim's one-cycle or cosine rate per step, label smoothing, the
same time budget (stop after the batch that crosses it), and the same augmentation: each epoch's images are made by
ggml_mnist.augment_images (the shim's C code) from the epoch's seed, inside PyTorch's clock. Only the random draws
(initial weights, shuffle, dropout, augmentation seeds) differ.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def data_dir(args: argparse.Namespace) -> str:
    base = os.environ.get("GGML_MNIST_DATA", "data/mnist")
    return base if args.dataset == "mnist" else os.path.join(os.path.dirname(os.path.abspath(base)), args.dataset)


def ours(args: argparse.Namespace, recipe: dict) -> dict:
    import ggml_mnist as gm
    from ggml_mnist.layers import load_layers

    x, y = gm.load_mnist(data_dir(args), "train")
    xt, yt = gm.load_mnist(data_dir(args), "test")
    layers = load_layers(args.arch_file)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model, history = gm.train(
            x, y, arch=layers, dataset=args.dataset, seed=args.seed, threads=args.threads, progress=False, **recipe
        )
        model.save(os.path.join(tmp, "m.gguf"))
        seconds = time.perf_counter() - t0
    return {
        "framework": "ours",
        "seed": args.seed,
        "train_seconds": seconds,
        "test_accuracy": gm.evaluate(model, xt, yt, keep_probabilities=False).accuracy,
        "val_accuracy": history[-1].val_acc,
        "epochs": len(history),
        "images_trained": sum(h.n_train for h in history),
        "epoch_seconds": [h.seconds for h in history],
    }


def torch_net(layers: list, image_size: tuple[int, int], n_classes: int):
    """The layer list as a torch module: each layer's module is built on a sample of its input's shape."""
    import torch
    from torch import nn

    from ggml_mnist import layers as L

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.steps = nn.ModuleList()
            self.kinds: list[str] = []
            x = torch.zeros(2, 1, *image_size)
            inputs: list = []  # the input of each layer, for residual blocks
            for layer in layers:
                inputs.append(x)
                if isinstance(layer, L.Residual):
                    start = inputs[-layer.body]
                    proj = nn.Identity()
                    if start.shape != x.shape:
                        if x.dim() == 4:
                            stride = start.shape[-1] // x.shape[-1]
                            proj = nn.Conv2d(start.shape[1], x.shape[1], 1, stride=stride)
                        else:
                            proj = nn.Linear(start.flatten(1).shape[1], x.shape[1])
                    module = proj
                    x = x + (proj(start) if x.dim() == 4 else proj(start.flatten(1)))
                    self.steps.append(module)
                    self.kinds.append(f"residual:{layer.body}")
                    continue
                if isinstance(layer, L.Conv2d):
                    module = nn.Conv2d(x.shape[1], layer.out_channels, layer.kernel_size, layer.stride, layer.padding)
                elif isinstance(layer, L.MaxPool2d):
                    module = nn.MaxPool2d(layer.kernel_size, layer.stride or layer.kernel_size, layer.padding)
                elif isinstance(layer, L.AvgPool2d):
                    module = nn.AvgPool2d(layer.kernel_size, layer.stride or layer.kernel_size, layer.padding)
                elif isinstance(layer, L.Dense):
                    units = layer.units if layer.units is not None else n_classes
                    module = nn.Sequential(nn.Flatten(), nn.Linear(x.flatten(1).shape[1], units))
                elif isinstance(layer, L.BatchNorm):
                    kind = nn.BatchNorm2d if x.dim() == 4 else nn.BatchNorm1d
                    module = kind(x.shape[1], eps=layer.eps, momentum=layer.momentum)
                elif isinstance(layer, L.Dropout):
                    module = nn.Dropout(layer.p)
                else:
                    module = {
                        L.ReLU: nn.ReLU,
                        L.SiLU: nn.SiLU,
                        L.Tanh: nn.Tanh,
                        L.GELU: lambda: nn.GELU(approximate="tanh"),
                    }[type(layer)]()
                self.steps.append(module)
                self.kinds.append("layer")
                x = module(x)

        def forward(self, x):
            inputs = []
            for kind, module in zip(self.kinds, self.steps):
                inputs.append(x)
                if kind.startswith("residual:"):
                    start = inputs[-int(kind.split(":")[1])]
                    x = x + (module(start) if x.dim() == 4 else module(start.flatten(1)))
                else:
                    x = module(x)
            return x

    return Net()


def lr_at(step: int, total: int, warmup: int, cfg) -> float:
    """The shim's learning rate at optimizer step ``step`` of ``total`` (gmn_schedule_lr in src/gmn_train.c)."""
    if cfg.lr_schedule == "onecycle":
        sys.path.insert(0, str(HERE))
        from fast_record import onecycle_lr

        return onecycle_lr(step, total, cfg.lr, warmup or (total * 3 + 9) // 10, cfg.lr_min_ratio)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    p = min(1.0, max(0.0, (step - warmup) / (total - warmup))) if total > warmup else 1.0
    r = cfg.lr_min_ratio
    factor = {"cosine": r + (1 - r) * 0.5 * (1 + math.cos(math.pi * p)), "linear": 1 - (1 - r) * p}
    return max(cfg.lr * factor.get(cfg.lr_schedule, 1.0), 1e-12)


def torch_run(args: argparse.Namespace, recipe: dict) -> dict:
    import torch

    import ggml_mnist as gm
    from ggml_mnist import augment as aug
    from ggml_mnist import datasets
    from ggml_mnist.layers import load_layers

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    layers = load_layers(args.arch_file)
    cfg = gm.TrainConfig.defaults(layers).replace(**recipe)  # as train(arch=layers, **recipe) builds it
    if cfg.optimizer != "adamw" or cfg.physical_batch_size not in (None, cfg.batch_size):
        raise SystemExit("recipe_record.py: PyTorch runs AdamW without gradient accumulation only")
    x8, y8 = gm.load_mnist(data_dir(args), "train")
    xt8, yt8 = gm.load_mnist(data_dir(args), "test")
    order = np.random.default_rng(args.seed).permutation(len(y8))  # train()'s split: the same images held out
    n_val = int(round(len(y8) * cfg.val_split))
    train_idx, val_idx = np.sort(order[n_val:]), np.sort(order[:n_val])
    n_classes = int(y8.max()) + 1
    net = torch_net(layers, x8.shape[1:], n_classes)
    opt = torch.optim.AdamW(
        net.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay
    )
    steps = len(train_idx) // cfg.batch_size
    total, warmup = cfg.epochs * steps, int(round(cfg.warmup_epochs * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, total, warmup, cfg) / cfg.lr)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    # train() adapts its default level to photos, not a level the recipe names
    augment = cfg.augment if "augment" in recipe else aug.for_dataset(cfg.augment, datasets.preparation(args.dataset))
    augmented = aug.resolve_augment(augment) != aug.resolve_augment("none")
    y_all = torch.from_numpy(y8.astype(np.int64))
    h, w = x8.shape[1:]

    def scored(images: np.ndarray, labels: np.ndarray) -> float:
        net.eval()
        with torch.inference_mode():
            t = torch.from_numpy(images.astype(np.float32) / 255.0).reshape(-1, 1, h, w)
            pred = torch.cat([net(t[i : i + 1000]) for i in range(0, len(t), 1000)]).argmax(1).numpy()
        return float((pred == labels).mean())

    epochs, rng, trained = [], np.random.default_rng(args.seed + 1), 0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        for epoch in range(cfg.epochs):
            te = time.perf_counter()
            perm = train_idx[rng.permutation(len(train_idx))]
            if augmented:
                images = gm.augment_images(x8[perm], augment, seed=args.seed * 1000 + epoch)
            else:
                images = x8[perm].astype(np.float32) / 255.0
            x = torch.from_numpy(images).reshape(-1, 1, h, w)
            y = y_all[torch.from_numpy(perm)]
            net.train()
            for i in range(steps):
                sl = slice(i * cfg.batch_size, (i + 1) * cfg.batch_size)
                opt.zero_grad(set_to_none=True)
                loss_fn(net(x[sl]), y[sl]).backward()
                opt.step()
                sched.step()
                trained += cfg.batch_size
                if cfg.max_seconds and time.perf_counter() - t0 > cfg.max_seconds:
                    break
            epochs.append(time.perf_counter() - te)
            if cfg.max_seconds and time.perf_counter() - t0 > cfg.max_seconds:
                break
        torch.save(net.state_dict(), os.path.join(tmp, "m.pt"))
        seconds = time.perf_counter() - t0
    return {
        "framework": "torch",
        "seed": args.seed,
        "train_seconds": seconds,
        "test_accuracy": scored(xt8, yt8),
        "val_accuracy": scored(x8[val_idx], y8[val_idx]) if n_val else None,
        "epochs": len(epochs),
        "images_trained": trained,
        "epoch_seconds": epochs,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch-file", required=True)
    p.add_argument("--recipe", default="{}", help="train() keywords as JSON")
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    p.add_argument("--seeds", type=int, nargs="+", default=[42])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", choices=["ours", "torch"])
    p.add_argument("--worker", choices=["ours", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    recipe = json.loads(args.recipe)
    if args.worker:
        print(json.dumps((ours if args.worker == "ours" else torch_run)(args, recipe)))
        return
    runs = []
    for i, seed in enumerate(args.seeds):
        order = [args.only] if args.only else (["ours", "torch"] if i % 2 == 0 else ["torch", "ours"])
        for fw in order:
            argv = [sys.executable, __file__, "--worker", fw, "--seed", str(seed), "--threads", str(args.threads)]
            argv += ["--arch-file", args.arch_file, "--recipe", args.recipe, "--dataset", args.dataset]
            out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]), flush=True)
    for fw in ("ours", "torch"):
        mine = [r for r in runs if r["framework"] == fw]
        if mine:
            print(
                f"{fw}: test accuracy mean {100 * statistics.mean(r['test_accuracy'] for r in mine):.2f} %, "
                f"training median {statistics.median(r['train_seconds'] for r in mine):.1f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
