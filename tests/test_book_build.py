"""The book's build helpers: launch buttons only for a real repository, the executed copy, the offline assets."""


import pytest
import yaml

import sys

from llava_nb.paths import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "book" / "_ext"))  # the book's Sphinx extensions live beside the book
import book_assets  # noqa: E402
from book_build import check_repository, executed_copy  # noqa: E402


def test_no_buttons_need_no_repository():
    check_repository({"repository_url": "https://github.com/executablebooks/jupyter-book",
                      "launch_buttons": {"binderhub_url": "", "colab_url": "", "thebe": False}})


@pytest.mark.parametrize("url", ["", "https://github.com/executablebooks/jupyter-book",
                                 "https://github.com/your-org/llava", "https://github.com/<owner>/<name>",
                                 "github.com/a/b", "https://example.com/a/b"])
def test_launch_buttons_refuse_a_placeholder_repository(url):
    with pytest.raises(ValueError, match="repository") as err:
        check_repository({"repository_url": url, "launch_buttons": {"binderhub_url": "https://mybinder.org"}})
    assert "binderhub_url" in str(err.value) and "repository: url:" in str(err.value)


def test_repository_buttons_also_need_a_real_repository():
    with pytest.raises(ValueError, match="use_issues_button"):
        check_repository({"repository_url": "https://github.com/executablebooks/jupyter-book",
                          "use_issues_button": True})
    check_repository({"repository_url": "https://github.com/llava-nb/llava-finetune-book", "use_issues_button": True,
                      "launch_buttons": {"colab_url": "https://colab.research.google.com"}})


def test_the_committed_config_builds():
    """_config.yml turns on no button without a real repository (what the Sphinx extension checks at build time)."""
    config = yaml.safe_load((REPO_ROOT / "_config.yml").read_text())
    options = {**config.get("html", {}), "launch_buttons": config.get("launch_buttons", {}),
               "repository_url": config.get("repository", {}).get("url", "")}
    check_repository(options)
    assert config["sphinx"]["local_extensions"] == {"book_assets": "book/_ext", "book_build": "book/_ext"}


def test_executed_copy_turns_execution_off_and_keeps_everything_else(tmp_path):
    chapters = executed_copy(tmp_path / "exec")
    assert [p.name for p in chapters] == sorted(p.name for p in (REPO_ROOT / "book").glob("*.ipynb"))
    copy = yaml.safe_load((tmp_path / "exec" / "_config.yml").read_text())
    original = yaml.safe_load((REPO_ROOT / "_config.yml").read_text())
    assert copy["execute"]["execute_notebooks"] == "off"
    copy["execute"]["execute_notebooks"] = original["execute"]["execute_notebooks"]
    assert copy == original
    assert (tmp_path / "exec" / "_toc.yml").read_text() == (REPO_ROOT / "_toc.yml").read_text()


def test_vendored_file_mapping():
    files = book_assets.PACKAGES["@jupyter-widgets/html-manager"][2]
    def wanted(member, files):
        return list(book_assets._wanted(member, files))

    assert wanted("package/dist/embed-amd.js", files) == [f"{book_assets.WIDGETS}/embed-amd.js"]
    assert wanted("package/dist/abc.woff2", files) == [f"{book_assets.WIDGETS}/abc.woff2", "@jupyter-widgets/abc.woff2"]
    assert wanted("package/dist/embed.js", files) == []
    mathjax = book_assets.PACKAGES["mathjax"][2]
    assert wanted("package/es5/input/tex/extensions/color.js", mathjax) == ["mathjax/input/tex/extensions/color.js"]
    assert wanted("package/es5/tex-svg.js", mathjax) == []


def test_config_points_at_the_vendored_files():
    config = yaml.safe_load((REPO_ROOT / "_config.yml").read_text())["sphinx"]["config"]
    targets = {t for _, _, files in book_assets.PACKAGES.values() for t in files.values() if isinstance(t, str)}
    assert config["mathjax_path"].removeprefix("vendor/") in targets
    for path in config["nb_ipywidgets_js"]:
        assert path.removeprefix("vendor/") in targets, path


def test_integrity_check_refuses_a_changed_tarball():
    good = b"tarball bytes"
    import base64
    import hashlib

    pin = "sha512-" + base64.b64encode(hashlib.sha512(good).digest()).decode()
    book_assets._check(good, pin, "x@1")
    with pytest.raises(RuntimeError, match="not the pinned"):
        book_assets._check(good + b"!", pin, "x@1")


