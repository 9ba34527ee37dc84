"""The built HTML book as a reader sees it: every page in headless Chromium, offline, and every internal link.

`make test` builds the book from the notebooks nbmake has just executed and runs this file with
``LLAVA_NB_BUILT_BOOK`` set to the HTML folder; a plain ``pytest tests`` skips it. The browser test needs Chromium
and ChromeDriver (Debian: ``apt-get install chromium chromium-driver``) and skips with that message without them.
Screenshots go to ``LLAVA_NB_SCREENSHOTS`` (default: ``screenshots/`` beside the HTML folder).
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import tempfile
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BUILT = os.environ.get("LLAVA_NB_BUILT_BOOK")
pytestmark = pytest.mark.skipif(not BUILT, reason="the built-book tests run in `make test`, after it builds the book "
                                "(set LLAVA_NB_BUILT_BOOK to a built book's HTML folder to run them alone)")
HTML = Path(BUILT or ".").resolve()


def toc_pages() -> list[str]:
    """Every page of _toc.yml, as its HTML path relative to the build."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]] + [c["file"] for part in toc["parts"] for c in part["chapters"]]
    return [f + ".html" for f in files]


PAGES = toc_pages()
#: what must never remain on a page: the embed manager's failure and loading text, a notebook's unrendered widget
PLACEHOLDERS = ("Error displaying widget", "Loading widget", "Loading BokehJS")


class _Refs(HTMLParser):
    """ids and references (a href, img src, script src, link href) of one HTML page."""

    def __init__(self):
        super().__init__()
        self.ids, self.refs = set(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("name"):
            self.ids.add(attrs["name"])
        for key in ("href", "src"):
            if attrs.get(key) and tag in ("a", "img", "script", "link", "source", "iframe"):
                self.refs.append((tag, attrs[key]))


@functools.cache
def parsed(path: Path) -> _Refs:
    p = _Refs()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def test_every_toc_page_was_built():
    missing = [p for p in PAGES if not (HTML / p).is_file()]
    assert not missing, f"not in the build: {missing}"


def test_internal_links_and_assets_resolve_and_nothing_comes_from_the_network():
    broken, remote_assets, checked = [], [], 0
    for page in sorted(HTML.rglob("*.html")):
        if "_static" in page.parts or "_sources" in page.parts:
            continue
        for tag, ref in parsed(page).refs:
            url = urlsplit(ref)
            if url.scheme in ("http", "https", "mailto", "data", "javascript") or ref.startswith("//"):
                if tag != "a" and url.scheme not in ("data",):
                    remote_assets.append(f"{page.relative_to(HTML)}: <{tag}> {ref}")
                continue
            target = page if not url.path else (page.parent / unquote(url.path)).resolve()
            checked += 1
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(HTML)}: {ref} (no such file)")
            elif url.fragment and target.suffix == ".html" and unquote(url.fragment) not in parsed(target).ids:
                broken.append(f"{page.relative_to(HTML)}: {ref} (no id {url.fragment!r} in {target.name})")
    assert checked > 100, f"only {checked} internal references found: is {HTML} a built book?"
    assert not broken, "broken internal references:\n" + "\n".join(broken)
    assert not remote_assets, "pages load assets from the network:\n" + "\n".join(remote_assets)


# --- the browser --------------------------------------------------------------------------------------------------

def _missing(message: str):
    """Skip, or fail where the browser test must run (CI sets LLAVA_NB_REQUIRE_BROWSER)."""
    (pytest.fail if os.environ.get("LLAVA_NB_REQUIRE_BROWSER") else pytest.skip)(message)


def _chromium() -> tuple[str, str]:
    try:
        import selenium  # noqa: F401
    except ImportError:
        _missing("selenium is not installed: `pip install -c constraints.txt -e '.[book]'` (make does)")
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        _missing("the browser test needs Chromium and ChromeDriver: on Debian or Ubuntu `sudo apt-get install "
                    "chromium chromium-driver` (CI's .ci/run does), then `make test` again")
    return browser, driver


