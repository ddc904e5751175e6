"""Memory: repeated train/evaluate/save/load cycles do not grow the process, evaluation streams any number
of images in bounded memory, and training copies its dataset once, as uint8."""

from __future__ import annotations

from support.reliability import FIXED_MMAP_THRESHOLD, eval_memory, rss_per_cycle, train_memory

MB = 1e6


def test_200_cycles_do_not_grow_the_process() -> None:
    """200 cycles of training, evaluating, saving and loading a tiny fc and cnn (400 models) in one process:
    RSS grows by less than 5 MB from cycle 20 to cycle 200 (valgrind: bench/valgrind_check.py)."""
    rss = rss_per_cycle(200, env=FIXED_MMAP_THRESHOLD)
    assert len(rss) == 200
    assert rss[199] - rss[19] < 5 * MB, [round((r - rss[19]) / MB, 2) for r in rss[19::20]]


def test_evaluating_a_million_images_needs_little_memory() -> None:
    """A million distinct images (overlapping views of 1 MB of pixels) evaluate with keep_probabilities=False in far
    less extra memory than a float copy of the input (3.1 GB) would take."""
    m = eval_memory(1_000_000)
    assert m["n"] == 1_000_000
    assert m["peak"] - m["rss_before"] < 100 * MB, m
    assert m["peak"] - m["rss_before"] < m["float_copy_bytes"] / 30


def test_training_copies_the_dataset_once_as_uint8() -> None:
    """The shim keeps one uint8 copy of the training images (47 MB for 60 000); a float32 copy would be 188 MB."""
    m = train_memory(60_000)
    growth = m["peak"] - m["rss_before"]
    assert m["n"] == 60_000
    assert 0.9 * m["uint8_bytes"] < growth < 1.5 * m["uint8_bytes"], m
    assert growth < m["float_copy_bytes"] / 2


def test_validation_data_gets_its_own_copy_not_a_copy_of_the_training_set_too() -> None:
    """validation_data is a native dataset of its own: 60 000 training and 10 000 validation images take one uint8
    copy of each (55 MB), where joining them into one array first took a second copy of the training set."""
    m = train_memory(60_000, 10_000)
    growth = m["peak"] - m["rss_before"]
    assert (m["n"], m["n_val"]) == (60_000, 10_000)
    both = m["uint8_bytes"] + m["val_bytes"]
    assert 0.9 * both < growth < 1.4 * both, m
