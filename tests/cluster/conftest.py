"""The services of the tests marked ``cluster`` (``make test-cluster``): a cluster on this one machine, brought up
from Debian's packages and taken down again after the session.

- ``postgres``: a PostgreSQL 15 server (``initdb`` and ``pg_ctl`` as the ``postgres`` user), listening only on
  127.0.0.1 on a free port, with a database and a user whose password is in a ``~/.pgpass``-style file
  (``PGPASSFILE``): no test puts the password on a command line or in a URL.
- ``slurm``: a one-node SLURM: a munge key and ``munged`` on its own socket, then ``slurmctld`` and ``slurmd`` (as
  root, on free ports of 127.0.0.1) for a node named after this host, with array jobs and requeueing allowed;
  clients find it through ``SLURM_CONF``.
- ``torchrun_nodes``: two ``torchrun`` launchers as the two nodes of one DDP run (no daemon is needed for that).

Each service lives in its own temporary directory. Its daemons are this process's children, started and stopped
by pid; the teardown runs also when a test fails or the session is interrupted (Ctrl-C, or SIGTERM, which is
turned into Ctrl-C while a service is up), and checks with ``pgrep`` that nothing it started is left, no port it
chose is still listening, and no directory is left on disk. A daemon also gets SIGTERM when this process dies
without a teardown (SIGKILL).

It needs root (the SLURM daemons run as root, PostgreSQL as ``postgres``) and installs what is missing with
apt-get; where either is not there, the tests that use a service are skipped and say why.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
PG_BIN = Path("/usr/lib/postgresql/15/bin")
# What each Debian package installs that the services run: a missing one means the package is to be installed.
PACKAGES = {
    "postgresql": [PG_BIN / "initdb", PG_BIN / "pg_ctl", PG_BIN / "psql"],
    "munge": [Path("/usr/sbin/munged"), Path("/usr/sbin/mungekey"), Path("/usr/bin/munge")],
    "slurm-wlm": [Path("/usr/sbin/slurmctld"), Path("/usr/sbin/slurmd"), Path("/usr/bin/sbatch")],
}
START_TIMEOUT = 60  # seconds a daemon has to come up (the machine may be busy with other jobs)


# --- packages, ports and processes ---------------------------------------------------------------------------------

def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the cluster services need root: the SLURM daemons run as root and PostgreSQL as its own user")


def ensure_packages(*packages: str) -> None:
    """Install the Debian ``packages`` whose programs are missing, with apt-get (as root); skip where it cannot."""
    missing = [p for p in packages if not all(path.exists() for path in PACKAGES[p])]
    if not missing:
        return
    if shutil.which("apt-get") is None:
        pytest.skip(f"{' and '.join(missing)} not installed, and no apt-get here to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # another apt-get on this machine holds dpkg's lock for a while: wait for it rather than fail
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=300", *missing]
    done = subprocess.run(install, env=env, capture_output=True, text=True)
    if done.returncode != 0:  # a package list older than the mirror's files: refresh it once
        subprocess.run(["apt-get", "update", "-q", "-o", "DPkg::Lock::Timeout=300"], env=env, capture_output=True)
        done = subprocess.run(install, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"apt-get could not install {missing}: {(done.stderr or done.stdout)[-2000:]}")


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 now (held together while chosen, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def listening(port: int) -> bool:
    """Whether any process listens on TCP ``port`` (IPv4 or IPv6), from the kernel's socket tables."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                return True
    return False


_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_this_process() -> None:
    """preexec_fn: the daemon gets SIGTERM when the test process dies without its teardown (PR_SET_PDEATHSIG)."""
    _libc.prctl(1, signal.SIGTERM)


