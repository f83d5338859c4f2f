"""A throwaway one-node SLURM cluster on localhost, for testing profiles/slurm against real daemons.

Debian's munge, slurmctld and slurmd run as plain child processes (no systemd) with every file in
one private directory: their own munge key and socket, slurm.conf/gres.conf, free TCP ports, state
and spool folders. Clients reach it through SLURM_CONF (`Cluster.env`), so nothing under /etc is
touched and two clusters on one machine do not meet. The node offers `cpus` CPUs and `gpus` GPU
gres backed by /dev/null: SLURM schedules and allocates them like real GPUs (a job gets
CUDA_VISIBLE_DEVICES), though no device is there for torch to find.

Run directly for a manual session:  python tests/workflow/slurm_cluster.py   (Ctrl-C stops it)
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACKAGES = ("munge", "slurmctld", "slurmd", "slurm-client")
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel")
NODE = "localhost"


class Unavailable(Exception):
    """SLURM cannot be installed or used here; the message says why (a test skips with it)."""


def missing_binaries():
    return [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


def ensure_installed(timeout_s=300):
    """Install Debian's SLURM and munge when they are missing; raise Unavailable when that is impossible.

    Serialized with a file lock: several test sessions on one machine must not run apt at once.
    """
    if not missing_binaries():
        return
    if os.geteuid() != 0:
        raise Unavailable(f"SLURM is not installed ({', '.join(missing_binaries())} missing) and not root")
    if shutil.which("apt-get") is None:
        raise Unavailable("SLURM is not installed and apt-get is not available")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    with open(Path(tempfile.gettempdir()) / "medflow-slurm-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not missing_binaries():
            return
        for cmd in (
            ["apt-get", "update"],
            ["apt-get", "install", "-y", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=300", *PACKAGES],
        ):
            try:
                done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
            except subprocess.TimeoutExpired:
                raise Unavailable(f"`{' '.join(cmd)}` took over {timeout_s} s") from None
            if done.returncode != 0:
                tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
                raise Unavailable(f"`{' '.join(cmd)}` failed: {' | '.join(tail)}")
    if missing_binaries():
        raise Unavailable(f"installed {PACKAGES} but still missing {missing_binaries()}")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mem_total_mb():
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 4096


def _die_with_parent():
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _sbin(name):
    return shutil.which(name) or str(Path("/usr/sbin", name))


class Cluster:
    """One controller and one node, in every partition of `partitions` (the first is the default);
    `start()` returns once the node is idle.

    Use as a context manager (or call `stop()` in a finalizer): every daemon it started is stopped,
    and jobs still queued are cancelled first so no slurmstepd outlives the cluster.
    """

    def __init__(self, root=None, cpus=2, gpus=1, partitions=("cpu", "gpu"), min_job_age_s=600):
        self.root = Path(root or tempfile.mkdtemp(prefix="medflow-slurm-"))
        self.cpus, self.gpus, self.min_job_age_s = cpus, gpus, min_job_age_s
        # Every partition holds the one node; the first is the default. Named like
        # profiles/slurm/partitions.yaml so the profile is tested as shipped.
        self.partitions = tuple(partitions)
        # Memory is no consumable here (CR_Core, no cgroups), but sbatch refuses a --mem above
        # RealMemory: declare at least 64 GB so the profile's requests fit on a small machine
        # (config_overrides lets the declaration exceed the hardware).
        self.real_memory_mb = max(65536, int(_mem_total_mb() * 0.9))
        self.conf = self.root / "etc" / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self._socket_dir = None
        if len(str(self.munge_socket)) > 100:  # a unix socket path holds at most 107 bytes
            self._socket_dir = tempfile.mkdtemp(prefix="medflow-munge-", dir="/tmp")
            self.munge_socket = Path(self._socket_dir) / "munge.socket"
        self.bin = self.root / "bin"
        self.env = dict(
            os.environ, SLURM_CONF=str(self.conf), PATH=os.pathsep.join([str(self.bin), os.environ.get("PATH", "")])
        )
        self._procs = {}

    # -- configuration ---------------------------------------------------------------------------
    def _write_config(self):
        for sub in ("bin", "etc", "munge", "state", "spool", "log", "run"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # Inside a job, snakemake-executor-plugin-slurm-jobstep 0.6.1 runs `srun` with every SLURM_*
        # variable removed, SLURM_CONF included, so srun would look for /etc/slurm/slurm.conf. Jobs
        # inherit PATH (sbatch --export=ALL): this srun puts SLURM_CONF back.
        srun = self.bin / "srun"
        srun.write_text(f'#!/bin/sh\nSLURM_CONF="{self.conf}" exec {shutil.which("srun") or "/usr/bin/srun"} "$@"\n')
        srun.chmod(0o755)
        (self.root / "munge").chmod(0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        host = socket.gethostname().split(".")[0]
        r = self.root
        self.conf.write_text(
            f"""# Written by tests/workflow/slurm_cluster.py: a private one-node cluster.
