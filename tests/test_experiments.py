"""experiments.gpu: one package, one command line (``python -m experiments.gpu``), outputs under data/.

No GPU here: the tests check that every module imports (without torch, llava_nb or any change to the environment),
that every help and every documented command parses, that the relaunch command of ``tiny_pipeline_gpus`` is one of
ours, that the helpers read and append records as before, and that a rerun skips what the committed data holds
(``main`` run with the processes and GPU calls replaced).
"""

import json
import os
import shlex
import subprocess
import sys
import types
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # experiments/ is not installed: it runs from the repository root
    sys.path.insert(0, str(REPO_ROOT))

from experiments.gpu import common, engines_gpu, memory_gpu, peft_gpu, sweep_compute, sweep_data, sweep_recipe  # noqa: E402
from experiments.gpu import sweep_stage2, tiny_pipeline_gpus  # noqa: E402
from experiments.gpu.__main__ import EXPERIMENTS, build_parser, summary  # noqa: E402

MODULES = {name: getattr(__import__(f"experiments.gpu.{name}").gpu, name) for name in EXPERIMENTS}


def cli(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.gpu", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_every_module_is_a_sub_command():
    files = {p.stem for p in (REPO_ROOT / "experiments" / "gpu").glob("*.py")} - {"__init__", "__main__", "common"}
    assert files == set(EXPERIMENTS)
    assert not list((REPO_ROOT / "data").rglob("*.py")), "the experiments live in experiments/, not data/"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_module_names_the_data_file_it_writes(name):
    module = MODULES[name]
    assert callable(module.add_arguments) and callable(module.main)
    line = summary(module)
    assert len(line) <= 100 and line.endswith(").")
    path = line[line.rindex("(") + 1:-2]  # e.g. data/gpu/engines_gpu.jsonl, data/gpu/sweep_stage2*.json
    assert path.startswith("data/") and path.rpartition("/")[2].startswith(name.split("_gpu")[0])
    assert list(REPO_ROOT.glob(path)), f"{path} named by {name} is not in the repository"


def test_importing_the_package_starts_nothing():
    """Building the parser imports every module, but neither torch nor llava_nb, and leaves the environment alone
    (tiny_pipeline_gpus and sweep_stage2 set LLAVA_NB_CACHE in main, before llava_nb fixes paths.CACHE_DIR)."""
    code = ("import os, sys; env = dict(os.environ); from experiments.gpu.__main__ import build_parser; "
            "build_parser(); heavy = [m for m in ('torch', 'llava_nb', 'accelerate') if m in sys.modules]; "
            "assert not heavy, heavy; assert dict(os.environ) == env, set(os.environ.items()) ^ set(env.items())")
    unset = {"LLAVA_NB_CACHE", "PYTORCH_NVML_BASED_CUDA_CHECK", *common.ENV}  # what an import might set
    env = {k: v for k, v in os.environ.items() if k not in unset}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_help_lists_every_experiment_on_one_line():
    proc = cli("--help")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for name, module in MODULES.items():
        assert [line for line in lines if line.split()[:1] == [name]] == [f"  {name:<20}{summary(module)}"]
    assert cli().returncode == 2 and cli("no_such_experiment").returncode == 2


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_sub_command_help(name):
    proc = cli(name, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: python -m experiments.gpu {name} ")
    assert summary(MODULES[name]) in proc.stdout


def documented_commands() -> list[tuple[str, list[str]]]:
    """Every ``python -m experiments.gpu ...`` line in the modules' docstrings and data/measurements/README.md."""
    texts = {name: module.__doc__ for name, module in MODULES.items()}
    texts["README"] = (REPO_ROOT / "data" / "measurements" / "README.md").read_text()
    return [(where, shlex.split(line.strip().replace("$OUT", "/tmp/out"))[3:]) for where, text in texts.items()
            for line in text.splitlines() if line.strip().startswith("python -m experiments.gpu ")]


def test_documented_commands_parse():
    commands = documented_commands()
    assert {argv[0] for _, argv in commands} >= set(EXPERIMENTS) - {"sweep_recipe"}
    for where, argv in commands:
        if "VARIANT" in " ".join(argv):  # a usage pattern: [VARIANT ... | --from=N]
            continue
        args = build_parser().parse_args(argv)
        assert args.run is MODULES[argv[0]].main, where


def test_required_arguments_are_required(capsys):
    for argv in (["engines_gpu", "--out", "x"], ["memory_gpu", "--gpus", "1", "--out", "x"], ["sweep_compute"]):
        with pytest.raises(SystemExit) as err:
            build_parser().parse_args(argv)
        assert err.value.code == 2
    assert "required" in capsys.readouterr().err


def test_outputs_resolve_from_the_repository_root(tmp_path):
    assert common.REPO_ROOT == REPO_ROOT and common.GPU_DIR == REPO_ROOT / "data" / "gpu"
    if "LLAVA_NB_DATA" not in os.environ:
        from llava_nb.paths import DATA_DIR

        assert common.DATA_DIR == DATA_DIR
    assert engines_gpu.DONE == common.GPU_DIR / "engines_gpu.jsonl" and engines_gpu.DONE.exists()
    assert peft_gpu.DONE == common.GPU_DIR / "peft_gpu.jsonl" and peft_gpu.DONE.exists()
    assert memory_gpu.DONE == REPO_ROOT / "data" / "measurements" / "memory_gpu.jsonl" and memory_gpu.DONE.exists()
    assert {"tiny-clip-vit", "tiny-llama"} <= {p.name for p in common.PRETRAINED_DIR.iterdir()}
    # the same from another folder, the package found through PYTHONPATH
    code = "from experiments.gpu import engines_gpu; print(engines_gpu.DONE)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=120)
    assert proc.stdout.strip() == str(engines_gpu.DONE), proc.stderr
    # the files written without a path argument
    parse = build_parser().parse_args
    assert parse(["tiny_pipeline_gpus"]).out == common.GPU_DIR / "tiny_pipeline_gpus.json"
    assert parse(["sweep_stage2"]).out is None  # main picks sweep_stage2.json or sweep_stage2_image_last.json


def test_done_and_append(tmp_path, capsys):
    out = tmp_path / "records.jsonl"
    common.append(out, {"kind": "tiny", "gpus": 2, "name": "fsdp", "seconds": 3.5, "losses": [1, 2]})
    common.append(out, {"kind": "matmul", "gpus": 2, "tflops": 700.0})
    common.append_line(out, {"kind": "measure", "name": "lora"})
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed[0] == {"kind": "tiny", "gpus": 2, "name": "fsdp", "tflops": None, "eval_accuracy": None,
                          "seconds": 3.5}
    assert printed[2] == {"kind": "measure", "name": "lora"}
    assert [json.loads(line)["kind"] for line in out.read_text().splitlines()] == ["tiny", "matmul", "measure"]
    assert common.done(out, tmp_path / "missing.jsonl") == {("tiny", 2, "fsdp"), ("matmul", 2, None),
                                                             ("measure", None, "lora")}
    assert common.done(out, key=peft_gpu.KEY) == {("tiny", "fsdp"), ("matmul", None), ("measure", "lora")}


def test_committed_records_are_what_a_rerun_skips():
    runs = {name for name, *_ in engines_gpu.RUNS}
    steps = {("matmul", g, None) for g in (2, 4)} | {(k, g, n) for g in (2, 4) for k, names in
                                                     (("measure", runs), ("tiny", {"zero3", "fsdp"})) for n in names}
    assert common.done(engines_gpu.DONE) == steps
    assert {(memory_gpu.MODEL, *k) for k in (("lora", 1, True), ("lora", 1, False), ("qlora", 1, True),
                                              ("zero3", 4, True), ("fsdp", 2, True))} <= \
        common.done(memory_gpu.DONE, key=memory_gpu.KEY)


def fake_llava_nb_lab(monkeypatch):
    """What the GPU mains import from llava_nb.lab, as stand-ins that fail if called (a rerun calls nothing)."""
    def never(*args, **kwargs):
        raise AssertionError("called although the committed records hold it")

    fakes = {"measure": {"versions": lambda: {"torch": "fake"}}, "throughput": {"matmul_tflops": never},
             "quant": {"linear4bit_timing": never},
             "paged": {"OPTIMIZERS": ["torch AdamW", "bnb AdamW", "bnb PagedAdamW", "bnb PagedAdamW8bit"]}}
    for name, attributes in fakes.items():
        monkeypatch.setitem(sys.modules, f"llava_nb.lab.{name}", types.SimpleNamespace(**attributes))
    monkeypatch.setattr(subprocess, "run", never)


@pytest.mark.parametrize("argv", [["engines_gpu", "--gpus", "2"], ["engines_gpu", "--gpus", "4"], ["peft_gpu"]])
def test_rerun_on_the_committed_records_does_nothing(argv, tmp_path, monkeypatch):
    fake_llava_nb_lab(monkeypatch)
    out = tmp_path / "new.jsonl"
    args = build_parser().parse_args([*argv, "--out", str(out)])
    args.run(args)
    assert not out.exists()


def test_memory_gpu_skips_what_is_measured_and_runs_the_rest(tmp_path, monkeypatch, capsys):
    import torch

    commands = []

    def run(cmd, **kwargs):
        commands.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout='{"steady": 1}\n', stderr="")

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(total_memory=140 * 2**30))
    monkeypatch.setattr(subprocess, "run", run)
    out = tmp_path / "memory_gpu.jsonl"
    args = build_parser().parse_args(["--work", str(tmp_path / "work"), "memory_gpu", "--gpus", "1", "--methods",
                                      "lora,ddp", "--out", str(out), "--no-grad-checkpointing"])
    args.work = Path(args.work)
    args.run(args)
    assert "skip lora on 1 GPUs: already measured" in capsys.readouterr().out
    [cmd] = commands  # full fine-tuning with torch DDP was never measured on one GPU
    assert cmd[cmd.index("--method") + 1] == "ddp" and cmd[-3:] == ["--cap-gib", "79.18", "--no-grad-checkpointing"]
    assert cmd[cmd.index("--out") + 1] == str(out) and "===== ddp gpus=1 rc=0" in out.with_suffix(".log").read_text()
    assert cmd[cmd.index("--checkpoint-dir") + 1] == str(tmp_path / "work" / "llava-1.5-7b-random")