def start_daemon(cmd: Sequence[str | Path], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``cmd`` in the foreground of its own process (so its pid is the daemon's), its output to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, preexec_fn=_die_with_this_process)


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL if it has not ended after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pgrep(pattern: str) -> list[int]:
    """The pids whose command line contains ``pattern`` (``pgrep -f``), this process aside."""
    out = subprocess.run(["pgrep", "-f", re.escape(pattern)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if int(p) != os.getpid()]


def pids_with_env(name: str, value: str) -> list[int]:
    """The pids whose environment has ``name=value``: what a daemon started (SLURM's step daemons and the jobs'
    processes inherit the ``SLURM_CONF`` of their slurmd or of the test's sbatch), this process aside."""
    wanted = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if wanted in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:  # ended meanwhile, or a kernel thread
                pass
    return found


def kill_all(pids: Callable[[], list[int]], timeout: float = 10) -> None:
    """SIGKILL every process ``pids()`` names until it names none (or ``timeout`` seconds pass)."""
    deadline = time.monotonic() + timeout
    while (left := pids()) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def wait_until(what: str, ready: Callable[[], bool], alive: subprocess.Popen | None, log: Path | None,
               timeout: float = START_TIMEOUT) -> None:
    """Poll ``ready()`` until it is true; fail with the daemon's log if ``alive`` ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        if (alive is not None and alive.poll() is not None) or time.monotonic() > deadline:
            why = "exited" if alive is not None and alive.poll() is not None else f"not ready after {timeout} s"
            text = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
            raise RuntimeError(f"{what} {why}; its log ends:\n{text}")
        time.sleep(0.25)


def check_gone(base: Path, problems: list[str]) -> None:
    """Remove a service's directory, then fail the teardown if the service left something behind."""
    shutil.rmtree(base, ignore_errors=True)
    if base.exists():
        problems.append(f"{base} could not be removed")
    assert not problems, "; ".join(problems)


@pytest.fixture(scope="session")
def sigterm_as_interrupt() -> Iterator[None]:
    """While the services are up, SIGTERM to the test process is a Ctrl-C: pytest then tears the services down
    (by default SIGTERM ends the process at once, and its daemons would only get their parent-death signal)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def client_env(**extra: str) -> dict[str, str]:
    """This process's environment without an enclosing SLURM job's variables (this session may itself run in one),
    with the venv's programs first on PATH and this checkout's code importable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return {**env, **extra}


# --- PostgreSQL ----------------------------------------------------------------------------------------------------

@dataclass
class Postgres:
    """A running PostgreSQL server on 127.0.0.1, with one user who owns the databases the tests make."""

    port: int
    user: str
    database: str
    passfile: Path  # the user's password, in ~/.pgpass form (libpq reads it through PGPASSFILE)
    socket_dir: Path  # the superuser's way in (trust, over a Unix socket only root and postgres reach)

    @property
    def env(self) -> dict[str, str]:
        """What a client process needs in its environment to connect without being given the password."""
        return {"PGPASSFILE": str(self.passfile), "PGHOST": "127.0.0.1", "PGPORT": str(self.port),
                "PGUSER": self.user, "PGDATABASE": self.database}

    def url(self, database: str | None = None) -> str:
        """An SQLAlchemy URL for psycopg 3 (Optuna's ``--storage``), without the password: libpq reads PGPASSFILE."""
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database or self.database}"

    def sql(self, statements: str, database: str = "postgres") -> str:
        """Run SQL as the superuser (over the socket, from stdin: nothing secret on a command line); its output."""
        done = subprocess.run([str(PG_BIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.socket_dir),
                               "-p", str(self.port), "-U", "postgres", "-d", database, "-At", "-f", "-"],
                              input=statements, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")
        return done.stdout

    def new_database(self, name: str) -> str:
        """A new, empty database owned by the user (each test that needs Optuna's tables makes its own): its URL."""
        self.sql(f'CREATE DATABASE "{name}" OWNER "{self.user}";')
        return self.url(name)


def _as_postgres(cmd: Sequence[str | Path], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a PostgreSQL program as the ``postgres`` user (initdb and the server refuse to run as root)."""
    return subprocess.run([str(c) for c in cmd], user="postgres", group="postgres", extra_groups=[], cwd=cwd,
                          env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="session")
def postgres(sigterm_as_interrupt) -> Iterator[Postgres]:
    """A PostgreSQL 15 server for the session, in a temporary directory; stopped and removed after."""
    require_root()
    ensure_packages("postgresql")
    base = Path(tempfile.mkdtemp(prefix="fashion-cnn-postgres-"))
    base.chmod(0o711)  # the postgres user must reach its directory below; nothing here is listed to others
    home = base / "server"
    home.mkdir(mode=0o700)
    shutil.chown(home, "postgres", "postgres")
    data, sockets, log = home / "data", home / "sockets", home / "server.log"
    (port,) = free_ports(1)
    started = False
    try:
        done = _as_postgres([PG_BIN / "initdb", "-D", data, "-U", "postgres", "--auth-local=trust",
                             "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"], cwd=home)
        assert done.returncode == 0, f"initdb failed: {done.stderr[-2000:]}"
        sockets.mkdir(mode=0o700)
        shutil.chown(sockets, "postgres", "postgres")
        # durability off (fsync): a test database dies with the test
        options = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={sockets} "
                   f"-c unix_socket_permissions=0700 -c fsync=off -c full_page_writes=off")
        started = True  # from here on, a server may be running: the teardown stops it
        done = _as_postgres([PG_BIN / "pg_ctl", "-D", data, "-l", log, "-w", "-t", str(START_TIMEOUT), "-o", options,
                             "start"], cwd=home)
        assert done.returncode == 0, f"pg_ctl start failed: {done.stdout}{done.stderr}\n{_tail(log)}"
        password = secrets.token_hex(16)
        server = Postgres(port=port, user="fashion", database="fashion", passfile=base / "pgpass",
                          socket_dir=sockets)
        server.passfile.touch(mode=0o600)  # libpq ignores a password file that others can read
        server.passfile.write_text(f"127.0.0.1:{port}:*:{server.user}:{password}\n")
        server.sql(f"CREATE ROLE {server.user} LOGIN PASSWORD '{password}';")
        server.new_database(server.database)
        yield server
    finally:
        try:
            if started:
                _stop_postgres(data, home)
        finally:
            left = {f"PostgreSQL of {data} still runs": bool(pgrep(str(data))),
                    f"port {port} still listens after PostgreSQL stopped": listening(port)}
            check_gone(base, [problem for problem, found in left.items() if found])


def _stop_postgres(data: Path, home: Path) -> None:
    """pg_ctl's fast stop (it ends the sessions); if that fails, SIGKILL the server and its children by pid."""
    server_pids = pgrep(str(data))  # the postmaster: its command line names the data directory
    children = [pid for pid in _all_pids() if _parent(pid) in server_pids]  # its backends, named otherwise
    done = _as_postgres([PG_BIN / "pg_ctl", "-D", data, "-m", "fast", "-w", "-t", "30", "stop"], cwd=home)
    if done.returncode != 0 or pgrep(str(data)):
        kill_all(lambda: [p for p in [*server_pids, *children] if _exists(p)])


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and _parent(pid) is not None


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


# --- SLURM ---------------------------------------------------------------------------------------------------------

JOB_DONE = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE")


@dataclass
class Slurm:
    """A running one-node SLURM; ``env`` is what its clients (sbatch, srun, scontrol) need."""

    dir: Path
    conf: Path
    node: str
    cpus: int
    env: dict[str, str]

    def run(self, *cmd: str | Path, timeout: float = 120, env: dict[str, str] | None = None,
            cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """A SLURM client command (or anything to run against this cluster), with its output."""
        done = subprocess.run([str(c) for c in cmd], env={**self.env, **(env or {})}, cwd=cwd, capture_output=True,
                              text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(map(str, cmd))} exited {done.returncode}:\n{done.stdout}{done.stderr}")
        return done

    def sbatch(self, *args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
        """Submit a batch job (``sbatch ARGS``) and return its id at once."""
        return int(self.run("sbatch", "--parsable", *args, env=env, cwd=cwd).stdout.split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """What ``scontrol show job`` says of a job (its first record: an array's first task)."""
        line = self.run("scontrol", "-o", "show", "job", str(job_id)).stdout.splitlines()[0]
        return dict(re.findall(r"(\w+)=(\S*)", line))

    def wait(self, job_id: int, timeout: float = 300) -> list[dict[str, str]]:
        """Wait until a job has ended; what ``scontrol`` says of it (of each task, for an array). A job still
        running after ``timeout`` seconds is cancelled and fails the test."""
        deadline = time.monotonic() + timeout
        while True:
            records = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in
                       self.run("scontrol", "-o", "show", "job", str(job_id)).stdout.splitlines()]
            if all(r["JobState"] in JOB_DONE for r in records):
                return records
            if time.monotonic() > deadline:
                self.run("scancel", str(job_id), check=False)
                raise AssertionError(f"job {job_id} still {records[0]['JobState']} after {timeout} s; cancelled")
            time.sleep(0.5)

    def node_state(self) -> str:
        done = self.run("sinfo", "-h", "-n", self.node, "-o", "%T", check=False, timeout=30)
        return done.stdout.strip() if done.returncode == 0 else ""


def slurm_conf(base: Path, node: str, cpus: int, memory_mb: int, ctld_port: int, slurmd_port: int) -> str:
    """A slurm.conf for one node on this machine: root runs everything, no cgroups, state in ``base``."""
    return f"""\
# Written by tests/cluster/conftest.py for one test session.
ClusterName=fashioncnn
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={base}/munge/munge.socket
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/slurmctld.pid
SlurmdPidFile={base}/slurmd.pid
SlurmctldLogFile={base}/slurmctld.log
SlurmdLogFile={base}/slurmd.log
PlugStackConfig={base}/plugstack.conf
# No cgroups: processes are tracked by their parent pids, tasks are not bound to CPUs.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# This file's node, not the hardware's layout (its sockets and cores), is what the scheduler uses.
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=600
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=test Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="session")
def slurm(sigterm_as_interrupt) -> Iterator[Slurm]:
    """A one-node SLURM for the session (munged, slurmctld, slurmd), in a temporary directory; its jobs cancelled
    and its daemons stopped after."""
    require_root()
    ensure_packages("munge", "slurm-wlm")
    base = Path(tempfile.mkdtemp(prefix="fashion-cnn-slurm-"))
    base.chmod(0o711)  # munged wants every directory above its socket searchable by all
    (base / "munge").mkdir(mode=0o755)
    for name in ("state", "spool"):
        (base / name).mkdir(mode=0o700)
    (base / "plugstack.conf").touch()  # no SPANK plugins (not the system's /etc/slurm/plugstack.conf)
    node = socket.gethostname().split(".")[0]
    memory_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.9)
    ctld_port, slurmd_port = free_ports(2)
    conf = base / "slurm.conf"
    conf.write_text(slurm_conf(base, node, 2, memory_mb, ctld_port, slurmd_port))
    cluster = Slurm(dir=base, conf=conf, node=node, cpus=2, env=client_env(SLURM_CONF=str(conf)))
    daemon_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SLURM_CONF": str(conf)}  # what finds its leftovers
    daemons: list[subprocess.Popen] = []
    try:
        munge = base / "munge"
        subprocess.run(["mungekey", "--create", f"--keyfile={munge / 'munge.key'}"], check=True, capture_output=True)
        socket_path = munge / "munge.socket"
        daemons.append(start_daemon(
            ["munged", "--foreground", f"--socket={socket_path}", f"--key-file={munge / 'munge.key'}",
             f"--log-file={munge / 'munged.log'}", f"--pid-file={munge / 'munged.pid'}",
             f"--seed-file={munge / 'munged.seed'}"], base / "munged.out", daemon_env))
        wait_until("munged", lambda: subprocess.run(["munge", "-n", f"--socket={socket_path}"],
                                                    capture_output=True).returncode == 0,
                   daemons[-1], base / "munged.out")
        daemons.append(start_daemon(["slurmctld", "-D", "-f", conf], base / "slurmctld.out", daemon_env))
        wait_until("slurmctld", lambda: "UP" in cluster.run("scontrol", "ping", check=False, timeout=30).stdout,
                   daemons[-1], base / "slurmctld.out")
        daemons.append(start_daemon(["slurmd", "-D", "-f", conf, "-N", node], base / "slurmd.out", daemon_env))
        wait_until(f"slurmd (node {node} idle in sinfo)", lambda: cluster.node_state() == "idle", daemons[-1],
                   base / "slurmd.out")
        yield cluster
    finally:
        try:
            _stop_slurm(cluster, daemons)
        finally:
            left = {f"a daemon of {base} still runs": bool(pgrep(str(base))),
                    f"a process of {conf} (a step or a job) still runs": bool(pids_with_env("SLURM_CONF", str(conf))),
                    f"port {ctld_port} or {slurmd_port} still listens after SLURM stopped":
                        listening(ctld_port) or listening(slurmd_port)}
            check_gone(base, [problem for problem, found in left.items() if found])


def _stop_slurm(cluster: Slurm, daemons: list[subprocess.Popen]) -> None:
    """Cancel every job, stop slurmd, slurmctld and munged (in that order, by pid), then SIGKILL whatever they or
    the jobs left: step daemons and job processes carry this cluster's SLURM_CONF in their environment."""
    if len(daemons) >= 2 and daemons[1].poll() is None:  # slurmctld is up: let it end the jobs the proper way
        cluster.run("scancel", "--user", "root", check=False, timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done = cluster.run("squeue", "-h", "-o", "%i", check=False, timeout=30)
            if done.returncode != 0 or not done.stdout.strip():
                break
            time.sleep(0.5)
    for daemon in reversed(daemons):
        stop_process(daemon)
    kill_all(lambda: pgrep(str(cluster.dir)) + pids_with_env("SLURM_CONF", str(cluster.conf)))


# --- torchrun ------------------------------------------------------------------------------------------------------

TORCHRUN_SCRIPT = REPO / "examples" / "torchrun" / "ddp_node.sh"


@dataclass
class Launched:
    node_rank: int
    returncode: int
    output: str


@pytest.fixture
def torchrun_nodes() -> Iterator[Callable[..., list[Launched]]]:
    """A function that runs ``examples/torchrun/ddp_node.sh ARGS`` as every node of one DDP job on this machine:
    ``nnodes`` launchers at once (node ranks 0..n-1, the master at 127.0.0.1 on a free port), each
    ``nproc_per_node`` processes; it returns each launcher's exit status and output once all have ended. Launchers
    still running after ``timeout`` seconds are killed with their workers (each has its own process group)."""
    started: list[subprocess.Popen] = []

    def run(*args: str, cwd: Path, nnodes: int = 2, nproc_per_node: int = 1, timeout: float = 300,
            env: dict[str, str] | None = None) -> list[Launched]:
        (port,) = free_ports(1)
        procs = []
        with tempfile.TemporaryDirectory() as logs:  # files, not pipes: a full pipe would stall its node
            for rank in range(nnodes):
                node_env = client_env(NODE_RANK=str(rank), NNODES=str(nnodes), NPROC_PER_NODE=str(nproc_per_node),
                                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **(env or {}))
                with open(Path(logs) / f"node{rank}.log", "w") as log:
                    procs.append(subprocess.Popen(["bash", str(TORCHRUN_SCRIPT), *args], cwd=cwd, env=node_env,
                                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            started.extend(procs)
            deadline = time.monotonic() + timeout
            results = []
            for rank, proc in enumerate(procs):
                killed = ""
                try:
                    proc.wait(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    _kill_group(proc)
                    killed = f"\n[killed after {timeout} s]"
                output = (Path(logs) / f"node{rank}.log").read_text(errors="replace")
                results.append(Launched(rank, proc.returncode, output + killed))
        return results

    yield run
    for proc in started:  # a test that failed midway: no launcher or worker outlives it
        _kill_group(proc)


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