def test_the_sphinx_hook_turns_a_placeholder_into_a_config_error():
    from types import SimpleNamespace

    from sphinx.errors import ConfigError

    from book_build import _check_config

    options = {"repository_url": "https://github.com/executablebooks/jupyter-book",
               "launch_buttons": {"colab_url": "https://colab.research.google.com"}}
    placeholder = SimpleNamespace(html_theme_options=options)
    with pytest.raises(ConfigError, match="placeholder repository"):
        _check_config(None, placeholder)
    _check_config(None, SimpleNamespace(html_theme_options={"launch_buttons": {"binderhub_url": ""}}))


def _chapter(path, *sources, kernel="python3"):
    """A notebook of a title and one code cell per source, as the book's chapters are."""
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# A chapter"),
                                         *(nbformat.v4.new_code_cell(s) for s in sources)])
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def _run_like_nbmake(path):
    """Execute ``path`` in place as ``pytest --nbmake --overwrite`` does (nbclient, cell timings recorded)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(str(path), as_version=4)
    NotebookClient(nb, timeout=60, record_timing=True).execute(cwd=str(path.parent))
    nbformat.write(nb, str(path))


def test_executed_chapters_become_cache_hits_for_jupyter_book_unless_their_code_changed(tmp_path):
    """What `make test` executed is what `make book` finds in its cache: the lookup myst-nb makes for the chapter in
    book/ (jupyter-cache's match on the notebook as nbformat reads it) hits for an unchanged chapter, with the outputs
    of the run; it misses for a chapter whose code changed after the run; a chapter edited while nbmake ran it, or
    whose run stopped early, is not cached at all."""
    import nbformat
    from jupyter_cache import get_cache

    from book_build import cache_executed, execution_cache

    root = tmp_path / "root"
    (root / "book").mkdir(parents=True)
    (root / "_config.yml").write_text("execute:\n  execute_notebooks: cache\n  cache: _build/.jupyter_cache\n")
    names = ("same", "edited_later", "edited_before", "failed")
    executed = tmp_path / "executed"
    for name in names:  # jupyter-cache stores code, not files: each chapter has its own
        _chapter(root / "book" / f"{name}.ipynb", f"x = {len(name)} * 7", "print(x)")
        _chapter(executed / "book" / f"{name}.ipynb", f"x = {len(name)} * 7", "print(x)")
    _chapter(root / "book" / "edited_before.ipynb", "x = 13 * 7", "print(x + 1)")  # edited while nbmake ran
    for name in ("same", "edited_later", "edited_before"):
        _run_like_nbmake(executed / "book" / f"{name}.ipynb")
    nb = nbformat.read(str(executed / "book" / "failed.ipynb"), as_version=4)
    nb.cells[1].execution_count = 1  # ran the first cell, then stopped
    nbformat.write(nb, str(executed / "book" / "failed.ipynb"))

    report = cache_executed(executed, root=root)
    assert report == {
        "edited_before.ipynb": "its code changed since it was executed", "edited_later.ipynb": "cached",
        "failed.ipynb": "code cell 1 was not executed (the run stopped before it)", "same.ipynb": "cached"}
    _chapter(root / "book" / "edited_later.ipynb", "x = 12 * 7", "print(x)  # edited after `make test`")

    cache = get_cache(str(execution_cache(root)))
    assert execution_cache(root) == root / "_build" / ".jupyter_cache"
    as_myst_nb_reads = lambda name: nbformat.reads((root / "book" / name).read_text(), as_version=4)  # noqa: E731
    cache.match_cache_notebook(as_myst_nb_reads("same.ipynb"))  # a hit: no KeyError
    _, merged = cache.merge_match_into_notebook(as_myst_nb_reads("same.ipynb"))
    assert merged.cells[2].outputs[0]["text"] == "28\n" and merged.cells[0].source == "# A chapter"
    for changed in ("edited_later.ipynb", "edited_before.ipynb", "failed.ipynb"):
        with pytest.raises(KeyError):
            cache.match_cache_notebook(as_myst_nb_reads(changed))
    assert len(cache.list_cache_records()) == 2


def test_an_executed_copy_of_the_book_finds_the_checkouts_asset_cache(monkeypatch):
    """``make test`` builds the HTML from a copy of the book under build/ (``executed_copy``): its extension must
    read the assets from the checkout's .cache, where they were fetched once (the GPU machines reach no registry),
    not fetch them again into the copy."""
    import importlib.util
    import shutil
    import tempfile
    from pathlib import Path

    monkeypatch.delenv("LLAVA_NB_CACHE", raising=False)
    (REPO_ROOT / "build").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=REPO_ROOT / "build") as tmp:
        copied = executed_copy(Path(tmp) / "exec")[0].parent / "_ext" / "book_assets.py"
        spec = importlib.util.spec_from_file_location("book_assets_copy", copied)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.vendor_dir() == book_assets.vendor_dir() == REPO_ROOT / ".cache" / "book-assets" / "vendor"
        shutil.rmtree(Path(tmp) / "exec")
