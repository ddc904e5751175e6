"""Data augmentation: exact identity, exact right-angle rotations, determinism, label alignment, seeded training
that stays bit-identical, validation that is never augmented, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest

import ggml_mnist as gm
from ggml_mnist import cli
from ggml_mnist._ffi import ffi, lib
from ggml_mnist.augment import LEVELS, resolve_augment
from support.helpers import THREADS, images, small_options

SCALE = np.float32(1.0 / 255.0)  # how the shim turns uint8 pixels into floats


def _warp(image: np.ndarray, a: list[float]) -> np.ndarray:
    image = np.ascontiguousarray(image, dtype=np.float32)
    out = np.empty_like(image)
    status = lib.gmn_image_warp(
        ffi.cast("float *", image.ctypes.data),
        image.shape[0],
        image.shape[1],
        ffi.new("float[6]", a),
        ffi.cast("float *", out.ctypes.data),
    )
    assert status == 0
    return out


@pytest.mark.parametrize("spec", ["none", {}, {"rotate": 0, "shift": 0.0, "elastic": 0}, None])
def test_identity_reproduces_the_input_exactly(spec):
    x = images(6, (28, 20))
    assert np.array_equal(gm.augment_images(x, spec), x * SCALE)


def test_right_angle_rotations_are_exact_and_four_make_the_identity():
    image = images(1)[0] * SCALE
    quarter = [0.0, -1.0, 0.0, 1.0, 0.0, 0.0]  # samples in(cx - (y - cy), cy + (x - cx))
    once = _warp(image, quarter)
    assert np.array_equal(once, np.rot90(image, 1))
    out = image
    for _ in range(4):
        out = _warp(out, quarter)
    assert np.array_equal(out, image)


def test_flip_mirrors_exactly_and_with_its_probability():
    pictures = images(400, seed=4)
    mirrored = gm.augment_images(pictures, {"flip": 1.0}, seed=1)
    assert np.array_equal(mirrored, pictures[:, :, ::-1] * SCALE)
    assert np.array_equal(gm.augment_images(pictures, {"flip": 0.0}, seed=1), pictures * SCALE)
    half = gm.augment_images(pictures, {"flip": 0.5}, seed=2)
    flipped = [np.array_equal(h, m) for h, m in zip(half, mirrored)]
    kept = [np.array_equal(h, x * SCALE) for h, x in zip(half, pictures)]
    assert all(f != k for f, k in zip(flipped, kept))  # each image is either mirrored or untouched
    assert 160 <= sum(flipped) <= 240


def test_fashion_mnist_defaults_to_the_clothes_level(tmp_path):
    """Digits' rotations and shears distort a garment; a model of a "photo" dataset gets shifts and mirroring."""
    from support.synthetic import make_synthetic

    make_synthetic(tmp_path / "fashion-mnist", n_train=60, n_test=20)
    options = small_options("fc", augment=None)
    del options["augment"]  # as when nothing is said: the preset's default ("light") applies to digits
    model, _ = gm.train(data_dir=tmp_path, dataset="fashion-mnist", **options)
    assert model.metadata["config"]["augment"] == "clothes"
    digits, _ = gm.train(*gm.load_mnist(tmp_path / "fashion-mnist"), **options)
    assert digits.metadata["config"]["augment"] == "light"
    model, _ = gm.train(data_dir=tmp_path, dataset="fashion-mnist", **small_options("fc", augment="strong"))
    assert model.metadata["config"]["augment"] == "strong"
    for extra, want in (([], "clothes"), (["--augment", "light"], "light")):
        assert (
            cli.train_main(
                [
                    "fc",
                    str(tmp_path / "m.gguf"),
                    "--data-dir",
                    str(tmp_path),
                    "--dataset",
                    "fashion-mnist",
                    "--epochs",
                    "1",
                    "--hidden",
                    "8",
                    "--batch-size",
                    "20",
                    "--quiet",
                    *extra,
                ]
            )
            == 0
        )
        assert gm.load(tmp_path / "m.gguf").metadata["config"]["augment"] == want
    # the cnn's default level for digits is "mild"; for photos it becomes "clothes" too
    cnn = dict(small_options("fc", augment=None), arch="cnn", conv_channels=(2, 3))
    del cnn["augment"], cnn["hidden"]
    model, _ = gm.train(data_dir=tmp_path, dataset="fashion-mnist", **cnn)
    assert model.metadata["config"]["augment"] == "clothes"
    digits, _ = gm.train(*gm.load_mnist(tmp_path / "fashion-mnist"), **cnn)
    assert digits.metadata["config"]["augment"] == "mild" and digits.metadata["config"]["lr"] == 3e-3


