"""The processes of a multi-process launch end together after a failure (llava_nb.training.exits), so that the
launcher never has to kill one: its "Terminating process ... via signal SIGTERM" lands on stderr, which fails the
book's build (chapter 05's deliberate DDP error hit it one run in ten)."""

import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path


from llava_nb.training import exits

LAUNCHER = r"""
import os, sys, time
from pathlib import Path
from accelerate import notebook_launcher
import llava_nb.training.worker as worker
from llava_nb.training.launch import free_port

class Spec:
    output_dir = sys.argv[1]

def fails_one_after_the_other(spec):
    rank = int(os.environ["RANK"])
    time.sleep(2.0 * rank)  # rank 1 fails 2 s after rank 0: unsettled, the launcher kills it meanwhile
    raise RuntimeError(f"boom on rank {rank}")

worker._run_worker = fails_one_after_the_other  # run_worker (the real one) calls it
os.environ["OMP_NUM_THREADS"] = "1"
try:
    notebook_launcher(worker.run_worker, (Spec(),), num_processes=2, use_port=str(free_port()))
except Exception as err:
    print("launch failed:", type(err).__name__)
"""


def test_ranks_failing_apart_end_without_the_launcher_killing_one(tmp_path):
    """Through notebook_launcher (torch's elastic agent, forked workers) and the real run_worker: both ranks fail,
    two seconds apart. The launch fails, both errors are recorded, and nobody is terminated."""
    run = subprocess.run([sys.executable, "-c", LAUNCHER, str(tmp_path)], capture_output=True, text=True,
                         timeout=120)
    assert "launch failed: ChildFailedError" in run.stdout, run.stdout + run.stderr
    assert "SIGTERM" not in run.stderr, run.stderr
    from llava_nb.training.worker import TRACEBACK_MARK

    recorded = sorted(p.read_text().split(TRACEBACK_MARK) for p in tmp_path.glob("error-rank*.txt"))
    assert [error for error, _ in recorded] == ["RuntimeError: boom on rank 0", "RuntimeError: boom on rank 1"]
    assert all("Traceback (most recent call last)" in trace for _, trace in recorded)  # kept for the reader


def _rank(rank, folder, failed, delay, timeout, port):
    """One fake rank: after ``delay`` s it settles; if settle returns, it records whether the others were gone
    then, and exits 3 if it failed (as a re-raised error would), else 0."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_PORT=str(port))
    time.sleep(delay)
    exits.settle(folder, rank, 2, failed=failed, timeout=timeout)
    others = [m["pid"] for r, m in exits._read_markers(exits.marker_dir(folder)).items() if r != rank]
    Path(folder, f"returned{rank}").write_text(str(all(exits.gone(p) for p in others)))
    os._exit(3 if failed else 0)


def _run_ranks(folder, *ranks, timeout=10.0, port=12345):
    """Run the fake ranks ``(failed, delay)`` as forked processes; their exit codes (None: still running after the
    others ended, then killed) and what each that returned recorded."""
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_rank, args=(r, folder, failed, delay, timeout, port))
             for r, (failed, delay) in enumerate(ranks)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout + 5)
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    returned = {r: Path(folder, f"returned{r}").read_text() for r in range(len(ranks))
                if Path(folder, f"returned{r}").exists()}
    return codes, returned


def test_both_fail_the_highest_reports_last(tmp_path):
    codes, returned = _run_ranks(tmp_path, (True, 0.0), (True, 0.5))
    # rank 0 left quietly (status 0); rank 1 saw it gone, then exited with the error
    assert codes == [0, 3] and returned == {1: "True"}


def test_one_fails_the_finished_rank_leaves_first(tmp_path):
    codes, returned = _run_ranks(tmp_path, (False, 0.5), (True, 0.0))
    assert codes == [0, 3] and returned == {1: "True"}


def test_nobody_failed_every_rank_returns_and_old_markers_do_not_count(tmp_path):
    import json
    import socket

    folder = exits.marker_dir(tmp_path)
    folder.mkdir()
    # a failed rank 0 of an earlier launch from this process (another port): rank 1 reads it before rank 0's own
    stale = {"launch": f"{socket.gethostname()}:{os.getpid()}:999::", "rank": 0, "pid": 1, "failed": True}
    (folder / "rank0.json").write_text(json.dumps(stale))
    codes, returned = _run_ranks(tmp_path, (False, 0.5), (False, 0.0))
    assert codes == [0, 0] and returned.keys() == {0, 1}


def test_a_rank_that_never_answers_is_waited_for_a_bounded_time(tmp_path):
    """Rank 1 stands for a rank blocked in a collective: it never settles. Rank 0 reports after the timeout."""
    codes, returned = _run_ranks(tmp_path, (True, 0.0), (True, 30.0), timeout=1.0)
    # rank 0 reported after its timeout; rank 1 left no marker (not waited for) and is still there, for the
    # launcher to end
    assert codes == [3, None] and returned == {0: "True"}


def test_a_single_process_does_not_settle(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert exits.ranks() is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert exits.ranks() == (1, 2)


AFTER_A_PARALLEL_OPERATION = r"""
import os, sys
from pathlib import Path
import torch
from accelerate import notebook_launcher
import llava_nb.training.worker as worker
from llava_nb.training.launch import free_port

class Spec:
    output_dir = sys.argv[1]

def copies_a_large_tensor(spec):
    # a copy large enough to be split between threads: with the parent's thread team inherited, it never returns
    torch.empty(8_000_000).copy_(torch.ones(8_000_000))
    Path(spec.output_dir, f"rank{os.environ['RANK']}").write_text(str(torch.get_num_threads()))

worker._run_worker = copies_a_large_tensor  # run_worker (the real one) calls it
os.environ["OMP_NUM_THREADS"] = "2"
torch.set_num_threads(2)
(torch.randn(8_000_000) * 2).sum()  # this process's OpenMP thread team now exists, as in a kernel that ran a cell
notebook_launcher(worker.run_worker, (Spec(),), num_processes=2, use_port=str(free_port()))
print("launch done")
"""


def test_forked_workers_run_after_the_parent_ran_a_parallel_operation(tmp_path):
    """GNU OpenMP cannot start threads in a child forked after the parent used its thread team: the child's first
    parallel operation waits forever (chapters 07 and 08 hung or crashed on a 16-core machine). run_worker gives a
    forked process one thread, so both ranks finish their copy."""
    import signal

    proc = subprocess.Popen([sys.executable, "-c", AFTER_A_PARALLEL_OPERATION, str(tmp_path)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its hung workers
        out, err = proc.communicate()
    assert "launch done" in out, out + err
    assert [p.read_text() for p in sorted(tmp_path.glob("rank*"))] == ["1", "1"]