def test_scratch_files_go_to_a_temporary_folder_unless_work_is_given(tmp_path, monkeypatch):
    """No fixed /tmp paths: each command's scratch folder is a new temporary one, removed at its end, or --work."""
    from experiments.gpu.__main__ import main

    seen = []
    monkeypatch.setattr(sweep_compute, "main", lambda a: seen.append((a.work, a.work.is_dir())))
    main(["sweep_compute", str(tmp_path / "o.jsonl")])
    main(["sweep_compute", str(tmp_path / "o.jsonl")])
    main(["--work", str(tmp_path / "w"), "sweep_compute", str(tmp_path / "o.jsonl")])
    (first, made), (second, _), (given, _) = seen
    assert made and first != second and not first.exists()  # each call its own, gone when it ends
    assert given == tmp_path / "w" and given.is_dir()


def test_tiny_pipeline_relaunches_itself_through_the_command_line(tmp_path, monkeypatch):
    """Where notebook_launcher cannot fork, launch_who_am_i starts ``python -m experiments.gpu tiny_pipeline_gpus
    --who-am-i DIR`` in fresh processes through ``accelerate launch -m``: our parser must take it."""
    accelerate = pytest.importorskip("accelerate")
    commands = []

    def fail(*args, **kwargs):
        raise RuntimeError("Cannot re-initialize CUDA in forked subprocess")

    monkeypatch.setattr(accelerate, "notebook_launcher", fail)
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kwargs: commands.append(cmd))
    how = tiny_pipeline_gpus.launch_who_am_i(tmp_path, 2)
    assert how.startswith("accelerate launch")
    [cmd] = commands
    module = cmd.index("-m", cmd.index("accelerate.commands.launch"))
    assert cmd[module + 1] == "experiments.gpu"
    args = build_parser().parse_args(cmd[module + 2:])
    assert args.run is tiny_pipeline_gpus.main and args.who_am_i == str(tmp_path)


