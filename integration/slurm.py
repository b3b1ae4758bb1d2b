"""A one-node Slurm of the test's own: munged, slurmctld and slurmd with their own key,
config, ports, state and logs under one directory; commands reach it through SLURM_CONF.
Debian's ``slurm-wlm`` and ``munge`` are installed when missing (as root)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from harness import free_port

DAEMONS = ("munged", "slurmctld", "slurmd", "srun", "sbatch", "scontrol", "scancel")


def install() -> str:
    """"" when Slurm is there (installed now if need be), else why it cannot be."""
    if all(shutil.which(d) for d in DAEMONS):
        return ""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "Slurm is not installed and cannot be here (needs root and apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "slurm-wlm", "munge"]
    if subprocess.run(cmd, capture_output=True, timeout=900, env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=600, env=env)
        subprocess.run(cmd, capture_output=True, timeout=900, env=env)
    missing = [d for d in DAEMONS if not shutil.which(d)]
    return f"Slurm could not be installed (missing: {', '.join(missing)})" if missing else ""


class Slurm:
    def __init__(self, root: Path):
        self.root = root
        self.node = socket.gethostname().split(".")[0]
        for d in ("state", "spool", "log"):
            (root / d).mkdir(parents=True, exist_ok=True)
        key = root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.munge_socket = root / "munge.sock"
        self.conf = root / "slurm.conf"
        self.conf.write_text(self._config(free_port(), free_port()))
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.procs: list[subprocess.Popen] = []
        self._start()

    def _config(self, ctld_port: int, slurmd_port: int) -> str:
        r = self.root
        return "\n".join([
            "ClusterName=wdtest", f"SlurmctldHost={self.node}", "SlurmUser=root",
            f"SlurmctldPort={ctld_port}", f"SlurmdPort={slurmd_port}",
            "AuthType=auth/munge", f"AuthInfo=socket={self.munge_socket}", "CredType=cred/munge",
            f"StateSaveLocation={r}/state", f"SlurmdSpoolDir={r}/spool",
            f"SlurmctldPidFile={r}/slurmctld.pid", f"SlurmdPidFile={r}/slurmd.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log", f"SlurmdLogFile={r}/log/slurmd.log",
            # no cgroups in a test container: processes tracked by parentage
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core", "MpiDefault=none",
            "ReturnToService=2", "KillWait=5", "MinJobAge=600",
            f"NodeName={self.node} CPUs={os.cpu_count()} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""])

    def _start(self) -> None:
        r = self.root
        subprocess.run(["munged", "-f", f"--socket={self.munge_socket}", f"--key-file={r}/munge.key",
                        f"--log-file={r}/log/munged.log", f"--pid-file={r}/munged.pid",
                        f"--seed-file={r}/munged.seed"], check=True, capture_output=True, timeout=30)
        self.procs.append(subprocess.Popen(["slurmctld", "-D", "-i"], env=self.env,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self.procs.append(subprocess.Popen(["slurmd", "-D", "-N", self.node], env=self.env,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 60
        while True:
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True,
                                 text=True, timeout=30)
            if out.stdout.strip() in ("idle", "mix", "alloc"):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"Slurm did not come up: {out.stdout} {out.stderr} "
                                   + (r / "log" / "slurmctld.log").read_text(errors="replace")[-2000:])
            time.sleep(0.5)

    def job_state(self, job_id: str) -> str:
        out = subprocess.run(["scontrol", "show", "job", job_id], env=self.env, capture_output=True,
                             text=True, timeout=30)
        for word in out.stdout.split():
            if word.startswith("JobState="):
                return word.split("=", 1)[1]
        return ""

    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "-u", "root"], env=self.env, capture_output=True, timeout=30)
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        pid = self.root / "munged.pid"
        if pid.exists():
            try:
                os.kill(int(pid.read_text().strip()), 15)
            except (ValueError, ProcessLookupError):
                pass
