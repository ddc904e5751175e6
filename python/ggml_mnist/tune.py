"""Recipe searches and seed studies on Optuna (the ``tune`` extra): :func:`tune` and what ``mnist-tune`` runs.

A study lives in an Optuna storage that every worker shares: SQLite in the run folder by default, a PostgreSQL URL
when several machines share it. Its trials are numbered by the storage; the first ``n_trials`` trials that are not
retries are the study's slots, so workers on any number of machines divide them without a scheduler of ours. A
worker that dies stops sending heartbeats; another worker marks its trial failed after the grace period and Optuna's
``RetryHeartbeatStaleTrialCallback`` queues it again with the same parameters (and slot).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import socket
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from . import api
from .config import TrainConfig
from .datasets import preparation
from .errors import ConfigError, GgmlMnistError, TrainingDivergedError
from .layers import ArchLike
from .model import PathLike
from .outputs import check_output

INSTALL_HINT = "tuning needs Optuna: pip install 'ggml-mnist[tune]'"
VAL_SPLIT = 0.1  # the validation fraction trials are scored on, unless val_split= says otherwise
HEARTBEAT = 10  # seconds between a running trial's heartbeats; a trial silent for GRACE_BEATS of them is failed
GRACE_BEATS = 3
MAX_RETRY = 3  # how often a trial whose worker died is run again
DEFAULT_DIR = "tune"  # run folders go to tune/<study>/ unless told otherwise
#: Fields a search space may not hold: where and how a trial runs, and how it is scored.
NOT_SEARCHED = ("arch", "device", "threads", "graph", "val_split", "seed")
_INT_FIELDS = ("epochs", "batch_size", "physical_batch_size", "hidden")
_RANGE_KEYS = {"low", "high", "log", "step"}


def require_optuna() -> Any:
    """Return the optuna module; ConfigError saying how to install it when it is missing."""
    try:
        import optuna
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def default_space(arch: ArchLike = "cnn", dataset: Optional[str] = None) -> dict[str, Any]:
    """The search space of ``arch``: learning rate (log scale, around the preset's), weight decay, augmentation
    level (the dataset's kind) and batch size, as a JSON-ready dict that ``space=`` entries override."""
    base = TrainConfig.defaults(arch)
    levels = ["none", "clothes"] if preparation(dataset) == "photo" else ["none", "mild", "light"]
    return {
        "lr": {"low": base.lr / 5, "high": base.lr * 5, "log": True},
        "weight_decay": {"low": 0.0, "high": 0.1},
        "augment": {"choices": levels},
        "batch_size": {"choices": [50, 100, 200]},
    }


def resolve_space(
    space: Any, arch: ArchLike, dataset: Optional[str], base: TrainConfig, *, fixed_only: bool = False
) -> dict[str, Any]:
    """``space`` (a dict or JSON text; None: the default) merged over :func:`default_space`, checked: each entry is a
    fixed value, ``{"low": a, "high": b[, "log": true][, "step": s]}`` or ``{"choices": [...]}``; a null entry drops
    a default one. With ``fixed_only`` (seed studies) the defaults are left out and only fixed values are allowed.
    Raises ConfigError naming the entry and the fix.
    """
    if isinstance(space, str):
        try:
            space = json.loads(space)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"the search space is not valid JSON ({exc.msg}); write e.g. "
                '\'{"lr": {"low": 1e-4, "high": 1e-2, "log": true}}\''
            ) from None
    if space is not None and not isinstance(space, Mapping):
        raise ConfigError(
            f"the search space must be a dict (JSON object) of training options, got {type(space).__name__}"
        )
    merged = {} if fixed_only else default_space(arch, dataset)
    merged.update(space or {})
    fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in NOT_SEARCHED]
    out = {}
    for key, spec in merged.items():
        if key not in fields:
            why = "is set by tune itself" if key in NOT_SEARCHED else "is not a training option"
            raise ConfigError(f"search space entry {key!r} {why}; searchable: {', '.join(fields)}")
        if spec is None:
            continue
        if _is_range(spec) or isinstance(spec, Mapping) and key != "augment":  # augment's fixed value may be a dict
            if fixed_only:
                raise ConfigError(f"a seed study trains one recipe: give {key!r} a fixed value, not a range or choices")
            _check_range(key, dict(spec), base)
        else:
            _try(key, base, spec, "")
        out[key] = spec
    return out


