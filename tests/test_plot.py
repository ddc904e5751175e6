"""Plots: each renders headless to a valid PNG of sensible size, and the data behind it is right."""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest

import ggml_mnist as gm
from support.synthetic import make_synthetic

pytest.importorskip(
    "matplotlib", reason='matplotlib is missing: pip install "ggml-mnist[plot]" (the test extra has it)'
)
from PIL import Image  # noqa: E402

from ggml_mnist import plot  # noqa: E402
from ggml_mnist.cli.plot import plot_main  # noqa: E402

HISTORY = [
    {"epoch": 1, "loss": 1.5, "accuracy": 0.55, "val_loss": 1.2, "val_accuracy": 0.61, "lr": 1e-3},
    {"epoch": 2, "loss": 0.7, "accuracy": 0.80, "val_loss": 0.9, "val_accuracy": 0.75, "lr": 5e-4},
    {"epoch": 3, "loss": 0.4, "accuracy": 0.90, "val_loss": 0.8, "val_accuracy": 0.78, "lr": 1e-4},
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[gm.Model, Path]:
    data = make_synthetic(tmp_path_factory.mktemp("plot-data"), n_train=200, n_test=60)
    model, _ = gm.train(data_dir=data, arch="cnn", epochs=2, batch_size=50, threads=1, progress=False, seed=1)
    return model, data


def _png(path: Path, min_size: tuple[int, int] = (300, 200)) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
    with Image.open(path) as im:
        assert im.width >= min_size[0] and im.height >= min_size[1], im.size
        assert im.width <= 4000 and im.height <= 4000, im.size
        assert np.asarray(im.convert("L")).std() > 5  # not a blank canvas
        return im.size


def test_history_curves_equal_the_history(tmp_path: Path) -> None:
    fig = plot.history(HISTORY, path=tmp_path / "h.png")
    _png(tmp_path / "h.png")
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "h.png").stat().st_mode & 0o777 == 0o666 & ~umask
    loss, acc, lr = fig.axes
    ((train, val),) = [loss.lines]
    assert list(train.get_xdata()) == [1, 2, 3] and list(train.get_ydata()) == [1.5, 0.7, 0.4]
    assert list(val.get_ydata()) == [1.2, 0.9, 0.8]
    assert np.allclose(acc.lines[0].get_ydata(), [55, 80, 90]) and np.allclose(acc.lines[1].get_ydata(), [61, 75, 78])
    assert list(lr.lines[0].get_ydata()) == [1e-3, 5e-4, 1e-4]


def test_history_of_a_trained_model_and_of_epoch_stats(trained: tuple[gm.Model, Path]) -> None:
    model, _ = trained
    stored = model.metadata["history"]
    fig = plot.history(model)
    assert list(fig.axes[0].lines[0].get_ydata()) == [e["train_loss"] for e in stored]
    assert len(fig.axes) == (3 if any("lr" in e for e in stored) else 2)
    with pytest.raises(gm.DataError, match="no training history"):
        plot.history([])


def test_history_from_a_metrics_log(tmp_path: Path) -> None:
    db = tmp_path / "run.sqlite"
    with sqlite3.connect(db) as con:
        con.execute(
            "CREATE TABLE runs(run_id INTEGER PRIMARY KEY, started TEXT, finished TEXT, status TEXT, arch TEXT, "
            "dataset TEXT, seed INTEGER, config TEXT)"
        )
        con.execute("CREATE TABLE epochs(run_id, epoch, loss, accuracy, val_loss, val_accuracy, lr, seconds)")
        con.executemany("INSERT INTO runs(run_id, arch) VALUES (?, 'cnn')", [(1,), (2,)])
        con.executemany(
            "INSERT INTO epochs VALUES (?, ?, ?, ?, ?, ?, ?, 1.0)",
            [(1, 1, 9.0, 0.1, None, None, 0.1)]
            + [(2, h["epoch"], h["loss"], h["accuracy"], h["val_loss"], h["val_accuracy"], h["lr"]) for h in HISTORY],
        )
    assert plot.history_from_metrics(db) == plot.history_rows(HISTORY)  # the latest run
    assert plot.history_from_metrics(db, run=1)[0]["loss"] == 9.0
    with pytest.raises(gm.DataError, match="no epochs for run 7"):
        plot.history_from_metrics(db, run=7)
    (tmp_path / "junk.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(gm.DataError, match="not a ggml-mnist metrics log"):
        plot.history_from_metrics(tmp_path / "junk.sqlite")


def test_confusion_counts_equal_the_eval_result(trained: tuple[gm.Model, Path], tmp_path: Path) -> None:
    model, data = trained
    result = gm.evaluate(model, data_dir=data)
    names = [f"c{i}" for i in range(10)]
    fig = plot.confusion_matrix(result, class_names=names, path=tmp_path / "c.png")
    _png(tmp_path / "c.png")
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), result.confusion_matrix())
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): int(t.get_text()) for t in ax.texts}
    assert cells == {(i, j): int(c) for (i, j), c in np.ndenumerate(result.confusion_matrix())}
    with pytest.raises(gm.ConfigError, match="3 names for 10 classes"):
        plot.confusion_matrix(result, class_names=["a", "b", "c"])


