"""Devices: a GPU build on a machine without a usable GPU falls back to the CPU with one line, and an unknown
device names the fix that fits this installation."""

from __future__ import annotations

import warnings

import pytest

import ggml_mnist as gm
from ggml_mnist import _build_info
from ggml_mnist import model as model_module


@pytest.fixture()
def gpu_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_build_info.build_info, "backends", ["ggml-cpu", "ggml-cuda"])
    monkeypatch.setattr(model_module, "_FALLBACK_NOTED", [])


def test_a_cpu_build_names_the_rebuild_for_an_unknown_device() -> None:
    with pytest.raises(gm.DeviceError, match=r"unknown device 'CUDA0'.*built for the CPU only.*-DGGML_CUDA=on") as info:
        gm.Model.create("fc", hidden=8, device="CUDA0")
    assert "ggml-python" not in str(info.value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert gm.Model.create("fc", hidden=8, device="auto").device == "CPU"  # a CPU build: nothing to say


def test_a_gpu_build_without_a_gpu_falls_back_with_one_warning(gpu_build) -> None:
    with pytest.warns(gm.DeviceWarning, match="this build has CUDA but ggml found no usable GPU.*runs on the CPU"):
        assert gm.Model.create("fc", hidden=8, device="auto").device == "CPU"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gm.Model.create("fc", hidden=8, device="auto")  # once per process
        assert [d.type for d in gm.devices()] == ["cpu"]
    with pytest.raises(gm.DeviceError, match=r"unknown device 'CUDA0'.*no usable GPU.*nvidia-smi.*device='cpu'"):
        gm.Model.create("fc", hidden=8, device="CUDA0")


def test_devices_says_it_too(gpu_build) -> None:
    with pytest.warns(gm.DeviceWarning, match="no usable GPU"):
        gm.devices()