def _is_range(spec: Any) -> bool:
    """True for a space entry that is searched (a range or choices), False for a fixed value."""
    return isinstance(spec, Mapping) and bool(({"choices"} | _RANGE_KEYS) & set(spec))


def _check_range(key: str, spec: dict[str, Any], base: TrainConfig) -> None:
    unknown = set(spec) - _RANGE_KEYS - {"choices"}
    if unknown or ("choices" in spec) == bool(_RANGE_KEYS & set(spec)):
        raise ConfigError(
            f'search space entry {key!r} must be {{"low": a, "high": b}} (with optional "log" and '
            f'"step") or {{"choices": [...]}}, got {json.dumps(spec)}'
        )
    if "choices" in spec:
        choices = spec["choices"]
        if (
            not isinstance(choices, list)
            or not choices
            or not all(c is None or isinstance(c, (str, int, float, bool)) for c in choices)
        ):
            raise ConfigError(
                f"search space entry {key!r}: choices must be a non-empty list of numbers or strings, got {choices!r}"
            )
        for choice in choices:
            _try(key, base, choice, " choice")
        return
    low, high = spec.get("low"), spec.get("high")
    whole = key in _INT_FIELDS
    kind = (int,) if whole else (int, float)
    for name, value in (("low", low), ("high", high), ("step", spec.get("step", 1))):
        if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
            raise ConfigError(
                f"search space entry {key!r}: {name} must be a {'whole ' if whole else ''}number, got {value!r}"
            )
    if not low <= high or spec.get("step", 1) <= 0:
        raise ConfigError(f"search space entry {key!r}: need low <= high and step > 0, got {json.dumps(spec)}")
    if spec.get("log") and (low <= 0 or "step" in spec):
        raise ConfigError(f"search space entry {key!r}: a log scale needs low > 0 and no step, got {json.dumps(spec)}")
    _try(key, base, low, " low")
    _try(key, base, high, " high")


def _try(key: str, base: TrainConfig, value: Any, what: str) -> None:
    try:
        base.replace(**{key: value}).validate()
    except (ConfigError, TypeError, ValueError) as exc:
        raise ConfigError(f"search space entry {key!r}{what}: {exc}") from None


