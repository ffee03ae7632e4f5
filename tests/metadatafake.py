"""A stand-in for the cloud metadata server (169.254.169.254) that only counts: point google-auth's
``GCE_METADATA_IP`` (where its "am I on Google?" probe goes) at ``Knocks().address`` and assert nobody knocked."""

from __future__ import annotations

import socket
import threading


class Knocks:
    """A TCP listener on 127.0.0.1 that accepts, counts and closes every connection: a fake metadata server."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.count += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