@pytest.fixture(scope="module")
def server():
    handler = functools.partial(_QuietHandler, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    binary, chromedriver = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="llava-nb-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--hide-scrollbars", f"--user-data-dir={profile}", "--window-size=1280,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


SHOTS = Path(os.environ.get("LLAVA_NB_SCREENSHOTS", HTML.parent / "screenshots"))

# Runs in the page: waits for MathJax's typesetting and for the widget manager to replace every widget view, then
# reports what the test checks.
_INSPECT = """
const done = arguments[arguments.length - 1];
(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  const views = () => document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length;
  const rendered = () => document.querySelectorAll('.jupyter-widgets').length;
  for (let i = 0; i < 100 && views() > 0 && rendered() === 0; i++) { await new Promise(r => setTimeout(r, 100)); }
  await new Promise(r => setTimeout(r, 300));
  const imgs = [...document.querySelectorAll('main img')];
  const math = [...document.querySelectorAll('main .math')];
  const controls = document.querySelectorAll(
    '.widget-slider, .widget-dropdown select, .widget-checkbox input, .widget-toggle-button, .widget-select select,'
    + ' .widget-radio-box input, .widget-text input, .widget-inline-hbox input');
  done({
    title: document.querySelector('main h1') ? document.querySelector('main h1').innerText : null,
    text: document.querySelector('main').innerText,
    images: imgs.length,
    broken_images: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src')),
    math: math.length,
    untypeset_math: math.filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.slice(0, 60)),
    math_errors: document.querySelectorAll('mjx-merror').length,
    widget_views: views(),
    widgets: rendered(),
    controls: controls.length,
    unlabelled_sliders: [...document.querySelectorAll('.widget-slider')].filter(
      s => !(s.querySelector('.widget-label') && s.querySelector('.widget-label').innerText.trim())).length,
    resources: performance.getEntriesByType('resource').map(e => e.name),
    overflowing: [...document.querySelectorAll('main table.table, main div.cell_input pre, main div.cell_output pre')]
      .filter(e => e.scrollWidth > e.clientWidth + 1 || e.getBoundingClientRect().right >
                   document.querySelector('main').getBoundingClientRect().right + 1)
      .map(e => e.tagName + ': ' + e.innerText.slice(0, 60)),
    height: document.documentElement.scrollHeight,
  });
})();
"""


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_offline_in_chromium(page, server, browser):
    browser.get(f"{server}/{page}")
    info = browser.execute_async_script(_INSPECT)
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.set_window_size(1280, min(max(info["height"], 900), 16000))
    browser.save_screenshot(str(SHOTS / (Path(page).stem + ".png")))
    browser.set_window_size(1280, 900)
    logs = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "favicon.ico" not in e["message"]]

    assert info["title"], f"{page}: no heading"
    assert len(info["text"]) > 500, f"{page}: almost no text ({len(info['text'])} characters)"
    outside = [r for r in info["resources"] if not r.startswith(server)]
    assert not outside, f"{page} loaded resources from outside the build: {outside}"
    assert not logs, f"{page}: browser errors: {[e['message'] for e in logs]}"
    assert not info["broken_images"], f"{page}: figures that did not load: {info['broken_images']}"
    assert not info["overflowing"], f"{page}: content wider than the page: {info['overflowing']}"
    assert not info["untypeset_math"] and not info["math_errors"], (
        f"{page}: math left untypeset: {info['untypeset_math']} ({info['math_errors']} MathJax errors)")
    if info["widget_views"]:
        assert info["widgets"] > 0 and info["controls"] > 0, (
            f"{page}: {info['widget_views']} saved widget views, but {info['widgets']} rendered widgets and "
            f"{info['controls']} controls")
        assert info["unlabelled_sliders"] == 0, f"{page}: {info['unlabelled_sliders']} sliders without a label"
    shown = [p for p in PLACEHOLDERS if p in info["text"]]
    assert not shown, f"{page} shows {shown}"


