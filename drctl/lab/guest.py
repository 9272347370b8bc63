"""The lab's test guest: Debian's cloud kernel + a ~1 MiB busybox initramfs whose init
dirties memory and prints a tick line every second on a serial console file.

Built once into `<lab dir>/guest/` and shared by every lab host. A guest's health after a
migration is its tick counter still advancing in that file.
"""
from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from drctl.model.errors import ConfigError

_INIT = Path(__file__).with_name("guest-init")
_MODULES = ("virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci", "virtio_blk")
_DISK_SUM = re.compile(r"drctl-disk-written ([0-9a-f]{32})|disk ([0-9a-f]{32})")
_TICK = re.compile(r"drctl-tick (\d+) up ([0-9.]+)(?: disk ([0-9a-f]+))?")


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path


def build_guest(guest_dir: Path) -> GuestImage:
    """Download the cloud kernel (apt-get download) and pack the initramfs; idempotent."""
    guest_dir.mkdir(parents=True, exist_ok=True)
    kernel, initrd = guest_dir / "vmlinuz", guest_dir / "initrd.img"
    stamp = guest_dir / "init.sha"
    init_text = _INIT.read_bytes()
    if kernel.exists() and initrd.exists() and stamp.exists() and stamp.read_bytes() == init_text:
        return GuestImage(kernel, initrd)
    with tempfile.TemporaryDirectory(prefix="drctl-guest-") as tmp:
        root = Path(tmp)
        pkg = _kernel_package()
        subprocess.run(["apt-get", "download", pkg], cwd=tmp, check=True, capture_output=True)
        deb = next(root.glob("*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root / "x")], check=True)
        vmlinuz = next((root / "x/boot").glob("vmlinuz-*"))
        shutil.copyfile(vmlinuz, kernel)
        moddir = next((root / "x/lib/modules").iterdir())
        modules = {p.stem: p for p in moddir.rglob("*.ko")}
        missing = [m for m in _MODULES if m not in modules]
        if missing:
            raise ConfigError(f"kernel package {pkg} lacks modules {missing}")
        initrd.write_bytes(_pack_initramfs(init_text, {m: modules[m] for m in _MODULES}))
    stamp.write_bytes(init_text)
    return GuestImage(kernel, initrd)


def _kernel_package() -> str:
    """linux-image-cloud-amd64 is a metapackage: find the real image it depends on."""
    out = subprocess.run(
        ["apt-cache", "depends", "linux-image-cloud-amd64"], check=True, capture_output=True, text=True
    ).stdout
    for line in out.splitlines():
        m = re.search(r"Depends: (linux-image-\S+-cloud-amd64)", line)
        if m:
            return m.group(1)
    raise ConfigError("apt-cache knows no linux-image-cloud-amd64 (run apt-get update)")


def _pack_initramfs(init: bytes, modules: dict[str, Path]) -> bytes:
    busybox = Path("/bin/busybox")
    if not busybox.exists() or not _is_static(busybox):
        raise ConfigError("/bin/busybox must be the static build (apt-get install busybox-static)")
    with tempfile.TemporaryDirectory(prefix="drctl-initrd-") as tmp:
        root = Path(tmp)
        (root / "bin").mkdir()
        (root / "lib/modules").mkdir(parents=True)
        shutil.copyfile(busybox, root / "bin/busybox")
        os.chmod(root / "bin/busybox", 0o755)
        (root / "init").write_bytes(init)
        os.chmod(root / "init", 0o755)
        for name, path in modules.items():
            shutil.copyfile(path, root / f"lib/modules/{name}.ko")
        files = subprocess.run(["find", "."], cwd=tmp, capture_output=True, check=True).stdout
        cpio = subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"], cwd=tmp, input=files, capture_output=True, check=True
        ).stdout
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        gz.write(cpio)
    return buf.getvalue()


def _is_static(path: Path) -> bool:
    # `file` may be missing on a minimal machine; a static ELF has no PT_INTERP segment
    return b"ld-linux" not in path.read_bytes()[:4096]


def domain_xml(
    name: str,
    image: GuestImage,
    memory_mib: int,
    console: Path,
    dirty_mib: int = 0,
    vcpus: int = 1,
    disk: Path | None = None,
    disk_write: bool = False,
    cpu_xml: str = "",
) -> str:
    """Libvirt domain XML of a ticking test guest (TCG: `type='qemu'`)."""
    cmdline = f"console=ttyS0 quiet panic=-1 drctl.dirty={dirty_mib}"
    if disk_write:
        cmdline += " drctl.disk=write"
    disk_el = ""
    if disk is not None:
        disk_el = f"""
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{escape(str(disk))}'/>
      <target dev='vda' bus='virtio'/>
    </disk>"""
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>{vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(image.kernel))}</kernel>
    <initrd>{escape(str(image.initrd))}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>{cpu_xml}
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>{disk_el}
    <serial type='file'>
      <source path='{escape(str(console))}' append='on'/>
      <target port='0'/>
    </serial>
    <console type='file'>
      <source path='{escape(str(console))}' append='on'/>
      <target type='serial' port='0'/>
    </console>
    <memballoon model='none'/>
  </devices>
</domain>
"""


@dataclass(frozen=True)
class Tick:
    count: int
    uptime_s: float
    disk_sum: str | None


def last_tick(console: Path) -> Tick | None:
    """The newest tick line in a guest's console file, or None before the first."""
    if not console.exists():
        return None
    with open(console, "rb") as fh:
        fh.seek(max(0, console.stat().st_size - 16384))
        text = fh.read().decode(errors="replace")
    ticks = _TICK.findall(text)
    if not ticks:
        return None
    count, up, disk = ticks[-1]
    return Tick(int(count), float(up), disk or None)


def disk_sums(console: Path) -> list[str]:
    """Every disk checksum the guest printed, oldest first ("written" one included)."""
    if not console.exists():
        return []
    text = console.read_text(errors="replace")
    return [a or b for a, b in _DISK_SUM.findall(text)]


def wait_ticking(console: Path, timeout_s: float = 60.0, after: int = 0) -> Tick:
    """Wait until the guest prints a tick newer than `after` (TCG boots in 4-7 s)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        t = last_tick(console)
        if t is not None and t.count > after:
            return t
        time.sleep(0.2)
    raise TimeoutError(f"guest console {console} printed no tick after #{after} within {timeout_s:.0f}s")
