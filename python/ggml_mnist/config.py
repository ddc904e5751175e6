"""Every default of ggml-mnist in one place: the training recipe per architecture and its validation."""

from __future__ import annotations

import dataclasses
import math
import numbers
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional, Union

from ._ffi import check_seed, enum_names, lib
from .augment import LEVELS, PARAMETERS, resolve_augment
from .errors import ConfigError
from .layers import Layer, Sequential, canonical_preset, layer_from_dict

# The names of the shim's optimizers, learning-rate schedules and graph forms, as ggml_mnist.h defines them
OPTIMIZERS = tuple(enum_names("gmn_optimizer"))  # adamw, sgd
SCHEDULES = tuple(enum_names("gmn_schedule"))  # constant, cosine, linear, onecycle
#: Graph forms: "auto" (the CPU graph on the CPU, else the portable one), "cpu" (channels-last with the shim's CPU
#: kernels) and "portable" (ggml's ops only, which every backend runs forward and backward).
GRAPHS = tuple(enum_names("gmn_graph"))
DEFAULT_DATA_DIR = "data"
DEFAULT_DEVICE = "auto"
DEFAULT_SEED = 42  # weight init and shuffle of a run, and Model.create's weights
MAX_EPOCHS = 1_000_000
CPU_PHYSICAL_BATCH = 128  # the most images per graph run when training on a CPU (see TrainConfig.physical_on)
EVAL_CHUNK = 10000  # images converted and predicted per native call when evaluating


def option(default: Any, help: str, **cli: Any) -> Any:
    """A TrainConfig field with its help text, written once: mnist-train makes one flag of each field (--batch-size
    for batch_size), typed by the field's annotation and helped by this text, which gets the defaults per network
    appended unless it names its default itself. ``cli`` says more about the flag: ``choices``, ``metavar``,
    ``example`` (a JSON value, for a field that takes a dict) or ``flag=False`` (no flag)."""
    return dataclasses.field(default=default, metadata={"help": help, **cli})


