"""Probes: what an agent measures on its host, each with its own interval and timeout.

A probe kind is a class with `sample(now) -> Sample`; `KINDS` lists them with the options
each accepts, and `read_probe` reads one probe's configuration (every problem named with
file, line and field, through the policy reader). Host paths are options, so the lab can
point a probe at files it controls and inject faults by writing to them.

Grading: a probe measures a value and compares it with its `degraded` and `failing`
thresholds; for some kinds lower is worse (available memory). A source the host does not
expose (no EDAC driver, no such NIC) gives a healthy sample that says so: a probe must
not turn a whole fleet degraded because one path is absent.
"""
from __future__ import annotations

import glob
import os
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, TypeVar

import yaml

from drctl.model.errors import DrctlError, HypervisorTimeout
from drctl.health.grading import Grade, Sample
from drctl.hypervisor import Hypervisor
from drctl.hypervisor.deadline import with_deadline
from drctl.policy.reader import Invalid, Reader
from drctl.policy.units import parse_duration

T = TypeVar("T")
Connect = Callable[[str, float], Hypervisor]


@dataclass(frozen=True)
class ProbeSpec:
    """One configured probe."""

    kind: str
    name: str
    interval_s: float
    timeout_s: float
    degraded: float | None
    failing: float | None
    options: Mapping[str, Any] = field(default_factory=dict)


class Probe(Protocol):
    spec: ProbeSpec

    def sample(self, now: float) -> Sample: ...


def grade_value(spec: ProbeSpec, value: float, lower_is_worse: bool = False) -> tuple[Grade, float | None]:
    """Grade a measured value against the spec's thresholds; (grade, threshold crossed)."""
    def crossed(limit: float | None) -> bool:
        return limit is not None and (value <= limit if lower_is_worse else value >= limit)

    if crossed(spec.failing):
        return Grade.FAILING, spec.failing
    if crossed(spec.degraded):
        return Grade.DEGRADED, spec.degraded
    return Grade.HEALTHY, None


def _measured(spec: ProbeSpec, value: float, detail: str, now: float, lower_is_worse: bool = False) -> Sample:
    grade, threshold = grade_value(spec, value, lower_is_worse)
    return Sample(spec.name, grade, value, threshold, detail, now)


def _not_exposed(spec: ProbeSpec, detail: str, now: float) -> Sample:
    return Sample(spec.name, Grade.HEALTHY, None, None, f"not exposed: {detail}", now)


# ---------------------------------------------------------------- calls with a deadline


class Deadline:
    """Calls with a deadline (drctl.hypervisor.deadline) that remember a call still hung.

    A call into a hung daemon never returns and its thread cannot be killed; while it is
    still stuck, the next call fails at once instead of stranding one more thread per
    sample (a SIGSTOPped libvirtd would otherwise collect a thread a second).
    """

    def __init__(self) -> None:
        self._hung: threading.Event | None = None  # set when the hung call finally returns
        self._hung_since = 0.0

    def call(self, fn: Callable[[], T], timeout_s: float, what: str) -> T:
        if self._hung is not None and not self._hung.is_set():
            raise HypervisorTimeout(f"{what}: previous call still hung after "
                                    f"{time.monotonic() - self._hung_since:.1f}s")
        done = threading.Event()

        def run() -> T:
            try:
                return fn()
            finally:
                done.set()

        started = time.monotonic()
        try:
            return with_deadline(run, timeout_s, what)
        except HypervisorTimeout:
            if not done.is_set():
                self._hung, self._hung_since = done, started
            raise


def libvirt_answers(connect: Connect, uri: str, deadline: Deadline, timeout_s: float) -> float:
    """Seconds a libvirtd took to answer a fresh connection and a hostname call; raises
    HypervisorTimeout (hung) or HostUnreachable (refused) - shared by the libvirt probe
    and the peer witness."""
    def ask() -> float:
        t0 = time.monotonic()
        hv = connect(uri, timeout_s)
        try:
            hv.hostname()
        finally:
            hv.close()
        return time.monotonic() - t0

    return deadline.call(ask, timeout_s, f"libvirt at {uri}")