def mask_url(url: str) -> str:
    """``url`` with its password written as ***."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def _engine_url(url: Any) -> str:
    """The SQLAlchemy URL of a storage URL (PostgreSQL through psycopg 3); ConfigError for a malformed one."""
    if not isinstance(url, str) or not re.match(r"^[a-z][a-z0-9+]*://", url):
        raise ConfigError(
            f"storage must be a database URL such as sqlite:///study.db or "
            f"postgresql://user:password@host/database, got {mask_url(str(url))!r}"
        )
    scheme, rest = url.split("://", 1)
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        try:
            import psycopg  # noqa: F401 - SQLAlchemy's postgresql+psycopg dialect imports it
        except ImportError:
            raise ConfigError("PostgreSQL storage needs psycopg: pip install 'ggml-mnist[tune]'") from None
        return "postgresql+psycopg://" + rest
    return url


def open_storage(url: str, heartbeat: int = HEARTBEAT) -> Any:
    """Open (creating its tables) the Optuna storage at ``url`` with heartbeats and retries of dead workers' trials.

    Raises ConfigError naming the URL, password masked, when it is malformed, unreachable or refuses us.
    """
    optuna = require_optuna()
    if isinstance(heartbeat, bool) or not isinstance(heartbeat, int) or heartbeat < 1:
        raise ConfigError(f"heartbeat must be a whole number of seconds >= 1, got {heartbeat!r}")
    engine_url = _engine_url(url)
    connect = (
        {"timeout": 60}
        if engine_url.startswith("sqlite")
        else ({"connect_timeout": 10} if engine_url.startswith("postgresql") else {})
    )
    error: Exception = ConfigError("no attempt")
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(
                engine_url,
                engine_kwargs={"connect_args": connect, "pool_pre_ping": True},
                heartbeat_interval=heartbeat,
                grace_period=GRACE_BEATS * heartbeat,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
            )
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy, the driver and Optuna each raise their own kinds
            if attempt < 4 and re.search(r"already exists|duplicate key", str(exc)):
                time.sleep(0.5)  # another worker is creating the same tables in a new database at this moment
                continue
            error = exc
            break
    raise storage_error(url, error)


def storage_error(url: str, error: BaseException) -> ConfigError:
    """A ConfigError for a storage that refused us: the database's own reason (found under Optuna's and SQLAlchemy's
    wrappers), the URL and any password in the reason masked."""
    cause: Optional[BaseException] = error
    while cause is not None and getattr(cause, "orig", None) is None and (cause.__cause__ or cause.__context__):
        cause = cause.__cause__ or cause.__context__
    reason = str(getattr(cause, "orig", None) or cause or error).strip().splitlines() or [type(error).__name__]
    password = re.search(r"://[^:/@]*:([^@/]*)@", url)
    text = reason[0].replace(password.group(1), "***") if password and password.group(1) else reason[0]
    return ConfigError(
        f"cannot use the study storage {mask_url(url)!r}: {text}; check the URL, that the server runs "
        "and that this user may create tables there"
    )


@dataclass
class _Job:
    """Everything a worker needs to run trials (picklable, for worker processes)."""

    images: np.ndarray
    labels: np.ndarray
    dataset: Optional[str]
    identity: dict[str, Any]
    base: TrainConfig
    space: dict[str, Any]
    n_trials: int
    seeds: bool
    storage: str
    study: str
    run_dir: str
    heartbeat: int
    threads: int
    progress: bool
    pruner: Any = None
    sampler: Any = None
    test: Optional[tuple[np.ndarray, np.ndarray]] = None


@dataclass
class TuneResult:
    """What a search or seed study found (see :func:`tune`); ``study`` is the Optuna Study (for its plots)."""

    study_name: str
    storage: str  # password masked
    run_dir: str
    trials: list[dict[str, Any]]  # the leaderboard, best first: number, state, value, params, seconds, model, ...
    best_params: Optional[dict[str, Any]] = None
    best_value: Optional[float] = None
    best_trial: Optional[int] = None
    best_model: Optional[str] = None  # the exported model (retrained on every training image)
    seeds: Optional[dict[str, Any]] = None  # seed studies: mean, std, min, max of val_acc (and test_acc when asked)
    study: Any = field(default=None, repr=False)

    def report(self) -> str:
        """The leaderboard and summary as printed by ``mnist-tune --show``."""
        return "\n".join(_report_lines(self))


def tune(
    images: Any = None,
    labels: Any = None,
    *,
    arch: ArchLike = "cnn",
    n_trials: Optional[int] = None,
    seeds: Optional[int] = None,
    storage: Optional[str] = None,
    study: Optional[str] = None,
    space: Any = None,
    epochs: Optional[int] = None,
    val_split: float = VAL_SPLIT,
    seed: int = 42,
    workers: int = 1,
    threads: int = 0,
    run_dir: Optional[PathLike] = None,
    data_dir: Optional[PathLike] = None,
    dataset: Optional[str] = None,
    test_data: Any = None,
    export: bool = True,
    pruner: Any = None,
    sampler: Any = None,
    heartbeat: int = HEARTBEAT,
    progress: bool = True,
) -> TuneResult:
    """Search recipes for ``arch`` (``n_trials`` trials) or train one recipe over ``seeds`` seeds, on Optuna.

    Data arguments work as in :func:`ggml_mnist.train` (the training split). Each trial trains with ``val_split``
    held out, reports the validation accuracy after every epoch (the pruner, median by default, stops bad trials)
    and saves its model as ``run_dir/trials/trial-NNNN.gguf`` with its parameters and trial number in the metadata.
    ``space`` overrides :func:`default_space` (seed studies: fixed values of the one recipe); ``epochs`` is each
    trial's budget (default: the preset's). The study lives in ``storage`` (default: SQLite in ``run_dir``, which
    defaults to ``tune/<study>``); a study of that name is joined, and refused if it is of another network, dataset
    or recipe. ``n_trials`` counts the whole study's trials, shared by every worker that joins it: ``workers``
    processes here (each with its share of ``threads``, 0 = all cores) and any other machine on the same storage.
    A search ends by retraining the best parameters on all training images into ``run_dir/best.gguf`` (``export``).
    A seed study reports mean and spread of the validation accuracy, and of the test accuracy with ``test_data``
    ((images, labels), only measured, never chosen on). The test set is never used to choose.
    Raises ConfigError (Optuna missing, bad space, storage refused), DataError and the errors of train().
    """
    require_optuna()
    if (n_trials is None) == (seeds is None):
        raise ConfigError("give n_trials (a recipe search) or seeds (one recipe over several seeds), one of them")
    count = n_trials if seeds is None else seeds
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"{'n_trials' if seeds is None else 'seeds'} must be a whole number >= 1, got {count!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a whole number >= 1, got {workers!r}")
    if not (isinstance(val_split, (int, float)) and 0 < val_split < 1):
        raise ConfigError(
            f"val_split must be in (0, 1): trials are scored on held-out training images, never on "
            f"the test set; got {val_split!r}"
        )
    base = TrainConfig.defaults(arch).replace(epochs=epochs, seed=seed, val_split=val_split).validate()
    name = api._dataset_name(images, labels, data_dir, dataset)
    images, labels = api.resolve_dataset(images, labels, "train", data_dir, dataset)
    if round(len(labels) * val_split) < 1:
        raise ConfigError(
            f"val_split {val_split} of {len(labels)} images holds no image to score trials on; "
            "give a larger val_split or more images"
        )
    resolved = resolve_space(space, arch, name, base, fixed_only=seeds is not None)
    if seeds is not None:
        base = base.replace(**resolved).validate()
    n_train = len(labels) - round(len(labels) * val_split)
    largest = _largest(resolved.get("batch_size", base.batch_size))
    if largest > n_train:
        raise ConfigError(
            f"batch size {largest} of the search space is more than the {n_train} training images a trial "
            'keeps; give smaller batch sizes in the space (e.g. {"batch_size": {"choices": [20, 50]}})'
        )
    arch_label = arch if isinstance(arch, str) else "custom"
    study = study or f"{arch_label}-{name or 'data'}{'-seeds' if seeds is not None else ''}"
    run_dir = os.fspath(run_dir) if run_dir is not None else os.path.join(DEFAULT_DIR, study)
    os.makedirs(os.path.join(run_dir, "trials"), exist_ok=True)
    storage = storage or f"sqlite:///{os.path.join(run_dir, 'study.db')}"
    identity = {
        "arch": base.as_dict()["arch"],
        "dataset": name,
        "data_sha256": _fingerprint(images, labels),
        "mode": "seeds" if seeds is not None else "search",
        "epochs": base.epochs,
        "val_split": base.val_split,
        "seed": base.seed,
        "space": json.loads(json.dumps(resolved)),
    }
    test = None
    if test_data is not None:
        if not isinstance(test_data, (tuple, list)) or len(test_data) != 2:
            raise ConfigError("test_data must be (images, labels), arrays or IDX paths")
        test = api.resolve_dataset(test_data[0], test_data[1], "test")
    total_threads = threads or len(os.sched_getaffinity(0))
    job = _Job(
        images=np.asarray(images),
        labels=np.asarray(labels),
        dataset=name,
        identity=identity,
        base=base,
        space=resolved,
        n_trials=count,
        seeds=seeds is not None,
        storage=storage,
        study=study,
        run_dir=run_dir,
        heartbeat=heartbeat,
        threads=max(1, total_threads // workers) if workers > 1 else threads,
        progress=progress,
        pruner=pruner,
        sampler=sampler,
        test=test,
    )
    with _quiet_optuna():
        opened = _join_study(job)  # refuses a bad storage or a study of something else before any training
    if progress:
        print(
            f"mnist-tune: study {study!r} in {mask_url(storage)}: {count} {'seeds' if seeds else 'trials'} of "
            f"{arch_label} on {name or 'the given images'}, {base.epochs} epochs each, "
            f"{workers} worker(s) here",
            file=sys.stderr,
        )
    if workers == 1:
        _work(job, opened)
    else:
        _spawn(job, workers)
    result = summarize(opened, storage, run_dir)
    if export and seeds is None and result.best_params is not None:
        result.best_model = _export(job, result, threads)
    return result


def _largest(spec: Any) -> Any:
    """The largest value a space entry can take."""
    if not _is_range(spec):
        return spec
    return max(spec["choices"]) if "choices" in spec else spec["high"]


def _fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    digest = hashlib.sha256()
    for arr in (np.ascontiguousarray(images), np.ascontiguousarray(labels)):
        digest.update(str((arr.dtype.str, arr.shape)).encode())
        digest.update(memoryview(arr).cast("B"))
    return digest.hexdigest()


def _join_study(job: _Job) -> Any:
    """Create or join the study; refuse one that holds another network, dataset or recipe."""
    optuna = require_optuna()
    storage = open_storage(job.storage, job.heartbeat)
    pruner = (
        job.pruner
        if job.pruner is not None
        else (optuna.pruners.NopPruner() if job.seeds else optuna.pruners.MedianPruner())
    )
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=job.study,
            direction="maximize",
            load_if_exists=True,
            sampler=job.sampler,
            pruner=pruner,
        )
        held = study.user_attrs.get("ggml_mnist")
        if held is None:
            study.set_user_attr("ggml_mnist", job.identity)
            held = study.user_attrs.get("ggml_mnist", job.identity)
    except optuna.exceptions.StorageInternalError as exc:
        raise storage_error(job.storage, exc) from None
    differ = [k for k in job.identity if held.get(k) != job.identity[k]]
    if differ:
        show = "; ".join(f"{k}: {_short(held.get(k))} there, {_short(job.identity[k])} here" for k in differ)
        raise ConfigError(
            f"study {job.study!r} in {mask_url(job.storage)} is another search ({show}); give another "
            "study name (--study) to start a new one, or the same settings to join it"
        )
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise ConfigError(f"study {job.study!r} in {mask_url(job.storage)} minimises; it is not a ggml-mnist study")
    return study


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _spawn(job: _Job, workers: int) -> None:
    """Run ``workers`` worker processes on this machine and wait for them."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # ggml's thread pools do not survive fork
    processes = [context.Process(target=_worker_main, args=(job,), name=f"mnist-tune-{i}") for i in range(workers)]
    for p in processes:
        p.start()
    try:
        for p in processes:
            p.join()
    except KeyboardInterrupt:
        for p in processes:
            p.join()
        raise
    failed = [p for p in processes if p.exitcode != 0]
    if len(failed) == workers:
        raise ConfigError(
            f"every worker failed (exit codes {', '.join(str(p.exitcode) for p in failed)}); their messages are above"
        )
    if failed:
        print(f"mnist-tune: {len(failed)} of {workers} workers failed; the others finished the study", file=sys.stderr)


