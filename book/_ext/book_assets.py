"""The built book works offline: the JavaScript and fonts its pages need are served from the build, not a CDN.

By default, Sphinx loads MathJax from jsDelivr, and myst-nb loads RequireJS from cdnjs and the ipywidgets embed
manager (``@jupyter-widgets/html-manager``) from jsDelivr. A reader offline, or behind a firewall, then sees raw
``$...$`` and "Loading widget..." placeholders. This Sphinx extension fetches pinned npm packages once (checked
against the registry's sha512 integrity), unpacks the files the pages use into ``<cache>/book-assets/vendor`` and adds
that folder to ``html_static_path``; ``_config.yml`` points ``mathjax_path`` and ``nb_ipywidgets_js`` at it::

    sphinx:
      local_extensions: {book_assets: book/_ext}
      config:
        mathjax_path: vendor/mathjax/tex-mml-chtml.js
        nb_ipywidgets_js: {vendor/require.js: {}, vendor/@jupyter-widgets/html-manager/dist/embed-amd.js: {}}

``python book/_ext/book_assets.py`` fetches them ahead of a build (the only step that needs the network).

It also adds the book's own CSS (``static/llava-nb.css``) and works around three library bugs that the browser
test (``tests/test_built_book.py``) found, each at its fix below: sphinx-thebe's configuration script included
twice (a JavaScript SyntaxError on every page), pydata-sphinx-theme's empty theme mode (a console error on every
page), and the ipywidgets embed manager's call of MathJax 2's API (widgets not drawn under MathJax 3).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import tarfile
import urllib.request
from pathlib import Path

WIDGETS = "@jupyter-widgets/html-manager/dist"
#: npm package -> (version, sha512 integrity from the registry, {path in the package: path(s) under vendor/}).
#: html-manager 1.0.x is the embed manager of ipywidgets 8 (widget protocol 2, @jupyter-widgets/controls 5).
PACKAGES = {
    "mathjax": ("3.2.2", "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw==",
                {"es5/tex-mml-chtml.js": "mathjax/tex-mml-chtml.js", "es5/a11y/": "mathjax/a11y/",
                 "es5/ui/": "mathjax/ui/", "es5/input/": "mathjax/input/", "es5/adaptors/": "mathjax/adaptors/",
                 "es5/output/chtml/": "mathjax/output/chtml/", "es5/output/chtml.js": "mathjax/output/chtml.js"}),
    "@jupyter-widgets/html-manager": (
        "1.0.15", "sha512-5thBIV6ymNgmPVOHvzx+gGy8ZSKmSazhtGw4/c4xJDVzRhG9PTeQsRjF3FUTopvFi//SABeNz1yp47bCrJ3CQA==",
        # the manager's bundled modules load the same fonts relative to two module folders (see _page_scripts)
        {"dist/embed-amd.js": f"{WIDGETS}/embed-amd.js",
         **{f"dist/*.{ext}": (f"{WIDGETS}/", "@jupyter-widgets/") for ext in ("woff2", "woff", "ttf", "eot", "svg")}}),
    "requirejs": ("2.3.7", "sha512-DouTG8T1WanGok6Qjg2SXuCMzszOo0eHeH9hDZ5Y4x8Je+9JB38HdTLT4/VA8OaUhBa0JPVHJ0pyBkM1z+pDsw==",
                  {"require.js": "require.js"}),
    # Python in the browser for the live calculators (static/llava-calculator.js): the runtime and its standard
    # library, no packages (llava_nb's pure core needs none)
    "pyodide": ("314.0.8", "sha512-74Wq1kXOC+CCEzAfxuRAO701nAcCMLjf8NrwvWpu8S41dVMXwXmLQ05dYB+F4e46AdnGo0oq7YHSVUpHsoarLQ==",
                {f: f"pyodide/{f}" for f in ("pyodide.mjs", "pyodide.asm.mjs", "pyodide.asm.wasm", "python_stdlib.zip",
                                             "pyodide-lock.json")}),
}
REGISTRY = os.environ.get("NPM_CONFIG_REGISTRY", "https://registry.npmjs.org").rstrip("/")


def _tarball_url(name: str, version: str) -> str:
    return f"{REGISTRY}/{name}/-/{name.split('/')[-1]}-{version}.tgz"


def _check(blob: bytes, integrity: str, name: str) -> None:
    algo, expected = integrity.split("-", 1)
    got = base64.b64encode(hashlib.new(algo, blob).digest()).decode()
    if got != expected:
        raise RuntimeError(f"{name}: the downloaded tarball's {algo} is {got}, not the pinned {expected}; "
                           "delete the cached copy and fetch again, or check NPM_CONFIG_REGISTRY")


def _wanted(member: str, files: dict):
    """The vendor paths for a package member (``package/...``): none, one, or one per target folder."""
    from fnmatch import fnmatch

    path = member.split("/", 1)[1]
    for pattern, targets in files.items():
        for target in (targets,) if isinstance(targets, str) else targets:
            if pattern.endswith("/") and path.startswith(pattern):
                yield target + path[len(pattern):]
            elif path == pattern:
                yield target
            elif "*" in pattern and fnmatch(path, pattern) and "/" not in path[len(pattern.split("*")[0]):]:
                yield target + Path(path).name


def _package() -> Path:
    """The installed (editable) ``llava_nb`` package's folder, found without importing it; not a path beside this
    file: `make test` builds from a copy of the book elsewhere (``build/executed/book/_ext``). Where no
    ``llava_nb`` is installed (``python3 book/_ext/book_assets.py`` outside the venv), this checkout's."""
    import importlib.util

    spec = importlib.util.find_spec("llava_nb")
    return Path(spec.origin).parent if spec else Path(__file__).resolve().parents[2] / "llava_nb"


