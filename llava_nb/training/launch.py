"""Starting the training processes: ``notebook_launcher`` (fork) from a notebook or script, fresh processes through
``accelerate launch`` where fork cannot work, or nothing at all when a launcher already started this process."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from ..errors import LlavaNbError
from .config import TrainSpec
from .worker import run_worker

def in_distributed_launch() -> bool:
    """Whether this process is one of several ranks started by ``accelerate launch`` or ``torchrun``."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ


def host_memory_gib() -> float | None:
    """This machine's RAM in GiB (the kernel's page count times the page size); None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (AttributeError, ValueError, OSError):
        return None


def gpu_memory_gib() -> float | None:
    """Memory of the first GPU in GiB (what ``torch.cuda.get_device_properties().total_memory`` reports), read from
    NVML through ``nvidia-smi`` so that this process does not initialise CUDA (which would forbid forking workers);
    None without GPUs."""
    import shutil
    import subprocess

    if not torch.cuda.is_available() or shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True)
    try:
        return float(out.stdout.split()[0]) / 1024  # MiB
    except (IndexError, ValueError):
        return None


def default_num_processes() -> int:
    """Every GPU where there are GPUs (without initialising CUDA in this process), else 2 CPU processes."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 2


def device_for_ranks(ranks: int) -> str:
    """Where a demonstration with ``ranks`` processes runs: ``"cuda"`` where this machine has that many GPUs, else
    ``"cpu"``: every GPU is then hidden from this process and from the processes it starts
    (``CUDA_VISIBLE_DEVICES=""``), which become CPU processes over gloo. A one-GPU machine thus still shows two ranks
    sharding a model. Hiding works only before this process initialises CUDA: until then torch counts the GPUs
    through NVML, which reads the variable on every call (``PYTORCH_NVML_BASED_CUDA_CHECK``, set by ``llava_nb``)."""
    if not torch.cuda.is_available():
        return "cpu"
    gpus = torch.cuda.device_count()
    if gpus >= ranks:
        return "cuda"
    if torch.cuda.is_initialized():
        raise LlavaNbError(f"{ranks} processes need {ranks} GPUs or CPU processes; this machine has {gpus} GPU(s) "
                           "and CUDA is already initialised here, so they can no longer be hidden: restart the kernel "
                           "and run the chapter from the top")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    assert not torch.cuda.is_available(), "torch still sees a GPU after CUDA_VISIBLE_DEVICES=''"
    return "cpu"


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU runs bf16 matrix products on its own instructions (oneDNN's bf16 path: AVX-512 or AMX on
    x86, the BF16 extension on Arm). Without them, bf16 autocast on a CPU is emulated: on an AVX2-only AMD EPYC a
    tiny stage-2 step took 8-10x its fp32 time (``data/benchmarks/cpu_step_time_no_bf16.json``). The check is
    torch's own (``torch.ops.mkldnn._is_mkldnn_bf16_supported``, which torch's tests use; there is no public one)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def check_gpus(num_processes: int) -> None:
    """On a machine with GPUs each process takes one (NCCL refuses two ranks on one device, "Duplicate GPU
    detected", after the model has loaded): more processes than GPUs is an error here, before anything starts. Not
    checked inside ``accelerate launch``/``torchrun``, where the launcher placed the processes."""
    if in_distributed_launch() or not torch.cuda.is_available():
        return
    gpus = torch.cuda.device_count()
    if num_processes > gpus:
        raise LlavaNbError(f"num_processes={num_processes} but this machine has {gpus} GPU(s), one per process; use "
                           f"num_processes <= {gpus} (--num-processes), or hide the GPUs (CUDA_VISIBLE_DEVICES=) "
                           "to run CPU processes")


def _launch_fresh_processes(spec: TrainSpec, num_processes: int) -> None:
    """Start the workers as fresh processes through ``accelerate launch`` (``python -m llava_nb worker SPEC``)."""
    import subprocess
    import sys

    spec_file = Path(spec.output_dir) / "spec.json"
    spec_file.parent.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(json.dumps(spec.to_json()))
    try:
        worker = ["-m", "llava_nb", "worker", str(spec_file)]
        if num_processes == 1:  # accelerate launch wants 2 or more for --multi_gpu; torchrun starts one as well
            command = ["torch.distributed.run", "--standalone", "--nproc-per-node", "1", *worker]
        else:
            command = ["accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
                       "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                       "--main_process_port", str(free_port()), *worker]
        code = _run_launcher([sys.executable, "-m", *command], Path(spec.output_dir) / "launcher.log")
        if code:
            raise subprocess.CalledProcessError(code, command)
    finally:
        forget_exits(spec)


def _run_launcher(command: list[str], log: Path) -> int:
    """Run a launcher command; its exit code. Its stderr (and its workers') is passed on and kept in ``log``.

    The launcher runs in a session of its own, so that a Ctrl-C (or a SIGTERM) reaches this process first, which
    notes it and then passes it on to the launcher's whole process group. The workers stop cleanly
    (``training.interrupt``); the launcher then exits with a traceback of its own (torch elastic's
    ``SignalException``, 30-odd lines), which goes to ``log`` only."""
    import signal
    import subprocess
    import threading

    interrupted = threading.Event()
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, bufsize=1, start_new_session=True)

    def relay() -> None:
        with proc.stderr, open(log, "a") as kept:
            for line in proc.stderr:
                kept.write(line)
                if not interrupted.is_set():  # to this process's stderr file, where the launcher's used to go
                    os.write(2, line.encode())

    def forward(signum, frame) -> None:
        interrupted.set()
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass

    relaying = threading.Thread(target=relay, daemon=True)
    relaying.start()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    relaying.join()
    if interrupted.is_set():
        raise KeyboardInterrupt  # the caller reads what the stopped workers wrote (api._interrupted)
    return code