def _worker_main(job: _Job) -> None:
    try:
        with _quiet_optuna():
            study = _join_study(job)
        _work(job, study)
    except GgmlMnistError as exc:
        print(f"mnist-tune: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


class _Surplus(Exception):
    """A trial created after the study's slots were all taken (two workers asked at once)."""


def _slot(trials: Mapping[int, Any], trial: Any) -> int:
    """The study slot a trial fills: its rank among the trials that are not retries (a retry takes its original's)."""
    optuna = require_optuna()
    origin = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)
    if origin is not None and origin in trials:
        trial = trials[origin]
    return sum(
        1
        for t in trials.values()
        if t.number < trial.number and optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) is None
    )


def _work(job: _Job, study: Any) -> None:
    """Run trials until every slot is filled and no trial is running or waiting anywhere (a worker that died is
    noticed by its silence, and its trial run again here)."""
    optuna = require_optuna()
    objective = _Objective(job)
    waiting = False
    with _quiet_optuna():
        while True:
            optuna.storages.fail_stale_trials(study)
            trials = study.get_trials(deepcopy=False)
            states = optuna.trial.TrialState
            taken = sum(
                1 for t in trials if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) is None
            )
            if taken >= job.n_trials and not any(t.state == states.WAITING for t in trials):
                running = sum(1 for t in trials if t.state == states.RUNNING)
                if not running:
                    return
                if not waiting:
                    objective.say(
                        f"waiting for {running} running trial(s) of other workers (one whose worker died "
                        f"is run again here after {GRACE_BEATS * job.heartbeat}s without a heartbeat)"
                    )
                waiting = True
                time.sleep(min(job.heartbeat, 2))
                continue
            waiting = False
            study.optimize(objective, n_trials=1, catch=(TrainingDivergedError, _Surplus), gc_after_trial=False)
            if objective.interrupted:
                raise KeyboardInterrupt


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna's own log down to errors while it runs for us: we print one line per trial instead."""
    optuna = require_optuna()
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