def test_half_pixel_shift_averages_neighbours():
    image = np.zeros((8, 8), np.float32)
    image[4, 4] = 1.0
    out = _warp(image, [1.0, 0.0, 0.5, 0.0, 1.0, 0.0])  # out(x) = in(x + 0.5)
    assert out[4, 3] == pytest.approx(0.5) and out[4, 4] == pytest.approx(0.5)
    assert out.sum() == pytest.approx(1.0)


def test_same_seed_same_images_other_seed_other_images():
    x = images(20)
    a = gm.augment_images(x, "strong", seed=7)
    assert np.array_equal(a, gm.augment_images(x, "strong", seed=7))
    assert not np.array_equal(a, gm.augment_images(x, "strong", seed=8))
    assert a.dtype == np.float32 and a.shape == x.shape
    assert a.min() >= 0.0 and a.max() <= 1.0


def test_rotation_keeps_the_digit_in_place():
    """A centred blob rotated and scaled a little keeps its mass and its centre."""
    yy, xx = np.mgrid[0:28, 0:28]
    blob = (np.exp(-((yy - 13.5) ** 2 + (xx - 13.5) ** 2 / 4) / 20) * 255).astype(np.uint8)
    out = gm.augment_images(np.stack([blob] * 50), {"rotate": 30, "scale": 0.1}, seed=1)
    mass = out.sum(axis=(1, 2))
    assert np.allclose(mass, blob.sum() * SCALE, rtol=0.25)
    cy = (out * yy).sum(axis=(1, 2)) / mass
    cx = (out * xx).sum(axis=(1, 2)) / mass
    assert np.allclose(cy, 13.5, atol=0.3) and np.allclose(cx, 13.5, atol=0.3)
    assert len({o.tobytes() for o in out}) == 50  # every image drew its own transform


def test_noise_flips_the_given_number_of_pixels_at_most():
    x = np.zeros((10, 28, 28), np.uint8)
    out = gm.augment_images(x, {"noise_pixels": 12}, seed=3)
    flipped = (out == 1.0).sum(axis=(1, 2))
    assert (flipped <= 12).all() and (flipped >= 8).all()  # a pixel drawn twice flips back
    assert set(np.unique(out)) <= {0.0, 1.0}


def test_levels_grow_in_strength():
    x, _ = _uniform_classes(200)
    base = x * SCALE
    change = [np.abs(gm.augment_images(x, level, seed=0) - base).mean() for level in ("none", "light", "strong")]
    assert change[0] == 0.0 < change[1] < change[2]


