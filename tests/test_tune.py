"""gm.tune and mnist-tune on the embedded SQLite storage: trials, pruning, saved models, export, joined and refused
studies, search spaces and storage URLs. PostgreSQL and killed workers: test_tune_postgres.py."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

import ggml_mnist as gm
from ggml_mnist.cli.tune import tune_main
from ggml_mnist.tune import INSTALL_HINT
from support.synthetic import make_synthetic

optuna = pytest.importorskip("optuna", reason="the tune extra is not installed: pip install 'ggml-mnist[tune]'")

SPACE = {
    "hidden": 16,
    "batch_size": {"choices": [20, 40]},
}  # tiny: fc with 16 hidden units, batches that fit 180 images


@pytest.fixture
def train_only(tmp_path: Path) -> Path:
    """A synthetic dataset folder without its test split: a trial that read the test set would fail."""
    folder = make_synthetic(tmp_path / "data", n_train=200, n_test=10)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (folder / name).unlink()
    return folder


def small_tune(data: Path, run: Path, **options: Any) -> gm.TuneResult:
    settings: dict[str, Any] = dict(
        arch="fc", n_trials=3, space=SPACE, epochs=2, threads=1, run_dir=run, progress=False
    )
    settings.update(options)
    return gm.tune(data, **settings)


def test_a_search_saves_every_finished_trial_and_exports_the_best(train_only: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = small_tune(train_only, run, n_trials=4)
    assert (run / "study.db").is_file() and result.storage.startswith("sqlite:///")
    assert len(result.trials) == 4 and {r["slot"] for r in result.trials} == {0, 1, 2, 3}
    for row in result.trials:
        trial = result.study.trials[row["number"]]
        assert sorted(trial.intermediate_values) == list(range(1, (row["epochs_run"] or 0) + 1))  # every epoch reported
        if row["state"] == "complete":
            saved = gm.load(row["model"]).metadata["tune"]
            assert saved["trial"] == row["number"] and saved["params"]["lr"] == row["params"]["lr"]
            assert saved["val_acc"] == pytest.approx(row["value"])
            assert set(row["params"]) == {"lr", "weight_decay", "augment", "batch_size"}
    complete = [r for r in result.trials if r["state"] == "complete"]
    assert result.best_trial == complete[0]["number"] and result.best_value == max(r["value"] for r in complete)
    best = gm.load(result.best_model)
    assert Path(result.best_model) == run / "best.gguf"
    assert best.metadata["tune"]["export"] == "retrained on all training images"
    assert best.metadata["dataset"]["n_train"] == 200 and best.metadata["config"]["val_split"] == 0.0
    assert "best: trial" in result.report() and "exported:" in result.report()


def test_the_pruner_stops_bad_trials_after_an_epoch_and_saves_no_model(train_only: Path, tmp_path: Path) -> None:
    result = small_tune(
        train_only, tmp_path / "run", epochs=3, export=False, pruner=optuna.pruners.ThresholdPruner(lower=1.01)
    )  # nothing reaches 101 %
    assert [r["state"] for r in result.trials] == ["pruned"] * 3
    assert all(r["epochs_run"] == 1 and r["model"] is None for r in result.trials)
    assert not list((tmp_path / "run" / "trials").iterdir()) and result.best_model is None


def test_an_existing_study_is_joined_never_overwritten(train_only: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = small_tune(train_only, run, n_trials=2, export=False)
    again = small_tune(train_only, run, n_trials=2, export=False)  # the study has its 2 trials: nothing to do
    assert [(r["number"], r["value"]) for r in again.trials] == [(r["number"], r["value"]) for r in first.trials]
    more = small_tune(train_only, run, n_trials=3, export=False)
    assert len(more.trials) == 3
    assert {(r["number"], r["value"]) for r in first.trials} <= {(r["number"], r["value"]) for r in more.trials}


def test_a_study_of_another_preset_or_dataset_is_refused(train_only: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    small_tune(train_only, run, n_trials=1, export=False, study="shared")
    with pytest.raises(gm.ConfigError, match=r"study 'shared' .* is another search \(arch: \"fc\" there, \"cnn\" here"):
        small_tune(train_only, run, arch="cnn", space={"batch_size": 20}, study="shared")
    other = make_synthetic(tmp_path / "other", n_train=200, seed=5)
    with pytest.raises(gm.ConfigError, match=r"data_sha256"):
        small_tune(other, run, n_trials=1, study="shared")
    assert len(list((run / "trials").iterdir())) == 1  # nothing trained by the refused runs


def test_seeds_report_mean_and_spread(train_only: Path, tmp_path: Path) -> None:
    data = make_synthetic(tmp_path / "with-test", n_train=200, n_test=30)
    test = (data / "t10k-images-idx3-ubyte", data / "t10k-labels-idx1-ubyte")
    result = gm.tune(
        data,
        arch="fc",
        seeds=3,
        space={"hidden": 16, "batch_size": 20},
        epochs=2,
        threads=1,
        run_dir=tmp_path / "seeds",
        progress=False,
        test_data=test,
    )
    assert sorted(r["seed"] for r in result.trials) == [42, 43, 44] and result.best_model is None
    values = [r["value"] for r in result.trials]
    assert result.seeds["value"]["mean"] == pytest.approx(sum(values) / 3) and result.seeds["value"]["n"] == 3
    assert result.seeds["test_acc"]["n"] == 3
    assert "val acc over 3 seeds" in result.report() and "test acc over 3 seeds" in result.report()
    with pytest.raises(gm.ConfigError, match="a seed study trains one recipe"):
        gm.tune(data, arch="fc", seeds=2, space={"lr": {"low": 1e-3, "high": 1e-2}}, run_dir=tmp_path / "x")


@pytest.mark.parametrize(
    "space, message",
    [
        ({"optimiser": "sgd"}, "'optimiser' is not a training option"),
        ({"seed": 3}, "'seed' is set by tune itself"),
        ({"lr": {"low": 0, "high": 1e-2, "log": True}}, "a log scale needs low > 0"),
        ({"lr": {"low": 1e-2, "high": 1e-3}}, "need low <= high"),
        ({"lr": {"min": 1e-3}}, 'must be {"low": a, "high": b}'),
        ({"batch_size": {"choices": []}}, "choices must be a non-empty list"),
        ({"batch_size": {"low": 10.5, "high": 20}}, "low must be a whole number"),
        ({"weight_decay": {"low": 0, "high": 2}}, "weight_decay must be in \\[0, 1\\]"),
        ({"augment": {"choices": ["none", "wild"]}}, "'augment' choice: augment must be one of"),
        ({"batch_size": {"choices": [20, 500]}}, "batch size 500 of the search space is more than the 180"),
        ("{not json", "not valid JSON"),
        (["lr"], "must be a dict"),
    ],
)
def test_a_bad_search_space_is_refused_naming_the_entry(
    train_only: Path, tmp_path: Path, space: Any, message: str
) -> None:
    with pytest.raises(gm.ConfigError, match=message):
        small_tune(train_only, tmp_path / "run", space=space)


def test_default_spaces_follow_the_preset_and_the_dataset() -> None:
    cnn, fc = gm.default_space("cnn"), gm.default_space("fc")
    assert cnn["lr"]["log"] and cnn["lr"]["low"] < gm.TrainConfig.defaults("cnn").lr < cnn["lr"]["high"]
    assert fc["lr"]["high"] == 5 * gm.TrainConfig.defaults("fc").lr
    assert "clothes" in gm.default_space("cnn", "fashion-mnist")["augment"]["choices"]
    assert {"lr", "weight_decay", "augment", "batch_size"} == set(cnn)


@pytest.mark.parametrize(
    "url, message",
    [
        ("study.db", "must be a database URL"),
        ("nosuchdb://user:hunter2@host/db", "cannot use the study storage 'nosuchdb://user:\\*\\*\\*@host/db'"),
        ("sqlite:////no/such/folder/study.db", "cannot use the study storage 'sqlite:////no/such/folder/study.db'"),
        ("postgresql://user:hunter2@127.0.0.1:1/db", "cannot use the study storage 'postgresql://user:\\*\\*\\*@127"),
    ],
)
def test_a_bad_storage_url_is_refused_before_training_with_its_password_masked(
    train_only: Path, tmp_path: Path, url: str, message: str
) -> None:
    with pytest.raises(gm.ConfigError, match=message) as caught:
        small_tune(train_only, tmp_path / "run", storage=url)
    assert "hunter2" not in str(caught.value)
    assert not list((tmp_path / "run" / "trials").iterdir())


def test_without_optuna_tune_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, train_only: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    with pytest.raises(gm.ConfigError, match=r"pip install 'ggml-mnist\[tune\]'"):
        gm.tune(train_only, arch="fc", n_trials=1)
    assert tune_main(["fc", "--trials", "1", "--data-dir", str(train_only)]) == 1
    err = capsys.readouterr().err
    assert err == f"mnist-tune: error: {INSTALL_HINT}\n"


def test_mnist_tune_runs_a_search_and_shows_the_leaderboard(
    train_only: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = [str(train_only / "train-images-idx3-ubyte"), str(train_only / "train-labels-idx1-ubyte")]
    run = tmp_path / "run"
    args = [
        "fc",
        *files,
        "--trials",
        "2",
        "--epochs",
        "1",
        "--threads",
        "1",
        "--dir",
        str(run),
        "--study",
        "cli",
        "--space",
        json.dumps(SPACE),
        "--quiet",
    ]
    assert tune_main(args) == 0
    printed = capsys.readouterr().out
    assert "study 'cli'" in printed and "exported:" in printed and (run / "best.gguf").is_file()
    assert tune_main(["--show", "--study", "cli", "--dir", str(run), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert len(shown["trials"]) == 2 and shown["best_model"] is None  # --show trains and exports nothing
    assert tune_main(["--show", "--study", "nope", "--dir", str(run)]) == 1
    assert "no study 'nope'" in capsys.readouterr().err
    assert tune_main(["fc", *files, "--epochs", "1"]) == 1
    assert "give --trials N" in capsys.readouterr().err
    assert tune_main(["fc", "--show-space"]) == 0
    assert json.loads(capsys.readouterr().out) == gm.default_space("fc")


def test_mnist_tune_plot_draws_the_study_and_refuses_to_destroy_a_file(
    train_only: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib", reason="plots need matplotlib: pip install 'ggml-mnist[plot]'")
    from PIL import Image

    run = tmp_path / "run"
    result = small_tune(train_only, run, n_trials=4, epochs=2, export=False, study="drawn")
    fig = gm.plot.study(result)
    assert len(fig.axes) == 3  # curves, scores and importances: the four trials' parameters vary
    assert fig.axes[2].get_title() == "what mattered" and len(fig.axes[2].patches) == 4
    curves = [line for line in fig.axes[0].get_lines() if len(line.get_xdata())]
    assert len(curves) == 4 and all(list(line.get_xdata()) == [1, 2] for line in curves)
    png = tmp_path / "study.png"
    assert tune_main(["--study", "drawn", "--dir", str(run), "--plot", str(png)]) == 0
    with Image.open(png) as picture:
        assert picture.format == "PNG" and picture.info.get("Software") == "ggml-mnist"
    assert "study 'drawn'" in capsys.readouterr().out  # --plot implies --show
    notes = tmp_path / "notes.png"
    notes.write_text("my notes\n")
    assert tune_main(["--study", "drawn", "--dir", str(run), "--plot", str(notes)]) == 1
    assert "already exists" in capsys.readouterr().err and notes.read_text() == "my notes\n"
    assert tune_main(["--study", "drawn", "--dir", str(run), "--plot", str(notes), "--force"]) == 0
    with Image.open(notes) as picture:
        assert picture.format == "PNG"
    assert tune_main(["--study", "drawn", "--dir", str(run), "--plot", str(tmp_path / "study.svg")]) == 1
    assert "give a name ending in .png" in capsys.readouterr().err
    with pytest.raises(gm.ConfigError, match="takes a gm.tune result or an Optuna study"):
        gm.plot.study("drawn")


def test_ctrl_c_between_two_epochs_of_a_trial_stops_the_search(train_only: Path, tmp_path: Path) -> None:
    """Ctrl-C while the trial reports its epoch (Optuna's storage and pruner run between epochs) ends the search
    like Ctrl-C in a batch: the cut trial is neither completed nor saved."""

    class CtrlC(optuna.pruners.BasePruner):
        def prune(self, study: Any, trial: Any) -> bool:
            signal.raise_signal(signal.SIGINT)
            return False

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        small_tune(train_only, run, epochs=3, export=False, pruner=CtrlC())
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{run / 'study.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL]
    assert not list((run / "trials").iterdir())