class _Objective:
    """Trains one trial's recipe, reporting the validation accuracy after every epoch."""

    def __init__(self, job: _Job) -> None:
        self.job = job
        self.interrupted = False

    def __call__(self, trial: Any) -> float:
        optuna = require_optuna()
        job = self.job
        trials = {t.number: t for t in trial.study.get_trials(deepcopy=False)}
        slot = _slot(trials, trials[trial.number])
        if slot >= job.n_trials:
            trial.set_user_attr("surplus", True)
            raise _Surplus(f"the study already has its {job.n_trials} trials")
        for key, value in (("slot", slot), ("host", socket.gethostname()), ("pid", os.getpid())):
            trial.set_user_attr(key, value)
        params = self.sample(trial)
        seed = job.base.seed + slot if job.seeds else job.base.seed
        if job.seeds:
            trial.set_user_attr("seed", seed)
        config = job.base.replace(**params, seed=seed, threads=job.threads)
        pruned: list[int] = []

        def on_epoch(stats: api.EpochStats, _model: Any) -> bool:
            trial.report(stats.val_acc, stats.epoch)
            if trial.should_prune():
                pruned.append(stats.epoch)
                return False
            return True

        start = time.monotonic()
        try:
            model, history = api.train(
                job.images, job.labels, config=config, dataset=job.dataset, progress=False, on_epoch=on_epoch
            )
        except TrainingDivergedError as exc:
            self.say(f"trial {trial.number}: failed, {exc}")
            raise
        seconds = time.monotonic() - start
        value = float(history[-1].val_acc)
        trial.set_user_attr("seconds", round(seconds, 3))
        trial.set_user_attr("epochs_run", len(history))
        if model.metadata.get("status") == "interrupted":  # Ctrl-C in an epoch, or between two (say, in on_epoch)
            self.interrupted = True
            raise KeyboardInterrupt
        if pruned:
            self.say(
                f"trial {trial.number}: pruned after epoch {pruned[0]} of {config.epochs} "
                f"(val acc {100 * value:.2f}%, {_params_text(params)})"
            )
            raise optuna.TrialPruned()
        path = os.path.join(job.run_dir, "trials", f"trial-{trial.number:04d}.gguf")
        check_output(path, what="the trial's model")
        model.save(
            path,
            metadata={
                "tune": {
                    "study": job.study,
                    "trial": trial.number,
                    "slot": slot,
                    "params": {**params, "seed": seed},
                    "val_acc": value,
                    "storage": mask_url(job.storage),
                }
            },
        )
        trial.set_user_attr("model", path)
        if job.test is not None:
            trial.set_user_attr("test_acc", api.evaluate(model, *job.test).accuracy)
        self.say(f"trial {trial.number}: val acc {100 * value:.2f}% in {seconds:.1f}s ({_params_text(params)}); {path}")
        return value

    def sample(self, trial: Any) -> dict[str, Any]:
        """The trial's recipe changes: fixed entries as given, ranges and choices asked of the sampler."""
        out = {}
        for key, spec in self.job.space.items():
            if not _is_range(spec):
                out[key] = spec
            elif "choices" in spec:
                out[key] = trial.suggest_categorical(key, spec["choices"])
            elif key in _INT_FIELDS:
                out[key] = trial.suggest_int(
                    key, spec["low"], spec["high"], step=spec.get("step", 1), log=bool(spec.get("log"))
                )
            else:
                out[key] = trial.suggest_float(
                    key, spec["low"], spec["high"], step=spec.get("step"), log=bool(spec.get("log"))
                )
        return out

    def say(self, line: str) -> None:
        if self.job.progress:
            print(f"mnist-tune: {line}", file=sys.stderr, flush=True)


