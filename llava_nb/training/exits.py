"""How the processes of one launch end together, so that no launcher has to kill one of them.

torch's launchers (``notebook_launcher``'s elastic agent, ``torchrun``, ``accelerate launch``) watch their workers,
and as soon as one exits with a non-zero status they send SIGTERM to every worker still alive, logging "Terminating
process ... via signal SIGTERM" (or "Sending process ... closing signal SIGTERM") on stderr. Two ranks that hit the
same error (DDP's unused-parameter error reaches every rank at the same step) both fail, but never at exactly the
same instant: the first one out gets the other killed while it is still on its way out, one time in ten on 2 CPU
processes. The kill is harmless, the log line is not (the book treats anything on stderr as a build error).

So every rank of a multi-process launch ends through :func:`settle`: it leaves a marker (its pid, failed or not) in
``output_dir/.exits``, waits a bounded time for the markers of the other ranks on its machine, and then:

* nobody failed: it returns, and the launch ends as usual;
* somebody failed: exactly one failed rank, the highest-numbered, is the *reporter*. Every other rank exits at once
  (``os._exit``) with status 0 (its error, if it had one, is already in ``error-rank<N>.txt``, which ``train()`` reports), and the
  reporter waits until they are gone, then re-raises its error: the only non-zero exit comes last, when there is no
  one left to kill, and the launcher still sees the launch fail.

The waits are bounded (``SETTLE_TIMEOUT``): a rank blocked in a collective (its peer failed alone) cannot leave a
marker, and the launcher's SIGTERM is then the only way to end it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

#: seconds a rank waits for the other ranks' markers, and the reporter for the other ranks to be gone
SETTLE_TIMEOUT = 15.0
_POLL = 0.05


def launch_id() -> str:
    """What the ranks of one launch on one machine share and no other launch does: the host, the launching process
    (the elastic agent, or the notebook it runs in), the rendezvous port (a fresh one per launch, see
    ``launch.free_port``) and the restart count."""
    env = os.environ
    return ":".join([socket.gethostname(), str(os.getppid()), env.get("MASTER_PORT", ""),
                     env.get("TORCHELASTIC_RUN_ID", ""), env.get("TORCHELASTIC_RESTART_COUNT", "")])


def marker_dir(output_dir) -> Path:
    return Path(output_dir) / ".exits"


def _write_marker(folder: Path, rank: int, failed: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".rank{rank}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"launch": launch_id(), "rank": rank, "pid": os.getpid(), "failed": failed}))
    os.replace(tmp, folder / f"rank{rank}.json")  # whole or absent: a reader never sees half a marker


def _read_markers(folder: Path) -> dict[int, dict]:
    """This launch's markers (an earlier launch's, left in the same folder, are ignored), by rank."""
    mine, markers = launch_id(), {}
    for path in folder.glob("rank*.json"):
        try:
            marker = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if marker.get("launch") == mine:
            markers[int(marker["rank"])] = marker
    return markers


def gone(pid: int) -> bool:
    """The process has exited: no such process, or a zombie waiting for its parent (the launcher) to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
    except OSError:  # no /proc (macOS): a zombie then looks alive, and the reporter's wait runs to its bound
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        return False


def _wait(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL)
    return True


def settle(output_dir, rank: int, local_world_size: int, failed: bool, timeout: float = SETTLE_TIMEOUT) -> None:
    """End this rank in step with the others (see the module docstring). Returns when this rank should end as it
    would have (it succeeded and nobody failed, or it is the reporter: its caller then re-raises); exits the process
    with status 0 when another failed rank reports the failure."""
    folder = marker_dir(output_dir)
    _write_marker(folder, rank, failed)
    markers: dict[int, dict] = {}

    def everyone_marked() -> bool:
        markers.clear()
        markers.update(_read_markers(folder))
        return len(markers) >= local_world_size

    _wait(everyone_marked, timeout)
    failed_ranks = sorted(r for r, m in markers.items() if m["failed"])
    if not failed_ranks:
        return
    if rank != failed_ranks[-1]:
        # Status 0, not an error: the reporter's error exit comes after this one, when nobody is left to kill.
        # os._exit, not sys.exit: torch's elastic ``record`` turns SystemExit(0) into a normal return, after which
        # the worker would wait for the launcher's "all finished" event, which a failed launch never sets.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    others = [m["pid"] for r, m in markers.items() if r != rank]
    _wait(lambda: all(gone(pid) for pid in others), timeout)


def ranks() -> tuple[int, int] | None:
    """``(rank, local world size)`` in a process that a launcher started as one of several, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or "RANK" not in os.environ:
        return None
    return int(os.environ["RANK"]), int(os.environ.get("LOCAL_WORLD_SIZE", world))