def vendor_dir() -> Path:
    """The package's cache folder (``llava_nb.paths.CACHE_DIR``: ``LLAVA_NB_CACHE``, or ``.cache`` beside the
    package), also from a copy of the book, so that the assets are fetched once per checkout."""
    cache = Path(os.environ.get("LLAVA_NB_CACHE", _package().parent / ".cache"))
    return cache / "book-assets" / "vendor"


def fetch(dest: Path | None = None) -> Path:
    """Unpack every package's files into ``dest`` (default ``vendor_dir()``), downloading each tarball once; returns
    ``dest``. Nothing is fetched when ``dest`` already holds this pinned set (its ``.pins`` file)."""
    dest = Path(dest) if dest else vendor_dir()
    pins = json.dumps(PACKAGES, sort_keys=True, indent=1)  # versions, integrity and the files taken
    stamp = dest / ".pins"
    if stamp.exists() and stamp.read_text() == pins:
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for name, (version, integrity, files) in PACKAGES.items():
        url = _tarball_url(name, version)
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                blob = response.read()
        except OSError as err:
            raise RuntimeError(f"cannot fetch {url} ({err}); the book's offline assets come from the npm registry "
                               "once, then from the cache. Run `python book/_ext/book_assets.py` where the registry "
                               "is reachable, or set NPM_CONFIG_REGISTRY to a mirror") from err
        _check(blob, integrity, f"{name}@{version}")
        found = set()
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            for member in tar.getmembers():
                for target in _wanted(member.name, files) if member.isfile() else ():
                    out = tmp / target
                    if not Path(os.path.normpath(out)).is_relative_to(os.path.normpath(tmp)):  # "../" in a name
                        raise RuntimeError(f"{name}@{version}: {member.name} would be written outside {tmp}")
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(tar.extractfile(member).read())
                    found.add(target)
        missing = [t for t in files.values() if isinstance(t, str) and not t.endswith("/") and t not in found]
        if missing:
            raise RuntimeError(f"{name}@{version} lacks {missing}")
    (tmp / ".pins").write_text(pins)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


STYLE = Path(__file__).with_name("static")  # the book's own CSS (llava-nb.css)


def _add_static_path(app) -> None:
    folder = fetch()
    write_core(folder / CORE)
    app.config.html_static_path.append(str(folder.parent))  # serves vendor/... from _static/vendor/...
    app.config.html_static_path.append(str(STYLE))