def test_chapters_with_widgets_and_math_were_checked():
    """The per-page checks are not vacuous: some pages hold live calculators (in place of the kernel's widgets,
    whose outputs the chapters remove from the static page), math and figures."""
    pages = {p: (HTML / p).read_text(encoding="utf-8") for p in PAGES}
    assert sum('class="llava-calculator"' in t for t in pages.values()) >= len(set(LIVE.values()))
    assert sum('class="math' in t for t in pages.values()) >= 3
    assert sum(len(re.findall(r"<img ", t)) for t in pages.values()) >= 10


# ---------------------------------------------------------------- the live calculators (llava-calculator.js)

#: the page of each live calculator
LIVE = {"memory": "book/06_memory.html", "compare": "book/06_memory.html", "tokens": "book/02_versions.html",
        "lora": "book/09_lora.html"}
BENCH = Path(os.environ.get("LLAVA_NB_LIVE_BENCH", HTML.parent / "live_calculators.json"))

_READY = """
const done = arguments[arguments.length - 1];
const started = performance.now();
(async () => {
  for (let i = 0; i < 600 && !window.llavaCalculatorsReady; i++) { await new Promise(r => setTimeout(r, 50)); }
  try { await window.llavaCalculatorsReady; } catch (e) { done({error: String(e)}); return; }
  done({ms_from_navigation: performance.now(), ms_waited: performance.now() - started,
        kinds: [...document.querySelectorAll('.llava-calculator')].map(c => c.dataset.kind)});
})();
"""

_SET = """
const [kind, settings, done] = arguments;
const calc = document.querySelector(`.llava-calculator[data-kind="${kind}"]`);
const out = calc.querySelector('.llava-calculator-result');
const before = Number(out.dataset.updates || 0);
for (const [name, value] of Object.entries(settings)) {
  const el = calc.querySelector(`[name="${name}"]`);
  if (el.type === 'checkbox') { el.checked = value === 'true'; }
  else if (el.multiple) { const want = value.split(','); for (const o of el.options) o.selected = want.includes(o.value); }
  else { el.value = value; }
}
calc.querySelector('form').dispatchEvent(new Event('change', {bubbles: true}));
(async () => {
  for (let i = 0; i < 400 && Number(out.dataset.updates || 0) === before; i++) {
    await new Promise(r => setTimeout(r, 25));
  }
  done({json: out.dataset.json ?? null, error: out.dataset.error ?? null, text: out.innerText,
        bars: out.querySelectorAll('.llava-calculator-bars .bar').length, rows: out.querySelectorAll('tr').length,
        hash: decodeURIComponent(location.hash)});
})();
"""


def _random_settings(kind: str, rng) -> tuple[dict, list[str]]:
    """Settings for the page (strings) and the command line a reader would type for them."""
    from llava_nb.live import choices

    from llava_nb.live import argv as live_argv

    models = choices()["model"]
    if kind == "lora":
        targets = [t for t in choices()["lora_targets"] if rng.random() < 0.5] or ["q_proj"]
        s = {"model": rng.choice(models), "lora_r": rng.choice(choices()["lora_r"]), "lora_targets": ",".join(targets)}
        return s, live_argv(kind, s)
    if kind == "compare":
        s = {"model": rng.choice(models), "gpus": str(rng.choice([1, 2, 4, 8])), "micro_batch": str(rng.randint(1, 32)),
             "seq_len": str(rng.choice([1024, 2048, 4096])), "grad_checkpointing": rng.choice(["true", "false"]),
             "gpu_memory": str(rng.choice([24, 40, 79.18, 140]))}
        return s, live_argv(kind, s)
    if kind == "tokens":
        model = rng.choice([m for m in models if "v1.6" in m] + ["llava-1.5-7b"])
        h, w = rng.randint(1, 3000), rng.randint(1, 3000)
        return {"model": model, "height": str(h), "width": str(w)}, ["tokens", "--model", model, "--size",
                                                                      f"{h}x{w}", "--json"]
    s = {"model": rng.choice(models), "method": rng.choice(choices()["method"]), "gpus": str(rng.choice([1, 2, 4, 8])),
         "micro_batch": str(rng.randint(1, 32)), "seq_len": str(rng.choice([1024, 2048, 4096])),
         "grad_checkpointing": rng.choice(["true", "false"]), "gpu_memory": str(rng.choice([24, 40, 79.18, 140]))}
    argv = ["memory", "--model", s["model"], "--method", s["method"], "--gpus", s["gpus"], "--micro-batch",
            s["micro_batch"], "--seq-len", s["seq_len"], "--gpu-memory", s["gpu_memory"], "--json"]
    return s, argv + ([] if s["grad_checkpointing"] == "true" else ["--no-grad-checkpointing"])


