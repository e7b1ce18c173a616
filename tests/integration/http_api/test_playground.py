"""The playground (GET /playground) in a real headless Chromium, driven by Selenium, against the real Serve app on the
tiny anchor set: enter the API key, move a slider, generate, read the streamed text back from the page; compare
mode shows one column per position. Each text must be what the HTTP API returns for the same request.

Needs Debian's `chromium` and `chromium-driver` (`make test` installs them when it runs as root with apt-get); without
them this test fails saying so, rather than skipping, so CI cannot silently lose it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from lerpray.testing import TINY_ANCHORS

from .app import KEY, PRESETS

pytestmark = pytest.mark.integration

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,900")
POSITIONS = (0.0, 0.25, 0.5, 0.75, 1.0)  # the page's default compare positions
WAIT_S = 30


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: install Debian's browser with `apt-get install -y chromium "
                    "chromium-driver` (`make test` does when run as root) to run the playground's browser test")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path_factory.mktemp("chromium-profile")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S).until(lambda d: condition(d), message=f"timed out waiting for {what}")


def api_text(base_url: str, body: dict) -> str:
    """The same request through the HTTP API, not streamed."""
    chat = "messages" in body
    response = httpx.post(f"{base_url}/v1/{'chat/' if chat else ''}completions", json=body, timeout=60,
                          headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    return choice["message"]["content"] if chat else choice["text"]


def page_body(driver, mix: dict, chat: bool = False) -> dict:
    """What the page sends for `mix` (its requestBody), read from the form."""
    value = lambda element_id: driver.find_element("id", element_id).get_attribute("value")  # noqa: E731
    text = {"messages": [{"role": "user", "content": value("prompt")}]} if chat else {"prompt": value("prompt")}
    return {"model": "lerpray", "interpolation": mix, "max_tokens": int(value("max-tokens")),
            "temperature": float(value("temperature")), "seed": int(value("seed")), **text}


def generate(driver) -> str:
    """Click Generate; the streamed text once the reply is done."""
    driver.find_element("id", "generate").click()
    single = driver.find_element("id", "single")
    wait_for(driver, lambda d: single.get_attribute("data-state") in ("done", "failed"), "the streamed reply")
    assert single.get_attribute("data-state") == "done", driver.find_element("id", "error").text
    return driver.find_element("id", "output").get_attribute("textContent")


def test_playground_generates_and_compares_in_a_browser(browser, base_url, tmp_path):  # no browser: fail fast
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(f"{base_url}/playground")
    status = browser.find_element(By.ID, "status")
    wait_for(browser, lambda d: "API key" in status.text, "the page to ask for the API key")
    browser.find_element(By.ID, "api-key").send_keys(KEY)
    browser.find_element(By.ID, "save-key").click()
    wait_for(browser, lambda d: "2 attributes" in status.text, "the anchor set's attributes")
    assert [o.text for o in browser.find_elements(By.CSS_SELECTOR, "#preset option")][1:] == list(PRESETS)

    slider = browser.find_element(By.CSS_SELECTOR, 'input[data-alpha="sentiment"]')
    slider.send_keys(Keys.END)  # a keyboard move of the slider: alpha 1
    mix = json.loads(browser.find_element(By.ID, "mix-json").get_attribute("textContent"))
    assert mix == {"alpha": {"sentiment": 1, "formality": 0.5}, "lambda": {"sentiment": 0.5, "formality": 0.5}}
    assert browser.find_element(By.CSS_SELECTOR, '.attr[data-attribute="sentiment"] .lambda-row').is_displayed()

    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys("Once upon a time")
    streamed = generate(browser)
    assert streamed and streamed == api_text(base_url, page_body(browser, mix))

    browser.find_element(By.ID, "compare").click()
    columns = lambda: browser.find_elements(By.CSS_SELECTOR, "#compare-columns .column")  # noqa: E731
    wait_for(browser, lambda d: len(columns()) == len(POSITIONS) and all(
        c.get_attribute("data-state") in ("done", "failed") for c in columns()), "every compare column")
    texts = [c.find_element(By.CSS_SELECTOR, ".text").get_attribute("textContent") for c in columns()]
    assert [float(c.get_attribute("data-position")) for c in columns()] == list(POSITIONS)
    for position, text in zip(POSITIONS, texts, strict=True):
        expected = {**mix, "alpha": {**mix["alpha"], "sentiment": position}}
        assert text == api_text(base_url, page_body(browser, expected)), position
    assert len(set(texts)) > 1  # the mix changes the text
    shot = tmp_path / "playground.png"
    browser.execute_script("window.scrollTo(0, 0)")
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000

    browser.find_element(By.CSS_SELECTOR, "input[name=route][value=chat]").click()
    assert generate(browser) == api_text(base_url, page_body(browser, mix, chat=True))
    browser.find_element(By.ID, "tab-anchors").click()
    raw = json.loads(browser.find_element(By.ID, "mix-json").get_attribute("textContent"))
    assert raw == {"anchors": {name: 0.25 for name in TINY_ANCHORS}}
    browser.find_element(By.ID, "tab-attributes").click()
    browser.find_element(By.CSS_SELECTOR, 'input[data-use="formality"]').click()  # one attribute left: no lambda
    assert not browser.find_element(By.CSS_SELECTOR, '.attr[data-attribute="sentiment"] .lambda-row').is_displayed()
    assert json.loads(browser.find_element(By.ID, "mix-json").get_attribute("textContent")) == {
        "alpha": {"sentiment": 1}}

    # Over the reply: switch the mix at token 2 (sentiment to alpha 0); the page sends a schedule and shows what
    # the server resolved, and the text is the API's for the same schedule.
    from selenium.webdriver.support.select import Select

    browser.find_element(By.CSS_SELECTOR, "input[name=route][value=completions]").click()
    Select(browser.find_element(By.ID, "schedule-mode")).select_by_value("switch")
    tokens = browser.find_element(By.ID, "schedule-tokens")
    wait_for(browser, lambda d: tokens.is_displayed(), "the schedule's token count")
    tokens.clear()
    tokens.send_keys("2")
    Select(browser.find_element(By.ID, "schedule-attribute")).select_by_value("sentiment")
    scheduled = json.loads(browser.find_element(By.ID, "mix-json").get_attribute("textContent"))
    assert scheduled == {"schedule": [{"until": 2, "mix": {"alpha": {"sentiment": 1}}},
                                      {"mix": {"alpha": {"sentiment": 0}}}]}
    assert generate(browser) == api_text(base_url, page_body(browser, scheduled))
    resolved = json.loads(browser.find_element(By.ID, "single").get_attribute("data-resolved"))
    assert [piece.get("until") for piece in resolved["schedule"]] == [2, None]

    # Targets: sentiment is calibrated (app.py), so the page shows the mix the server resolved and the text is the
    # API's; formality is not, so the server's 400 reaches the page, saying how to make a calibration.
    Select(browser.find_element(By.ID, "schedule-mode")).select_by_value("")
    browser.find_element(By.ID, "tab-targets").click()
    browser.find_element(By.CSS_SELECTOR, 'input[data-target="sentiment"]').send_keys("0.3")
    target = json.loads(browser.find_element(By.ID, "mix-json").get_attribute("textContent"))
    assert target == {"target": {"sentiment": 0.3}}
    assert generate(browser) == api_text(base_url, page_body(browser, target))
    resolved = json.loads(browser.find_element(By.ID, "single").get_attribute("data-resolved"))
    assert resolved["alpha"] == {"sentiment": pytest.approx(0.8)}  # the synthetic curve: score = alpha - 0.5

    # Closed loop: the page sends feedback, shows each measurement as the reply is written, then the final score,
    # which is the API's for the same request.
    browser.find_element(By.ID, "feedback").click()
    every = browser.find_element(By.ID, "feedback-every")
    every.clear()
    every.send_keys("2")
    steered = json.loads(browser.find_element(By.ID, "mix-json").get_attribute("textContent"))
    assert steered == {"target": {"sentiment": 0.3}, "feedback": {"every": 2}}
    assert generate(browser) == api_text(base_url, page_body(browser, steered))
    single = browser.find_element(By.ID, "single")
    reply = httpx.post(f"{base_url}/v1/completions", json=page_body(browser, steered), timeout=60,
                       headers={"Authorization": f"Bearer {KEY}"}).json()
    final = reply["choices"][0]["resolved_mix"]["feedback"]["final_score"]
    assert json.loads(single.get_attribute("data-final-score")) == pytest.approx(final)
    assert int(single.get_attribute("data-measurements")) >= 1
    assert single.find_element(By.CSS_SELECTOR, ".steering").text.startswith("final score: sentiment")
    browser.find_element(By.ID, "feedback").click()  # open loop again

    browser.find_element(By.CSS_SELECTOR, 'input[data-target="sentiment"]').send_keys(Keys.CONTROL, "a", Keys.DELETE)
    browser.find_element(By.CSS_SELECTOR, 'input[data-target="formality"]').send_keys("0.3")
    assert json.loads(browser.find_element(By.ID, "mix-json").get_attribute("textContent")) == {
        "target": {"formality": 0.3}}
    browser.find_element(By.ID, "generate").click()
    single = browser.find_element(By.ID, "single")
    wait_for(browser, lambda d: single.get_attribute("data-state") in ("done", "failed"), "the refused reply")
    assert single.get_attribute("data-state") == "failed"
    assert "lerpray eval calibrate" in browser.find_element(By.ID, "error").text
