"""systemd integration: the notify protocol on a socket the test opens, SIGHUP reloads."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import DaemonProcess, wait_for

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "oneseekd.service"


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    yield sock, path
    sock.close()


def received(sock: socket.socket, until: float) -> list[str]:
    messages: list[str] = []
    while time.monotonic() < until:
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
    return messages


def test_ready_status_and_watchdog_reach_the_notify_socket(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    home = tmp_path / "home"
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}  # a ping every 0.2 s
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        proc = DaemonProcess(home)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        proc.wait_event("daemon_ready")
        messages = received(sock, time.monotonic() + 2.0)
    finally:
        assert proc.stop() == 0
    first = messages[0].splitlines()
    assert first[0] == "READY=1"
    assert first[1] == "STATUS=idle"
    assert first[2] == f"MAINPID={proc.proc.pid}"
    assert messages.count("WATCHDOG=1") >= 5
    last = received(sock, time.monotonic() + 0.5)
    assert "STOPPING=1\nSTATUS=stopping" in last


def test_sighup_with_a_broken_config_keeps_the_old_one(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "oneseekd.toml").write_text("[catalog]\nsettle_seconds = 0.2\n")
    proc = DaemonProcess(home)
    try:
        proc.wait_event("daemon_ready")
        (home / "oneseekd.toml").write_text('[catalog]\nsettle_seconds = "soon"\n')
        proc.proc.send_signal(signal.SIGHUP)
        failed = proc.wait_event("config_reload_failed")
        assert failed["problems"] == [
            "catalog.settle_seconds must be a number of seconds, got 'soon'"
        ]
        assert proc.proc.poll() is None  # still running
        (home / "oneseekd.toml").write_text(
            "[catalog]\nsettle_seconds = 0.7\nrescan_interval_seconds = 30\n"
        )
        proc.proc.send_signal(signal.SIGHUP)
        reloaded = proc.wait_event("config_reloaded")
        assert (reloaded["settle_seconds"], reloaded["rescan_interval_seconds"]) == (0.7, 30.0)
    finally:
        assert proc.stop() == 0


def test_sighup_during_start_up_does_not_kill_the_daemon(tmp_path: Path) -> None:
    proc = DaemonProcess(tmp_path / "home")
    try:
        time.sleep(0.3)  # the interpreter is starting: SIGHUP's default would end it
        wait_for(lambda: proc.log_path.exists() and proc.log_path.stat().st_size > 0)
        proc.proc.send_signal(signal.SIGHUP)
        proc.wait_event("daemon_ready")
        proc.wait_event("config_reloaded")
        assert proc.proc.poll() is None
    finally:
        proc.stop()


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(
    not Path("/usr/bin/systemd-analyze").exists(), reason="systemd-analyze is not installed"
)
def test_the_unit_verifies_without_warnings_and_is_hardened(tmp_path: Path) -> None:
    # verify the unit as installed: ExecStart pointing at a real oneseekd
    unit = tmp_path / "oneseekd.service"
    exe = Path(sys.executable).with_name("oneseekd")
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/oneseekd", str(exe)))
    done = _analyze("verify", str(unit))
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "" and done.stdout.strip() == ""
    done = _analyze("security", "--offline=yes", str(unit))
    line = next(x for x in done.stdout.splitlines() if "Overall exposure level" in x)
    exposure = float(line.split("level for")[1].split(":")[1].split()[0])
    print(line)
    assert exposure <= 2.5, done.stdout