@dataclass(frozen=True)
class TrainConfig:
    """A complete training recipe. ``TrainConfig.defaults(arch)`` gives the tuned default for a network.

    ``arch`` is a preset name or a tuple of layers (``gm.layers``); ``hidden`` and ``conv_channels``
    edit the preset (None keeps its own widths). Each field's help text is in its metadata
    (``TrainConfig.help(name)``); mnist-train's recipe flags are made from the fields.
    """

    arch: Union[str, tuple[Layer, ...]] = option("cnn", "a preset name or a tuple of layers (gm.layers)", flag=False)
    epochs: int = option(20, "passes over the training images")
    batch_size: int = option(100, "images per optimizer step")
    physical_batch_size: Optional[int] = option(
        None,
        "images per graph evaluation, a divisor of the batch size (gradient accumulation); default: for a "
        f"network with convolutions on a CPU, the largest divisor of the batch size up to {CPU_PHYSICAL_BATCH}, "
        "otherwise the batch size",
    )
    optimizer: str = option("adamw", "AdamW (decoupled weight decay) or plain SGD", choices=OPTIMIZERS)
    lr: float = option(1e-3, "peak learning rate")
    lr_schedule: str = option(
        "cosine",
        "how the learning rate falls to lr * lr_min_ratio after the warm-up "
        "(onecycle: it first rises from lr/25 over the warm-up)",
        choices=SCHEDULES,
    )
    lr_min_ratio: float = option(0.0, "final learning rate as a fraction of the peak lr")
    warmup_epochs: float = option(0.0, "warm-up length in epochs")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.999, "AdamW beta2")
    eps: float = option(1e-8, "AdamW epsilon")
    weight_decay: float = option(0.0, "decoupled weight decay")
    val_split: float = option(0.0, "fraction held out for validation")
    seed: int = option(DEFAULT_SEED, "weight init and shuffle seed (bit-identical reruns)")
    device: str = option(DEFAULT_DEVICE, f"auto, cpu or a ggml device name such as CUDA0 (default: {DEFAULT_DEVICE})")
    graph: str = option(
        "auto",
        "graph form: cpu (channels-last, the shim's CPU kernels), portable (ggml's ops only, "
        "which GPU backends run forward and backward) or auto (cpu on the CPU, else portable; "
        "default)",
        choices=GRAPHS,
    )
    threads: int = option(0, "CPU threads, 0 = all available cores")
    hidden: Optional[int] = option(None, "units of the network's first hidden dense layer (default: the preset's)")
    conv_channels: Optional[tuple[int, ...]] = option(
        None, "output channels of the network's convolutions, in order (default: the preset's)", metavar="C"
    )
    max_loss: float = option(
        100.0, "a batch loss above this (nats per image) stops training as diverged; 0: only NaN or infinity"
    )
    augment: Union[str, dict[str, Any]] = option(
        "none",
        f"training-time augmentation: {', '.join(LEVELS)}, or a JSON object of {', '.join(PARAMETERS)} "
        '(optionally with "level")',
        metavar="LEVEL|JSON",
        example={"rotate": 10, "shift": 2},
    )
    label_smoothing: float = option(
        0.0, "train against (1 - s) one-hot targets + s / classes (0.1 is usual; 0: plain one-hot)"
    )
    max_seconds: float = option(
        0.0, "stop after the batch that crosses this many seconds of training and keep the model (0: no time limit)"
    )

    @staticmethod
    def help(name: str) -> str:
        """The help text of field ``name``."""
        return {f.name: f.metadata["help"] for f in dataclasses.fields(TrainConfig)}[name]

    def __post_init__(self) -> None:
        # numpy and other number types become int / float; bools stay bools, which validate() refuses
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple) and f.name == "conv_channels":
                object.__setattr__(self, f.name, tuple(_plain(v) for v in value))
            else:
                object.__setattr__(self, f.name, _plain(value))

    @classmethod
    def defaults(cls, arch: Any = "cnn") -> TrainConfig:
        """Return the default recipe for ``arch``: a preset's tuned recipe, or the generic one for a layer list."""
        net = normalize_arch(arch)
        return cls(arch=net, **ARCH_DEFAULTS.get(net, GENERIC_RECIPE) if isinstance(net, str) else GENERIC_RECIPE)

    def replace(self, **changes: Any) -> TrainConfig:
        """Return a copy with ``changes`` applied; ``None`` values keep the current field."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        kept = {k: v for k, v in changes.items() if v is not None}
        if "arch" in kept:
            kept["arch"] = normalize_arch(kept["arch"])
        if "conv_channels" in kept:
            channels = kept["conv_channels"]
            try:
                kept["conv_channels"] = (channels,) if isinstance(channels, numbers.Integral) else tuple(channels)
            except TypeError:
                raise ConfigError(f"conv_channels must be whole numbers, got {channels!r}") from None
        return dataclasses.replace(self, **kept)

    @property
    def physical(self) -> int:
        """The physical batch size asked for: ``physical_batch_size``, or else the batch size."""
        return self.physical_batch_size or self.batch_size

    def physical_on(self, device: str, convolutional: bool = True) -> int:
        """The physical batch size used on ``device`` (a ggml device name such as "CPU" or "CUDA0").

        Unless ``physical_batch_size`` says otherwise, a CPU evaluates a batch above CPU_PHYSICAL_BATCH images of a
        ``convolutional`` network as equal parts of at most that many (the largest divisor of the batch size that
        fits), accumulating their gradients: one optimizer step per batch as before, the same mean loss up to
        rounding, and faster, since the feature maps of a smaller part stay in the CPU's caches (cnn at batch 1000:
        10.5 s -> 6.6-7.8 s an epoch). A network of dense layers only keeps whole batches: its activations are a few
        kilobytes an image, and parts measured slower (fc at batch 1000: 1.16-1.45 s whole, 1.25-1.87 s in parts
        of 125). Other devices take the whole batch at once.
        """
        if (
            self.physical_batch_size
            or self.batch_size <= CPU_PHYSICAL_BATCH
            or not convolutional
            or not device.upper().startswith("CPU")
        ):
            return self.physical
        part = max(d for d in range(1, CPU_PHYSICAL_BATCH + 1) if self.batch_size % d == 0)
        return part if part >= CPU_PHYSICAL_BATCH // 4 else self.batch_size

    def as_dict(self) -> dict[str, Any]:
        """Return the recipe as a JSON-ready dict (a layer list as a list of layer dicts)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if not isinstance(self.arch, str):
            out["arch"] = [layer.to_dict() for layer in self.arch]
        if self.conv_channels is not None:
            out["conv_channels"] = list(self.conv_channels)
        if isinstance(self.augment, Mapping):
            out["augment"] = dict(self.augment)
        return out

    def validate(self) -> TrainConfig:
        """Raise ConfigError naming the first impossible value and how to fix it; return self."""
        normalize_arch(self.arch)
        _require(
            _whole(self.epochs) and 1 <= self.epochs <= MAX_EPOCHS,
            f"epochs must be a whole number in [1, {MAX_EPOCHS}], got {self.epochs!r}",
        )
        _require(
            isinstance(self.device, str), f"device must be a name such as 'auto', 'cpu' or 'CUDA0', got {self.device!r}"
        )
        _require(
            _whole(self.batch_size) and 1 <= self.batch_size <= lib.GMN_MAX_BATCH,
            f"batch_size must be in [1, {lib.GMN_MAX_BATCH}], got {self.batch_size!r}",
        )
        _require(
            self.physical_batch_size is None or (_whole(self.physical_batch_size) and self.physical_batch_size >= 1),
            f"physical_batch_size must be a whole number >= 1 (or None: the batch size), got {self.physical_batch_size!r}",
        )
        _require(
            1 <= self.physical <= self.batch_size and self.batch_size % self.physical == 0,
            f"physical_batch_size {self.physical!r} must divide batch_size {self.batch_size} (e.g. {self.batch_size} or {max(1, self.batch_size // 2)})",
        )
        _require(
            self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"
        )
        _require(self.graph in GRAPHS, f"graph must be one of {', '.join(GRAPHS)}, got {self.graph!r}")
        _require(
            self.lr_schedule in SCHEDULES,
            f"lr_schedule must be one of {', '.join(SCHEDULES)}, got {self.lr_schedule!r}",
        )
        _require(_finite(self.lr) and self.lr > 0, f"lr must be a finite number > 0, got {self.lr!r}")
        _require(
            _as_f32(self.lr) > 0, f"lr {self.lr!r} is 0 as the 32-bit float the optimizer uses; give at least 1e-30"
        )
        _require(
            _finite(self.max_loss) and self.max_loss >= 0,
            f"max_loss must be >= 0 (0 disables it), got {self.max_loss!r}",
        )
        _require(
            _finite(self.lr_min_ratio) and 0 <= self.lr_min_ratio <= 1,
            f"lr_min_ratio must be in [0, 1], got {self.lr_min_ratio!r}",
        )
        _require(
            _finite(self.warmup_epochs) and 0 <= self.warmup_epochs <= self.epochs,
            f"warmup_epochs must be in [0, epochs], got {self.warmup_epochs!r}",
        )
        for name in ("beta1", "beta2"):
            beta = getattr(self, name)
            _require(_finite(beta) and 0 <= beta < 1, f"{name} must be in [0, 1), got {beta!r}")
            _require(
                _as_f32(beta) < 1,
                f"{name} {beta!r} is 1 as the 32-bit float the optimizer uses; give at most 0.9999999",
            )
        _require(_finite(self.eps) and self.eps >= 0, f"eps must be >= 0, got {self.eps!r}")
        _require(
            _finite(self.weight_decay) and 0 <= self.weight_decay <= 1,
            f"weight_decay must be in [0, 1], got {self.weight_decay!r}",
        )
        _require(
            self.weight_decay * self.lr <= 1, f"weight_decay * lr = {self.weight_decay * self.lr:g} must not exceed 1"
        )
        _require(
            _finite(self.val_split) and 0 <= self.val_split < 1, f"val_split must be in [0, 1), got {self.val_split!r}"
        )
        check_seed(self.seed)
        _require(
            _whole(self.threads) and 0 <= self.threads <= lib.GMN_MAX_THREADS,
            f"threads must be in [0, {lib.GMN_MAX_THREADS}] (0 = all cores), got {self.threads!r}",
        )
        _require(self.hidden is None or _whole(self.hidden), f"hidden must be a whole number, got {self.hidden!r}")
        _require(
            self.conv_channels is None or all(_whole(c) for c in self.conv_channels),
            f"conv_channels must be whole numbers, got {self.conv_channels!r}",
        )
        _require(
            _finite(self.label_smoothing) and 0 <= self.label_smoothing < 1,
            f"label_smoothing must be in [0, 1) (0.1 is usual; 0 turns it off), got {self.label_smoothing!r}",
        )
        _require(
            _finite(self.max_seconds) and self.max_seconds >= 0,
            f"max_seconds must be a number of seconds >= 0 (0: no time limit), got {self.max_seconds!r}",
        )
        resolve_augment(self.augment)
        return self


