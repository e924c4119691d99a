"""A real single-node Slurm for tests, from Debian's packages (slurmctld, slurmd,
slurm-client, munge; ``.ci/run`` installs them): munged, slurmctld and slurmd started as
this process's children and stopped by PID, their configuration, keys, state, spool and
logs in a temp folder, the node and controller on 127.0.0.1 at free ports. Nothing is
installed or written outside the folder; clients find it through ``SLURM_CONF``."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel",
            "scontrol")
PARTITION = "debug"


def missing() -> list[str]:
    """The Slurm and munge programs this machine lacks."""
    return [b for b in BINARIES if shutil.which(b) is None
            and not Path("/usr/sbin", b).exists()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _program(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class SlurmCluster:
    """One node (this machine's CPUs, ``memory_mb`` of its memory) in one partition,
    ``debug``; no accounting (``sacct`` answers that it is disabled), as on many small
    clusters."""

    def __init__(self, memory_mb: int = 4096) -> None:
        # short: munge's socket path must fit a unix socket's 108 bytes
        self.folder = Path(tempfile.mkdtemp(prefix="fs-slurm-"))
        self.cpus = os.cpu_count() or 1
        self.memory_mb = memory_mb
        self.conf = self.folder / "slurm.conf"
        self.env = {"SLURM_CONF": str(self.conf)}
        self._procs: list[subprocess.Popen] = []

    def _write_config(self) -> None:
        d = self.folder
        for sub in ("state", "spool", "munge", "log"):
            (d / sub).mkdir(mode=0o700)
        key = d / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.conf.write_text(f"""\
ClusterName=featstore-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser={os.environ.get("USER", "root") if os.getuid() else "root"}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge/munge.socket
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU={self.memory_mb // self.cpus}
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=3
NodeName=node1 NodeHostname=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} \
RealMemory={self.memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes=node1 Default=YES MaxTime=INFINITE State=UP
""")

    def start(self, timeout: float = 30.0) -> SlurmCluster:
        """Start munged, slurmctld and slurmd; return once the node is idle."""
        self._write_config()
        d, t0 = self.folder, time.monotonic()
        log = (d / "log" / "daemons.log").open("ab")
        munge = [_program("munged"), "-F", "--force", f"--key-file={d}/munge/munge.key",
                 f"--socket={d}/munge/munge.socket", f"--pid-file={d}/munge/munged.pid",
                 f"--log-file={d}/log/munged.log", f"--seed-file={d}/munge/seed"]
        self._procs.append(subprocess.Popen(munge, stdout=log, stderr=log))
        while not (d / "munge" / "munge.socket").exists():
            self._alive_or_fail(t0, timeout)
            time.sleep(0.05)
        env = {**os.environ, **self.env}
        for cmd in ([_program("slurmctld"), "-D", "-f", str(self.conf)],
                    [_program("slurmd"), "-D", "-f", str(self.conf), "-N", "node1"]):
            self._procs.append(subprocess.Popen(cmd, stdout=log, stderr=log, env=env))
        while "idle" not in self.run("sinfo", "-h", "-o", "%T").stdout:
            self._alive_or_fail(t0, timeout)
            time.sleep(0.1)
        self.started_in = time.monotonic() - t0
        return self

    def _alive_or_fail(self, t0: float, timeout: float) -> None:
        dead = [p.args[0] for p in self._procs if p.poll() is not None]
        if dead or time.monotonic() - t0 > timeout:
            logs = "\n".join(f.read_text(errors="replace")[-1500:]
                             for f in sorted((self.folder / "log").glob("*.log")))
            self.stop()
            raise RuntimeError(f"Slurm did not start ({', '.join(dead) or 'timed out'}):\n"
                               f"{logs}")

    def run(self, *cmd: str, check: bool = False) -> subprocess.CompletedProcess:
        """A Slurm client command against this cluster."""
        return subprocess.run([_program(cmd[0]), *cmd[1:]], capture_output=True, text=True,
                              env={**os.environ, **self.env}, check=check, timeout=60)

    def jobs(self, states: str = "all") -> dict[str, tuple[str, str]]:
        """Job id -> (state, reason), as squeue lists them."""
        out = self.run("squeue", "-h", "-t", states, "-o", "%i|%T|%r").stdout
        return {i: (s, r) for i, s, r in (ln.split("|") for ln in out.splitlines() if ln)}

    def wait_for(self, condition, timeout: float = 60.0, every: float = 0.2):
        """Poll ``condition(jobs)`` until it returns something truthy; that value."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            value = condition(self.jobs())
            if value:
                return value
            time.sleep(every)
        raise AssertionError(f"not within {timeout} s; jobs: {self.jobs()}")

    def stop(self) -> None:
        """Cancel every job, then stop the daemons (SIGTERM, then SIGKILL) and remove the
        folder."""
        if self._procs and self._procs[-1].poll() is None:
            self.run("scancel", "--full", *self.jobs("pending,running,suspended"))
            time.sleep(0.5)
        for p in reversed(self._procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self._procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._procs.clear()
        shutil.rmtree(self.folder, ignore_errors=True)
