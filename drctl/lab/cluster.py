"""A lab of real libvirt hosts and one etcd member on one machine (docs/lab.md).

Each lab host is one `libvirtd` in its own mount and hostname namespace, with private bind
mounts over libvirt's directories and /etc/hosts, its own host UUID, loopback address
127.0.1.N and migration port range. Everything the lab starts is recorded with its PID in
`<lab dir>/lab.json`, so `down` stops exactly that and nothing else.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterator

from drctl.model.errors import ConfigError

APT_PACKAGES = (
    "libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils etcd-server etcd-client "
    "busybox-static cpio"
).split()
# libvirt's directories that each lab host gets a private copy of
_PRIVATE_DIRS = {
    "etc": "/etc/libvirt",
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "cache": "/var/cache/libvirt",
    "log": "/var/log/libvirt",
}


@dataclass(frozen=True)
class LabConfig:
    dir: Path = Path("/var/lib/drctl-lab")
    etcd_port: int = 2379
    etcd_peer_port: int = 2380
    addr_prefix: str = "127.0.1"  # host N listens on <prefix>.N
    migration_port_base: int = 49152  # host N migrates on base + 100*N ... + 99
    libvirt_port: int = 16509

    def host_name(self, n: int) -> str:
        return f"labhost{n}"

    def host_addr(self, n: int) -> str:
        return f"{self.addr_prefix}.{n}"

    def host_uri(self, n: int) -> str:
        return f"qemu+tcp://{self.host_addr(n)}:{self.libvirt_port}/system"

    @property
    def etcd_endpoint(self) -> str:
        return f"127.0.0.1:{self.etcd_port}"

    @property
    def state_file(self) -> Path:
        return self.dir / "lab.json"

    @property
    def console_dir(self) -> Path:
        return self.dir / "consoles"

    @property
    def guest_dir(self) -> Path:
        return self.dir / "guest"


@dataclass
class HostRecord:
    name: str
    n: int
    addr: str
    uri: str
    uuid: str
    pid: int = 0


@dataclass
class LabState:
    etcd_pid: int = 0
    hosts: dict[str, HostRecord] = field(default_factory=dict)
    extra_pids: dict[str, int] = field(default_factory=dict)  # agents, relays: name -> pid

    @staticmethod
    def load(cfg: LabConfig) -> "LabState":
        if not cfg.state_file.exists():
            return LabState()
        raw = json.loads(cfg.state_file.read_text())
        return LabState(
            etcd_pid=raw.get("etcd_pid", 0),
            hosts={k: HostRecord(**v) for k, v in raw.get("hosts", {}).items()},
            extra_pids=raw.get("extra_pids", {}),
        )

    def save(self, cfg: LabConfig) -> None:
        cfg.dir.mkdir(parents=True, exist_ok=True)
        tmp = cfg.state_file.with_suffix(".tmp")
        # The lab's ports and addresses go along, so a process given only the lab directory
        # (the lab fence agent powering a host on) restarts its relay and agent on the right ones.
        config = {k: v for k, v in asdict(cfg).items() if k != "dir"}
        tmp.write_text(json.dumps({**asdict(self), "hosts": {k: asdict(v) for k, v in self.hosts.items()},
                                   "config": config}, indent=2))
        tmp.replace(cfg.state_file)


def lab_config_of(lab_dir: Path) -> LabConfig:
    """The configuration the lab in `lab_dir` was brought up with (defaults where lab.json
    predates recording it)."""
    cfg = LabConfig(dir=lab_dir)
    if not cfg.state_file.exists():
        return cfg
    recorded = json.loads(cfg.state_file.read_text()).get("config", {})
    known = {f.name for f in fields(LabConfig)} - {"dir"}
    return LabConfig(dir=lab_dir, **{k: v for k, v in recorded.items() if k in known})


# ------------------------------------------------------------------ process helpers


def pid_alive(pid: int, expect: str = "") -> bool:
    """True if `pid` runs and (when given) its command line contains `expect`, so a PID
    the kernel reused for someone else's process is never mistaken for ours."""
    if pid <= 0:
        return False
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[1].split()[0] == "Z":
        return False
    return expect in cmd


