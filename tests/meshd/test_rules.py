"""iptables rules: the rendered document (golden), and real iptables in a private netns."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshd.rules import RuleSet, ServiceRedirect, apply_document, our_jumps, remove_document

GOLDEN = Path(__file__).parent / "golden"
RULES = RuleSet(
    meshd_user="meshd",
    outbound_port=15001,
    inbound_port=15006,
    mesh_port=15443,
    admin_port=15000,
    ssh_ports=(22,),
    vip_range="10.255.0.0/16",
    remote_endpoints=(("10.77.0.12", 8080), ("10.77.0.13", 5432), ("10.77.0.12", 8080)),
    services=(ServiceRedirect(9000, "web", 15101), ServiceRedirect(8081)),
)
FOREIGN = "-A OUTPUT -p tcp --dport 9999 -j RETURN"  # someone else's rule
FOREIGN_SAVED = "-A OUTPUT -p tcp -m tcp --dport 9999 -j RETURN"  # as iptables-save prints it


def test_apply_document_matches_golden() -> None:
    document = apply_document(RULES, saved="")
    golden = GOLDEN / "rules-apply.v4"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(document)
    assert document == golden.read_text()


def test_nothing_to_remove() -> None:
    assert remove_document("*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n") is None


needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("iptables-restore") is None or shutil.which("ip") is None,
    reason="needs root, iptables and iproute2",
)


@pytest.fixture
def netns() -> Iterator[Callable[..., str]]:
    """A private network namespace (real iptables, nothing shared); returns a runner."""
    name = f"mdrules{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)

    def run(*argv: str, stdin: str | None = None) -> str:
        result = subprocess.run(
            ["ip", "netns", "exec", name, *argv],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    try:
        yield run
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _rules(saved: str) -> list[str]:
    return [line for line in saved.splitlines() if line.startswith(("-A", ":MESHD"))]


@needs_root
def test_real_iptables_apply_twice_then_remove(netns: Callable[..., str]) -> None:
    """Apply is idempotent, keeps foreign rules, and remove restores the table as it was."""
    rules = dataclasses.replace(  # numeric users: the names exist only on meshed hosts
        RULES,
        meshd_user="65534",
        services=(ServiceRedirect(9000, "65533", 15101), ServiceRedirect(8081)),
    )
    netns("iptables", "-t", "nat", *FOREIGN.split())
    before = netns("iptables-save", "-t", "nat")
    for _ in range(2):
        document = apply_document(rules, netns("iptables-save", "-t", "nat"))
        netns("iptables-restore", "--test", "--noflush", stdin=document)
        netns("iptables-restore", "--noflush", stdin=document)
        if _ == 0:
            once = netns("iptables-save", "-t", "nat")
    twice = netns("iptables-save", "-t", "nat")
    assert _rules(once) == _rules(twice)
    assert len(our_jumps(twice)) == 2
    assert "--uid-owner 65533 -j REDIRECT --to-ports 15101" in twice
    assert FOREIGN_SAVED in twice
    removal = remove_document(twice)
    assert removal is not None
    netns("iptables-restore", "--noflush", stdin=removal)
    after = netns("iptables-save", "-t", "nat")
    assert _rules(after) == _rules(before)
    assert remove_document(after) is None