# The tuned defaults per preset; README "Networks" and "Default recipe" give the measurements behind them.
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "fc": dict(epochs=50, batch_size=100, lr=1e-3, lr_schedule="cosine", weight_decay=0.0, augment="light"),
    "cnn": dict(epochs=50, batch_size=100, lr=3e-3, lr_schedule="cosine", weight_decay=0.05, augment="mild"),
    # the 10-second recipe (docs/accuracy.md "fast"): cnn's network, one-cycle, four epochs, no augmentation
    "fast": dict(epochs=4, batch_size=100, lr=2e-2, lr_schedule="onecycle", weight_decay=0.0, augment="none"),
    "mlp800": dict(epochs=10, batch_size=100, lr=1e-3, lr_schedule="cosine", weight_decay=0.0),
    "minerva-mlp": dict(epochs=10, batch_size=100, lr=1e-3, lr_schedule="cosine", weight_decay=0.0),
    "minerva-cnn": dict(epochs=8, batch_size=100, lr=2e-3, lr_schedule="cosine", weight_decay=0.05),
    "lenet5": dict(epochs=12, batch_size=100, lr=2e-3, lr_schedule="cosine", weight_decay=0.05),
    "letters-cnn": dict(epochs=6, batch_size=100, lr=2e-3, lr_schedule="cosine", weight_decay=0.05),
    "best": dict(epochs=16, batch_size=100, lr=2e-3, lr_schedule="cosine", weight_decay=0.05, augment="light"),
}
# The recipe of a network given as a layer list.
GENERIC_RECIPE: dict[str, Any] = dict(epochs=10, batch_size=100, lr=1e-3, lr_schedule="cosine", weight_decay=0.0)


