"""One writer per run: a claim on a run directory refuses other processes while its holder lives, and ends with it
(kill -9 included), or, for a holder on another host, when its heartbeat stops."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fashion_cnn.claim import BOOT, HOST, ClaimError, RunBusy, RunClaim, _start_time, holder

ROOT = Path(__file__).parents[1]  # subprocesses import this checkout's fashion_cnn
HOLD = ("import sys, time; from fashion_cnn.claim import RunClaim; "
        "RunClaim(sys.argv[1], heartbeat_s=float(sys.argv[2]), expire_s=float(sys.argv[3])).acquire(); "
        "print('held', flush=True); time.sleep(60)")
TRY = ("import sys; from fashion_cnn.claim import RunClaim; from fashion_cnn.commands import run; "
       "sys.exit(run('claimer', lambda: RunClaim(sys.argv[1]).acquire() and 0))")
WHEN = r"since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


def _hold(run_dir: Path, heartbeat_s: float = 30, expire_s: float = 90) -> subprocess.Popen:
    """A real process that takes the claim on ``run_dir`` and keeps it until it is killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir), str(heartbeat_s), str(expire_s)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


@pytest.fixture
def held(tmp_path):
    proc = _hold(tmp_path)
    yield proc
    proc.kill()
    proc.wait()


def _claim_files(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.glob(".claim-*"))


def test_a_claim_is_held_until_released_and_then_taken_again(tmp_path):
    with RunClaim(tmp_path) as claim:
        now = holder(tmp_path)
        assert (now.host, now.pid, now.alive, now.local) == (HOST, os.getpid(), True, True)
        assert claim.path == tmp_path / ".claim-0.json"
    assert holder(tmp_path) is None  # released: the file stays, marked so
    assert json.loads((tmp_path / ".claim-0.json").read_text())["released"]
    with RunClaim(tmp_path):
        assert holder(tmp_path).alive and _claim_files(tmp_path) == [".claim-1.json"]
    assert holder(tmp_path) is None


def test_this_process_cannot_claim_a_run_twice(tmp_path):
    with RunClaim(tmp_path), pytest.raises(RunBusy, match=f"already claimed by this process .pid {os.getpid()} "):
        RunClaim(tmp_path).acquire()
    assert holder(tmp_path) is None  # the refusal did not end the first claim early, nor keep it after