def free_port() -> int:
    """A TCP port nobody listens on now. Every launch gets its own: two runs on one machine on the same port
    (29500, the default) collide, and DeepSpeed's CPU shared-memory all-reduce, whose segment names contain the
    port, then crashes one of them (SIGABRT, "terminate called without an active exception")."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: how ``launch`` started the workers (``result.json``'s ``launcher``)
NOTEBOOK, FRESH, IN_PROCESS, LAUNCHED = "notebook_launcher", "fresh processes", "this process", "accelerate launch"


def launch(spec: TrainSpec, num_processes: int) -> str:
    """Run ``run_worker(spec)`` in ``num_processes`` processes (or in this one); returns how (``NOTEBOOK``, ...).

    ``notebook_launcher`` forks, which CUDA forbids once this process has initialised it (a notebook that already
    ran a model on the GPU, say); then the workers start as fresh processes through ``accelerate launch``.
    Accelerate also refuses to fork once ``bitsandbytes`` is imported here, because on a GPU importing it initialises
    CUDA (bitsandbytes' ``cuda_specs.get_compute_capabilities`` asks torch for each device's capability); peft and
    ``transformers.optimization`` import it whenever it is installed. Nothing in this package imports either before
    the workers start, so a notebook that trains before it imports peft keeps ``notebook_launcher``.
    """
    from accelerate.state import AcceleratorState

    from ..methods.registry import get_method

    deepspeed = get_method(spec.method).engine.kind == "deepspeed"
    if deepspeed and not torch.cuda.is_available():
        from .._compat import deepspeed_probes_only_the_ops_it_uses

        deepspeed_probes_only_the_ops_it_uses()  # before this process or its forks set DeepSpeed up: see _compat
    if in_distributed_launch():
        run_worker(spec)
        return LAUNCHED
    if num_processes == 1 and get_method(spec.method).engine.kind != "ddp":
        # DeepSpeed and FSDP need a process group even for one process (ZeRO-3-offload on one GPU, say): a fresh
        # process under the launcher gets one, and this process (a notebook's kernel) keeps none behind
        _launch_fresh_processes(spec, 1)
        return FRESH
    if num_processes == 1:
        try:
            run_worker(spec)
        finally:  # forget this process's Accelerator, so that a later notebook_launcher can start processes
            AcceleratorState._reset_state(reset_partial_state=True)
        return IN_PROCESS
    deepspeed_on_gpu = torch.cuda.is_available() and deepspeed
    if (torch.cuda.is_available() and torch.cuda.is_initialized()) or AcceleratorState._shared_state \
            or "bitsandbytes" in sys.modules or deepspeed_on_gpu:
        # fork is impossible after CUDA initialised; notebook_launcher refuses once an Accelerator exists in this
        # process, and once bitsandbytes is imported (peft and transformers import it when it is installed).
        # DeepSpeed on GPUs: forked workers failed in init_process_group with "CUDA error: initialization error"
        # (2 x H200, 2026-11-28; data/gpu/engines_gpu.py), so they start fresh.
        if "bitsandbytes" in sys.modules:
            print("bitsandbytes is imported in this process (peft imports it), so notebook_launcher cannot fork: "
                  "starting fresh processes (train before importing peft to keep it)", flush=True)
        _launch_fresh_processes(spec, num_processes)
        return FRESH
    from accelerate import notebook_launcher

    if not torch.cuda.is_available():
        # Accelerate warns (on stderr, which the book build treats as an error) when OMP_NUM_THREADS is unset. The
        # forked workers run one thread each whatever it says (worker.one_thread_if_forked); processes started
        # fresh from this one later share the cores by it.
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // num_processes)))
    # torch's elastic launcher logs a failed process's whole traceback to stderr; train() re-raises the failure
    # as a TrainingError that carries each process's own error, so that log is redundant here.
    import logging

    elastic = logging.getLogger("torch.distributed.elastic.multiprocessing.api")
    level = elastic.level
    elastic.setLevel(logging.CRITICAL)
    try:
        notebook_launcher(run_worker, (spec,), num_processes=num_processes, use_port=str(free_port()))
        return NOTEBOOK
    except Exception:
        errors = list(Path(spec.output_dir).glob("error-rank*.txt"))
        if not any(msg in e.read_text() for e in errors
                   for msg in ("Cannot re-initialize CUDA in forked subprocess", "CUDA error: initialization error")):
            raise
        # CUDA was initialised in this process by something torch.cuda.is_initialized() does not see (it happens
        # after an earlier notebook_launcher run on some machines): fork cannot work, fresh processes can.
        for e in errors:
            e.unlink()
        print("notebook_launcher could not fork after CUDA was initialised; starting fresh processes instead")
        _launch_fresh_processes(spec, num_processes)
        return FRESH
    finally:
        elastic.setLevel(level)
        forget_exits(spec)


def forget_exits(spec: TrainSpec) -> None:
    """Remove the markers by which the workers ended together (``exits.settle``); they meant nothing after."""
    import shutil

    from .exits import marker_dir

    shutil.rmtree(marker_dir(spec.output_dir), ignore_errors=True)