def normalize_arch(arch: Any) -> Union[str, tuple[Layer, ...]]:
    """A preset's canonical name ("mnist-fc" -> "fc"), or a layer list (layers, Sequential or their dicts) as a tuple.

    Raises ConfigError for an unknown name or something that is not a layer.
    """
    if isinstance(arch, str):
        return canonical_preset(arch)
    if isinstance(arch, (list, tuple, Sequential)):
        layers = tuple(x if isinstance(x, Layer) else layer_from_dict(x) for x in arch)
        if not layers:
            raise ConfigError("arch is an empty list of layers; end it with gm.layers.Dense() (one unit per class)")
        return layers
    raise ConfigError(f"arch must be a preset name or a list of layers, got {arch!r}")


def check_batch_size(size: Any) -> int:
    """Return ``size`` if it is a whole number >= 1; raise ConfigError otherwise."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"batch_size must be a whole number >= 1, got {size!r}")
    return size


def _plain(value: Any) -> Any:
    """A numpy (or other) number as int / float; bools and everything else unchanged."""
    if isinstance(value, (bool, str)) or value is None or type(value) in (int, float):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


def _whole(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _as_f32(x: float) -> float:
    """x as the 32-bit float the shim receives it."""
    return struct.unpack("f", struct.pack("f", x))[0]


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)
