"""The repository's set-up contract: pins agree, notebooks are clean and listed, the benchmark covers them."""

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "book").glob("*.ipynb"))


def _pins(lines):
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def test_environment_yml_agrees_with_constraints():
    constraints = _pins((ROOT / "constraints.txt").read_text().splitlines())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    env_pins = _pins(pip_section)
    assert env_pins, "environment.yml has no pinned pip packages"
    for name, version in env_pins.items():
        assert constraints.get(name) == version, f"{name}: environment.yml {version}, constraints {constraints.get(name)}"
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert python == "python=3.11"


def test_constraints_pin_cpu_torch_and_every_dependency():
    constraints = _pins((ROOT / "constraints.txt").read_text().splitlines())
    assert constraints["torch"] == "2.13.0"
    pyproject = (ROOT / "pyproject.toml").read_text()
    deps = re.findall(r'^\s+"([A-Za-z0-9_.\-]+)[<>=!~ ]', pyproject, flags=re.M)
    for dep in deps:
        assert dep.lower().replace("_", "-") in constraints, f"{dep} is not pinned in constraints.txt"


def test_readme_shows_the_two_commands_first_and_ci_runs_make_test():
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```", 2)[1]
    assert "make book" in first_block and "make test" in first_block
    assert "TORCH=system" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, flags=re.M)
    assert (ROOT / ".ci" / "run").stat().st_mode & 0o111


def test_license_is_apache():
    assert "Apache License" in (ROOT / "LICENSE").read_text()


def test_notebooks_are_committed_without_outputs():
    for nb_path in CHAPTERS:
        nb = json.loads(nb_path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs") and cell.get("execution_count") is None, f"{nb_path.name} has outputs"


def test_toc_lists_every_chapter():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = {c["file"] for part in toc["parts"] for c in part["chapters"]}
    assert {f"book/{p.stem}" for p in CHAPTERS} <= files  # every chapter, plus reference pages
    for f in files:
        assert (ROOT / f"{f}.ipynb").exists() or (ROOT / f"{f}.md").exists(), f"{f} in _toc.yml does not exist"


def test_book_config_executes_with_timeout_and_offline_safe():
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert cfg["execute"]["execute_notebooks"] in ("cache", "force")
    assert cfg["execute"]["timeout"] > 0
    assert cfg["execute"]["stderr_output"] in ("warn", "error", "severe")
    assert "repository" not in cfg  # no made-up repository URL (it breaks the build)
    assert "--warningiserror" in (ROOT / "Makefile").read_text()


def test_benchmark_covers_every_chapter_within_budget():
    bench = json.loads((ROOT / "data" / "benchmarks" / "chapters.json").read_text())
    assert bench["machine"]["cpus"] and bench["budget_s"] == 90
    for nb_path in CHAPTERS:
        entry = bench["chapters"].get(nb_path.name)
        assert entry is not None, f"{nb_path.name} has no benchmark: run `make bench`"
        assert entry["seconds"] <= bench["budget_s"], f"{nb_path.name} took {entry['seconds']} s"
