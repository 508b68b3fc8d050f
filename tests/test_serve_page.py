"""The web page `qponder serve` answers `GET /` with, driven in a real headless Chromium (Selenium + Debian's
chromium and chromedriver) against a real server on the tiny model. The tiny model is untrained: its generated text
has no score, so the browser asks for the `both` read-out, whose levels score is always a number.

Chromium missing is a failure naming the install command, not a skip: a skip would hide that the page never ran.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from test_serve import API_KEY, KEY_ENV, png_bytes

from qponder.serve.process import ServerProcess

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
INSTALL = "apt-get install -y --no-install-recommends chromium chromium-driver  (or: make chromium)"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
LEVEL_WORDS = {1: "bad", 2: "poor", 3: "fair", 4: "good", 5: "excellent"}


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    srv = ServerProcess(tiny_model_dir, "--api-key-env", KEY_ENV, "--max-new-tokens", "16", "--threads", "1",
                        env={KEY_ENV: API_KEY}, log_path=tmp_path_factory.mktemp("page") / "server.log")
    srv.start()
    yield srv
    assert srv.stop() == 0, srv.log_text()[-2000:]
    assert "Traceback" not in srv.log_text(), srv.log_text()[-4000:]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    for exe in (CHROMIUM, CHROMEDRIVER):
        if not exe.is_file():
            pytest.fail(f"{exe} is missing; install headless Chromium with `{INSTALL}`", pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1000,1100", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_page_is_public_html_without_external_urls(server):
    r = httpx.get(server.url + "/")  # no Authorization header: the page holds no data
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert 'id="files"' in page and "/v1/score" in page
    assert not re.search(r"""(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert not re.search(r"https?://", page), "the page must not name any other host"
    assert ".innerHTML" not in page and "insertAdjacentHTML" not in page and "document.write" not in page
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "'unsafe-inline'" not in csp
    assert httpx.get(server.url + "/health").json()["http"]["/"]["200"] >= 1  # counted under its own path


def _wait_cards(driver, n: int) -> list:
    """The first ``n`` result cards once each shows a score or an error (the page prepends new cards)."""
    from selenium.webdriver.support.ui import WebDriverWait

    def done(d):
        cards = d.find_elements("css selector", "#results .card")
        finished = [c for c in cards if c.get_attribute("aria-busy") == "false"]
        return cards[:n] if len(cards) >= n and all(c in finished for c in cards[:n]) else False

    return WebDriverWait(driver, 60, poll_frequency=0.1).until(done)


def _pick(driver, key: str, paths: list[Path], readout: str = "both") -> list:
    from selenium.webdriver.support.ui import Select

    known = len(driver.find_elements("css selector", "#results .card"))
    field = driver.find_element("id", "key")
    field.clear()
    field.send_keys(key)
    Select(driver.find_element("id", "readout")).select_by_value(readout)
    driver.find_element("id", "files").send_keys("\n".join(str(p) for p in paths))
    return _wait_cards(driver, known + len(paths))[:len(paths)]


def _text(card, cls: str) -> str:
    return card.find_element("css selector", "." + cls).get_attribute("textContent")


def test_page_scores_images_in_chromium(server, browser, tmp_path):
    driver = browser
    driver.get(server.url + "/")
    assert driver.title.startswith("qponder")
    # every control has a label, so screen readers name it and it is reachable with the keyboard
    unlabelled = driver.execute_script(
        "return [...document.querySelectorAll('input, select')].filter(e => !e.labels.length).map(e => e.id)")
    assert unlabelled == []
    paths = []
    for seed in (1, 2):
        paths.append(tmp_path / f"image-{seed}.png")
        paths[-1].write_bytes(png_bytes(64 + 16 * seed, 48, seed=seed))

    cards = _pick(driver, API_KEY, paths)
    assert sorted(_text(c, "name") for c in cards) == ["image-1.png", "image-2.png"]
    for card in cards:
        assert not card.find_elements("css selector", ".error"), card.get_attribute("textContent")
        body = json.loads(_text(card, "json"))  # exactly what /v1/score answered
        assert body["readout"] == "both" and body["model"] == "qwen2_5_vl"
        score = body["score"] if body["score"] is not None else body["levels_score"]
        assert 1.0 <= score <= 5.0
        m = re.fullmatch(r"(\d\.\d\d) / 5 \u2014 (\w+)", _text(card, "score"))
        assert m, _text(card, "score")
        assert abs(float(m.group(1)) - score) <= 0.0051 and m.group(2) == LEVEL_WORDS[round(score)]
        meter = card.find_element("css selector", "meter")
        assert abs(float(meter.get_attribute("value")) - score) < 1e-6
        m = re.match(r"latency (\d+\.\d) ms on the server, (\d+) ms round trip", _text(card, "latency"))
        assert m and abs(float(m.group(1)) - body["latency_ms"]) <= 0.051, _text(card, "latency")
        shown = _text(card, "reasoning") if body["reasoning"] else _text(card, "raw")
        assert shown == (body["reasoning"] or body["raw"]) and shown  # the server's text, verbatim
        assert card.find_element("css selector", "img").get_attribute("src").startswith("blob:")

    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / "page-scored.png"))  # README's docs/page.png is this one

    # the page shows what the API answers: the same image, scored directly, gives the same (greedy) result
    r = httpx.post(server.url + "/v1/score", headers={"Authorization": f"Bearer {API_KEY}"}, data={"readout": "both"},
                   files={"image": ("image-1.png", paths[0].read_bytes(), "image/png")}, timeout=60)
    direct = r.json()
    page_body = next(json.loads(_text(c, "json")) for c in cards if _text(c, "name") == "image-1.png")
    assert (page_body["raw"], round(page_body["levels_score"], 4)) == (direct["raw"], round(direct["levels_score"], 4))

    (wrong,) = _pick(driver, "not-the-key", paths[:1])
    error = wrong.find_element("css selector", ".error")
    assert error.get_attribute("role") == "alert"
    assert error.text.startswith("401 Unauthorized: the server refused this API key")
    assert "invalid or missing API key" in error.text  # the server's own JSON message
    (missing,) = _pick(driver, "", paths[1:])
    assert _text(missing, "error").startswith("401 Unauthorized: this server needs an API key")

    shot = tmp_path / "page.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    shutil.copyfile(shot, ARTIFACTS / "page.png")