CORE = "llava_nb_core.zip"  # the package the live calculators import under Pyodide


def write_core(path: Path) -> Path:
    """Zip this checkout's ``llava_nb`` (its sources, no caches) for the live calculators, with fixed timestamps so
    that the same sources give the same bytes. Only its pure-Python core is imported in the browser."""
    import zipfile

    package = _package()
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for source in sorted(package.rglob("*.py")):
            if "__pycache__" not in source.parts:
                info = zipfile.ZipInfo(str(source.relative_to(package.parent)), date_time=(2020, 1, 1, 0, 0, 0))
                zf.writestr(info, source.read_bytes(), zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(tmp) as zf:
        if not any(n.endswith("llava_nb/live.py") for n in zf.namelist()):
            raise RuntimeError(f"the live calculators' core has no llava_nb/live.py (zipped from {package})")
    tmp.replace(path)
    return path


#: ipywidgets 8's embed manager typesets widget labels with MathJax 2's API, ``MathJax.Hub.Queue(["Typeset",
#: MathJax.Hub, element])``; under MathJax 3 that throws "Cannot read properties of undefined (reading 'Queue')" and
#: the widget is not drawn. This shim maps the call onto MathJax 3's ``typesetPromise``.
MATHJAX2_SHIM = """document.addEventListener("DOMContentLoaded", function () {
  if (window.MathJax && !window.MathJax.Hub) {
    window.MathJax.Hub = {Queue: function (job) {
      MathJax.startup.promise.then(function () { return MathJax.typesetPromise([job[2]]); });
    }};
  }
});"""


def _page_scripts(app, pagename, templatename, context, doctree) -> None:
    """Per page: drop duplicated scripts; where widgets are, point RequireJS at the vendored manager and add the
    MathJax 2 shim."""
    from sphinx.builders.html._assets import _JavaScript  # what add_js_file makes (private in Sphinx 7.4)

    _dedupe_scripts(context)
    scripts = context.get("script_files", [])
    for i, script in enumerate(scripts):
        if str(getattr(script, "filename", "")).endswith(f"{WIDGETS}/embed-amd.js"):
            # The manager's webpack public paths (its fonts) come from its RequireJS module URLs, which RequireJS
            # resolves against the page, not against the script: map the module names to the vendored folder.
            folder = context["pathto"]("_static/vendor/@jupyter-widgets", 1)
            config = f"require.config({{paths: {{'@jupyter-widgets': {json.dumps(folder)}}}}});"
            scripts[i:i] = [_JavaScript(None, priority=script.priority, body=config),
                            _JavaScript(None, priority=script.priority, body=MATHJAX2_SHIM)]
            break
    _default_mode(context)


def _default_mode(context) -> None:
    # pydata-sphinx-theme 0.17.1 under sphinx-book-theme 1.3.0 leaves the page's theme mode empty (the book theme does
    # not pass a default), and then logs "Got invalid theme mode" as a console error on every page
    if not context.get("default_mode"):
        context["default_mode"] = "auto"


def _dedupe_scripts(context) -> None:
    # sphinx-thebe 0.3.1 adds its inline configuration script twice under Jupyter Book 1.0.4 (and sphinx-togglebutton
    # its selector), so every page declares `const THEBE_JS_URL` twice: a SyntaxError in the browser's console
    seen, unique = set(), []
    for script in context.get("script_files", []):
        # the second copy names its file '' where the first has None
        key = (getattr(script, "filename", script) or "",
               tuple(sorted((k, str(v)) for k, v in getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"][:] = unique


def setup(app) -> dict:
    app.connect("builder-inited", _add_static_path)
    app.add_css_file("llava-nb.css")
    app.add_js_file("llava-calculator.js", type="module")
    app.connect("html-page-context", _page_scripts, priority=900)  # after myst-nb has added a page's widget scripts
    return {"parallel_read_safe": True, "parallel_write_safe": True}


if __name__ == "__main__":
    print(fetch())
