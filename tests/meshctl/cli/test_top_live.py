"""``meshctl top`` as the operator runs it: a real process, 30 hosts, a terminal (tmux).

The admin endpoints are ``tests.meshctl.trafficserver`` processes on
127.0.0.x (meshd does not serve /traffic on this branch yet): one process
serves 29 hosts, another the host that gets killed, so that killing it is a
real SIGKILL of what answered for that host. Their taps stream too (20
lines a second a host), so meshctl's CPU is measured reading 30 taps.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import psutil
import pytest

from tests.meshctl.topmesh import TopMesh, hung, model, top_mesh
from tests.meshctl.trafficserver import HostModel, Series, write_spec

ROOT = Path(__file__).resolve().parents[3]
MESHCTL = Path(sys.executable).parent / "meshctl"
MIX = {3: 0.9, 5: 0.1}


@contextmanager
def serving(
    tmp: Path, name: str, mesh: TopMesh, hosts: list[HostModel]
) -> Iterator[subprocess.Popen[str]]:
    """A trafficserver process for ``hosts``, once it listens; killed (by PID) at the end."""
    spec = write_spec(tmp / f"{name}.json", hosts, mesh.port, mesh.pki.bundle)
    command = [sys.executable, "-m", "tests.meshctl.trafficserver", str(spec)]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


def lines_of(stream: IO[str]) -> queue.Queue[str]:
    """Lines of ``stream`` as they come (read in a thread: a test waits with a deadline)."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


def next_doc(lines: queue.Queue[str], timeout: float = 5.0) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(lines.get(timeout=timeout))
    return doc


PATHS = ("/p0", "/p1", "/p2", "/p3")