def test_sweep_recipe_selects_variants():
    parse = build_parser().parse_args
    names = list(sweep_recipe.VARIANTS)
    assert sweep_recipe.select([], None) == names
    assert sweep_recipe.select(["base", "clip"], None) == ["base", "clip"]
    args = parse(["sweep_recipe", "out.jsonl", "--from=87:95"])
    assert sweep_recipe.select(args.variants, args.span) == names[87:95]
    args = parse(["sweep_recipe", "out.jsonl", "--from", "102"])
    assert sweep_recipe.select(args.variants, args.span) == names[102:] and len(names[102:]) == 10
    assert parse(["sweep_data", "o.jsonl", "turns 2-4", "LLM context 1.0"]).variants == ["turns 2-4", "LLM context 1.0"]
    # every committed record was made from a variant still defined (--from=N counts on the order)
    for module in (sweep_recipe, sweep_data):
        path = common.GPU_DIR / f"{module.__name__.rpartition('.')[2]}.jsonl"
        recorded = [json.loads(line)["name"] for line in path.read_text().splitlines()]
        assert set(recorded) <= set(module.VARIANTS)


def test_sweep_helpers(tmp_path):
    assert sweep_compute.cli_args(["epochs=18", "lr=5e-4", "seed=1"]) == ["--set", "epochs=18", "--set", "lr=5e-4",
                                                                           "--seed", "1"]
    folder = Path(sweep_data.fresh_folder(tmp_path, "sweep_data", "LLM context 1.0"))
    (folder / "old").mkdir(parents=True)
    assert Path(sweep_data.fresh_folder(tmp_path, "sweep_data", "LLM context 1.0")) == folder and not folder.exists()
    assert folder.parent == tmp_path
    assert sweep_stage2.NOT_IMAGE_LAST and set(sweep_stage2.NOT_IMAGE_LAST) < set(sweep_stage2.CONFIGS)