ClusterName=medflowtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
# No cgroups, no systemd, no accounting database: the plugin must poll with squeue, which sees a
# finished job for MinJobAge seconds.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MinJobAge={self.min_job_age_s}
ReturnToService=2
SlurmdParameters=config_overrides
GresTypes=gpu
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName={NODE} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.real_memory_mb} Gres=gpu:{self.gpus} State=UNKNOWN
"""
        )
        with open(self.conf, "a") as f:
            for i, name in enumerate(self.partitions):
                default = "YES" if i == 0 else "NO"
                f.write(f"PartitionName={name} Nodes={NODE} Default={default} MaxTime=INFINITE State=UP\n")
        files = ",".join(["/dev/null"] * self.gpus)
        (self.root / "etc" / "gres.conf").write_text(f"NodeName={NODE} Name=gpu File={files} Count={self.gpus}\n")

    # -- daemons ---------------------------------------------------------------------------------
    def _spawn(self, name, cmd):
        out = open(self.root / "log" / f"{name}.out", "w")
        # Own session: a Ctrl-C in the terminal running the tests does not reach the daemons before
        # stop() does. If this process dies without stop() (SIGKILL), the kernel sends them SIGTERM.
        self._procs[name] = subprocess.Popen(
            cmd,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        out.close()

    def _wait_for(self, what, check, timeout_s):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with {proc.returncode} while waiting for {what}\n" + self.log_tail()
                    )
            if check():
                return
            time.sleep(0.5)
        raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}\n" + self.log_tail())

    def run(self, *cmd, check=True):
        """Run a SLURM client command against this cluster; returns its stdout."""
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def node_state(self):
        done = subprocess.run(
            ["sinfo", "-h", "-N", "-n", NODE, "-o", "%T"], env=self.env, capture_output=True, text=True, timeout=30
        )
        # One line per partition the node is in; they agree.
        states = set(done.stdout.split()) if done.returncode == 0 else set()
        return states.pop() if len(states) == 1 else ",".join(sorted(states))

    def start(self, timeout_s=60):
        self._write_config()
        m = self.root / "munge"
        self._spawn(
            "munged",
            [
                _sbin("munged"),
                "--foreground",
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={m / 'munge.key'}",
                f"--pid-file={m / 'munged.pid'}",
                f"--seed-file={m / 'munged.seed'}",
                f"--log-file={self.root / 'log' / 'munged.log'}",
            ],
        )
        self._wait_for("the munge socket", self.munge_socket.exists, timeout_s)
        # -i: ignore state left by an earlier controller (there is none; the folder is new).
        self._spawn("slurmctld", [_sbin("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", [_sbin("slurmd"), "-D", "-N", NODE, "-f", str(self.conf)])
        self._wait_for("the node to be idle", lambda: self.node_state() == "idle", timeout_s)
        return self

    def stop(self):
        """Cancel remaining jobs, then stop slurmd, slurmctld and munged (in that order)."""
        try:
            if self._procs.get("slurmctld") and self._procs["slurmctld"].poll() is None and self.active_jobs():
                subprocess.run(
                    ["scancel", "--full", *self.active_jobs()], env=self.env, capture_output=True, timeout=30
                )
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and self.active_jobs():
                    time.sleep(0.5)
        except (OSError, subprocess.SubprocessError):
            pass  # the daemons are stopped below whatever happened to the jobs
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self._procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._socket_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def active_jobs(self):
        done = subprocess.run(
            ["squeue", "-h", "-t", "PD,R,CG,S", "-o", "%i"], env=self.env, capture_output=True, text=True, timeout=30
        )
        return done.stdout.split() if done.returncode == 0 else []

    def log_tail(self, lines=15):
        parts = []
        for f in sorted((self.root / "log").glob("*")):
            text = f.read_text(errors="replace").strip().splitlines()[-lines:]
            if text:
                parts.append(f"--- {f.name}\n" + "\n".join(text))
        return "\n".join(parts)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


if __name__ == "__main__":
    ensure_installed()
    with Cluster(root=sys.argv[1] if len(sys.argv) > 1 else None) as cluster:
        print(f"cluster up; in another shell:\n  export SLURM_CONF={cluster.conf} PATH={cluster.bin}:$PATH", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