def _uniform_classes(n: int, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Images of class k: a centred 16x16 square of brightness 20 + 20k."""
    labels = np.arange(n, dtype=np.uint8) % classes
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, 6:22, 6:22] = (20 + 20 * labels)[:, None, None]
    return images, labels


def _last_batches(images, labels, batch_size, **options) -> list[tuple[np.ndarray, np.ndarray]]:
    """The last training batch of every epoch, as the shim gathered it: (images [B, 28, 28], one-hot labels)."""
    seen = []

    def on_epoch(_stats, model):
        batch = np.empty((batch_size, 28, 28), np.float32)
        onehot = np.empty((batch_size, 10), np.float32)
        assert (
            lib.gmn_model_last_batch(
                model._handle,
                ffi.cast("float *", batch.ctypes.data),
                batch.size,
                ffi.cast("float *", onehot.ctypes.data),
                onehot.size,
            )
            == 0
        )
        seen.append((batch, onehot))

    gm.train(images, labels, on_epoch=on_epoch, **small_options("fc", epochs=2, batch_size=batch_size, **options))
    return seen


def test_training_batches_keep_labels_aligned_with_their_images():
    images, labels = _uniform_classes(200)
    seen = _last_batches(images, labels, 20, augment="strong")
    for batch, onehot in seen:
        assert (onehot.sum(axis=1) == 1).all()
        expected = (20 + 20 * onehot.argmax(axis=1)) * SCALE
        assert np.allclose(batch[:, 13:15, 13:15].mean(axis=(1, 2)), expected, atol=1e-5)
        assert not np.array_equal(batch[:, 6:22, 6:22].min(axis=(1, 2)), expected)  # edges moved: augmented


def test_seeded_augmented_training_is_bit_identical(synthetic_mnist):
    def weights(augment="strong"):
        model, _ = gm.train(synthetic_mnist, **small_options("cnn", augment=augment))
        return model.get_weights()

    a, b = weights(), weights()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    plain = weights("none")
    assert any(not np.array_equal(a[k], plain[k]) for k in a)


def test_validation_is_never_augmented(synthetic_mnist):
    """The validation loss reported with heavy augmentation equals the loss of the model on the plain images."""
    images, labels = gm.load_mnist(synthetic_mnist, "train")
    options = small_options("fc", augment={"noise_pixels": 300, "rotate": 90}, val_split=0.25, seed=5)
    n_val = int(round(len(labels) * 0.25))
    val = np.sort(np.random.default_rng(5).permutation(len(labels))[:n_val])  # train()'s split for this seed
    reported = []

    def on_epoch(stats, model):
        p = model.predict_proba(images[val]).astype(np.float64)
        reported.append((stats.val_loss, -np.log(p[np.arange(n_val), labels[val]]).mean()))

    gm.train(images, labels, on_epoch=on_epoch, **options)
    for got, plain in reported:
        assert got == pytest.approx(plain, rel=1e-5)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("heavy", "augment must be one of none, light, strong"),
        ({"rotation": 5}, "unknown augment parameter(s) 'rotation'"),
        ({"rotate": True}, "must be a finite number"),
        ({"shift": float("nan")}, "must be a finite number"),
        ({"noise_pixels": 2.5}, "whole number"),
        ({"level": "extreme"}, "augment must be one of"),
        (["rotate"], "a level name"),
    ],
)
def test_bad_specs_are_refused_by_name(spec, message):
    with pytest.raises(gm.ConfigError, match=None) as err:
        gm.TrainConfig(augment=spec).validate()
    assert message in str(err.value)


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"rotate": 181}, "rotate 181 must be in [0, 180]"),
        ({"shift": 15}, "shift 15 must be in [0, 14]"),
        ({"scale": 1.0}, "scale 1 must be in [0, 0.9]"),
        ({"shear": -1}, "shear -1 must be in [0, 60]"),
        ({"elastic": 2, "elastic_grid": 1}, "elastic_grid 1 must be in [2, 64]"),
        ({"noise_pixels": 785}, "noise_pixels 785 must be in [0, 784]"),
        ({"flip": 1.5}, "flip 1.5 must be a probability in [0, 1]"),
    ],
)
def test_out_of_range_values_are_refused_before_training(spec, message):
    images, labels = _uniform_classes(100)
    with pytest.raises(gm.ConfigError) as err:
        gm.train(images, labels, **small_options("fc", augment=spec))
    assert message in str(err.value)
    with pytest.raises(gm.ConfigError) as err:
        gm.augment_images(images[:2], spec)
    assert message in str(err.value)


def test_level_dicts_start_from_a_level():
    assert resolve_augment({"level": "light", "rotate": 20})["rotate"] == 20
    assert resolve_augment({"level": "light"}) == LEVELS["light"]


def test_config_records_the_augmentation():
    images, labels = _uniform_classes(100)
    model, _ = gm.train(images, labels, **small_options("fc", augment={"level": "light", "shear": 0}, epochs=1))
    assert model.metadata["config"]["augment"] == {"level": "light", "shear": 0}


def test_cli_augment_option(tmp_path, synthetic_mnist, capsys):
    from ggml_mnist.cli import train_main

    out = tmp_path / "m.gguf"
    args = [
        "fc",
        str(out),
        str(synthetic_mnist / "train-images-idx3-ubyte"),
        str(synthetic_mnist / "train-labels-idx1-ubyte"),
        "--epochs",
        "1",
        "--batch-size",
        "20",
        "--hidden",
        "16",
        "--threads",
        str(THREADS),
        "--quiet",
    ]
    assert train_main(args + ["--augment", '{"rotate": 5, "noise_pixels": 3}']) == 0
    assert gm.load(out).metadata["config"]["augment"] == {"rotate": 5, "noise_pixels": 3}
    capsys.readouterr()
    assert train_main(args + ["--augment", "{rotate: 5}"]) == 1
    assert "--augment '{rotate: 5}' is not valid JSON" in capsys.readouterr().err
    assert train_main(args + ["--augment", "wild"]) == 1
    assert "augment must be one of none, light, strong" in capsys.readouterr().err


def test_no_images_give_no_images():
    out = gm.augment_images(np.zeros((0, 28, 28), np.uint8), "strong")
    assert out.shape == (0, 28, 28) and out.dtype == np.float32


@pytest.mark.parametrize("level", ["light", "strong"])
def test_training_batches_do_not_depend_on_the_thread_count(level):
    """The training threads share the augmentation of a batch; every image still draws its own transform, so the
    batches are the same bits with 1, 2 or 3 threads."""
    images, labels = _uniform_classes(100)
    images = images + np.random.default_rng(1).integers(0, 30, images.shape, dtype=np.uint8)

    def batches(threads):
        return _last_batches(images, labels, 25, augment=level, threads=threads)

    one = batches(1)
    for threads in (2, 3):
        other = batches(threads)
        assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(one, other))
    assert not np.array_equal(one[0][0], one[1][0])  # the epochs' last batches differ


def test_a_warp_that_overflows_to_nan_gives_black_not_a_crash():
    """inf - inf makes a NaN coordinate: the sampler treats it as outside the image (0), on every path."""
    image = np.ones((8, 8), np.float32)
    out = _warp(image, [3e38, 3e38, 0.0, 0.0, 1.0, 0.0])
    assert np.isfinite(out).all()
    assert set(np.unique(out)) <= {0.0, 1.0}
