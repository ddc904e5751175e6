"""The draw-a-digit page in a real headless chromium: draw with pointer events, read the answer, take a screenshot.

Needs Debian's chromium and chromium-driver (`.ci/run` installs them) and selenium (the test extra), plus the real
MNIST data for a model that reads handwriting. Set GGML_MNIST_SCREENSHOT=docs/serve.png to keep the screenshot.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ggml_mnist as gm

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is missing: pip install -e '.[test]'")
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None, reason="no chromium/chromedriver: apt-get install -y chromium chromium-driver"
)


@pytest.fixture(scope="module")
def model_file(real_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    x, y = gm.load_mnist(real_mnist, "train")
    model, _ = gm.train(
        x[:10000], y[:10000], arch="fc", epochs=1, lr_schedule="constant", threads=1, progress=False, seed=1
    )
    path = tmp_path_factory.mktemp("browser") / "fc.gguf"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def page_url(model_file: Path) -> Iterator[str]:
    script = Path(sys.executable).with_name("mnist-serve")
    cmd = (
        [str(script)]
        if script.exists()
        else [sys.executable, "-c", "import sys; from ggml_mnist.cli.serve import serve_main; sys.exit(serve_main())"]
    )
    proc = subprocess.Popen(cmd + [str(model_file), "--port", "0", "--quiet"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # "mnist-serve: fc model on http://127.0.0.1:PORT/ (Ctrl-C to stop)"
        assert "http://127.0.0.1:" in line, f"mnist-serve did not start: {line!r}"
        yield line.split(" on ")[1].split()[0]
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,760"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)
    yield driver
    driver.quit()


def _answer(driver: webdriver.Chrome, expected: str) -> str:
    """Wait until the page shows ``expected`` (or give up after 15 s) and return what it shows."""
    with contextlib.suppress(TimeoutException):  # the caller's assert then shows what the page says
        WebDriverWait(driver, 15, ignored_exceptions=(StaleElementReferenceException,)).until(
            lambda d: d.find_element(By.ID, "prediction").text == expected
        )
    return driver.find_element(By.ID, "prediction").text


def _bars(driver: webdriver.Chrome) -> tuple[list[float], list[float]]:
    """The bars' probabilities and their percentage labels, read in one script (the page may redraw them)."""
    probs, texts = driver.execute_script(
        "return [Array.from(document.querySelectorAll('.bar'), e => e.getAttribute('data-probability')),"
        " Array.from(document.querySelectorAll('.pct'), e => e.textContent)]"
    )
    return [float(p) for p in probs], [float(t.split()[0]) for t in texts]


def test_draw_a_seven_and_the_page_reads_it(browser: webdriver.Chrome, page_url: str, tmp_path: Path) -> None:
    browser.get(page_url)
    WebDriverWait(browser, 15, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: "parameters" in d.find_element(By.ID, "model").text
    )
    pad = browser.find_element(By.ID, "pad")
    # a "7": the bar from left to right along the top, then the stroke down to the bottom left; offsets from the centre
    chain = ActionChains(browser, duration=10).move_to_element_with_offset(pad, -70, -85).click_and_hold()
    for step in range(1, 15):
        chain.move_to_element_with_offset(pad, -70 + 10 * step, -85)
    for step in range(1, 19):
        chain.move_to_element_with_offset(pad, 70 - 5 * step, -85 + 10 * step)
    chain.release().perform()
    shown = _answer(browser, "7")
    probs, percents = _bars(browser)
    assert shown == "7", f"the page read {shown!r}; bars {np.round(probs, 3)}"
    assert len(probs) == 10 and abs(sum(probs) - 1) < 1e-4 and abs(sum(percents) - 100) < 0.6
    assert max(probs) == probs[7]
    ink = browser.execute_script(
        "return Array.from(document.getElementById('prepared').getContext('2d').getImageData(0, 0, 28, 28).data)"
        ".filter((v, i) => i % 4 == 0 && v > 128).length"
    )
    assert 20 < ink < 400  # the prepared 28x28 input is drawn: some white ink, mostly black
    shot = Path(os.environ.get("GGML_MNIST_SCREENSHOT") or tmp_path / "serve.png")
    assert browser.save_screenshot(str(shot))
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.size[0] >= 800 and im.size[1] >= 500


def test_clear_then_upload_a_one(browser: webdriver.Chrome, page_url: str, tmp_path: Path) -> None:
    browser.find_element(By.ID, "clear").click()
    assert browser.find_element(By.ID, "prediction").text == "" and sum(_bars(browser)[0]) == 0
    picture = np.full((200, 160), 255, np.uint8)  # dark ink on white paper, as a photo or scan would be
    picture[30:170, 72:90] = 0
    Image.fromarray(picture).save(tmp_path / "one.png")
    browser.find_element(By.ID, "file").send_keys(str(tmp_path / "one.png"))
    shown = _answer(browser, "1")
    assert shown == "1", f"the page read {shown!r}; bars {np.round(_bars(browser)[0], 3)}"
    assert abs(sum(_bars(browser)[0]) - 1) < 1e-4
