"""The native handle is private: Model._handle and Model._call_native; the old public names still work, with a
DeprecationWarning that names the new ones."""

from __future__ import annotations

import pytest

from ggml_mnist import Model
from ggml_mnist._ffi import lib


def test_the_old_names_warn_and_still_work() -> None:
    model = Model.create("fc", hidden=4, threads=1)
    with pytest.warns(DeprecationWarning, match=r"Model.handle is private now \(Model._handle\)"):
        assert model.handle == model._handle
    with pytest.warns(DeprecationWarning, match=r"Model.call_native is private now \(Model._call_native\)"):
        assert model.call_native(lib.gmn_model_n_classes) == 10
    assert model._call_native(lib.gmn_model_n_tensors) == 4
    model.close()
    assert model._handle is None
    with pytest.raises(ValueError, match="this Model has been closed"):
        model._call_native(lib.gmn_model_n_classes)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="this Model has been closed"):
        _ = model.handle


def test_only_the_model_and_the_training_run_call_the_library() -> None:
    """api.py and the other modules reach the native library through Model and TrainingRun only."""
    import inspect

    import ggml_mnist.api as api

    source = inspect.getsource(api)
    assert "lib." not in source and "_call_native" not in source and "call_native" not in source
