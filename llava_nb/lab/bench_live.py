"""``make bench``: how long a reader waits for the book's live calculators (``book/_ext/static/llava-calculator.js``).

``python -m llava_nb.lab.bench_live [HTML]`` serves a built book (default: ``build/executed/_build/html``, what
``make test`` builds), opens each calculator's page in headless Chromium with a fresh profile (nothing cached: the
page loads Pyodide and the core from the server) and records the milliseconds from the start of navigation to the
first result, and to the results of every calculator on the page, median of 3 loads ->
``data/benchmarks/live_calculators.json``. The aim is a first result under 5 s.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import statistics
import sys
import tempfile
import threading
from datetime import date
from pathlib import Path

from ..paths import BENCHMARKS_DIR, REPO_ROOT
from .machine import machine

#: a page per calculator (the memory chapter's page also holds the comparison, which the same load starts)
PAGES = {"memory": "book/06_memory.html", "tokens": "book/02_versions.html", "lora": "book/09_lora.html"}
BUDGET_MS = 5000
# the first result on the page (a result element's first update), then every calculator's
_FIRST_RESULT = """
const done = arguments[arguments.length - 1];
(async () => {
  let first = null;
  for (let i = 0; i < 2400 && first === null; i++) {
    if (document.querySelector('.llava-calculator-result[data-updates], .llava-calculator-failed')) first = performance.now();
    else await new Promise(r => setTimeout(r, 10));
  }
  const mark = (name) => (performance.getEntriesByName(name)[0] || {startTime: null}).startTime;
  try { await window.llavaCalculatorsReady; done([first, performance.now(), mark('llava:pyodide-loaded'),
                                                  mark('llava:core-imported')]); } catch (e) { done(String(e)); }
})();
"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _first_result_ms(url: str) -> list[float]:
    """One page load in a fresh headless Chromium: milliseconds from navigation to the first live result, and to
    every calculator's (a page may hold several: the memory chapter's holds the comparison too)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="llava-nb-bench-")
    options = webdriver.ChromeOptions()
    options.binary_location = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))))
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)  # no driver download
    try:
        driver.set_script_timeout(60)
        driver.get(url)
        ms = driver.execute_async_script(_FIRST_RESULT)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    if isinstance(ms, str):
        raise RuntimeError(f"{url}: the calculator did not start: {ms}")
    return ms


def bench_live(html: Path, loads: int = 3) -> dict:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(html)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        runs = {kind: [[round(t or 0) for t in _first_result_ms(f"{base}/{page}")] for _ in range(loads)]
                for kind, page in PAGES.items()}
    finally:
        httpd.shutdown()
        httpd.server_close()
    median = {kind: statistics.median(r[0] for r in v) for kind, v in runs.items()}
    every = {kind: statistics.median(r[1] for r in v) for kind, v in runs.items()}
    phases = {kind: {"pyodide_loaded_ms": statistics.median(r[2] for r in v),
                     "core_imported_ms": statistics.median(r[3] for r in v)} for kind, v in runs.items()}
    record = {"first_result_ms": median, "all_results_ms": every, "start_up_ms": phases,
              "runs_ms": {kind: [r[:2] for r in v] for kind, v in runs.items()}, "budget_ms": BUDGET_MS,
              "within_budget": all(v < BUDGET_MS for v in median.values()), "machine": machine(),
              "date": date.today().isoformat()}
    BENCHMARKS_DIR.mkdir(parents=True, exist_ok=True)
    (BENCHMARKS_DIR / "live_calculators.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str]) -> int:
    html = Path(argv[0]) if argv else REPO_ROOT / "build" / "executed" / "_build" / "html"
    if not (html / PAGES["memory"]).exists():
        print(f"error: no built book at {html}; run `make test` (it builds the book) or name the HTML folder",
              file=sys.stderr)
        return 2
    record = bench_live(html)
    print(json.dumps({k: record[k] for k in ("first_result_ms", "within_budget")}))
    return 0 if record["within_budget"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
