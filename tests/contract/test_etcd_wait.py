"""A daemon started while etcd is down waits for it (issue 12, case 15)."""
from __future__ import annotations

import os
import threading
import time

from drctl.model.errors import StoreUnavailable
from drctl.store.etcd import EtcdStore, connect_store_waiting
from tests.etcd_server import ETCD_BINARY, EtcdServer
from tests.requires import skip_unless


def test_connect_waits_for_an_etcd_that_starts_later() -> None:
    skip_unless(os.access(ETCD_BINARY, os.X_OK), f"{ETCD_BINARY} not installed")
    server = EtcdServer()  # ports chosen, not started yet
    waited: list[StoreUnavailable] = []
    got: list[EtcdStore | None] = []
    stop = threading.Event()
    t = threading.Thread(target=lambda: got.append(
        connect_store_waiting([server.endpoint], 1.0, stop, waited.append, retry_s=0.2)), daemon=True)
    t.start()
    try:
        time.sleep(1.5)
        assert t.is_alive() and len(waited) == 1 and server.endpoint in str(waited[0])
        server.start()
        t.join(20)
        assert not t.is_alive() and got and got[0] is not None
        assert got[0].revision() >= 1 and len(waited) == 1
        got[0].close()
    finally:
        stop.set()
        server.cleanup()


def test_a_stop_while_waiting_returns_none() -> None:
    server = EtcdServer()  # never started: nothing listens on its port
    stop = threading.Event()
    waited: list[StoreUnavailable] = []
    threading.Timer(0.5, stop.set).start()
    assert connect_store_waiting([server.endpoint], 0.5, stop, waited.append, retry_s=0.1) is None
    assert len(waited) == 1
    server.cleanup()


def test_a_controller_started_while_etcd_is_down_waits_instead_of_exiting(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json
    import signal
    import subprocess
    import sys

    server = EtcdServer()  # never started
    conf = tmp_path / "ctl.yaml"
    conf.write_text(json.dumps({"etcd": {"endpoints": [server.endpoint], "timeout": "1s"},
                                "controller": {"name": "ctl-w", "audit_file": str(tmp_path / "audit.jsonl")}}))
    proc = subprocess.Popen([sys.executable, "-m", "drctl.cli.main", "controller", "--config", str(conf)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        deadline = time.monotonic() + 60  # a loaded machine starts Python slowly
        while not any("waiting for it" in line for line in out) and time.monotonic() < deadline:
            assert proc.poll() is None, "".join(out)  # before: exited at once, "etcd ... unreachable"
            time.sleep(0.1)
        time.sleep(2.0)  # several retries later: still waiting, still quiet
        assert proc.poll() is None, "".join(out)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        reader.join(5)
        server.cleanup()
    assert proc.returncode == 0, "".join(out)
    assert sum("waiting for it" in line for line in out) == 1, "".join(out)
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [e["event"] for e in lines] == ["controller.store_unavailable"]
