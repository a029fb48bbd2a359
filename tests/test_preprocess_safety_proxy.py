"""A small TCP proxy on 127.0.0.1 in front of a real server (moto's S3), that tests can take down (helper, no tests).

While down, new connections are accepted and reset at once and open ones are cut, as an
outage or a restarting load balancer does; ``down_for(s)`` comes back by itself.
"""
from __future__ import annotations

import socket
import struct
import threading
import time


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._up = threading.Event()
        self._up.set()
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self.refused = 0
        self._after_first: float | None = None
        self.trigger: bytes | None = None  # go down for good when a request contains these bytes
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @staticmethod
    def _reset(sock: socket.socket) -> None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        except OSError:
            pass

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self._up.is_set():
                self.refused += 1
                self._reset(client)
                if self.refused == 1 and self._after_first is not None:
                    threading.Timer(self._after_first, self.up).start()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                self._reset(client)
                continue
            with self._lock:
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self.trigger is not None and self.trigger in data:
                    self.trigger = None
                    self.down()  # this request never arrives
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def down(self) -> None:
        self._up.clear()
        with self._lock:
            socks, self._open = self._open, []
        for s in socks:
            self._reset(s)

    def up(self) -> None:
        self._up.set()

    def down_for(self, seconds: float) -> threading.Timer:
        self.down()
        t = threading.Timer(seconds, self.up)
        t.daemon = True
        t.start()
        return t

    def down_until_hit(self, seconds: float) -> None:
        """Down now; back up ``seconds`` after the first connection it refused (so the outage hits
        whoever connects next, however late they start)."""
        self.refused = 0
        self._after_first = seconds
        self.down()

    def close(self) -> None:
        self._closed = True
        self.down()
        self.listener.close()


def wait_until(pred, timeout: float, step: float = 0.1) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()
