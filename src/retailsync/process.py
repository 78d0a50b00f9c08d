"""Helpers for the child processes retailsync starts (the embedded PostgreSQL, the demo's API
server): they must not outlive us, must not fight over ports, and must explain their failures."""

from __future__ import annotations

import ctypes
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking the kernel to send the child ``signum`` when we die, even by
    kill -9 (Linux only; None elsewhere).

    It runs in the child between fork and exec, after any uid change (which would clear it).
    The kernel ties it to the *thread* that forked, so start children from the main thread.
    """
    if sys.platform != "linux":
        return None
    parent = os.getpid()
    prctl = _prctl()  # loaded here: a child forked from a threaded process must not dlopen

    def in_child() -> None:
        prctl(_PR_SET_PDEATHSIG, signum)
        if os.getppid() != parent:
            os._exit(1)

    return in_child


def follow_parent(signum: int, parent: int) -> None:
    """Ask the kernel to send this process ``signum`` when ``parent``, its parent, dies (even
    by kill -9); exit at once if it already has (Linux only; nothing elsewhere)."""
    if sys.platform != "linux":
        return
    _prctl()(_PR_SET_PDEATHSIG, signum)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _prctl() -> Callable[[int, int], int]:
    prctl: Callable[[int, int], int] = ctypes.CDLL(None, use_errno=True).prctl
    return prctl


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now. Another process could take it before the caller binds
    it; the caller's bind then fails clearly."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def log_tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file, for error messages; never raises."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
