"""Model.predict_image / read_digits / class_names / preparation and mnist-predict (untrained models, no data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ggml_mnist import Digit, DigitReading, ImageError, Model, Prediction, prepare_image
from ggml_mnist.cli.predict import predict_main
from support.handwriting import as_scan, draw_digits
from support.helpers import THREADS


@pytest.fixture(scope="module")
def fc() -> Model:
    return Model.create("fc", threads=THREADS, seed=3)


def test_class_names_and_preparation_follow_the_metadata(fc: Model) -> None:
    model = fc.copy()
    assert model.class_names == [str(i) for i in range(10)] and model.preparation == "digits"
    model.metadata = {"dataset": {"name": "fashion-mnist"}}
    assert model.class_names[0] == "T-shirt/top" and model.class_names[9] == "Ankle boot"
    assert model.preparation == "photo"
    model.metadata = {"dataset": {"name": "fashion-mnist"}, "preparation": "digits", "class_names": list("abcdefghij")}
    assert model.class_names == list("abcdefghij") and model.preparation == "digits"
    model.metadata = {"class_names": ["too", "few"], "preparation": "sketch"}  # unusable entries fall back
    assert model.class_names == [str(i) for i in range(10)] and model.preparation == "digits"


def test_predict_image_gives_label_name_and_probabilities(fc: Model, tmp_path: Path) -> None:
    img = draw_digits([3])
    pred = fc.predict_image(img)
    assert isinstance(pred, Prediction)
    assert pred.probabilities.shape == (10,) and abs(float(pred.probabilities.sum()) - 1) < 1e-4
    assert pred.label == int(pred.probabilities.argmax()) and pred.class_name == str(pred.label)
    assert pred.probability == pytest.approx(float(pred.probabilities.max()))
    np.testing.assert_allclose(pred.probabilities, fc.predict_proba(prepare_image(img))[0], rtol=1e-6)
    assert np.array_equal(pred.input, prepare_image(img))
    path = tmp_path / "three.png"
    img.save(path)
    preds = fc.predict_image([img, path, np.asarray(img)])
    assert isinstance(preds, list) and len(preds) == 3
    assert all(np.allclose(p.probabilities, pred.probabilities, atol=1e-6) for p in preds)
    assert fc.predict_image([]) == []
    assert json.loads(json.dumps(pred.as_dict()))["label"] == pred.label


def test_a_photo_model_prepares_whole_pictures(fc: Model) -> None:
    model = fc.copy()
    model.metadata = {"dataset": {"name": "fashion-mnist"}}
    photo = np.full((60, 40), 240, np.uint8)
    photo[5:20, 5:20] = 20
    assert np.array_equal(model.predict_image(photo).input, prepare_image(photo, preparation="photo"))
    with pytest.raises(ImageError, match="read_digits reads handwriting"):
        model.read_digits(photo)


def test_pictures_need_a_28x28_model() -> None:
    model = Model.create("fc", image_size=(16, 16), threads=THREADS)
    with pytest.raises(ImageError, match="16x16"):
        model.predict_image(draw_digits([1]))


def test_read_digits_returns_text_boxes_and_probabilities(fc: Model) -> None:
    page = as_scan(draw_digits([1, 2, 3, 4], height=60, gaps=[0.2, 0.5, 0.3]), noise=0.03)
    reading = fc.read_digits(page)
    assert isinstance(reading, DigitReading) and len(reading.digits) == 4
    assert reading.text == "".join(d.class_name for d in reading.digits)
    for d in reading.digits:
        assert isinstance(d, Digit) and d.line == 0 and 0 < d.probability <= 1 and d.input.shape == (28, 28)
        x0, y0, x1, y1 = d.box
        assert 0 <= x0 < x1 <= page.width and 0 <= y0 < y1 <= page.height and 40 <= y1 - y0 <= 80
    assert [d.box[0] for d in reading.digits] == sorted(d.box[0] for d in reading.digits)
    with pytest.raises(ImageError, match="no ink"):
        fc.read_digits(np.full((100, 300), 255, np.uint8))


# -- mnist-predict -------------------------------------------------------------------------------------


@pytest.fixture
def files(fc: Model, tmp_path: Path) -> dict[str, Path]:
    out = {
        "model": tmp_path / "fc.gguf",
        "seven": tmp_path / "seven.png",
        "page": tmp_path / "page.jpg",
        "blank": tmp_path / "blank.png",
        "notes": tmp_path / "notes.png",
        "missing": tmp_path / "missing.png",
    }
    fc.save(out["model"])
    draw_digits([7]).save(out["seven"])
    as_scan(draw_digits([4, 0, 2], height=50), jpeg=80).save(out["page"])
    Image.new("L", (64, 64), 250).save(out["blank"])
    out["notes"].write_text("shopping list")
    return out


def test_cli_predicts_each_picture_and_reports_failures(files: dict, capsys: pytest.CaptureFixture[str]) -> None:
    args = [str(files[k]) for k in ("model", "seven", "missing", "notes", "blank", "page")]
    assert predict_main(args) == 1
    out, err = capsys.readouterr()
    lines = out.strip().split("\n")
    assert len(lines) == 2 and lines[0].startswith(f"{files['seven']}: ") and lines[1].startswith(f"{files['page']}: ")
    errors = err.strip().split("\n")
    assert len(errors) == 4 and "3 of 5 pictures failed" in errors[-1]
    for name, message in (("missing", "does not exist"), ("notes", "not a readable image"), ("blank", "no ink")):
        assert any(line.startswith(f"mnist-predict: {files[name]}: ") and message in line for line in errors)
    assert predict_main([str(files["model"]), str(files["seven"])]) == 0


def test_cli_json(files: dict, fc: Model, capsys: pytest.CaptureFixture[str]) -> None:
    assert predict_main([str(files["model"]), str(files["seven"]), str(files["blank"]), "--json"]) == 1
    first, second = [json.loads(line) for line in capsys.readouterr().out.strip().split("\n")]
    assert set(first) >= {"path", "label", "class_name", "probability", "probabilities"}
    assert first["path"] == str(files["seven"]) and len(first["probabilities"]) == 10
    assert first["label"] == fc.predict_image(files["seven"]).label
    assert second["path"] == str(files["blank"]) and "no ink" in second["error"]
    assert predict_main([str(files["model"]), str(files["page"]), "--json", "--digits"]) == 0
    page = json.loads(capsys.readouterr().out)
    assert len(page["text"]) == 3 and len(page["digits"]) == 3
    assert all(set(d) >= {"box", "label", "probability"} and len(d["box"]) == 4 for d in page["digits"])


def test_cli_annotate_and_show_input(files: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "annotated.png"
    assert (
        predict_main([str(files["model"]), str(files["page"]), "--digits", "--annotate", str(out), "--show-input"]) == 0
    )
    drawn = Image.open(out)
    assert drawn.size == Image.open(files["page"]).size and drawn.mode == "RGB"
    assert np.ptp(np.asarray(drawn).astype(int), axis=2).max() > 100  # coloured boxes drawn on a grey picture
    text = capsys.readouterr().out
    assert text.count("\n") >= 3 * 28 and "@" in text
    folder = tmp_path / "marked"
    assert predict_main([str(files["model"]), str(files["seven"]), str(files["page"]), "--annotate", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["page.annotated.png", "seven.annotated.png"]
    before = files["seven"].read_bytes()
    assert predict_main([str(files["model"]), str(files["seven"]), "--annotate", str(files["seven"])]) == 1
    assert files["seven"].read_bytes() == before and "destroy" in capsys.readouterr().err
