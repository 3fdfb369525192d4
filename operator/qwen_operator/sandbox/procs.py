"""Process and socket bookkeeping for the sandbox: start detached, stop exactly what we started.

A sandbox outlives the ``qwenctl sandbox up`` that made it, so its processes are
started in their own session and recorded by pid *and* executable path; ``down`` only
signals a pid whose ``/proc/<pid>/exe`` is still the binary we started (a recycled pid is
never killed). Listening sockets are read from ``/proc`` so tests can check that every
component binds to loopback only and that nothing is left listening after ``down``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start(cmd: Sequence[str], log: Path, env: dict[str, str] | None = None) -> int:
    """Start ``cmd`` detached (own session), stdout+stderr to ``log``; returns the pid."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(  # noqa: S603 - fixed argv we built
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    return proc.pid


def exe_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def is_running(pid: int, binary: str | None = None) -> bool:
    """True when ``pid`` is alive (not a zombie) and, if given, runs ``binary``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[1].split()[0] == "Z":
        return False
    if binary is None:
        return True
    exe = exe_of(pid)
    return exe is not None and os.path.realpath(exe) == os.path.realpath(binary)


def stop(pid: int, binary: str, timeout: float = 15.0) -> None:
    """SIGTERM then SIGKILL ``pid`` (and its process group) if it still runs ``binary``."""
    if not is_running(pid, binary):
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if not is_running(pid):
                return
            time.sleep(0.1)


@dataclass(frozen=True)
class Listener:
    pid: int
    address: str
    port: int

    @property
    def loopback(self) -> bool:
        return self.address.startswith("127.") or self.address == "::1"


def _hex_addr(hexaddr: str) -> tuple[str, int]:
    addr, port = hexaddr.split(":")
    raw = bytes.fromhex(addr)
    if len(raw) == 4:
        ip = socket.inet_ntop(socket.AF_INET, raw[::-1])
    else:  # /proc stores IPv6 as four little-endian 32-bit words
        words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
        ip = socket.inet_ntop(socket.AF_INET6, words)
        if ip.startswith("::ffff:") and "." in ip:
            ip = ip[len("::ffff:") :]
    return ip, int(port, 16)


def _listening_inodes() -> dict[int, tuple[str, int]]:
    found: dict[int, tuple[str, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                found[int(fields[9])] = _hex_addr(fields[1])
    return found


def listeners(pids: Iterable[int]) -> list[Listener]:
    """Every TCP socket in LISTEN state owned by one of ``pids``."""
    inodes = _listening_inodes()
    out: list[Listener] = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in inodes:
                    addr, port = inodes[inode]
                    out.append(Listener(pid, addr, port))
    return sorted(set(out), key=lambda x: (x.pid, x.port))


def port_listening(port: int) -> bool:
    """True when anything on this machine listens on TCP ``port``."""
    return any(p == port for _, p in _listening_inodes().values())