# ---------------------------------------------------------------- probe kinds


class LibvirtProbe:
    """libvirtd answers within the timeout; value = seconds it took."""

    def __init__(self, spec: ProbeSpec, connect: Connect, default_uri: str) -> None:
        self.spec = spec
        self._connect = connect
        self._uri = str(spec.options.get("uri") or default_uri)
        self._deadline = Deadline()

    def sample(self, now: float) -> Sample:
        try:
            took = libvirt_answers(self._connect, self._uri, self._deadline, self.spec.timeout_s)
        except DrctlError as e:
            return Sample(self.spec.name, Grade.FAILING, None, self.spec.timeout_s, str(e), now)
        return _measured(self.spec, round(took, 4), "libvirtd answered", now)


def _read_kv_file(path: Path) -> dict[str, float]:
    """'Key:   123 kB' lines (/proc/meminfo) -> {key: number}."""
    out = {}
    for line in path.read_text().splitlines():
        key, _, rest = line.partition(":")
        words = rest.split()
        if words:
            try:
                out[key.strip()] = float(words[0])
            except ValueError:
                continue
    return out


class MemoryProbe:
    """Available memory in percent of total (/proc/meminfo); lower is worse."""

    def __init__(self, spec: ProbeSpec) -> None:
        self.spec = spec
        self._path = Path(spec.options["path"])

    def sample(self, now: float) -> Sample:
        try:
            info = _read_kv_file(self._path)
            pct = 100.0 * info["MemAvailable"] / info["MemTotal"]
        except (OSError, KeyError, ZeroDivisionError) as e:
            return _not_exposed(self.spec, f"{self._path}: {e}", now)
        return _measured(self.spec, round(pct, 2), f"{pct:.1f}% of memory available", now, lower_is_worse=True)


class LoadProbe:
    """1-minute load average per CPU (/proc/loadavg)."""

    def __init__(self, spec: ProbeSpec) -> None:
        self.spec = spec
        self._path = Path(spec.options["path"])
        self._cpus = int(spec.options.get("cpus") or os.cpu_count() or 1)

    def sample(self, now: float) -> Sample:
        try:
            load1 = float(self._path.read_text().split()[0])
        except (OSError, IndexError, ValueError) as e:
            return _not_exposed(self.spec, f"{self._path}: {e}", now)
        per_cpu = round(load1 / self._cpus, 3)
        return _measured(self.spec, per_cpu, f"load {load1:g} on {self._cpus} CPUs", now)


