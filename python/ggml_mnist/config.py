"""Every default of ggml-mnist in one place: the training recipe per architecture and its validation."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional

from .errors import ConfigError

ARCHES = ("fc", "cnn")
ARCH_ALIASES = {"fc": "fc", "cnn": "cnn", "mnist-fc": "fc", "mnist-cnn": "cnn"}
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "linear", "constant")
DEFAULT_DATA_DIR = "data"
DEFAULT_DEVICE = "auto"
EVAL_CHUNK = 10000  # images converted and predicted per native call when evaluating


@dataclass(frozen=True)
class TrainConfig:
    """A complete training recipe. ``TrainConfig.defaults(arch)`` gives the tuned default for an architecture."""

    arch: str = "cnn"
    epochs: int = 20
    batch_size: int = 100
    physical_batch_size: Optional[int] = None  # None: same as batch_size (no gradient accumulation)
    optimizer: str = "adamw"
    lr: float = 1e-3
    lr_schedule: str = "cosine"
    lr_min_ratio: float = 0.0
    warmup_epochs: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    val_split: float = 0.0
    seed: int = 42
    device: str = DEFAULT_DEVICE
    threads: int = 0  # 0: every core this process may run on
    hidden: int = 500
    conv1_channels: int = 8
    conv2_channels: int = 16
    max_loss: float = 100.0  # a batch loss above this (nats per image) stops training as diverged; 0: only NaN/inf

    @classmethod
    def defaults(cls, arch: str = "cnn") -> "TrainConfig":
        """Return the default recipe for ``arch`` ("fc", "cnn", "mnist-fc" or "mnist-cnn")."""
        name = normalize_arch(arch)
        return cls(arch=name, **ARCH_DEFAULTS[name])

    def replace(self, **changes: Any) -> "TrainConfig":
        """Return a copy with ``changes`` applied; ``None`` values keep the current field."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        kept = {k: v for k, v in changes.items() if v is not None}
        if "arch" in kept:
            kept["arch"] = normalize_arch(kept["arch"])
        return dataclasses.replace(self, **kept)

    @property
    def physical(self) -> int:
        """The physical batch size actually used."""
        return self.physical_batch_size or self.batch_size

    def as_dict(self) -> dict[str, Any]:
        """Return the recipe as a JSON-ready dict."""
        return dataclasses.asdict(self)

    def validate(self) -> "TrainConfig":
        """Raise ConfigError naming the first impossible value and how to fix it; return self."""
        normalize_arch(self.arch)
        _require(isinstance(self.epochs, int) and self.epochs >= 1, f"epochs must be a whole number >= 1, got {self.epochs!r}")
        _require(isinstance(self.batch_size, int) and 1 <= self.batch_size <= 1_000_000,
                 f"batch_size must be in [1, 1000000], got {self.batch_size!r}")
        _require(isinstance(self.physical, int) and 1 <= self.physical <= self.batch_size and self.batch_size % self.physical == 0,
                 f"physical_batch_size {self.physical!r} must divide batch_size {self.batch_size} (e.g. {self.batch_size} or {max(1, self.batch_size // 2)})")
        _require(self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        _require(self.lr_schedule in SCHEDULES, f"lr_schedule must be one of {', '.join(SCHEDULES)}, got {self.lr_schedule!r}")
        _require(_finite(self.lr) and self.lr > 0, f"lr must be a finite number > 0, got {self.lr!r}")
        _require(_finite(self.max_loss) and self.max_loss >= 0, f"max_loss must be >= 0 (0 disables it), got {self.max_loss!r}")
        _require(_finite(self.lr_min_ratio) and 0 <= self.lr_min_ratio <= 1, f"lr_min_ratio must be in [0, 1], got {self.lr_min_ratio!r}")
        _require(_finite(self.warmup_epochs) and 0 <= self.warmup_epochs <= self.epochs,
                 f"warmup_epochs must be in [0, epochs], got {self.warmup_epochs!r}")
        _require(_finite(self.beta1) and 0 <= self.beta1 < 1, f"beta1 must be in [0, 1), got {self.beta1!r}")
        _require(_finite(self.beta2) and 0 <= self.beta2 < 1, f"beta2 must be in [0, 1), got {self.beta2!r}")
        _require(_finite(self.eps) and self.eps >= 0, f"eps must be >= 0, got {self.eps!r}")
        _require(_finite(self.weight_decay) and 0 <= self.weight_decay <= 1, f"weight_decay must be in [0, 1], got {self.weight_decay!r}")
        _require(self.weight_decay * self.lr <= 1, f"weight_decay * lr = {self.weight_decay * self.lr:g} must not exceed 1")
        _require(_finite(self.val_split) and 0 <= self.val_split < 1, f"val_split must be in [0, 1), got {self.val_split!r}")
        _require(isinstance(self.seed, int) and 0 <= self.seed < 2**64, f"seed must be an integer in [0, 2**64), got {self.seed!r}")
        _require(isinstance(self.threads, int) and 0 <= self.threads <= 1024, f"threads must be in [0, 1024] (0 = all cores), got {self.threads!r}")
        _require(isinstance(self.hidden, int) and 1 <= self.hidden <= 65536, f"hidden must be in [1, 65536], got {self.hidden!r}")
        _require(isinstance(self.conv1_channels, int) and 1 <= self.conv1_channels <= 1024
                 and isinstance(self.conv2_channels, int) and 1 <= self.conv2_channels <= 1024,
                 f"conv channels must be in [1, 1024], got {self.conv1_channels!r}, {self.conv2_channels!r}")
        return self


# The tuned defaults; README "Default recipe" gives the measurements behind them.
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "fc": dict(epochs=10, batch_size=100, lr=1e-3, lr_schedule="cosine", weight_decay=0.0),
    "cnn": dict(epochs=15, batch_size=100, lr=2e-3, lr_schedule="cosine", weight_decay=0.05),
}


def normalize_arch(arch: str) -> str:
    """Map "fc"/"cnn" and ggml's "mnist-fc"/"mnist-cnn" to "fc"/"cnn"; raise ConfigError otherwise."""
    name = ARCH_ALIASES.get(str(arch).lower())
    if name is None:
        raise ConfigError(f"unknown architecture {arch!r}; use one of fc, cnn, mnist-fc, mnist-cnn")
    return name


def check_batch_size(size: Any) -> int:
    """Return ``size`` if it is a whole number >= 1; raise ConfigError otherwise."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"batch_size must be a whole number >= 1, got {size!r}")
    return size


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)
