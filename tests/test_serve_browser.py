"""The playground page (GET /) in a real browser: Debian's chromium driven by selenium through the system
chromedriver, offline (selenium-manager neither downloads nor reports anything). The page must stream tokens
as they are generated, each carrying its log-probability, equal to what the API returns for the same request.

The test also takes the screenshot docs/serving.md shows. To regenerate the committed one:

    GPTKIT_SCREENSHOT=docs/img/playground.png python -m pytest tests/test_serve_browser.py

(with GPTKIT_PLAYGROUND_CKPT=DIR it serves that checkpoint instead of the tests' tiny random model).
"""

import os

os.environ["SE_AVOID_STATS"] = "true"  # selenium-manager: no statistics, no downloads
os.environ["SE_OFFLINE"] = "true"

import math
import shutil
import time

import pytest

from test_serve_chat import model  # noqa: F401 (fixture: a vocabulary with the chat transcript's speakers)

webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install 'gptkit[test]')")
httpx = pytest.importorskip("httpx")

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from gptkit.serve import BackgroundServer, ServeOptions, create_app  # noqa: E402

CHROMIUM, DRIVER = shutil.which("chromium"), "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or not os.path.exists(DRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)")
STEP_S = 0.03  # the engine is slowed down so that streaming is visible in the page


@pytest.fixture
def browser(tmp_path):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1150,820"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def served(model):
    ckpt, name = os.environ.get("GPTKIT_PLAYGROUND_CKPT"), "tiny"
    if ckpt:
        from gptkit.checkpoint import load_model
        from gptkit.generate import prepare_for_inference

        model, name = prepare_for_inference(load_model(ckpt)), os.path.basename(os.path.normpath(ckpt))
    app = create_app(model, model.tokenizer, ServeOptions(model_name=name))
    with BackgroundServer(app) as url:
        worker = app.state.worker
        step = worker.engine.step

        def slow_step():
            time.sleep(STEP_S)
            return step()

        worker.engine.step = slow_step
        yield url, name


def set_field(driver, id: str, value) -> None:
    el = driver.find_element(By.ID, id)
    el.clear()
    el.send_keys(str(value))


def wait_done(driver, timeout=60) -> str:
    WebDriverWait(driver, timeout).until(lambda d: "tokens in" in d.find_element(By.ID, "status").text
                                         or "error" in d.find_element(By.ID, "status").text)
    return driver.find_element(By.ID, "status").text


WATCH = """window.arrivals = [];
new MutationObserver((ms) => { for (const m of ms) for (const n of m.addedNodes)
  if (n.classList && n.classList.contains('tok')) window.arrivals.push(performance.now()); })
  .observe(document.getElementById('output'), {childList: true});"""


def open_page(browser, served, path="/") -> str:
    url, name = served
    browser.get(url + path)
    if path == "/":
        WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "model").text.startswith(name + " "))
    return url


def test_playground_streams_tokens_with_their_probabilities(browser, served, tmp_path):
    url, name = served
    open_page(browser, served)
    prompt, n = "ROMEO: ", 40
    set_field(browser, "max_tokens", n)
    set_field(browser, "seed", 3)
    browser.find_element(By.ID, "prompt").send_keys(prompt)
    browser.execute_script(WATCH)
    browser.find_element(By.ID, "generate").click()
    assert "tokens in" in wait_done(browser)
    spans = browser.find_elements(By.CSS_SELECTOR, "#output .tok[data-logprob]")
    logprobs = [float(s.get_attribute("data-logprob")) for s in spans]
    assert len(spans) == n and all(lp <= 0 for lp in logprobs)
    arrivals = browser.execute_script("return window.arrivals")
    assert len(arrivals) == n and arrivals[-1] - arrivals[0] > 0.5 * n * STEP_S * 1000  # one by one
    # the page shows what the API answers to the same request
    api = httpx.post(f"{url}/v1/completions", timeout=60, json={
        "model": name, "prompt": prompt, "max_tokens": n, "temperature": 0.8, "top_p": 1, "seed": 3,
        "logprobs": 5, "frequency_penalty": 0, "presence_penalty": 0}).json()["choices"][0]
    # textContent, not .text: a newline that falls where the line wraps anyway is dropped from the visible text
    assert browser.find_element(By.ID, "output").get_attribute("textContent") == prompt + api["text"]
    assert logprobs == pytest.approx(api["logprobs"]["token_logprobs"], abs=1e-6)
    # shaded by probability; hovering shows the alternatives
    assert all(s.value_of_css_property("background-color") not in ("", "rgba(0, 0, 0, 0)") for s in spans)
    low = min(range(n), key=lambda i: logprobs[i])
    ActionChains(browser).move_to_element(spans[low]).perform()
    WebDriverWait(browser, 10).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#alts tr")) == 5)
    shown = browser.find_element(By.ID, "alts").text
    assert f"{100 * math.exp(logprobs[low]):.2f}%" in shown
    shot = os.environ.get("GPTKIT_SCREENSHOT") or str(tmp_path / "playground.png")
    png = browser.get_screenshot_as_png()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 300_000
    with open(shot, "wb") as f:
        f.write(png)


def test_playground_chat_mode(browser, served):
    open_page(browser, served)
    browser.find_element(By.ID, "mode-chat").click()
    set_field(browser, "max_tokens", 12)
    browser.find_element(By.ID, "user").send_keys("o Juliet")
    browser.find_element(By.ID, "generate").click()
    assert "tokens in" in wait_done(browser)
    spans = browser.find_elements(By.CSS_SELECTOR, "#output .tok[data-logprob]")
    assert 1 <= len(spans) <= 12
    log = browser.find_element(By.ID, "chat-log").text
    reply = "".join(s.get_attribute("textContent") for s in spans)
    assert log.startswith("user\no Juliet\nassistant") and " ".join(reply.split()) in " ".join(log.split())


def test_playground_asks_for_the_key(browser, model):
    app = create_app(model, model.tokenizer, ServeOptions(model_name="tiny", api_key="k3y"))
    with BackgroundServer(app) as url:
        browser.get(url + "/")  # the page itself needs no key
        WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "key-note").is_displayed())
        browser.find_element(By.ID, "api_key").send_keys("k3y")
        browser.find_element(By.ID, "prompt").click()  # leaving the field reloads the model with the key
        WebDriverWait(browser, 30).until(lambda d: "tiny" in d.find_element(By.ID, "model").text)
        set_field(browser, "max_tokens", 5)
        browser.find_element(By.ID, "prompt").send_keys("fox")
        browser.find_element(By.ID, "generate").click()
        assert "5 tokens in" in wait_done(browser)


def test_api_reference_page_works_offline(browser, served):
    """/docs renders every endpoint and its fields from /openapi.json; neither page fetches anything from
    another origin (FastAPI's Swagger UI would fetch its files from a CDN)."""
    url = open_page(browser, served, "/docs")
    WebDriverWait(browser, 30).until(lambda d: "/v1/chat/completions" in d.find_element(By.ID, "api").text)
    text = browser.find_element(By.ID, "api").text
    assert "max_completion_tokens" in text and "top_logprobs" in text and "/v1/completions" in text
    for path in ("/docs", "/"):
        open_page(browser, served, path)
        urls = browser.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
        assert all(u.startswith(url) for u in urls), urls