class CounterWindow:
    """Growth of a counter within a sliding window; a counter that went backwards was
    reset (driver reload, reboot, lab `clear`), so counting starts again from there."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._seen: deque[tuple[float, float]] = deque()

    def add(self, now: float, count: float) -> float:
        if self._seen and count < self._seen[-1][1]:
            self._seen.clear()
        self._seen.append((now, count))
        while len(self._seen) > 1 and self._seen[1][0] <= now - self.window_s:
            self._seen.popleft()
        return count - self._seen[0][1]


def _sum_files(pattern: str) -> tuple[float, int]:
    """Sum of the numbers in every file matching `pattern`; (sum, files read)."""
    total, n = 0.0, 0
    for p in sorted(glob.glob(pattern)):
        try:
            total += float(Path(p).read_text().strip() or 0)
            n += 1
        except (OSError, ValueError):
            continue
    return total, n


class EdacProbe:
    """Memory errors counted by EDAC (<root>/mc/mc*/ce_count, ue_count): corrected errors
    new within the window grade by the thresholds; any new uncorrected error is failing."""

    def __init__(self, spec: ProbeSpec) -> None:
        self.spec = spec
        self._root = str(spec.options["root"])
        window = float(spec.options["window"])
        self._ce = CounterWindow(window)
        self._ue = CounterWindow(window)

    def sample(self, now: float) -> Sample:
        ce, n = _sum_files(f"{self._root}/mc/mc*/ce_count")
        ue, _ = _sum_files(f"{self._root}/mc/mc*/ue_count")
        if n == 0:
            return _not_exposed(self.spec, f"no memory controllers under {self._root}/mc", now)
        new_ce, new_ue = self._ce.add(now, ce), self._ue.add(now, ue)
        detail = f"{new_ce:g} new corrected, {new_ue:g} new uncorrected memory errors (total ce {ce:g}, ue {ue:g})"
        if new_ue >= 1:
            return Sample(self.spec.name, Grade.FAILING, new_ce, 1, detail, now)
        return _measured(self.spec, new_ce, detail, now)


class MceProbe:
    """Machine-check exceptions: growth of the MCE row of /proc/interrupts."""

    def __init__(self, spec: ProbeSpec) -> None:
        self.spec = spec
        self._path = Path(spec.options["path"])
        self._count = CounterWindow(float(spec.options["window"]))

    def sample(self, now: float) -> Sample:
        try:
            rows = [ln.split() for ln in self._path.read_text().splitlines()]
        except OSError as e:
            return _not_exposed(self.spec, f"{self._path}: {e}", now)
        row = next((r for r in rows if r and r[0] == "MCE:"), None)
        if row is None:
            return _not_exposed(self.spec, f"no MCE row in {self._path}", now)
        total = sum(float(x) for x in row[1:] if x.isdigit())
        new = self._count.add(now, total)
        return _measured(self.spec, new, f"{new:g} new machine-check exceptions", now)


def _read(path: Path, default: str = "") -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return default


class NicProbe:
    """Network interfaces that are down: operstate not up, or no carrier."""

    def __init__(self, spec: ProbeSpec) -> None:
        self.spec = spec
        self._root = Path(spec.options["root"])
        self._names: tuple[str, ...] = tuple(spec.options.get("interfaces") or ())

    def sample(self, now: float) -> Sample:
        names = self._names or tuple(sorted(p.name for p in self._root.glob("*") if p.name != "lo"))
        if not names:
            return _not_exposed(self.spec, f"no interfaces under {self._root}", now)
        down = [n for n in names
                if _read(self._root / n / "operstate", "missing") not in ("up", "unknown")
                or _read(self._root / n / "carrier", "1") != "1"]
        detail = f"down: {', '.join(down)}" if down else f"{len(names)} interfaces up"
        return _measured(self.spec, float(len(down)), detail, now)


class DiskProbe:
    """Block devices in trouble: device state not running, I/O error count grown, or a
    SMART-like verdict file (<smart_dir>/<dev>) saying anything but PASSED."""

    def __init__(self, spec: ProbeSpec) -> None:
        self.spec = spec
        self._root = Path(spec.options["root"])
        self._names: tuple[str, ...] = tuple(spec.options.get("devices") or ())
        smart = spec.options.get("smart_dir")
        self._smart = Path(smart) if smart else None
        self._ioerr: dict[str, int] = {}

    def _trouble(self, dev: str) -> str:
        state = _read(self._root / dev / "device" / "state", "running")
        if state not in ("running", "live"):
            return f"{dev} state {state}"
        ioerr = _read(self._root / dev / "device" / "ioerr_cnt", "0x0")
        try:
            count = int(ioerr, 0)
        except ValueError:
            count = 0
        first = self._ioerr.setdefault(dev, count)
        if count > first:
            return f"{dev} {count - first} new I/O errors"
        if self._smart is not None:
            verdict = _read(self._smart / dev, "PASSED")
            if verdict.upper() != "PASSED":
                return f"{dev} SMART {verdict}"
        return ""

    def sample(self, now: float) -> Sample:
        names = self._names or tuple(sorted(p.name for p in self._root.glob("*")
                                            if not p.name.startswith(("loop", "ram"))))
        if not names:
            return _not_exposed(self.spec, f"no block devices under {self._root}", now)
        trouble = [t for t in (self._trouble(d) for d in names) if t]
        return _measured(self.spec, float(len(trouble)), "; ".join(trouble) or f"{len(names)} devices fine", now)


class CommandProbe:
    """An operator's command: exit 0 healthy, 1 degraded, 2 or more failing (the Nagios
    convention); no exit within the timeout is failing. Its first output line is the detail."""

    def __init__(self, spec: ProbeSpec) -> None:
        self.spec = spec
        self._argv = list(spec.options["command"])

    def sample(self, now: float) -> Sample:
        try:
            done = subprocess.run(self._argv, capture_output=True, text=True, timeout=self.spec.timeout_s,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return Sample(self.spec.name, Grade.FAILING, None, self.spec.timeout_s,
                          f"{self._argv[0]} did not exit within {self.spec.timeout_s:g}s", now)
        except OSError as e:
            return Sample(self.spec.name, Grade.FAILING, None, None, f"{self._argv[0]}: {e}", now)
        out = (done.stdout or done.stderr).strip().splitlines()
        detail = f"exit {done.returncode}" + (f": {out[0][:200]}" if out else "")
        return _measured(self.spec, float(done.returncode), detail, now)


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Kind:
    """What one probe kind accepts: default interval/timeout/thresholds and its options
    (name -> (reader, default); a default of REQUIRED makes the option mandatory)."""

    interval_s: float
    timeout_s: float
    degraded: float | None
    failing: float | None
    options: Mapping[str, tuple[str, Any]]


REQUIRED = object()

# option readers: "string", "strings", "duration", "int"
KINDS: Mapping[str, Kind] = {
    "libvirt": Kind(1.0, 1.0, None, None, {"uri": ("string", "")}),
    "memory": Kind(2.0, 1.0, 10.0, 3.0, {"path": ("string", "/proc/meminfo")}),
    "load": Kind(5.0, 1.0, 2.0, 4.0, {"path": ("string", "/proc/loadavg"), "cpus": ("int", 0)}),
    "edac": Kind(1.0, 1.0, 1.0, 1000.0, {"root": ("string", "/sys/devices/system/edac"),
                                         "window": ("duration", 3600.0)}),
    "mce": Kind(5.0, 1.0, 1.0, None, {"path": ("string", "/proc/interrupts"), "window": ("duration", 3600.0)}),
    "nic": Kind(2.0, 1.0, 1.0, None, {"root": ("string", "/sys/class/net"), "interfaces": ("strings", ())}),
    "disk": Kind(5.0, 1.0, 1.0, None, {"root": ("string", "/sys/block"), "devices": ("strings", ()),
                                       "smart_dir": ("string", "")}),
    "command": Kind(10.0, 5.0, 1.0, 2.0, {"command": ("strings", REQUIRED)}),
}
_COMMON = ("kind", "name", "interval", "timeout", "degraded", "failing")


def read_probe(r: Reader, node: yaml.Node, path: str) -> ProbeSpec:
    """One item of `agent.probes`; problems are reported on `r` (Invalid if unusable)."""
    if not isinstance(node, yaml.MappingNode):
        raise r.fail(node, path, "expected a mapping with at least `kind`")
    kind_node = next((v for k, v in node.value if getattr(k, "value", None) == "kind"), None)
    if kind_node is None:
        raise r.fail(node, f"{path}.kind", f"missing (one of: {', '.join(KINDS)})")
    kind_name = r.choice(kind_node, f"{path}.kind", KINDS)
    kind = KINDS[kind_name]
    fields = r.mapping(node, path, (*_COMMON, *kind.options))

    def duration(key: str, default: float) -> float:
        if key not in fields:
            return default
        seconds = r.parsed(fields[key], f"{path}.{key}", parse_duration)
        if seconds <= 0:
            raise r.fail(fields[key], f"{path}.{key}", "must be more than 0s")
        return seconds

    def number(key: str, default: float | None) -> float | None:
        if key not in fields:
            return default
        n = fields[key]
        if isinstance(n, yaml.ScalarNode) and n.tag.endswith(":null"):
            return None  # an explicit `failing: null` switches that threshold off
        if isinstance(n, yaml.ScalarNode) and n.tag.endswith((":int", ":float")):
            return float(n.value)
        raise r.fail(n, f"{path}.{key}", f"expected a number or null, got {n.value!r}")

    name = r.word(fields["name"], f"{path}.name") if "name" in fields else kind_name
    interval = r.attempt(lambda: duration("interval", kind.interval_s), kind.interval_s)
    timeout = r.attempt(lambda: duration("timeout", kind.timeout_s), kind.timeout_s)
    degraded = r.attempt(lambda: number("degraded", kind.degraded), kind.degraded)
    failing = r.attempt(lambda: number("failing", kind.failing), kind.failing)
    if timeout > interval and "timeout" in fields:
        r.report(fields["timeout"], f"{path}.timeout", f"longer than the interval ({interval:g}s)")
    options: dict[str, Any] = {}
    for key, (how, default) in kind.options.items():
        opt_path = f"{path}.{key}"
        if key not in fields:
            if default is REQUIRED:
                r.report(node, opt_path, f"missing (required by probe kind {kind_name!r})")
            else:
                options[key] = default
            continue
        value_node = fields[key]
        if how == "string":
            options[key] = r.attempt(lambda: r.string(value_node, opt_path), default)
        elif how == "int":
            options[key] = r.attempt(lambda: r.integer(value_node, opt_path, minimum=0), default)
        elif how == "duration":
            options[key] = r.attempt(lambda: r.parsed(value_node, opt_path, parse_duration), default)
        else:  # strings: a list, or one string for a list of one
            options[key] = tuple(r.each(value_node, opt_path, r.string, scalar_ok=True))
            if default is REQUIRED and not options[key]:
                r.report(value_node, opt_path, "must not be empty")
    return ProbeSpec(kind_name, name, interval, timeout, degraded, failing, options)


def read_probes(r: Reader, node: yaml.Node, path: str) -> tuple[ProbeSpec, ...]:
    specs = r.each(node, path, lambda n, p: read_probe(r, n, p))
    seen: set[str] = set()
    for spec, item in zip(specs, node.value if isinstance(node, yaml.SequenceNode) else ()):
        if spec.name in seen:
            r.report(item, path, f"two probes are named {spec.name!r}: give one a `name`")
        seen.add(spec.name)
    return tuple(specs)


def default_probes() -> tuple[ProbeSpec, ...]:
    """What an agent probes when its configuration lists no probes."""
    return tuple(ProbeSpec(k, k, KINDS[k].interval_s, KINDS[k].timeout_s, KINDS[k].degraded, KINDS[k].failing,
                           {o: d for o, (_, d) in KINDS[k].options.items()})
                 for k in ("libvirt", "memory", "load", "edac", "mce", "nic", "disk"))


def build(spec: ProbeSpec, connect: Connect, libvirt_uri: str) -> Probe:
    """A probe object for a spec."""
    if spec.kind == "libvirt":
        return LibvirtProbe(spec, connect, libvirt_uri)
    makers: dict[str, Callable[[ProbeSpec], Probe]] = {
        "memory": MemoryProbe, "load": LoadProbe, "edac": EdacProbe, "mce": MceProbe,
        "nic": NicProbe, "disk": DiskProbe, "command": CommandProbe,
    }
    return makers[spec.kind](spec)


__all__ = ["Deadline", "Invalid", "KINDS", "Probe", "ProbeSpec", "build", "read_probes"]
