"""One writer per run: a claim file in a run directory names the process that trains there, and another process is
refused instead of training into it too. Readers (report, compare, TensorBoard) never look at it: it is a dotfile.

- Taking: the claim is ``<run>/.claim-<n>.json``, made with ``O_CREAT | O_EXCL`` where ``n`` is one more than the
  highest there: of processes racing for the same ``n`` exactly one makes it. A stale or released claim is replaced
  the same way, by making ``n + 1``, never by removing or renaming a file another process may have just made; the
  winner then removes the lower numbers, and one that finds a number above its own (it looked before its number was
  removed, and made it again) gives way. No step leaves a window for two winners, and a process killed at any step
  leaves nothing that blocks for longer than ``expire_s``. A release marks its file released instead of removing it:
  were the highest number removed, a newcomer could start below it while a slow process made it again.
- Staleness on this machine (same host name and boot id): the holder is gone when its pid no longer runs, or runs
  another program (its start time in /proc differs: pids are reused). That is exact and immediate, kill -9 included;
  the heartbeat is not a second signal here, because it also stops in a process only paused (Ctrl-Z, a starved CPU),
  which must not let a second writer in. Without /proc a pid could be a reused one: its heartbeat must be fresh too.
- Staleness from another host: neither its pids nor file locks (unreliable on network filesystems) can be checked,
  so the holder's daemon thread touches its file every ``heartbeat_s``, and a claim whose mtime is older than its
  ``expire_s`` (the holder's own, written in the file) is stale. Hosts' clocks must agree to well within it.
- One claim per run per process: claiming a run this process holds is refused (a nested claim's release would end
  the outer one). A forked child (a DataLoader worker) or a spawned copy (DDP) neither refreshes nor releases it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fashion_cnn.errors import FashionCNNError

CLAIM = re.compile(r"\.claim-(\d+)\.json")
HEARTBEAT_S, EXPIRE_S = 30.0, 90.0
HOST, PROC = socket.gethostname(), Path("/proc/self/stat").is_file()


def _boot_id() -> str | None:
    """This machine's boot id: a pid checked on the same host name but another machine (or boot) means nothing."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


BOOT = _boot_id()


class ClaimError(FashionCNNError):
    """A run directory that cannot be claimed (it does not exist, may not be written, has no room), or claim settings
    that cannot work."""


class RunBusy(ClaimError):
    """A run directory another live process (or this one) has claimed."""


@dataclass(frozen=True)
class Holder:
    """A live or stale claim, as its file says; ``host`` and ``pid`` are None in a file its writer did not finish."""

    path: Path
    host: str | None
    pid: int | None
    since: float  # when it was taken (seconds since the epoch)
    heartbeat: float  # its last refresh: the file's mtime
    expire_s: float
    local: bool  # on this machine, where its pid is checked
    alive: bool

    def busy(self, run_dir: Path) -> str:
        """The one-line refusal for a claim on ``run_dir``: who holds it and what to do."""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        left = max(0.0, self.heartbeat + self.expire_s - time.time())
        if self.pid is None:
            return (f"{run_dir} is being claimed by a process that has not finished writing {self.path.name} (at "
                    f"{when}): try again in {left:.0f} s, or remove {self.path} if no process trains there")
        who = f"pid {self.pid} on {self.host}, since {when}"
        if self.local and self.pid == os.getpid():
            return (f"{run_dir} is already claimed by this process ({who}): a run has one writer; release that "
                    f"claim first, or train into another run directory")
        if self.local:
            return f"{run_dir} is being trained by {who}: wait for it to end, or stop it (kill {self.pid}) and retry"
        return (f"{run_dir} is being trained by {who}: wait for it to end, or stop that process; if it is known "
                f"dead, its claim expires in {left:.0f} s (after {self.expire_s:g} s without a heartbeat), or remove "
                f"{self.path}")


def _start_time(pid: int) -> int | None:
    """The process's start time (/proc/<pid>/stat field 22), None when it does not run (a zombie no longer does)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # field 3 on: the name may hold ")"
        return None if fields[0] in ("Z", "X") else int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def pid_runs(pid: int) -> bool:
    """Whether a process ``pid`` runs, where /proc does not say (macOS); Windows' os.kill would end it: unknown."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's
        pass
    return True


def _claims(run_dir: Path) -> dict[int, Path]:
    try:
        return {int(m.group(1)): p for p in run_dir.iterdir() if (m := CLAIM.fullmatch(p.name))}
    except OSError:
        return {}