def _params_text(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()) or "defaults"


def load_study(storage: str, study: str) -> Any:
    """Open an existing study for reading; ConfigError naming it when it is not there."""
    optuna = require_optuna()
    opened = open_storage(storage)
    try:
        return optuna.load_study(study_name=study, storage=opened)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(opened)]
        raise ConfigError(
            f"no study {study!r} in {mask_url(storage)}"
            + (f"; it holds {', '.join(map(repr, names))}" if names else "; it holds none yet")
        ) from None


def summarize(study: Any, storage: str, run_dir: str) -> TuneResult:
    """The leaderboard of ``study`` as a TuneResult (no model is trained or exported)."""
    optuna = require_optuna()
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus"):
            continue
        rows.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "value": t.value,
                "params": dict(t.params),
                "slot": t.user_attrs.get("slot"),
                "seed": t.user_attrs.get("seed"),
                "seconds": t.user_attrs.get("seconds"),
                "epochs_run": t.user_attrs.get("epochs_run"),
                "model": t.user_attrs.get("model"),
                "host": t.user_attrs.get("host"),
                "test_acc": t.user_attrs.get("test_acc"),
                "retry_of": optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t),
            }
        )
    order = {"complete": 0, "pruned": 1, "running": 2, "waiting": 3, "fail": 4}
    rows.sort(key=lambda r: (order.get(r["state"], 5), -(r["value"] or 0), r["number"]))
    identity = study.user_attrs.get("ggml_mnist", {})
    result = TuneResult(
        study_name=study.study_name, storage=mask_url(storage), run_dir=run_dir, trials=rows, study=study
    )
    complete = [r for r in rows if r["state"] == "complete"]
    if identity.get("mode") == "seeds":
        result.seeds = {key: _spread([r[key] for r in complete if r[key] is not None]) for key in ("value", "test_acc")}
    elif complete:
        best = complete[0]
        result.best_params, result.best_value, result.best_trial = best["params"], best["value"], best["number"]
    return result