def test_mistakes_are_the_most_confident_wrong_predictions(trained: tuple[gm.Model, Path], tmp_path: Path) -> None:
    model, data = trained
    x, y = gm.load_mnist(data, "test")
    probs = model.predict_proba(x)
    y = (probs.argmax(axis=1) + 1) % 10  # every label wrong: all 60 are mistakes
    y[:3] = probs[:3].argmax(axis=1)  # but these three
    fig = plot.mistakes(model, x, y, n=8, path=tmp_path / "m.png")
    _png(tmp_path / "m.png", (200, 100))
    probs[:3] = 0  # never shown
    order = np.argsort(-probs.max(axis=1), kind="stable")[:8]
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == [f"true {y[i]}\npred {probs[i].argmax()} {100 * probs[i].max():.0f}%" for i in order]
    assert "57 mistakes in 60 images" in fig._suptitle.get_text()


def test_filters_show_every_kernel(trained: tuple[gm.Model, Path], tmp_path: Path) -> None:
    model, _ = trained
    fig = plot.filters(model, path=tmp_path / "f.png")
    _png(tmp_path / "f.png")
    w = model.get_weights()
    for ax, name, (n_out, n_in) in zip(fig.axes[:2], ["conv1", "conv2"], [(8, 1), (16, 8)]):
        grid = np.asarray(ax.images[0].get_array())
        assert grid.shape == (n_in * 4 - 1, n_out * 4 - 1)
        np.testing.assert_array_equal(grid[0:3, 4:7], w[f"{name}.kernel"][1, 0])  # output 1, input 0
    with pytest.raises(gm.ConfigError, match="no convolution layers"):
        plot.filters(gm.Model.create("fc"))


def test_activations_show_each_layer(trained: tuple[gm.Model, Path], tmp_path: Path) -> None:
    model, data = trained
    x, _ = gm.load_mnist(data, "test")
    fig = plot.activations(model, x[0], path=tmp_path / "a.png")
    _png(tmp_path / "a.png")
    maps = model.activations(x[0])
    assert len(fig.axes) == 1 + len(model.layers)
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), x[0])
    np.testing.assert_array_equal(np.asarray(fig.axes[-1].images[0].get_array())[0], maps[-1])
    first = np.asarray(fig.axes[1].images[0].get_array())
    np.testing.assert_array_equal(first[:28, 29:57], maps[0][1])


def test_a_failed_save_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "h.png"
    target.write_bytes(b"old")
    fig = plot.history(HISTORY)
    fig.savefig = lambda *a, **k: (_ for _ in ()).throw(OSError("disk full"))
    with pytest.raises(OSError, match="disk full"):
        plot.save_png(fig, target, force=True)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["h.png"]


def test_mnist_plot_writes_every_picture(
    trained: tuple[gm.Model, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = trained
    model.save(tmp_path / "m.gguf")
    assert (
        plot_main(
            [str(tmp_path / "m.gguf"), "--out", str(tmp_path / "pics"), "--data-dir", str(data), "--mistakes", "8"]
        )
        == 0
    )
    names = sorted(p.name for p in (tmp_path / "pics").iterdir())
    assert names == ["activations.png", "confusion.png", "filters.png", "history.png", "mistakes.png"]
    for name in names:
        _png(tmp_path / "pics" / name, (100, 100))
    assert "test accuracy" in capsys.readouterr().out
    assert plot_main([str(tmp_path / "m.gguf"), "--out", str(tmp_path), "--run", "2"]) == 1
    assert "give --metrics" in capsys.readouterr().err
    assert (
        plot_main([str(tmp_path / "m.gguf"), "--out", str(tmp_path), "--metrics", str(tmp_path / "none.sqlite")]) == 1
    )
    err = capsys.readouterr().err
    assert "metrics log" in err and "does not exist" in err


def test_plots_never_replace_what_they_did_not_draw(
    trained: tuple[gm.Model, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user's picture or notes under a plot's name, the model itself or --out naming a file: refused before any
    work, nothing changed; a plot this package drew is replaced, and --force replaces the others."""
    model, data = trained
    pics = tmp_path / "pics"
    pics.mkdir()
    Image.new("RGB", (4, 4)).save(pics / "history.png")  # somebody's picture
    (pics / "mistakes.png").write_text("notes")
    before = {p.name: p.read_bytes() for p in pics.iterdir()}
    model.save(tmp_path / "m.gguf")
    argv = [str(tmp_path / "m.gguf"), "--out", str(pics), "--data-dir", str(data), "--mistakes", "4"]
    assert plot_main(argv) == 1
    assert "already exists and is a PNG picture" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in pics.iterdir()} == before
    with pytest.raises(gm.ModelIOError, match="--force"):
        plot.history(HISTORY, path=pics / "mistakes.png")
    assert (pics / "mistakes.png").read_text() == "notes"
    model.save(pics / "confusion.png", force=True)  # the model under a plot's name: an input, never replaced
    assert plot_main([str(pics / "confusion.png"), *argv[1:], "--force"]) == 1
    assert "is the input file" in capsys.readouterr().err
    (pics / "confusion.png").unlink()
    assert plot_main([*argv, "--force"]) == 0
    assert plot_main(argv) == 0  # now they are all ours
    for name in ("history.png", "mistakes.png"):
        _png(pics / name, (100, 100))
    assert plot_main([argv[0], "--out", str(tmp_path / "m.gguf")]) == 1
    assert "is a file; give a folder" in capsys.readouterr().err


def test_without_matplotlib_the_message_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r'pip install "ggml-mnist\[plot\]"'):
        plot.history(HISTORY)
