"""Render an HTML file to PNG with headless Chromium (Debian's `chromium` package).

Used by tests that must see a report the way a browser draws it. Every flag that would
make Chromium talk to the network or keep state between runs is turned off, and each
run gets its own throw-away profile.
"""
from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")


def available() -> bool:
    return CHROMIUM.exists()


def screenshot(html: Path, png: Path, width: int = 1400, height: int = 1000, timeout_s: float = 60) -> Path:
    """Render `html` (a local file) to `png`; raises CalledProcessError/TimeoutExpired."""
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="drctl-chromium-") as profile:
        cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={profile}", f"--screenshot={png.resolve()}",
               f"--window-size={width},{height}", html.resolve().as_uri()]
        subprocess.run(cmd, check=True, capture_output=True, timeout=timeout_s)
    if not png.exists() or png.stat().st_size == 0:
        raise RuntimeError(f"chromium wrote no screenshot to {png}")
    return png