def _read(path: Path, expire_s: float) -> Holder | None:
    """The claim in ``path``; None when released or gone. ``expire_s``: the claim's when its file does not say."""
    try:
        with path.open("rb") as f:  # stat after open: NFS revalidates a file's cached attributes on open
            heartbeat, data = os.fstat(f.fileno()).st_mtime, f.read()
    except OSError:
        return None
    try:
        record = json.loads(data)
    except ValueError:  # a writer killed between making the file and writing it: judged by its mtime alone
        record = {}
    record = record if isinstance(record, dict) else {}
    if record.get("released"):
        return None
    host, pid, start = record.get("host"), record.get("pid"), record.get("start")
    host, pid = (host, pid) if isinstance(host, str) and isinstance(pid, int) else (None, None)
    since, expire = record.get("since"), record.get("expire_s")
    since = since if isinstance(since, (int, float)) else heartbeat
    expire = expire if isinstance(expire, (int, float)) else expire_s
    fresh, local = time.time() - heartbeat < expire, pid is not None and host == HOST and record.get("boot") == BOOT
    if local and PROC and isinstance(start, int):
        alive = _start_time(pid) == start
    else:
        alive = fresh and (not local or pid_runs(pid))
    return Holder(path, host, pid, since, heartbeat, expire, local, alive)


def holder(run_dir: str | Path, expire_s: float = EXPIRE_S) -> Holder | None:
    """Who holds ``run_dir``'s claim (``alive`` says whether it still counts), or None when nobody does."""
    claims = _claims(Path(run_dir))
    return _read(claims[max(claims)], expire_s) if claims else None


class RunClaim:
    """``with RunClaim(run_dir):`` trains with the claim held; :class:`RunBusy` when a live process holds it."""

    def __init__(self, run_dir: str | Path, heartbeat_s: float = HEARTBEAT_S, expire_s: float = EXPIRE_S) -> None:
        if not 0 < heartbeat_s < expire_s:
            raise ClaimError(f"a claim's heartbeat_s ({heartbeat_s}) must be above 0 and below its expire_s "
                             f"({expire_s}): give expire_s a few heartbeats, as the defaults {HEARTBEAT_S:g} and "
                             f"{EXPIRE_S:g} do")
        self.run_dir, self.heartbeat_s, self.expire_s = Path(run_dir), heartbeat_s, expire_s
        self.path: Path | None = None  # our claim file while we hold it
        self._number, self._pid, self._record = -1, os.getpid(), {}
        self._stop, self._thread = threading.Event(), None

    def acquire(self) -> RunClaim:
        """Take the claim, or raise :class:`RunBusy` naming its live holder (:class:`ClaimError`: no such run)."""
        top = max(_claims(self.run_dir), default=-1)
        while True:
            held = _read(self.run_dir / f".claim-{top}.json", self.expire_s) if top >= 0 else None
            if held is not None and held.alive:
                raise RunBusy(held.busy(self.run_dir))
            path = self.run_dir / f".claim-{top + 1}.json"
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:  # another process took top + 1 first: judge its claim
                top += 1
                continue
            except OSError as err:
                raise self._cannot(err) from None
            me = os.getpid()
            self._record = {"host": HOST, "boot": BOOT, "pid": me, "start": _start_time(me) if PROC else None,
                            "since": time.time(), "heartbeat_s": self.heartbeat_s, "expire_s": self.expire_s}
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(self._record, f)
            except OSError as err:  # a full disk, say: an empty claim would refuse everyone for expire_s
                path.unlink(missing_ok=True)
                raise self._cannot(err) from None
            claims = _claims(self.run_dir)
            if max(claims, default=top + 1) > top + 1:  # one who looked after us replaced what we replaced
                path.unlink(missing_ok=True)  # not the highest: nobody reads it, nobody makes it again
                top = max(claims)
                continue
            for number, older in claims.items():
                if number <= top:
                    older.unlink(missing_ok=True)
            self.path, self._number, self._pid, self._stop = path, top + 1, me, threading.Event()
            self._thread = threading.Thread(target=self._beat, args=(path, self._stop), daemon=True)
            self._thread.start()
            return self

    def _cannot(self, err: OSError) -> ClaimError:
        return ClaimError(f"cannot claim {self.run_dir} ({err.strerror}): train into a run directory that exists, "
                          f"that you may write to, and that has room for a small file")

    def _beat(self, path: Path, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_s):
            try:
                os.utime(path)
            except OSError:  # removed, with its run directory or by a process that took a claim judged stale
                return

    def release(self) -> None:
        """End the claim, in the process that took it only; the file stays, marked released."""
        if self.path is None or os.getpid() != self._pid:  # a forked or spawned copy: the claim is its parent's
            return
        path, self.path = self.path, None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)  # not longer: a hung network filesystem must not hang the end of a run
        if max(_claims(self.run_dir), default=-1) > self._number:
            path.unlink(missing_ok=True)  # taken over while we were judged gone: not the highest, not ours to mark
            return
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:  # replaced whole, so that a reader never sees a half-written (so, for a while, live) file
            tmp.write_text(json.dumps({**self._record, "released": time.time()}))
            os.replace(tmp, path)
        except OSError:  # a full disk (a live-looking claim would refuse this process's own resume), or the run
            tmp.unlink(missing_ok=True)  # directory is gone (a failed new run's is removed whole)
            path.unlink(missing_ok=True)

    def __getstate__(self) -> dict:
        """A copy sent to a spawned process, without the heartbeat thread: only this process refreshes and releases."""
        return {**self.__dict__, "_stop": None, "_thread": None}

    def __enter__(self) -> RunClaim:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