def stop_pid(pid: int, expect: str = "", timeout_s: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL after `timeout_s`; SIGCONT first in case it was paused."""
    if not pid_alive(pid, expect):
        return False
    for sig in (signal.SIGCONT, signal.SIGTERM):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        _reap(pid)
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    while pid_alive(pid):
        _reap(pid)
        time.sleep(0.05)
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _spawn(argv: list[str], log: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    return proc.pid


# ------------------------------------------------------------------ install


def ensure_packages() -> list[str]:
    """apt-get install whatever lab package is missing; returns what was installed."""
    missing = [p for p in APT_PACKAGES if not _dpkg_installed(p)]
    if missing:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    return missing


def _dpkg_installed(pkg: str) -> bool:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
    return r.returncode == 0 and "install ok installed" in r.stdout


# ------------------------------------------------------------------ etcd


def etcd_healthy(cfg: LabConfig, timeout_s: float = 2.0) -> bool:
    r = subprocess.run(
        ["etcdctl", f"--endpoints=http://{cfg.etcd_endpoint}", f"--dial-timeout={timeout_s}s", "endpoint", "health"],
        capture_output=True, env={**os.environ, "ETCDCTL_API": "3"},
    )
    return r.returncode == 0


def start_etcd(cfg: LabConfig, state: LabState) -> bool:
    """Start the lab's etcd member unless ours already runs; True if started."""
    if pid_alive(state.etcd_pid, "etcd") and etcd_healthy(cfg):
        return False
    stop_pid(state.etcd_pid, "etcd")
    data = cfg.dir / "etcd"
    client = f"http://{cfg.etcd_endpoint}"
    peer = f"http://127.0.0.1:{cfg.etcd_peer_port}"
    state.etcd_pid = _spawn([
        "etcd", "--name", "drctl-lab", "--data-dir", str(data),
        "--listen-client-urls", client, "--advertise-client-urls", client,
        "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"drctl-lab={peer}", "--initial-cluster-state", "new",
        "--auto-compaction-retention", "1h",
    ], cfg.dir / "logs" / "etcd.log")
    _wait(lambda: etcd_healthy(cfg, 0.5), 20, f"etcd on {cfg.etcd_endpoint} (log {cfg.dir}/logs/etcd.log)")
    return True


# ------------------------------------------------------------------ libvirt hosts


def _host_dir(cfg: LabConfig, name: str) -> Path:
    return cfg.dir / "hosts" / name


def host_run_dir(cfg: LabConfig, name: str) -> Path:
    """The host's private /run/libvirt (QEMU pid files are in qemu/ below it)."""
    return _host_dir(cfg, name) / "run"


def _prepare_host(cfg: LabConfig, rec: HostRecord, all_hosts: dict[str, HostRecord]) -> None:
    root = _host_dir(cfg, rec.name)
    for sub, real in _PRIVATE_DIRS.items():
        Path(real).mkdir(parents=True, exist_ok=True)
        if sub == "etc":
            if not (root / "etc").exists():
                shutil.copytree(real, root / "etc", symlinks=True)
        else:
            (root / sub).mkdir(parents=True, exist_ok=True)
    for sub in ("lib/images", "lib/qemu", "lib/qemu/save", "lib/qemu/snapshot", "lib/qemu/dump",
                "cache/qemu", "log/qemu"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    # no default network: it would start a dnsmasq per host
    for p in (root / "etc/qemu/networks").rglob("default.xml"):
        p.unlink()
    n = rec.n
    (root / "etc/libvirtd.conf").write_text(
        f'host_uuid = "{rec.uuid}"\nlisten_tcp = 1\nlisten_tls = 0\nlisten_addr = "{rec.addr}"\n'
        f'tcp_port = "{cfg.libvirt_port}"\nauth_tcp = "none"\nauth_unix_rw = "none"\n'
        'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"\n'
    )
    lo = cfg.migration_port_base + 100 * n
    (root / "etc/qemu.conf").write_text(
        'user = "root"\ngroup = "root"\ndynamic_ownership = 0\nsecurity_driver = "none"\n'
        'cgroup_controllers = [ ]\nnamespaces = [ ]\nstdio_handler = "file"\n'
        f'migration_address = "{rec.addr}"\nmigration_port_min = {lo}\nmigration_port_max = {lo + 99}\n'
    )
    hosts = "127.0.0.1 localhost\n" + "".join(f"{h.addr} {h.name}\n" for h in all_hosts.values())
    (root / "hosts").write_text(hosts)


def _libvirtd_argv(cfg: LabConfig, rec: HostRecord) -> list[str]:
    root = _host_dir(cfg, rec.name)
    binds = " && ".join(f"mount --bind {root / sub} {real}" for sub, real in _PRIVATE_DIRS.items())
    script = (
        f"{binds} && mount --bind {root / 'hosts'} /etc/hosts && hostname {rec.name} "
        f"&& exec libvirtd --listen --config /etc/libvirt/libvirtd.conf --pid-file /run/libvirt/libvirtd.pid"
    )
    # The marker in argv lets pid_alive tell our libvirtd from anyone else's.
    return ["unshare", "-m", "-u", "--propagation", "private", "sh", "-c", script, f"drctl-lab:{rec.name}"]


def libvirt_responds(uri: str, timeout_s: float = 3.0) -> bool:
    try:
        r = subprocess.run(["virsh", "-c", uri, "hostname"], capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0


def start_host(cfg: LabConfig, state: LabState, rec: HostRecord) -> bool:
    """Start a lab host's libvirtd unless it already runs and answers; True if started.

    Only libvirtd is (re)started: guests that still run keep running and the new libvirtd
    takes them over, as after a libvirtd restart on a real host. (This used to stop the
    host's QEMU guests too, so `lab up` after a libvirtd crash acted like a power cycle.)"""
    if pid_alive(rec.pid, "libvirtd") and libvirt_responds(rec.uri):
        return False
    stop_pid(rec.pid, "libvirtd")
    rec.pid = 0
    if _listening(rec.addr, cfg.libvirt_port):
        raise ConfigError(f"{rec.addr}:{cfg.libvirt_port} is already taken by a process this lab did not "
                          f"start (another lab in a different directory?); stop it or pick --addr-prefix")
    _prepare_host(cfg, rec, state.hosts)
    # libvirtd writes its pid file under /run/libvirt: a stale one from a killed daemon
    # would make the new one refuse to start.
    for stale in (host_run_dir(cfg, rec.name)).glob("libvirtd.pid"):
        stale.unlink()
    rec.pid = _spawn(_libvirtd_argv(cfg, rec), cfg.dir / "logs" / f"{rec.name}.log")
    log = _host_dir(cfg, rec.name) / "log" / "libvirtd.log"
    _wait(lambda: libvirt_responds(rec.uri, 2), 30, f"libvirtd of {rec.name} at {rec.uri} (log {log})")
    return True


def restart_libvirtd(cfg: LabConfig, state: LabState, rec: HostRecord) -> int:
    """Restart one host's libvirtd alone (SIGTERM, then a new one); its guests keep
    running. Returns the new libvirtd's pid."""
    stop_pid(rec.pid, "libvirtd")
    rec.pid = 0
    start_host(cfg, state, rec)
    return rec.pid


def _listening(addr: str, port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((addr, port)) == 0


def qemu_pids(cfg: LabConfig, name: str) -> dict[str, int]:
    """Guest name -> QEMU pid, from the host's private run directory."""
    out: dict[str, int] = {}
    for pidfile in (host_run_dir(cfg, name) / "qemu").glob("*.pid"):
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            continue
        if pid_alive(pid, "qemu"):
            out[pidfile.stem] = pid
    return out


def power_lost(cfg: LabConfig, name: str) -> None:
    """What a power cut does to a host's /run (a tmpfs): libvirtd's `autostarted` markers go,
    so its next start is a boot and starts the domains marked autostart. Without this a lab
    host "powered on" again would only look like a libvirtd restart (no autostart)."""
    for marker in host_run_dir(cfg, name).glob("*/autostarted"):
        marker.unlink(missing_ok=True)


def stop_host(cfg: LabConfig, rec: HostRecord) -> None:
    """Stop a lab host: its QEMU guests (hard, like a power cut) and its libvirtd."""
    for pid in qemu_pids(cfg, rec.name).values():
        stop_pid(pid, "qemu", timeout_s=0)
    stop_pid(rec.pid, "libvirtd")
    rec.pid = 0


# ------------------------------------------------------------------ the lab as a whole


@contextlib.contextmanager
def locked(cfg: LabConfig) -> Iterator[None]:
    """Serialise up/down of one lab directory across processes (two test sessions, a
    test and an operator) so neither sees the other's half-written state."""
    cfg.dir.mkdir(parents=True, exist_ok=True)
    with open(cfg.dir / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def up(cfg: LabConfig, hosts: int, install: bool = True, echo=print, agents: bool = True,  # type: ignore[no-untyped-def]
       controllers: int = 0) -> LabState:
    """Bring the lab up (idempotent): packages, guest image, etcd, `hosts` libvirt hosts,
    and (with `agents`) one health agent per host behind its own etcd relay."""
    if os.geteuid() != 0:
        raise ConfigError("the lab needs root (namespaces, bind mounts, libvirtd)")
    if hosts < 1 or hosts > 50:
        raise ConfigError(f"--hosts must be between 1 and 50, got {hosts}")
    if install:
        missing = ensure_packages()
        if missing:
            echo(f"installed {' '.join(missing)}")
    with locked(cfg):
        return _up(cfg, hosts, echo, agents, controllers)


def _up(cfg: LabConfig, hosts: int, echo, agents: bool = True,  # type: ignore[no-untyped-def]
        controllers: int = 0) -> LabState:
    from drctl.lab.guest import build_guest

    cfg.console_dir.mkdir(parents=True, exist_ok=True)
    build_guest(cfg.guest_dir)
    state = LabState.load(cfg)
    echo(("started" if start_etcd(cfg, state) else "kept") + f" etcd at {cfg.etcd_endpoint}")
    state.save(cfg)
    for n in range(1, hosts + 1):
        name = cfg.host_name(n)
        if name not in state.hosts:
            state.hosts[name] = HostRecord(name, n, cfg.host_addr(n), cfg.host_uri(n), str(uuid.uuid4()))
    for rec in sorted(state.hosts.values(), key=lambda r: r.n):
        started = start_host(cfg, state, rec)
        state.save(cfg)
        echo(("started" if started else "kept") + f" {rec.name} at {rec.uri}")
    if agents:
        from drctl.lab.agents import start_agents

        start_agents(cfg, state, echo)
    if controllers:
        from drctl.lab.controllers import start_controllers

        start_controllers(cfg, state, controllers, echo)
    return state


def down(cfg: LabConfig, echo=print) -> None:  # type: ignore[no-untyped-def]
    """Stop everything the lab started, by PID, and leave no process behind."""
    with locked(cfg):
        _down(cfg, echo)


def _down(cfg: LabConfig, echo) -> None:  # type: ignore[no-untyped-def]
    state = LabState.load(cfg)
    for name, pid in sorted(state.extra_pids.items()):
        if stop_pid(pid):
            echo(f"stopped {name} (pid {pid})")
    state.extra_pids.clear()
    for rec in sorted(state.hosts.values(), key=lambda r: r.n):
        pid = rec.pid
        stop_host(cfg, rec)
        echo(f"stopped {rec.name} (pid {pid})")
        # guests' disks and definitions go with the host: the next `up` starts clean
        shutil.rmtree(_host_dir(cfg, rec.name), ignore_errors=True)
    if stop_pid(state.etcd_pid, "etcd"):
        echo(f"stopped etcd (pid {state.etcd_pid})")
    shutil.rmtree(cfg.dir / "etcd", ignore_errors=True)
    for f in cfg.console_dir.glob("*"):
        f.unlink()
    state.hosts.clear()
    state.etcd_pid = 0
    state.save(cfg)


@dataclass(frozen=True)
class HostStatus:
    name: str
    uri: str
    pid: int
    running: bool
    responds: bool
    guests: tuple[str, ...]


def status(cfg: LabConfig) -> tuple[bool, list[HostStatus]]:
    state = LabState.load(cfg)
    etcd_ok = pid_alive(state.etcd_pid, "etcd") and etcd_healthy(cfg)
    rows = []
    for rec in sorted(state.hosts.values(), key=lambda r: r.n):
        running = pid_alive(rec.pid, "libvirtd")
        rows.append(HostStatus(rec.name, rec.uri, rec.pid, running, running and libvirt_responds(rec.uri),
                               tuple(sorted(qemu_pids(cfg, rec.name)))))
    return etcd_ok, rows


def _wait(pred, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise ConfigError(f"{what} did not become ready within {timeout_s:.0f}s")