def _spread(values: Sequence[float]) -> Optional[dict[str, float]]:
    if not values:
        return None
    arr = np.asarray(values, dtype=np.float64)
    return {
        "n": len(arr),
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
        "min": float(arr.min()),
        "max": float(arr.max()),
    }


def _export(job: _Job, result: TuneResult, threads: int) -> str:
    """Retrain the best trial's recipe on every training image (no validation split) into run_dir/best.gguf.

    Retrained rather than copied: the trial's model saw only 1 - val_split of the images, and on a shared study its
    file may sit on another machine; the recipe and seed are the trial's, so the run is reproducible anywhere.
    """
    fixed = {k: v for k, v in job.space.items() if not _is_range(v)}
    config = job.base.replace(**fixed, **result.best_params, val_split=0.0, threads=threads)
    path = os.path.join(job.run_dir, "best.gguf")
    check_output(path, what="the best model")
    if job.progress:
        print(
            f"mnist-tune: retraining trial {result.best_trial}'s recipe on all {len(job.labels)} training images "
            f"({_params_text(result.best_params)})",
            file=sys.stderr,
        )
    model, _ = api.train(job.images, job.labels, config=config, dataset=job.dataset, progress=job.progress)
    model.save(
        path,
        metadata={
            "tune": {
                "study": job.study,
                "trial": result.best_trial,
                "val_acc": result.best_value,
                "params": {**fixed, **result.best_params},
                "storage": mask_url(job.storage),
                "export": "retrained on all training images",
            }
        },
    )
    return path


