"""``Model``: a network held by the native shim (weights on a ggml device), with predict, save and load."""

from __future__ import annotations

import atexit
import contextlib
import copy
import json
import os
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import numpy as np

from . import _ffi, labels
from ._ffi import ffi, lib
from .config import DEFAULT_DEVICE, DEFAULT_SEED, EVAL_CHUNK, GRAPHS, check_batch_size
from .data import validate_images
from .errors import ConfigError, DataError, DataFileNotFoundError, DeviceError, DeviceWarning, GgmlMnistWarning
from .layers import ArchLike, Dense, Layer, as_int, from_native, preset_layers, preset_names, resolve_layers
from .outputs import check_output
from .pictures import read as pictures
from .pictures.prepare import ImageLike
from .weight_layout import check_layout, from_torch, to_torch

PathLike = Union[str, "os.PathLike[str]"]
_LIVE: weakref.WeakSet[Model] = weakref.WeakSet()


# Held while a native model is made (and added to _LIVE); taken for good when the interpreter exits.
_CREATING = threading.RLock()


def _new_locks_after_fork() -> None:
    # a lock held by another thread at fork() time would never be released in the child
    global _CREATING
    _CREATING = threading.RLock()
    for model in list(_LIVE):
        model._lock = threading.RLock()


os.register_at_fork(after_in_child=_new_locks_after_fork)

# Set when the interpreter starts to exit: training in another thread stops at its next batch.
EXITING = threading.Event()


def _quiesce_at_exit(timeout: float = 30.0) -> None:
    """Let native calls still running in other (daemon) threads end, and keep new ones out, before the process
    exits: exit tears down ggml's static state, which a native call still running would use and crash on.
    Model creation and each model's lock are taken and kept (the main thread may still use its models: the
    locks are reentrant); ``timeout`` bounds the whole wait, after which exit goes ahead regardless."""
    EXITING.set()
    deadline = time.monotonic() + timeout
    _CREATING.acquire(timeout=timeout)
    for model in list(_LIVE):
        model._lock.acquire(timeout=max(0.0, deadline - time.monotonic()))


atexit.register(_quiesce_at_exit)


#: ggml backends that drive a GPU; build_info["backends"] lists those this installation was built with.
GPU_BACKENDS = ("ggml-cuda", "ggml-hip", "ggml-musa", "ggml-vulkan", "ggml-metal", "ggml-sycl", "ggml-opencl")
_FALLBACK_NOTED: list[bool] = []


def gpu_backends_built() -> list[str]:
    """The GPU backends this installation's ggml was built with (none for the default CPU build)."""
    from ._build_info import build_info

    return [b for b in build_info.get("backends") or [] if b in GPU_BACKENDS]


def _no_gpu_reason() -> str:
    return (
        f"this build has {', '.join(b.removeprefix('ggml-').upper() for b in gpu_backends_built())} but ggml "
        "found no usable GPU (no driver, an old driver, or none visible: check nvidia-smi and "
        "CUDA_VISIBLE_DEVICES; gm.set_verbose(True) shows ggml's own reason)"
    )


def _note_cpu_fallback(asked: str, got: str) -> None:
    """Say once per process, as a DeviceWarning, that device="auto" fell back to the CPU in a GPU build."""
    if str(asked).lower() == "auto" and got == "CPU" and gpu_backends_built() and not _FALLBACK_NOTED:
        _FALLBACK_NOTED.append(True)
        warnings.warn(f"{_no_gpu_reason()}; device='auto' runs on the CPU", DeviceWarning, stacklevel=3)


@contextlib.contextmanager
def _device_errors(device: str) -> Iterator[None]:
    """Add to a DeviceError for an unknown device what to do about it in this installation."""
    try:
        yield
    except DeviceError as exc:
        if gpu_backends_built():
            fix = f"{_no_gpu_reason()}; use device='cpu' or 'auto'"
        else:
            fix = (
                "this installation was built for the CPU only; for an NVIDIA GPU reinstall with "
                'CMAKE_ARGS="-DGGML_CUDA=on" pip install . (README: Using a GPU)'
            )
        raise DeviceError(f"{exc}; {fix}") from None