def test_another_process_is_refused_in_one_line_naming_the_holder(tmp_path, held):
    out = subprocess.run([sys.executable, "-c", TRY, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith(f"claimer: error: {tmp_path} is being trained by ")
    assert re.search(f"pid {held.pid} on {re.escape(HOST)}, {WHEN}: wait for it to end, or stop it "
                     f"\\(kill {held.pid}\\)", out.stderr)
    with pytest.raises(RunBusy, match=f"pid {held.pid} on"):  # and in this process as well
        RunClaim(tmp_path).acquire()


def test_a_holder_killed_with_sigkill_leaves_the_claim_free_at_once(tmp_path, held):
    held.send_signal(signal.SIGKILL)
    os.waitid(os.P_PID, held.pid, os.WEXITED | os.WNOWAIT)  # dead, but not waited for: a zombie still has its pid
    assert holder(tmp_path).alive is False
    with RunClaim(tmp_path):
        assert holder(tmp_path).pid == os.getpid()
        assert _claim_files(tmp_path) == [".claim-1.json"]  # the dead claim is removed by the one that replaced it


def _write_claim(run_dir: Path, **record: object) -> Path:
    path = run_dir / ".claim-0.json"
    path.write_text(json.dumps(record))
    return path


def test_a_live_pid_with_another_start_time_is_a_reused_pid(tmp_path):
    start = _start_time(os.getpid())
    assert start is not None
    _write_claim(tmp_path, host=HOST, boot=BOOT, pid=os.getpid(), start=start + 1, since=time.time())
    assert holder(tmp_path).alive is False
    RunClaim(tmp_path).acquire().release()


def test_a_claim_from_another_host_counts_until_its_heartbeat_expires(tmp_path):
    path = _write_claim(tmp_path, host="elsewhere", pid=4242, since=time.time(), expire_s=1.0)
    claim = RunClaim(tmp_path, heartbeat_s=0.3, expire_s=1.0)  # a pid there cannot be checked: only its heartbeat
    with pytest.raises(RunBusy, match=f"pid 4242 on elsewhere, {WHEN}: .* if it is known dead, its claim expires "
                                      f"in 1 s .* or remove {re.escape(str(path))}$"):
        claim.acquire()
    time.sleep(0.8)
    os.utime(path)  # its holder's heartbeat
    time.sleep(0.3)  # over 1 s after it was taken, 0.3 s after its heartbeat
    with pytest.raises(RunBusy, match="elsewhere"):
        claim.acquire()
    time.sleep(1.1)  # 1.4 s without a heartbeat
    with claim:
        assert holder(tmp_path).pid == os.getpid() and _claim_files(tmp_path) == [".claim-1.json"]


def test_the_heartbeat_keeps_a_claim_fresh_until_its_holder_dies(tmp_path):
    proc = _hold(tmp_path, heartbeat_s=0.1, expire_s=0.5)
    try:
        for _ in range(6):  # 1.5 s: without a heartbeat, from the third look on its file would be too old
            time.sleep(0.25)
            assert time.time() - holder(tmp_path).heartbeat < 0.6  # what another host would judge it by
    finally:
        proc.kill()
        proc.wait()
    beat = holder(tmp_path).heartbeat
    time.sleep(0.3)
    assert holder(tmp_path).heartbeat == beat


@pytest.mark.parametrize("content", ["", '{"host": "some', "[1, 2]"])
def test_a_claim_file_left_unwritten_counts_only_until_it_expires(tmp_path, content):
    path = tmp_path / ".claim-0.json"  # a process killed between making the file and writing it
    path.write_text(content)
    claim = RunClaim(tmp_path, heartbeat_s=0.2, expire_s=0.6)
    with pytest.raises(RunBusy, match=f"has not finished writing .claim-0.json .*remove {re.escape(str(path))} if"):
        claim.acquire()
    time.sleep(0.7)
    with claim:
        assert holder(tmp_path).pid == os.getpid()


def _release_in_child(claim: RunClaim) -> None:
    claim.release()  # a DataLoader worker, say, that inherited the claim
    claim.__exit__(None, None, None)


def test_a_forked_or_spawned_copy_neither_releases_nor_refreshes_the_claim(tmp_path):
    with RunClaim(tmp_path) as claim:
        child = multiprocessing.get_context("fork").Process(target=_release_in_child, args=(claim,))
        child.start()
        child.join(timeout=30)
        assert child.exitcode == 0
        copy = "import pickle, sys; c = pickle.loads(sys.stdin.buffer.read()); c.release(); c.acquire()"
        out = subprocess.run([sys.executable, "-c", copy], cwd=ROOT, input=pickle.dumps(claim), capture_output=True,
                             timeout=60)
        assert out.returncode == 1 and b"RunBusy" in out.stderr  # its release did nothing; its own claim is refused
        assert holder(tmp_path).pid == os.getpid() and holder(tmp_path).alive
    assert holder(tmp_path) is None


def test_a_run_directory_that_does_not_exist_cannot_be_claimed(tmp_path):
    with pytest.raises(ClaimError, match=f"cannot claim {re.escape(str(tmp_path / 'nope'))} .No such file"):
        RunClaim(tmp_path / "nope").acquire()


def test_a_heartbeat_slower_than_the_expiry_is_refused(tmp_path):
    with pytest.raises(ClaimError, match=r"heartbeat_s \(5\) must be above 0 and below its expire_s \(5\)"):
        RunClaim(tmp_path, heartbeat_s=5, expire_s=5)


@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0, reason="mounting a tmpfs needs root on Linux")
def test_a_full_disk_refuses_the_claim_in_one_line_and_leaves_no_claim_behind(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        with open(disk / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):  # ENOSPC: full
            while f.write(b"\0" * 4096):
                pass
        with pytest.raises(ClaimError, match="No space left on device"):
            RunClaim(disk).acquire()
        assert _claim_files(disk) == []  # an empty one would refuse everyone for expire_s
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=False)


def _race(run_dirs: list[Path], barrier, results) -> None:
    for run_dir in run_dirs:
        barrier.wait()  # all at once
        try:
            RunClaim(run_dir, heartbeat_s=60, expire_s=120).acquire()  # kept until this process ends
            results.put((run_dir.name, os.getpid()))
        except RunBusy:
            results.put((run_dir.name, None))
    barrier.wait()  # a winner that ended before the others tried would leave them a dead claim to take


def test_processes_racing_for_a_run_have_exactly_one_winner(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    run_dirs = []
    for i in range(20):  # each way a run can be free: never claimed, released, its holder dead, its file unwritten
        run_dir = tmp_path / f"version_{i}"
        run_dir.mkdir()
        if i % 4 == 1:
            RunClaim(run_dir).acquire().release()
        elif i % 4 == 2:
            _write_claim(run_dir, host=HOST, boot=BOOT, pid=int(dead.stdout), start=-1, since=time.time())
        elif i % 4 == 3:
            os.utime(_write_claim(run_dir), (time.time() - 3600,) * 2)
        run_dirs.append(run_dir)
    n = 8
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(run_dirs, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in range(n * len(run_dirs))]
    for p in procs:
        p.join(timeout=60)
    for run_dir in run_dirs:
        winners = [pid for name, pid in outcomes if name == run_dir.name and pid is not None]
        assert len(winners) == 1, run_dir.name
        assert holder(run_dir).pid == winners[0]
        fresh = int(run_dir.name.removeprefix("version_")) % 4 == 0
        assert _claim_files(run_dir) == [".claim-0.json" if fresh else ".claim-1.json"]  # the replaced one removed


def _churn(run_dir: Path, tries: int, results) -> None:
    inside = wins = 0
    for _ in range(tries):
        try:
            claim = RunClaim(run_dir, heartbeat_s=60, expire_s=120).acquire()
        except RunBusy:
            continue
        try:  # a marker only the one holder may make: it exists if another holds the claim too
            os.close(os.open(run_dir / "inside", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            inside += 1
        else:
            wins += 1
            time.sleep(0.002)  # trains a while: long enough for a second holder to overlap
            (run_dir / "inside").unlink()
        claim.release()
    results.put((wins, inside))


def test_processes_taking_and_releasing_a_run_never_hold_it_together(tmp_path):
    n = 8
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_churn, args=(tmp_path, 100, results)) for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in range(n)]
    for p in procs:
        p.join(timeout=60)
    assert sum(wins for wins, _ in outcomes) > 0 and sum(inside for _, inside in outcomes) == 0
    assert holder(tmp_path) is None and len(_claim_files(tmp_path)) == 1  # the last release's, marked released