def test_tokens_per_epoch(tmp_path):
    records = [{"id": str(i), "image": "x.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is the square?"}, {"from": "gpt", "value": "Red."}]}
        for i in range(3)]
    path = tmp_path / "instruct.json"
    path.write_text(json.dumps(records))
    samples, tokens = sweep_data.tokens_per_epoch(str(path))
    assert samples == 3 and tokens % 3 == 0 and tokens > 3 * 36  # 36 image tokens a sample, and the text


def test_a_failed_chapter_keeps_the_start_and_the_end_of_its_report():
    from experiments.gpu.chapters_gpu import excerpt

    report = "failing cell + traceback " + "x" * 20000 + " summary"
    kept = excerpt(report, keep=100)
    assert kept.startswith("failing cell + traceback") and kept.endswith(" summary") and len(kept) < 300
    assert excerpt("short", keep=100) == "short"


def test_a_hung_chapter_is_stopped_with_every_process_stack(tmp_path):
    """A chapter past its limit is stopped, and its report holds the stacks of its kernel's workers, so that a
    hang on a lent machine says where it waited: here a forked worker that waits in ``wait_here``. The workers are
    stopped first, so that the cell fails with their stacks in its captured stderr."""
    import os

    import nbformat

    from experiments.gpu.chapters_gpu import execute

    chapter = tmp_path / "99_hangs.ipynb"
    cell = ("import multiprocessing, time\n"
            "def wait_here():\n    time.sleep(600)\n"
            "worker = multiprocessing.get_context('fork').Process(target=wait_here)\n"
            "worker.start()\nworker.join()\n"
            "assert worker.exitcode == 0, worker.exitcode")  # as notebook_launcher raises when a worker dies
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)]), chapter)
    # the limit leaves the kernel time to start and fork (with 12 s on 2 cores, some runs stopped it before)
    code, report, seconds = execute(chapter, dict(os.environ), limit=30)
    assert code is None and seconds < 90, report
    assert report.startswith("ran past its limit of 30 s")
    assert "Fatal Python error: Aborted" in report and "in wait_here" in report, report  # the worker's stack
