"""A tiny TCP relay: `python -m drctl.lab.relay LISTEN_ADDR:PORT TARGET_ADDR:PORT`.

Each lab agent reaches etcd through its own relay on its host's loopback address, so the
lab can cut one host off from etcd while its libvirtd stays reachable (docs/lab.md):
SIGSTOP the relay and every byte stops (the agent's lease expires about a TTL after its
last refresh); SIGCONT and traffic flows again on the same connections. SIGUSR1 switches
to resetting every connection (established and new) until SIGUSR2.
"""
from __future__ import annotations

import signal
import socket
import sys
import threading


class Relay:
    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server(listen, reuse_port=False, backlog=64)
        self.resetting = False
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()

    def serve(self) -> None:
        while True:
            client, _ = self.server.accept()
            if self.resetting:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with self._lock:
                    self._conns.discard(sock)
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def reset_all(self, on: bool) -> None:
        self.resetting = on
        if on:
            with self._lock:
                conns, self._conns = list(self._conns), set()
            for sock in conns:
                _reset(sock)


def _reset(sock: socket.socket) -> None:
    """Close with RST (linger 0), as a dropped network path looks to the client."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    except OSError:
        pass


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        sys.exit("usage: python -m drctl.lab.relay LISTEN_ADDR:PORT TARGET_ADDR:PORT")
    relay = Relay(_addr(argv[0]), _addr(argv[1]))
    signal.signal(signal.SIGUSR1, lambda *_: relay.reset_all(True))
    signal.signal(signal.SIGUSR2, lambda *_: relay.reset_all(False))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    relay.serve()


if __name__ == "__main__":
    main(sys.argv[1:])