def reap(proc: subprocess.Popen[str]) -> None:
    """``proc`` (a top the test started) gone, however the test ended, its pipes closed."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()


def thirty(mesh: TopMesh, addresses: dict[str, str]) -> list[HostModel]:
    return [
        model(mesh, name, address, Series("inbound", "web", f"svc{i}", 20, 0.0, MIX, paths=PATHS))
        for i, (name, address) in enumerate(addresses.items())
    ]


def test_thirty_hosts_one_killed_under_a_fifth_of_a_core(tmp_path: Path) -> None:
    addresses = {f"h{i:02}": f"127.0.0.{100 + i}" for i in range(1, 31)}
    mesh = top_mesh(tmp_path, addresses)
    hosts = thirty(mesh, addresses)
    command = [str(MESHCTL), "--workspace", str(mesh.ws.root), "top", "--json"]
    with (
        serving(tmp_path, "many", mesh, hosts[:29]),
        serving(tmp_path, "one", mesh, hosts[29:]) as h30,
    ):
        top = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert top.stdout is not None and top.stderr is not None
            lines = lines_of(top.stdout)
            first = next_doc(lines, timeout=30.0)  # meshctl's start, on a busy machine
            while not all(h["reachable"] for h in first["hosts"]):  # a slow first answer
                first = next_doc(lines)
            assert len(first["services"]) == 30
            assert first["services"][0]["rps"] == pytest.approx(20, abs=2)
            cpu = psutil.Process(top.pid)
            used, started = sum(cpu.cpu_times()[:2]), time.monotonic()
            refreshes = [next_doc(lines) for _ in range(10)]
            share = (sum(cpu.cpu_times()[:2]) - used) / (time.monotonic() - started)
            print(f"meshctl top --json, 30 hosts: {share:.1%} of a core")
            assert share < 0.2, f"meshctl top used {share:.0%} of a core"
            assert all(
                len(d["hosts"]) == 30 and all(h["reachable"] for h in d["hosts"]) for d in refreshes
            )
            last = refreshes[-1]  # 30 taps streaming, 5 lines a second a path and host
            assert (last["paths_missing"], sorted(p["path"] for p in last["paths"])) == (
                [],
                list(PATHS),
            )
            assert all(p["count"] == pytest.approx(5 * 30 * 10, rel=0.2) for p in last["paths"])
            times = [d["time"] for d in refreshes]
            assert len(set(times)) == 10
            h30.kill()
            after = [next_doc(lines), next_doc(lines)]
            marked = [{h["host"]: h for h in d["hosts"]}["h30"] for d in after]
            assert marked[-1]["reachable"] is False, marked
            assert "connection refused" in marked[-1]["error"]
            assert [sum(h["reachable"] for h in d["hosts"]) for d in after][-1] == 29
            top.send_signal(signal.SIGINT)
            assert top.wait(timeout=5) == 0
            assert top.stderr.read() == ""
        finally:
            reap(top)


def test_without_a_terminal_it_prints_snapshots_and_stops_when_the_reader_does(
    tmp_path: Path,
) -> None:
    addresses = {"web1": "127.0.0.91", "api1": "127.0.0.92"}
    mesh = top_mesh(tmp_path, addresses)
    hosts = [
        model(mesh, "web1", addresses["web1"], Series("outbound", "web", "api", 200, 0.1, MIX)),
        model(mesh, "api1", addresses["api1"], Series("inbound", "web", "api", 200, 0.1, MIX)),
    ]
    command = [str(MESHCTL), "--workspace", str(mesh.ws.root), "top", "--interval", "0.5"]
    with serving(tmp_path, "two", mesh, hosts):
        top = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert top.stdout is not None and top.stderr is not None
            seen: list[str] = []
            while sum(line.startswith("services (server side)") for line in seen) < 2:
                seen.append(top.stdout.readline())
            assert "\x1b" not in "".join(seen)  # plain text: no redrawing, no colours
            headers = [line for line in seen if line.startswith("meshctl top ")]
            assert len(headers) == 2 and all("2/2 hosts answering" in h for h in headers)
            api = next(line for line in seen if line.startswith("api "))
            assert float(api.split("│")[1]) == pytest.approx(200, rel=0.1)
            top.stdout.close()  # as head does when it has its lines
            # rich's console ends a command whose reader went away: quietly, status 1
            assert (top.wait(timeout=10), top.stderr.read()) == (1, "")
        finally:
            if top.poll() is None:
                top.kill()
                top.wait()
            if top.stderr:
                top.stderr.close()


def tmux(socket_name: str, *args: str) -> str:
    done = subprocess.run(
        ["tmux", "-L", socket_name, *args], capture_output=True, text=True, check=True
    )
    return done.stdout


def screen_until(
    socket_name: str, wanted: str | Callable[[str], bool], timeout: float = 10.0
) -> str:
    """The screen, once ``wanted`` is on it (blanks and line breaks aside: "h30unreachable"
    finds it wrapped too), or once ``wanted(screen)`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        screen = tmux(socket_name, "capture-pane", "-p", "-t", "top")
        if wanted(screen) if callable(wanted) else wanted in "".join(screen.split()):
            return screen
        if time.monotonic() > deadline:
            raise AssertionError(f"{wanted!r} not on the screen:\n{screen}")
        time.sleep(0.2)


def cells(screen: str, first: str) -> list[str]:
    """The cells of the screen's table row that starts with ``first`` ([] if none)."""
    rows = [[c.strip() for c in line.split("│")] for line in screen.splitlines()]
    return next((r for r in rows if len(r) > 3 and r[0] == first), [])


def exited(screen: str) -> bool:
    """The shell has said meshctl's exit code (a line of its own: not the command's echo)."""
    return any(line.startswith("rc=") for line in screen.splitlines())


@contextmanager
def terminal(home: Path) -> Iterator[str]:
    """A tmux server of our own (its own socket), one 160x50 window "top" at a bash prompt
    "ready$ "; killed at the end. Yields the socket name for ``tmux``."""
    socket_name = f"meshctl-top-test-{os.getpid()}"
    shell = (
        f"env -i PATH=/usr/bin:/bin HOME={home} TERM=xterm-256color PS1='ready$ ' "
        "bash --norc --noprofile"
    )
    tmux(socket_name, "new-session", "-d", "-s", "top", "-x", "160", "-y", "50", shell)
    try:
        screen_until(socket_name, "ready$")
        yield socket_name
    finally:
        subprocess.run(["tmux", "-L", socket_name, "kill-server"], check=False)


def start_top(socket_name: str, mesh: TopMesh, *options: str) -> None:
    argv = " ".join(options)
    run = f"{MESHCTL} --workspace {mesh.ws.root} top {argv}; echo rc=$?"
    tmux(socket_name, "send-keys", "-t", "top", run, "Enter")


def quit_top(socket_name: str) -> str:
    """Ctrl-C; the screen once the shell has said meshctl's exit code."""
    tmux(socket_name, "send-keys", "-t", "top", "C-c")
    return screen_until(socket_name, exited)


def top_process(socket_name: str) -> psutil.Process:
    """meshctl, running in the window's shell."""
    shell = psutil.Process(int(tmux(socket_name, "display", "-p", "-t", "top", "#{pane_pid}")))
    (found,) = [p for p in shell.children() if "top" in p.cmdline()]
    return found


NO_TMUX = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


@NO_TMUX
def test_full_screen_in_a_terminal_and_ctrl_c_leaves_it_clean(tmp_path: Path) -> None:
    addresses = {"web1": "127.0.0.41", "api1": "127.0.0.42", "gone1": "127.0.0.43"}
    mesh = top_mesh(tmp_path, addresses)
    paths = ("/orders", "/orders", "/orders", "/users/7")
    hosts = [
        model(mesh, "web1", addresses["web1"], Series("outbound", "web", "api", 200, 0.1, MIX)),
        model(
            mesh,
            "api1",
            addresses["api1"],
            Series("inbound", "web", "api", 200, 0.1, MIX, paths=paths),
        ),
    ]  # nothing answers for gone1
    with serving(tmp_path, "two", mesh, hosts), terminal(tmp_path) as term:
        start_top(term, mesh, "--interval", "0.5")
        screen_until(term, "services(serverside)")
        screen_until(term, "gone1unreachable")
        screen = screen_until(term, lambda screen: cells(screen, "api")[1:2] not in ([], ["0.0"]))
        assert "2/3 hosts answering" in screen
        assert "hosts: api1  gone1 unreachable  web1" in screen
        api, edge = cells(screen, "api"), cells(screen, "web")
        assert float(api[1]) == pytest.approx(200, rel=0.1) and api[-1] == "api1"
        assert float(api[2].rstrip("%")) == pytest.approx(90, abs=1)
        assert edge[1] == "api" and float(edge[2]) == pytest.approx(200, rel=0.1)
        assert "gone1: meshd on gone1" in screen and "connection refused" in screen
        screen = screen_until(term, lambda screen: int(cells(screen, "GET")[2] or 0) >= 10)
        assert "busiest paths (server side, from the tap)" in screen
        orders, users = (
            cells(screen, "GET"),
            next(  # 20 lines a second: 15 /orders, 5 /users
                [c.strip() for c in line.split("│")]
                for line in screen.splitlines()
                if "/users/7" in line
            ),
        )
        assert orders[1] == "/orders" and users[:2] == ["GET", "/users/7"]
        assert int(orders[2]) == pytest.approx(3 * int(users[2]), abs=3)
        assert orders[4:] == ["7.5", "7.5", "7.5"] and users[4:] == ["7.5", "7.5", "7.5"]
        assert "paths missing from gone1 (connection refused)" in screen
        screen = quit_top(term)
        assert "rc=0" in screen.splitlines()
        assert "Traceback" not in screen and "services (server side)" not in screen
        assert screen.rstrip().splitlines()[-1] == "ready$"  # the prompt is back


@NO_TMUX
def test_thirty_hosts_full_screen(tmp_path: Path) -> None:
    addresses = {f"h{i:02}": f"127.0.0.{150 + i}" for i in range(1, 31)}
    mesh = top_mesh(tmp_path, addresses)
    hosts = thirty(mesh, addresses)
    with (
        serving(tmp_path, "many", mesh, hosts[:29]),
        serving(tmp_path, "one", mesh, hosts[29:]) as h30,
        terminal(tmp_path) as term,
    ):
        start_top(term, mesh)
        screen = screen_until(term, "30/30hostsanswering")
        assert all(f"{name}" in screen.split("hosts:")[1] for name in addresses)
        cpu = top_process(term)
        used, started = sum(cpu.cpu_times()[:2]), time.monotonic()
        time.sleep(10)
        share = (sum(cpu.cpu_times()[:2]) - used) / (time.monotonic() - started)
        print(f"meshctl top full screen, 30 hosts: {share:.1%} of a core")
        assert share < 0.2, f"meshctl top used {share:.0%} of a core"
        h30.kill()
        killed = time.monotonic()
        screen = screen_until(term, "h30unreachable", timeout=5.0)
        assert time.monotonic() - killed < 2.5  # two refreshes, and the time to look
        assert "29/30 hosts answering" in screen
        assert "rc=0" in quit_top(term).splitlines()


@NO_TMUX
def test_ctrl_c_twice_leaves_as_quietly_as_once(tmp_path: Path) -> None:
    """An impatient operator presses Ctrl-C again while top winds down: the prompt comes
    back with no traceback, and top says it was ended as asked. (stuck1 accepts and never
    answers: its tap and its poll are in flight, so the wind-down lasts a while.)"""
    addresses = {"api1": "127.0.0.44", "gone1": "127.0.0.45", "stuck1": "127.0.0.46"}
    mesh = top_mesh(tmp_path, addresses)
    series = Series("inbound", "web", "api", 200, 0.1, MIX, paths=("/orders",))
    hosts = [model(mesh, "api1", addresses["api1"], series)]
    stuck = [hung(model(mesh, "stuck1", addresses["stuck1"]))]
    with (
        serving(tmp_path, "twice", mesh, hosts),
        serving(tmp_path, "stuck", mesh, stuck),
        terminal(tmp_path) as term,
    ):
        start_top(term, mesh, "--interval", "1")
        screen_until(term, "gone1unreachable")
        screen_until(term, "stuck1unreachable")
        tmux(term, "send-keys", "-t", "top", "C-c")
        time.sleep(0.05)
        tmux(term, "send-keys", "-t", "top", "C-c")
        # the shell echoes the second ^C; it says no rc= at all when top died by the signal
        screen = screen_until(term, lambda screen: screen.rstrip().endswith("ready$"))
        time.sleep(0.5)  # anything top or the shell would still print
        screen = tmux(term, "capture-pane", "-p", "-t", "top")
    assert "Traceback" not in screen, screen
    said = [line.lstrip("^C") for line in screen.splitlines()[1:]]
    assert "rc=0" in said, screen
    assert screen.rstrip().splitlines()[-1] == "ready$"