class Model:
    """A classifier whose network (a list of layers) and weights live on a ggml device.

    Create one with :meth:`create` or :meth:`load` (or get it from :func:`ggml_mnist.train`).
    A Model is not safe to use from two threads at once; distinct models are.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Models come from :meth:`create`, :meth:`load`, :func:`ggml_mnist.train` or :meth:`copy`."""
        raise TypeError("use gm.Model.create(...), gm.Model.load(path) or gm.train(...) to make a Model")

    @classmethod
    def _own(cls, handle: Any, threads: int = 0) -> Model:
        """Wrap a fresh native handle, which the Model then frees exactly once (internal)."""
        self = cls.__new__(cls)
        self._handle = ffi.gc(handle, lib.gmn_model_free)
        self._lock = threading.RLock()  # one native call at a time; close() waits for a running one
        self._in_native = 0  # native calls running on the thread that holds _lock (a callback re-enters them)
        _LIVE.add(self)
        net = ffi.new("struct gmn_net *")
        buf = ffi.new("struct gmn_layer[]", lib.GMN_MAX_LAYERS)
        _ffi.check(lib.gmn_model_get_net(self._handle, net, buf, lib.GMN_MAX_LAYERS))
        self.layers: list[Layer] = [from_native(buf[i]) for i in range(net.n_layers)]
        self.n_classes: int = lib.gmn_model_n_classes(self._handle)
        self.image_size: tuple[int, int] = (net.image_h, net.image_w)
        self.metadata: dict[str, Any] = {}
        self.path: Optional[str] = None  # the file the model was loaded from
        self._threads = threads
        self._graph = "auto"
        return self

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        arch: ArchLike = "cnn",
        *,
        n_classes: int = 10,
        image_size: Sequence[int] = (28, 28),
        hidden: Optional[int] = None,
        conv_channels: Optional[Sequence[int]] = None,
        device: str = DEFAULT_DEVICE,
        threads: int = 0,
        seed: int = DEFAULT_SEED,
        graph: str = "auto",
    ) -> Model:
        """Return a freshly initialised model (PyTorch-style uniform init drawn from ``seed``).

        ``arch`` is a preset name (see :func:`ggml_mnist.presets`) or a list of layers; ``hidden`` and
        ``conv_channels`` edit the preset's first hidden dense layer and its convolutions; ``graph`` is the
        graph form (see :meth:`set_graph`).
        Raises ConfigError for an impossible network and DeviceError for an unknown device.
        """
        seed = _ffi.check_seed(seed)
        n_classes = as_int(n_classes, "n_classes")
        layers = resolve_layers(arch, n_classes, hidden=hidden, conv_channels=conv_channels)
        net, _keep = native_net(layers, n_classes, image_size)
        out = ffi.new("gmn_model **")
        with _CREATING:
            with _device_errors(device):
                _ffi.check(lib.gmn_model_init(net, _ffi.cstr(device, "device"), as_int(threads, "threads"), seed, out))
            model = cls._own(out[0], threads)
        model.set_graph(graph)
        _note_cpu_fallback(device, model.device)
        return model

    @classmethod
    def load(cls, path: PathLike, *, device: str = DEFAULT_DEVICE, threads: int = 0, graph: str = "auto") -> Model:
        """Load a GGUF model written by ggml-mnist or by ggml's mnist example, to run in graph form ``graph``.

        Raises DataFileNotFoundError if the file is missing, ModelFormatError if it is not a valid model.
        """
        if not isinstance(path, (str, os.PathLike)):
            raise ConfigError(f"path must be a file name, got {path!r}")
        path = os.fspath(path)
        if not os.path.exists(path):
            raise DataFileNotFoundError(f"model file {path!r} does not exist")
        out = ffi.new("gmn_model **")
        with _CREATING:
            with _device_errors(device):
                _ffi.check(
                    lib.gmn_model_load(_ffi.cstr(path), _ffi.cstr(device, "device"), as_int(threads, "threads"), out)
                )
            model = cls._own(out[0], threads)
        model.metadata = _decode_metadata(model._native_metadata())
        model.path = path
        problem = labels.class_names_problem(model.metadata, model.n_classes)
        if problem is not None:
            warnings.warn(
                f"{path}: its class_names are ignored ({problem}); its classes are called "
                f"{', '.join(model.class_names[:3])}{', ...' if model.n_classes > 3 else ''}",
                GgmlMnistWarning,
                stacklevel=2,
            )
        model.set_graph(graph)
        _note_cpu_fallback(device, model.device)
        return model

    # -- properties ---------------------------------------------------------------------------
    def _call_native(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Return ``fn(handle, *args)`` for a shim function, one call per model at a time (other threads wait).

        Raises ValueError when the model is closed, so a handle is never used after it is freed. Only this module
        and the training run (training.py) call the library with a model's handle (``_handle``, None once closed).
        """
        with self._lock:
            if self._handle is None:
                raise ValueError("this Model has been closed")
            self._in_native += 1
            try:
                return fn(self._handle, *args)
            finally:
                self._in_native -= 1

    def _refuse_inside_native(self, what: str) -> None:
        """Raise ConfigError when called (with the lock held) from inside one of this model's native calls: a
        training callback such as on_batch_end runs within the epoch call, which still uses the model's memory."""
        if self._in_native:
            raise ConfigError(
                f"{what}() cannot run inside a training callback: the epoch that called it still uses "
                "the model; return False or raise StopTraining to stop, then call it after train() "
                "returns"
            )

    @property
    def handle(self) -> Any:
        """Deprecated: the native handle is private (``_handle``); it still works, with a DeprecationWarning."""
        warnings.warn(
            "Model.handle is private now (Model._handle); the Model's methods cover what it was used for",
            DeprecationWarning,
            stacklevel=2,
        )
        if self._handle is None:
            raise ValueError("this Model has been closed")
        return self._handle

    def call_native(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Deprecated: private now (``_call_native``); it still works, with a DeprecationWarning."""
        warnings.warn("Model.call_native is private now (Model._call_native)", DeprecationWarning, stacklevel=2)
        return self._call_native(fn, *args)

    def set_graph(self, graph: str) -> None:
        """Choose the graph form: "auto" (the default: "cpu" on the CPU device, else "portable"), "cpu" (channels-last,
        with the shim's own CPU kernels) or "portable" (ggml's ops only, which GPU backends run forward and
        backward). Raises ConfigError for another name, for "cpu" on another device, or during training."""
        if graph not in GRAPHS:
            raise ConfigError(f"graph must be one of {', '.join(GRAPHS)}, got {graph!r}")
        status = self._call_native(lib.gmn_model_set_graph, getattr(lib, f"GMN_GRAPH_{graph.upper()}"))
        # during training (GMN_E_STATE) the graph is part of the run's recipe: a ConfigError, as documented
        _ffi.check(lib.GMN_E_INVALID if status == lib.GMN_E_STATE else status, invalid=ConfigError)
        self._graph = graph

    @property
    def plan(self) -> dict[str, Any]:
        """The backend plan: ``graph`` ("cpu" or "portable"), ``device``, ``ops`` (the ggml ops of the training graph
        once trained, else of the prediction graph), ``kernels`` (per shim kernel, the nodes it took in that graph;
        empty when the kernels are off, ``kernels_off`` then says why), ``accel_products`` and ``llamafile``."""
        info = ffi.new("struct gmn_plan_info *")
        _ffi.check(self._call_native(lib.gmn_model_plan, info))
        kernels = {ffi.string(lib.gmn_kernel_name(k)).decode(): int(info.taken[k]) for k in range(lib.GMN_KERNEL_COUNT)}
        why = ffi.string(info.why_no_kernels).decode()
        return {
            "graph": "cpu" if info.graph == lib.GMN_GRAPH_CPU else "portable",
            "device": self.device,
            "ops": ffi.string(info.ops).decode().split(),
            "kernels": kernels if info.kernels else {},
            "kernels_off": why or None,
            "accel_products": bool(info.accel_products),
            "llamafile": bool(info.llamafile),
        }

    @property
    def device(self) -> str:
        """Name of the ggml device the model runs on (e.g. "CPU", "CUDA0")."""
        buf = ffi.new("char[128]")
        _ffi.check(self._call_native(lib.gmn_model_device, buf, 128))
        return ffi.string(buf).decode()

    @property
    def arch(self) -> str:
        """The preset this network equals ("fc", "cnn", "lenet5", ...), or "custom"."""
        for name in preset_names():
            if preset_layers(name, self.n_classes) == self.layers:
                return name
        return "custom"

    @property
    def n_params(self) -> int:
        """Number of trainable parameters."""
        return sum(info[3] for info in self.layer_info())

    def layer_info(self) -> list[tuple[int, int, int, int]]:
        """Per layer: output height, width, channels (units after a dense layer, with height = width = 1) and parameters."""
        return net_info(self.layers, self.n_classes, self.image_size)

    def summary(self, print_fn: Callable[[str], Any] = print) -> None:
        """Print a Keras-style table of the layers: name and kind, output shape, parameters, and the total."""
        for line in summary_lines(self.layers, self.n_classes, self.image_size):
            print_fn(line)

    @property
    def architecture(self) -> str:
        """The GGUF ``general.architecture`` this model is saved under."""
        return ffi.string(self._call_native(lib.gmn_model_architecture)).decode()

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Map each parameter name to its numpy shape (ggml's ne reversed, trailing 1s dropped)."""
        shapes = {}
        name = ffi.new("char[64]")
        ne = ffi.new("int64_t[4]")
        for i in range(self._call_native(lib.gmn_model_n_tensors)):
            _ffi.check(self._call_native(lib.gmn_model_tensor_info, i, name, 64, ne))
            dims = [int(ne[d]) for d in range(4)]
            while len(dims) > 1 and dims[-1] == 1:
                dims.pop()
            shapes[ffi.string(name).decode()] = tuple(reversed(dims))
        return shapes

    def get_weights(self, layout: str = "ggml") -> dict[str, np.ndarray]:
        """Return copies of all parameters as float32 arrays.

        ``layout="ggml"`` (the default) gives the shapes of :meth:`tensor_shapes` (cnn's conv bias ``[8, 1, 1]``, a
        dense layer after convolutions reading its inputs height-width-channel); ``layout="torch"`` gives PyTorch's
        ``state_dict`` shapes and order (``[out, in, k, k]`` kernels, ``[out]`` biases, ``[out, in]`` dense weights
        reading channel-first inputs). :meth:`set_weights` takes either back; see :func:`convert_weights`.
        """
        check_layout(layout)
        out = {}
        for name, shape in self.tensor_shapes().items():
            arr = np.empty(shape, dtype=np.float32)
            _ffi.check(self._call_native(lib.gmn_model_get_tensor, name.encode(), _ffi.ptr(arr, "float *"), arr.size))
            out[name] = arr
        return to_torch(out, self.layers, self._layer_inputs()) if layout == "torch" else out

    def _layer_inputs(self) -> list[tuple[int, int, int]]:
        """Per layer: height, width and channels of its input."""
        outputs = [(h, w, c) for h, w, c, _params in self.layer_info()]
        return [(self.image_size[0], self.image_size[1], 1), *outputs[:-1]]

    def set_weights(self, weights: Mapping[str, Any], *, layout: str = "ggml") -> None:
        """Overwrite parameters from arrays in ``layout`` (see :meth:`get_weights`): with ``"ggml"`` the shapes of
        :meth:`tensor_shapes` (a shape that differs only by 1s, such as a torch bias ``[8]``, is accepted too),
        with ``"torch"`` exactly PyTorch's shapes.

        Raises ConfigError for an unknown name, a wrong shape or non-finite values; then nothing is changed.
        """
        shapes = self.tensor_shapes()
        if check_layout(layout) == "torch":
            weights = from_torch(weights, self.layers, self._layer_inputs(), shapes)
        checked: dict[str, np.ndarray] = {}
        for name, value in weights.items():
            if name not in shapes:
                raise ConfigError(f"unknown tensor {name!r}; this model has {', '.join(shapes)}")
            arr = np.ascontiguousarray(value, dtype=np.float32)
            if (
                arr.shape != shapes[name]
                and arr.size == int(np.prod(shapes[name]))
                and arr.squeeze().shape == tuple(d for d in shapes[name] if d != 1)
            ):
                arr = arr.reshape(shapes[name])
            if arr.shape != shapes[name]:
                raise ConfigError(f"tensor {name!r} must have shape {shapes[name]}, got {arr.shape}")
            if not np.isfinite(arr).all():
                raise ConfigError(f"tensor {name!r} holds NaN or infinite values")
            checked[name] = arr
        for name, arr in checked.items():  # everything is valid: a failed call above changed nothing
            _ffi.check(self._call_native(lib.gmn_model_set_tensor, name.encode(), _ffi.ptr(arr, "float *"), arr.size))

    # -- quantisation -----------------------------------------------------------------------------
    def quantize(self, type: str, /, *, pad: bool = False) -> Model:
        """Return a new Model (same network, device and metadata) with the weights converted to ``type`` by ggml.

        ``type`` is one of :func:`weight_types`: "q8_0", "q5_0" and "q4_0" (ggml's blocks of 32 values) go to
        every dense weight whose rows (the layer's inputs) are whole blocks, or with ``pad=True`` to every dense
        weight, its rows zero-padded to whole blocks in the file; the other weights become f16, biases stay f32
        (see :meth:`tensor_storage`). "f16" converts every weight, "f32" dequantises. This model is unchanged.
        Raises ConfigError for an unknown type, or one that no tensor of the network can take.
        """
        out = ffi.new("gmn_model **")
        with _CREATING:
            _ffi.check(self._call_native(lib.gmn_model_quantize, _ffi.cstr(type, "type"), 1 if pad else 0, out))
            model = Model._own(out[0], self._threads)
        model.metadata = copy.deepcopy(self.metadata)
        return model

    def dequantize(self) -> Model:
        """Return a new f32 Model holding this model's weights as ggml dequantises them (trainable, e.g. to fine-tune)."""
        return self.quantize("f32")

    def tensor_storage(self) -> dict[str, TensorStorage]:
        """Map each parameter name to how it is stored: type, row length in the file and bytes."""
        out = {}
        type_ = ffi.new("const char **")
        row_len = ffi.new("int64_t *")
        nbytes = ffi.new("int64_t *")
        for i, name in enumerate(self.tensor_shapes()):
            _ffi.check(self._call_native(lib.gmn_model_tensor_storage, i, type_, row_len, nbytes))
            out[name] = TensorStorage(ffi.string(type_[0]).decode(), int(row_len[0]), int(nbytes[0]))
        return out

    @property
    def weight_type(self) -> str:
        """The least precise type among the weights: "f32" for a model that was never quantised, else e.g. "q4_0"."""
        order = weight_types()
        return max((s.type for s in self.tensor_storage().values()), key=order.index)

    # -- inference --------------------------------------------------------------------------------
    def predict_proba(self, images: Any, *, batch_size: int = EVAL_CHUNK) -> np.ndarray:
        """Return class probabilities, shape [N, n_classes] float32, for uint8 images or floats in [0, 1].

        ``images`` is [N, H, W], [N, H*W] or a single [H, W] image. Memory stays bounded:
        images are converted and predicted ``batch_size`` at a time.
        """
        flat, is_float = self._flatten(images)
        probs = np.empty((flat.shape[0], self.n_classes), dtype=np.float32)
        for start, chunk in _chunks(flat, batch_size):
            chunk = np.ascontiguousarray(chunk)
            out = probs[start : start + chunk.shape[0]]
            _ffi.check(
                self._call_native(
                    lib.gmn_model_predict,
                    _ffi.ptr(chunk, "void *"),
                    int(is_float),
                    chunk.shape[0],
                    _ffi.ptr(out, "float *"),
                ),
                invalid=DataError,
            )
        return probs

    def predict(self, images: Any, *, batch_size: int = EVAL_CHUNK) -> np.ndarray:
        """Return the predicted class of each image as an int64 array of shape [N]."""
        return self.predict_proba(images, batch_size=batch_size).argmax(axis=1)

    def evaluate(
        self,
        images: Any = None,
        labels: Any = None,
        *,
        data_dir: Optional[PathLike] = None,
        dataset: Optional[str] = None,
        batch_size: int = EVAL_CHUNK,
        keep_probabilities: bool = True,
    ) -> Any:
        """Loss, accuracy (with standard errors) and predictions on labelled images: ``gm.evaluate(model, ...)``.

        ``images``/``labels`` are arrays or IDX paths, or ``images`` a dataset directory; without them the test split
        of ``data_dir`` is read (``dataset`` defaults to the one the model was trained on). Returns an EvalResult.
        """
        from .api import evaluate  # the data resolution lives with the API

        return evaluate(
            self,
            images,
            labels,
            data_dir=data_dir,
            dataset=dataset,
            batch_size=batch_size,
            keep_probabilities=keep_probabilities,
        )

    def activations(self, image: Any) -> list[np.ndarray]:
        """Return, per layer, its output for one image ([H, W] uint8 or floats in [0, 1]) as float32.

        Spatial outputs have shape [channels, height, width], outputs after a dense layer [units].
        Raises DataError for an image of the wrong size or with non-finite pixels.
        """
        flat, is_float = self._flatten(image)
        if flat.shape[0] != 1:
            raise DataError(f"activations() takes one image, got {flat.shape[0]}")
        x = (
            np.ascontiguousarray(flat[0], dtype=np.float32)
            if is_float
            else flat[0].astype(np.float32) / np.float32(255)
        )
        out = []
        for i, (h, w, c, _params) in enumerate(self.layer_info()):
            flat_out = h == 1 and w == 1 and any(isinstance(layer, Dense) for layer in self.layers[: i + 1])
            arr = np.empty(c if flat_out else (c, h, w), dtype=np.float32)
            _ffi.check(
                self._call_native(
                    lib.gmn_model_activation, _ffi.ptr(x, "float *"), i, _ffi.ptr(arr, "float *"), arr.size
                ),
                invalid=DataError,
            )
            out.append(arr)
        return out

    @property
    def class_names(self) -> list[str]:
        """What each output means: the metadata's ``class_names``, else a known dataset's, else "0".."n-1"."""
        return labels.class_names(self.metadata, self.n_classes)

    @property
    def preparation(self) -> str:
        """How pictures are prepared for this model: "digits" (MNIST's recipe) or "photo" (Fashion-MNIST)."""
        return labels.preparation(self.metadata)

    def predict_image(
        self, image: Union[ImageLike, Sequence[ImageLike]]
    ) -> Union[pictures.Prediction, list[pictures.Prediction]]:
        """Predict a picture (a path, encoded bytes, a PIL image or an array) prepared by :func:`prepare_image`
        as this model expects (:attr:`preparation`); a list of pictures gives a list of Predictions.

        Raises ImageError for a picture that cannot be read or holds no ink, DataFileNotFoundError for a
        missing file.
        """
        return pictures.predict_image(self, image)

    def read_digits(self, image: ImageLike) -> pictures.DigitReading:
        """Read the handwritten digits (or letters) on one picture: lines top to bottom, left to right.

        Returns the text and, per digit, its box in the picture's pixels, label and probability.
        Raises ImageError for a picture without ink or a model that expects photos (Fashion-MNIST).
        """
        return pictures.read_digits(self, image)

    def _flatten(self, images: Any) -> tuple[np.ndarray, bool]:
        hint = (
            "a photo or scan with model.predict_image(picture) (or read_digits for several digits), which crops, "
            "centres and scales it as the training images were: plain resizing reads worse"
        )
        if isinstance(images, (str, os.PathLike)):
            raise DataError(
                f"images must be an array of images, not a path ({os.fspath(images)!r}); read an IDX file "
                f"with gm.read_idx(path), or {hint}"
            )
        shape = getattr(images, "shape", None)
        photo = (
            shape is not None
            and tuple(shape[-2:]) != self.image_size
            and (
                len(shape) == 3
                and shape[-1] in (3, 4)
                and min(shape[:2]) >= 16  # [H, W, RGB(A)]
                or len(shape) == 2
                and min(shape) >= 16
                and shape[-1] != self.image_size[0] * self.image_size[1]
            )
        )  # [H, W]
        if photo or type(images).__module__.startswith("PIL."):
            raise DataError(
                f"predict() takes arrays of prepared {self.image_size[0]}x{self.image_size[1]} images, not "
                f"a picture; read {hint}"
            )
        arr = validate_images(images, size=self.image_size, single=True)
        return arr.reshape(arr.shape[0], -1), arr.dtype != np.uint8

    # -- files ------------------------------------------------------------------------------------
    def save(self, path: PathLike, metadata: Optional[Mapping[str, Any]] = None, *, force: bool = False) -> None:
        """Write the model as GGUF atomically: a failed save leaves any existing file untouched.

        The data goes to a hidden ``.NAME.tmp-XXXXXX`` next to ``path`` that is renamed over it when
        complete. A process killed mid-save can leave that file behind; the next save to ``path``
        removes such files once they are a minute old and no running save holds them.

        ``metadata`` (merged over :attr:`metadata` for this file only; the model is not changed) is
        stored under ``ggml_mnist.<key>`` keys as strings (JSON for non-strings); the keys the file
        uses for the network (n_classes, image_height, image_width, layers.*) are refused with
        ConfigError. Refuses to replace anything but a regular file (a symlink to one is followed), and
        an existing file that is not a GGUF model (a dataset, a picture) unless ``force``.
        Raises ModelIOError if the file cannot be written, OutOfMemoryError when memory for the
        save is lacking.
        """
        merged = {**self.metadata, **(metadata or {})}
        keys, values = [], []
        for key, value in merged.items():
            keys.append(ffi.new("char[]", _ffi.cstr(str(key))))
            text = json.dumps(value, sort_keys=True)
            values.append(ffi.new("char[]", _ffi.cstr(text)))
        if not isinstance(path, (str, os.PathLike)):
            raise ConfigError(f"path must be a file name such as model.gguf, got {path!r}")
        path = os.fspath(path)
        check_output(path, force=force, what="the model file")
        _ffi.check(
            self._call_native(
                lib.gmn_model_save,
                _ffi.cstr(path),
                len(keys),
                ffi.new("char *[]", keys) if keys else ffi.NULL,
                ffi.new("char *[]", values) if values else ffi.NULL,
            )
        )

    def _native_metadata(self) -> Iterator[tuple[str, str]]:
        key = ffi.new("const char **")
        value = ffi.new("const char **")
        for i in range(self._call_native(lib.gmn_model_meta_count)):
            _ffi.check(self._call_native(lib.gmn_model_meta_get, i, key, value))
            yield ffi.string(key[0]).decode("utf-8", "replace"), ffi.string(value[0]).decode("utf-8", "replace")

    # -- optimizer state (exact resume) -----------------------------------------------------------
    @property
    def optimizer_steps(self) -> Optional[int]:
        """Optimizer steps of the saved optimizer state this model carries (written by :meth:`save`), or None.

        None too while the weights differ from the state's: in the middle of a training epoch and after
        :meth:`set_weights`, until the next epoch ends."""
        steps = int(self._call_native(lib.gmn_model_optimizer_steps))
        return steps if steps >= 0 else None

    def drop_optimizer_state(self) -> None:
        """Forget the optimizer state, so that :meth:`save` writes the weights and metadata only."""
        self._call_native(lib.gmn_model_optimizer_drop)

    def training_lr(self) -> float:
        """The learning rate of the last optimizer step of the current training (0.0 before the first)."""
        return float(self._call_native(lib.gmn_model_train_lr))

    # -- lifetime -----------------------------------------------------------------------------------
    def release_training_state(self) -> None:
        """Free the optimizer state and training buffers (train() does this when it returns); the weights stay.
        Raises ConfigError inside a training callback's on_batch_end, while the epoch still uses them."""
        with self._lock:
            self._refuse_inside_native("release_training_state")
            if self._handle is not None:
                lib.gmn_model_train_free(self._handle)

    def close(self) -> None:
        """Free the native model now (it is also freed when garbage-collected).

        Called while another thread runs a native call on this model, it waits for that call to end;
        that thread's next use of the model then raises ValueError. Raises ConfigError inside a training callback's
        on_batch_end, which runs within the epoch's native call.
        """
        with self._lock:
            self._refuse_inside_native("close")
            handle, self._handle = self._handle, None
            if handle is not None:
                ffi.release(handle)

    def to_bytes(self) -> bytes:
        """The model as GGUF file bytes (what :meth:`save` writes)."""
        with tempfile.TemporaryDirectory(prefix="ggml-mnist-") as tmp:
            path = os.path.join(tmp, "model.gguf")
            self.save(path)
            with open(path, "rb") as f:
                return f.read()

    @classmethod
    def from_bytes(cls, data: bytes, *, device: str = DEFAULT_DEVICE, threads: int = 0) -> Model:
        """A model from GGUF file bytes (see :meth:`to_bytes`); raises ModelFormatError for bytes that are not one."""
        with tempfile.TemporaryDirectory(prefix="ggml-mnist-") as tmp:
            path = os.path.join(tmp, "model.gguf")
            with open(path, "wb") as f:
                f.write(data)
            return cls.load(path, device=device, threads=threads)

    def copy(self) -> Model:
        """An independent copy: same network, weights and metadata, on the same device (no optimizer state)."""
        model = Model.from_bytes(self.to_bytes(), device=self.device, threads=self._threads)
        model.set_graph(self._graph)
        return model

    def __copy__(self) -> Model:
        return self.copy()

    def __deepcopy__(self, memo: dict) -> Model:
        return self.copy()

    def __reduce__(self) -> tuple:
        """Pickle through the GGUF bytes, so a model can go to another process (e.g. multiprocessing)."""
        return (_model_from_bytes, (self.to_bytes(), self._threads))

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._handle is None:
            return f"<Model {self.arch} (closed)>"
        weights = "" if self.weight_type == "f32" else f" weights={self.weight_type}"
        return (
            f"<Model {self.architecture} classes={self.n_classes} image={self.image_size[0]}x{self.image_size[1]} "
            f"device={self.device}{weights}>"
        )


@dataclass(frozen=True)
class TensorStorage:
    """How a parameter tensor is stored: ggml type name, values per stored row (more than the layer's inputs when
    zero-padded to whole blocks) and bytes."""

    type: str
    row_length: int
    nbytes: int


def weight_types() -> list[str]:
    """The types weights can be stored as, most precise first: ["f32", "f16", "q8_0", "q5_0", "q4_0"]."""
    return [ffi.string(lib.gmn_weight_type_name(i)).decode() for i in range(lib.gmn_weight_type_count())]


def _model_from_bytes(data: bytes, threads: int) -> Model:
    return Model.from_bytes(data, threads=threads)


def native_net(layers: Sequence[Layer], n_classes: int, image_size: Sequence[int]) -> tuple[Any, Any]:
    """A ``struct gmn_net *`` for layers and the layer array it points to (keep both alive while using it)."""
    if len(layers) > lib.GMN_MAX_LAYERS:
        raise ConfigError(f"the network has {len(layers)} layers; at most {lib.GMN_MAX_LAYERS} are supported")
    size = list(image_size)
    if len(size) != 2:
        raise ConfigError(f"image_size must be (height, width), got {image_size!r}")
    buf = ffi.new("struct gmn_layer[]", max(1, len(layers)))
    for i, layer in enumerate(layers):
        for key, value in layer.native(n_classes).items():
            setattr(buf[i], key, value)
    net = ffi.new(
        "struct gmn_net *",
        dict(
            image_h=as_int(size[0], "image height"),
            image_w=as_int(size[1], "image width"),
            n_layers=len(layers),
            layers=buf,
        ),
    )
    return net, buf


def check_net(
    layers: Sequence[Layer], n_classes: int, image_size: Sequence[int]
) -> tuple[list[Layer], list[tuple[int, int, int, int]]]:
    """Validate a network in the shim. Returns its layers with default names filled in and, per layer, the output
    height, width, channels and parameters. Raises ConfigError naming the bad layer."""
    net, _keep = native_net(layers, n_classes, image_size)
    n = max(1, len(layers))
    out = ffi.new("struct gmn_layer[]", n)
    info = ffi.new("int64_t[]", 4 * n)
    _ffi.check(lib.gmn_net_check(net, out, info, ffi.NULL))
    shapes = [tuple(int(info[4 * i + j]) for j in range(4)) for i in range(len(layers))]
    return [from_native(out[i]) for i in range(len(layers))], shapes  # type: ignore[return-value]


def convert_weights(
    weights: Mapping[str, Any],
    net: Union[Model, ArchLike],
    *,
    to: str,
    image_size: Sequence[int] = (28, 28),
    n_classes: Optional[int] = None,
) -> dict[str, np.ndarray]:
    """Convert the weights of a network between layouts (see :meth:`Model.get_weights`): ``to="torch"`` from the
    ggml layout, ``to="ggml"`` from PyTorch's. ``net`` is a Model, or a preset name or list of layers on
    ``image_size`` images with ``n_classes`` outputs (default: the rows of the last layer's weight).
    Raises ConfigError for an unknown layout or a shape that does not fit the network.
    """
    if check_layout(to) and not isinstance(net, Model):
        if n_classes is None:
            last = check_net(resolve_layers(net, 10), 10, image_size)[0][-1]
            rows = np.shape(weights.get(f"{getattr(last, 'name', '')}.weight", ()))
            n_classes = int(rows[0]) if len(rows) == 2 else 10
        net = Model.create(net, n_classes=n_classes, image_size=image_size, device="cpu", threads=1)
    if to == "torch":
        return to_torch(weights, net.layers, net._layer_inputs())
    return from_torch(weights, net.layers, net._layer_inputs(), net.tensor_shapes())


def net_info(layers: Sequence[Layer], n_classes: int, image_size: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """Per layer of a valid network: output height, width, channels and parameters. Raises ConfigError."""
    return check_net(layers, n_classes, image_size)[1]


def summary_lines(layers: Sequence[Layer], n_classes: int, image_size: Sequence[int]) -> list[str]:
    """The lines of a Keras-style summary table of a network."""
    info = net_info(layers, n_classes, image_size)
    rows = [("input", f"({image_size[0]}, {image_size[1]}, 1)", "")]
    flat = False
    for layer, (h, w, c, params) in zip(layers, info):
        flat = flat or isinstance(layer, Dense)
        name = getattr(layer, "name", None)
        rows.append(
            (
                f"{name} ({layer.describe()})" if name else layer.describe(),
                f"({c},)" if flat else f"({h}, {w}, {c})",
                f"{params:,}",
            )
        )
    widths = [max(len(r[i]) for r in rows + [("Layer", "Output shape", "Params")]) for i in range(3)]
    rule = "-" * (sum(widths) + 4)
    lines = [f"{'Layer':<{widths[0]}}  {'Output shape':<{widths[1]}}  {'Params':>{widths[2]}}", rule]
    lines += [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}" for a, b, c in rows]
    lines += [rule, f"Total params: {sum(i[3] for i in info):,}"]
    return lines


def _decode_metadata(items: Iterator[tuple[str, str]]) -> dict[str, Any]:
    """Decode each value as JSON (data only: no object hooks), keeping text that is not JSON as a str."""
    out: dict[str, Any] = {}
    for key, text in items:
        try:
            out[key] = json.loads(text)
        except (ValueError, RecursionError):  # not JSON, or nested too deeply to decode
            out[key] = text
    return out


def _chunks(arr: np.ndarray, size: int) -> Iterator[tuple[int, np.ndarray]]:
    for start in range(0, arr.shape[0], check_batch_size(size)):
        yield start, arr[start : start + size]