def _report_lines(result: TuneResult) -> list[str]:
    rows = result.trials
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    lines = [
        f"study {result.study_name!r} in {result.storage}: {len(rows)} trials ("
        + ", ".join(f"{n} {state}" for state, n in counts.items())
        + ")"
    ]
    lines.append(f"{'rank':>4} {'trial':>5} {'state':9} {'val acc':>8} {'epochs':>6} {'seconds':>8}  params / model")
    for rank, r in enumerate(rows, 1):
        acc = f"{100 * r['value']:.2f}%" if r["value"] is not None else "-"
        extra = f"seed={r['seed']}" if r["seed"] is not None else _params_text(r["params"])
        if r["test_acc"] is not None:
            extra += f" test={100 * r['test_acc']:.2f}%"
        if r["retry_of"] is not None:
            extra += f" (retry of trial {r['retry_of']})"
        where = f"  {r['model']}" if r["model"] else ""
        seconds = f"{r['seconds']:.1f}" if r["seconds"] is not None else "-"
        lines.append(
            f"{rank if r['state'] == 'complete' else '':>4} {r['number']:>5} {r['state']:9} {acc:>8} "
            f"{r['epochs_run'] or '-':>6} {seconds:>8}  {extra}{where}"
        )
    pruned = [r for r in rows if r["state"] == "pruned" and r["epochs_run"]]
    full = [r for r in rows if r["state"] == "complete" and r["epochs_run"]]
    if pruned and full:
        per_epoch = sum(r["seconds"] for r in full) / sum(r["epochs_run"] for r in full)
        budget = max(r["epochs_run"] for r in full)
        saved = sum(budget - r["epochs_run"] for r in pruned)
        lines.append(
            f"pruning stopped {len(pruned)} trials early: {saved} epochs (about {saved * per_epoch:.0f}s) not trained"
        )
    if result.seeds is not None:
        for key, label in (("value", "val acc"), ("test_acc", "test acc")):
            s = result.seeds.get(key)
            if s:
                lines.append(
                    f"{label} over {s['n']} seeds: {100 * s['mean']:.2f} ± {100 * s['std']:.2f}% "
                    f"(min {100 * s['min']:.2f}%, max {100 * s['max']:.2f}%)"
                )
    elif result.best_trial is not None:
        lines.append(
            f"best: trial {result.best_trial}, val acc {100 * result.best_value:.2f}% "
            f"({_params_text(result.best_params)})"
        )
    if result.best_model:
        lines.append(
            f"exported: {result.best_model} (trial {result.best_trial}'s recipe retrained on all training images)"
        )
    return lines