def test_page_shows_server_text_as_text(server, browser):
    """Reasoning comes from a model and error messages from the server: neither may become markup. The tiny model
    writes no reasoning, so the browser's fetch answers once with a crafted body (the page code itself is real)."""
    driver = browser
    driver.get(server.url + "/")
    evil = '<img src=x onerror="window.pwned=1"><b>bold</b> & done'
    driver.execute_script("""
        const body = JSON.stringify(arguments[0]);
        window.fetch = async () => new Response(body, {status: 200, headers: {'content-type': 'application/json'}});
    """, {"score": 4.4, "reasoning": evil, "raw": "x", "latency_ms": 12.0, "readout": "generate"})
    (card,) = _pick(driver, "", [Path(__file__).with_name("conftest.py")], readout="generate")
    assert _text(card, "reasoning") == evil and _text(card, "score").endswith("good")
    assert not card.find_elements("css selector", ".reasoning *")
    driver.execute_script("""
        const body = JSON.stringify({error: {message: arguments[0]}});
        window.fetch = async () => new Response(body, {status: 400});
    """, evil)
    (card,) = _pick(driver, "", [Path(__file__).with_name("conftest.py")], readout="generate")
    assert _text(card, "error") == "Error 400: The server said: " + evil
    assert not card.find_elements("css selector", ".error *")
    assert driver.execute_script("return window.pwned === undefined")


def test_chromium_install_step_is_in_make_test():
    """`make test` installs Chromium when it is missing, so a fresh machine runs the browser test."""
    out = subprocess.run(["make", "-n", "test"], capture_output=True, text=True, cwd=ARTIFACTS.parent)
    assert out.returncode == 0, out.stderr
    install = out.stdout.find("apt-get install -y --no-install-recommends chromium chromium-driver")
    assert 0 <= install < out.stdout.find("-m pytest"), out.stdout
