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
        ({"crop": 1.5}, "crop (largest whole-pixel shift"),
        ({"crop": 1e12}, "crop 1000000000000.0 is far outside its range"),
        ({"crop": 10**400}, "is far outside its range"),
        ({"rotate": -(10**400)}, "is far outside its range"),
        ({"crop": float("nan")}, "must be a finite number"),
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
        ({"crop": 15}, "crop 15 must be in [0, 14] whole pixels"),
        ({"crop": -1}, "crop -1 must be in [0, 14]"),
        ({"erase": 1.01}, "erase 1.01 must be a probability in [0, 1]"),
        ({"erase": 0.5, "erase_area": 0.01}, "erase_area 0.01 must be in [0.02, 1]"),
        ({"erase": 0.5, "erase_area": 1.5}, "erase_area 1.5 must be in [0.02, 1]"),
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


def _shifted(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """The image with its content moved dy rows down and dx columns right, background (0) coming in."""
    out = np.zeros_like(image)
    h, w = image.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def _offset_grid(reach: int) -> list[tuple[int, int]]:
    """Every whole-pixel offset (dy, dx) with both parts in -reach .. reach."""
    return [(dy, dx) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)]


def _offsets(out: np.ndarray, image: np.ndarray, reach: int) -> list[tuple[int, int]]:
    """The offsets within reach that move image exactly onto out."""
    return [d for d in _offset_grid(reach) if np.array_equal(out, _shifted(image, *d))]


def test_crop_moves_whole_pixels_exactly_and_every_offset_occurs():
    """A crop copies pixels (no resampling blur) to one of the (2 crop + 1)^2 offsets, each about equally often."""
    raw = images(600, (28, 20), seed=9)
    pictures = raw * SCALE
    out = gm.augment_images(raw, {"crop": 2}, seed=4)
    counts: dict[tuple[int, int], int] = {}
    for o, p in zip(out, pictures):
        found = _offsets(o, p, 3)
        assert len(found) == 1 and max(map(abs, found[0])) <= 2  # random images: one offset fits
        counts[found[0]] = counts.get(found[0], 0) + 1
    assert len(counts) == 25 and min(counts.values()) >= 8  # 24 expected per offset
    # with mirroring too: the mirrored image, moved by whole pixels
    both = gm.augment_images(raw, {"crop": 1, "flip": 1.0}, seed=4)
    assert all(len(_offsets(o, p[:, ::-1], 1)) == 1 for o, p in zip(both, pictures))


def test_crop_and_erase_keep_the_other_settings_streams():
    """Turning on a crop or erasing changes nothing the other settings drew: flips, noise, the elastic field."""
    blank = np.zeros((200, 28, 28), np.uint8)
    noise = gm.augment_images(blank, {"noise_pixels": 5, "flip": 0.5}, seed=6)
    assert np.array_equal(gm.augment_images(blank, {"noise_pixels": 5, "flip": 0.5, "crop": 2}, seed=6), noise)
    pictures = images(100, seed=3)
    pictures[:, :4], pictures[:, -4:], pictures[:, :, :4], pictures[:, :, -4:] = 0, 0, 0, 0  # room to move
    elastic = {"elastic": 1.5, "elastic_grid": 7, "flip": 0.5}
    cropped = gm.augment_images(pictures, {**elastic, "crop": 2}, seed=6)
    # the same field and mirroring as without the crop, applied to the picture moved by some whole-pixel offset
    offsets = _offset_grid(2)
    moved = {d: gm.augment_images(np.stack([_shifted(p, *d) for p in pictures]), elastic, seed=6) for d in offsets}
    for i, c in enumerate(cropped):
        assert sum(np.allclose(c, moved[d][i], atol=1e-5) for d in offsets) == 1, i
    light = gm.augment_images(pictures, "light", seed=6)
    erased = gm.augment_images(pictures, {"level": "light", "erase": 0.5}, seed=6)
    same = [np.array_equal(a, b) for a, b in zip(light, erased)]
    assert 30 <= sum(same) <= 70  # half untouched, bit for bit
    for a, b in zip(light, erased):  # the rest differ inside one rectangle only
        rows, cols = np.nonzero(a != b)
        if len(rows):
            assert (a != b)[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].mean() > 0.9


def test_erase_fills_one_rectangle_of_the_given_size_with_random_values():
    blank = np.zeros((400, 28, 28), np.uint8)
    out = gm.augment_images(blank, {"erase": 1.0, "erase_area": 0.3}, seed=2)
    areas = []
    for o in out:
        rows, cols = np.nonzero(o)
        assert len(rows) > 0  # erase 1.0: every image (a draw that fits comes within 10 tries)
        top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
        box = o[top : bottom + 1, left : right + 1]
        assert (box > 0).mean() > 0.95  # one filled rectangle (a uniform value is 0 with tiny probability)
        area = box.size / o.size
        ratio = box.shape[0] / box.shape[1]
        assert 0.01 <= area <= 0.32 and 0.25 <= ratio <= 4.0
        areas.append(area)
    assert np.mean(areas) == pytest.approx(0.16, abs=0.03)  # 0.02 .. 0.3, uniform
    values = np.concatenate([o[o > 0] for o in out])
    assert values.max() < 1.0 and values.mean() == pytest.approx(0.5, abs=0.02)
    half = gm.augment_images(blank, {"erase": 0.25}, seed=2)
    assert 70 <= sum(bool(o.any()) for o in half) <= 130
    assert np.array_equal(gm.augment_images(blank, {"erase": 0.0, "erase_area": 5}, seed=2), blank * SCALE)


def test_crop_and_erase_train_reproducibly_and_are_recorded(tmp_path):
    images_, labels = _uniform_classes(200)
    spec = {"level": "clothes", "crop": 2, "erase": 0.5}
    a, _ = gm.train(images_, labels, **small_options("fc", augment=spec, epochs=1))
    b, _ = gm.train(images_, labels, **small_options("fc", augment=spec, epochs=1))
    plain, _ = gm.train(images_, labels, **small_options("fc", augment="clothes", epochs=1))
    wa, wb, wp = a.get_weights(), b.get_weights(), plain.get_weights()
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert any(not np.array_equal(wa[k], wp[k]) for k in wa)
    a.save(tmp_path / "m.gguf")
    assert gm.load(tmp_path / "m.gguf").metadata["config"]["augment"] == spec
