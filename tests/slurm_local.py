"""A throw-away one-node Slurm cluster on localhost, for the grid's Slurm tests.

``LocalSlurm(tmpdir).start()`` writes a munge key, ``slurm.conf`` and ``cgroup.conf`` in
``tmpdir``, starts ``munged`` (own key, socket, pid, log and seed files), ``slurmctld`` and
``slurmd`` in the foreground as child processes on free ports, and waits for the node to
be idle. ``env()`` gives the environment (``SLURM_CONF``) under which ``sbatch``/``squeue``
talk to it; ``stop()`` ends the three daemons it started (by their process ids only).

Settings chosen to work in a container as root: proctrack/linuxproc, task/none, no cgroup,
accounting, energy or job-completion plugins; CPUs from ``slurmd -C``; cons_tres with
CR_CPU so several one-CPU tasks share the node. Needs Debian's ``slurm-wlm`` and ``munge``.
"""
import os
import re
import shutil
import socket
import subprocess
import time

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol")


def missing_tools():
    """Names of the Slurm/munge programs that are not installed."""
    search = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"
    return [name for name in DAEMONS if shutil.which(name, path=search) is None]


def _which(name):
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def _free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _node_facts():
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
    cpus = int(re.search(r"\bCPUs=(\d+)", out).group(1))
    mem = int(re.search(r"\bRealMemory=(\d+)", out).group(1))
    return cpus, mem


class LocalSlurm:
    """One-node cluster in ``root`` (a private temporary directory). See the module docstring."""

    def __init__(self, root):
        self.root = os.path.abspath(root)
        self.procs = {}
        self.node = socket.gethostname().split(".")[0]
        self.conf = os.path.join(self.root, "slurm.conf")

    def env(self, base=None):
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = self.conf
        env["PATH"] = env.get("PATH", "") + ":/usr/sbin:/sbin"
        return env

    def _path(self, *parts):
        return os.path.join(self.root, *parts)

    def _write_config(self):
        os.chmod(self.root, 0o755)
        for d in ("munge", "state", "spool", "log"):
            os.makedirs(self._path(d), exist_ok=True)
            os.chmod(self._path(d), 0o755)
        key = self._path("munge", "munge.key")
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o400)
        cpus, mem = _node_facts()
        ctld_port, slurmd_port = _free_ports(2)
        user = "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
        conf = f"""\
ClusterName=cae-test
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self._path('munge', 'munge.socket')}
StateSaveLocation={self._path('state')}
SlurmdSpoolDir={self._path('spool')}
SlurmctldPidFile={self._path('slurmctld.pid')}
SlurmdPidFile={self._path('slurmd.pid')}
SlurmctldLogFile={self._path('log', 'slurmctld.log')}
SlurmdLogFile={self._path('log', 'slurmd.log')}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=600
KillWait=5
Waittime=0
SlurmctldDebug=info
SlurmdDebug=info
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={max(1, mem // 2)} State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""
        with open(self.conf, "w") as f:
            f.write(conf)

    def _spawn(self, name, argv):
        log = open(self._path("log", name + ".out"), "wb")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                            env=self.env(), cwd=self.root)
        log.close()

    def _wait(self, what, predicate, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}) while waiting for {what}:\n"
                                       + self.logs())
            if predicate():
                return
            time.sleep(0.3)
        raise RuntimeError(f"timed out waiting for {what}:\n" + self.logs())

    def logs(self, tail=4000):
        text = []
        for name in sorted(os.listdir(self._path("log"))):
            with open(self._path("log", name), errors="replace") as f:
                text.append(f"--- {name}\n" + f.read()[-tail:])
        return "\n".join(text)

    def run(self, *argv, check=True):
        """Run a Slurm client command against this cluster; returns stdout."""
        res = subprocess.run([_which(argv[0]), *argv[1:]], capture_output=True, text=True,
                             env=self.env(), timeout=60)
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
        return res.stdout

    def start(self, timeout=60):
        self._write_config()
        sock = self._path("munge", "munge.socket")
        self._spawn("munged", [_which("munged"), "--foreground", "--force",
                               "--key-file=" + self._path("munge", "munge.key"),
                               "--socket=" + sock,
                               "--pid-file=" + self._path("munge", "munged.pid"),
                               "--log-file=" + self._path("log", "munged.log"),
                               "--seed-file=" + self._path("munge", "munged.seed")])
        self._wait("munged socket", lambda: os.path.exists(sock), timeout)
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", self.conf])
        self._wait("slurmctld", lambda: self.run("scontrol", "ping", check=False).find("UP") >= 0,
                   timeout)
        self._spawn("slurmd", [_which("slurmd"), "-D", "-f", self.conf, "-N", self.node])
        self._wait("node idle", lambda: "idle" in self.run("sinfo", "-h", "-o", "%T", check=False),
                   timeout)
        return self

    def stop(self):
        """Cancel jobs, then end slurmd, slurmctld and munged (the processes started here)."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--user", "root" if os.geteuid() == 0 else os.environ.get("USER", ""),
                     check=False)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def wait_jobs(self, job_ids, timeout):
        """Wait until none of ``job_ids`` is pending or running; returns {job_id: state}."""
        deadline = time.monotonic() + timeout
        ids = ",".join(str(j) for j in job_ids)
        while time.monotonic() < deadline:
            out = self.run("squeue", "-h", "-j", ids, "-o", "%i %T", check=False)
            if not out.strip():
                break
            time.sleep(1)
        else:
            raise RuntimeError(f"jobs {ids} still queued after {timeout} s:\n" + self.logs())
        states = {}
        for jid in job_ids:
            out = self.run("scontrol", "show", "job", str(jid), check=False)
            states[jid] = re.findall(r"JobState=(\S+)", out)
        return states