@pytest.mark.parametrize("kind", sorted(LIVE))
def test_live_calculator_equals_the_command_line(kind, server, browser, run_cli):
    """20 random settings: the page's data-json is what the command line prints, and its text and bars follow;
    impossible settings show the command line's error; the settings go into the URL and come back from it."""
    import json
    import random

    browser.get(f"{server}/{LIVE[kind]}")
    ready = browser.execute_async_script(_READY)
    assert "error" not in ready and kind in ready["kinds"], ready
    timings = json.loads(BENCH.read_text()) if BENCH.exists() else {}
    timings[kind] = round(ready["ms_from_navigation"])
    BENCH.write_text(json.dumps(timings, indent=1))
    rng = random.Random(f"live-{kind}")
    for _ in range(20):
        settings, argv = _random_settings(kind, rng)
        page = browser.execute_async_script(_SET, kind, settings)
        rc, out, err = run_cli(argv)
        if rc == 0:
            assert page["json"] is not None and json.loads(page["json"]) == json.loads(out), (settings, page)
            result = json.loads(out)
            if kind == "memory":
                assert f"peak {result['peak_gib']:.2f} GiB" in page["text"]
                assert page["bars"] == len(result["breakdown"])
            elif kind == "compare":
                assert page["rows"] == len(result["methods"])
                assert page["bars"] == sum(len(m["breakdown"]) for m in result["methods"].values())
                assert all(f"peak {m['peak_gib']:.2f} GiB" in page["text"] for m in result["methods"].values())
            elif kind == "lora":
                assert f"{result['adapter']:,} adapter parameters (r = {result['lora_r']}" in page["text"]
            else:
                assert f"{result['tokens']} image tokens" in page["text"]
        else:
            assert page["json"] is None and page["error"] == err and err in page["text"], (settings, page, err)
        assert all(f"{kind}.{k}={v}" in page["hash"] for k, v in settings.items()), page["hash"]
    bad = {"memory": {"micro_batch": "0"}, "compare": {"micro_batch": "0"}, "tokens": {"height": "0"},
           "lora": {"lora_targets": ""}}[kind]
    page = browser.execute_async_script(_SET, kind, bad)
    assert page["json"] is None and page["error"].startswith("error:") and page["error"] in page["text"], page
    # a link to a configuration: the fragment sets the controls
    settings, argv = _random_settings(kind, random.Random(f"link-{kind}"))
    fragment = "&".join(f"{kind}.{k}={v}" for k, v in settings.items())
    browser.get("about:blank")  # a new document: the same page with another fragment would not load again
    browser.get(f"{server}/{LIVE[kind]}#llava:{fragment}")
    browser.execute_async_script(_READY)
    page = browser.execute_async_script(_SET, kind, {})
    rc, out, err = run_cli(argv)
    assert (page["json"] and json.loads(page["json"]) == json.loads(out)) if rc == 0 else page["error"] == err, page
