"""iptables rules: the rendered document (golden), and real iptables in a private netns."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshd.rules import (
    FILTER,
    NAT,
    REDIRECT,
    REJECT,
    V4,
    V6,
    Family,
    RuleSet,
    ServiceRedirect,
    apply_document,
    document,
    fallback_script,
    fingerprint,
    notes,
    our_jumps,
    remove_document,
)

GOLDEN = Path(__file__).parent / "golden"
RULES = RuleSet(
    meshd_user="meshd",
    outbound_port=15001,
    inbound_port=15006,
    mesh_port=15443,
    admin_port=15000,
    ssh_ports=(22,),
    vip_range="10.255.0.0/16",
    remote_endpoints=(
        ("10.77.0.12", 8080),
        ("10.77.0.13", 5432),
        ("10.77.0.12", 8080),
        ("fd00:77::12", 8080),
        ("fd00:77::13", 5432),
    ),
    services=(ServiceRedirect(9000, "web", 15101), ServiceRedirect(8081)),
)
FOREIGN = "-A OUTPUT -p tcp --dport 9999 -j RETURN"  # someone else's rule
FOREIGN_SAVED = "-A OUTPUT -p tcp -m tcp --dport 9999 -j RETURN"  # as iptables-save prints it


def _golden(name: str, text: str) -> None:
    golden = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


@pytest.mark.parametrize("family", [V4, V6], ids=["v4", "v6"])
def test_apply_document_matches_golden(family: Family) -> None:
    _golden(f"rules-apply.v{family.version}", apply_document(RULES, saved="", family=family))


CREATED = {V4: "/run/meshd-rules.filter-created", V6: "/run/meshd-rules.filter6-created"}
UNSERVED = dataclasses.replace(RULES, ipv6_served=False)


def test_fallback_script_matches_golden() -> None:
    _golden("rules-fallback.sh", fallback_script(RULES, "/run/meshd-rules.fallback", CREATED))


def test_unserved_ipv6_document_matches_golden() -> None:
    _golden("rules-apply.v6-unserved", apply_document(UNSERVED, saved="", family=V6))
    assert apply_document(UNSERVED, "", V4) == apply_document(RULES, "", V4)
    assert fingerprint(UNSERVED) != fingerprint(RULES)


def test_nothing_is_redirected_where_meshd_will_not_take_it() -> None:
    """meshd's ports are >= 1024: with meshd down (the boot fallback), or for IPv6 that it does
    not serve, a redirect would hand the plaintext to any local user who binds them."""
    script = fallback_script(RULES, "/run/meshd-rules.fallback", CREATED)
    for text in (script, apply_document(UNSERVED, "", V6)):
        assert "REDIRECT" not in text.replace("MESHD_REDIRECT", "")
        assert "-A MESHD_REJECT -p tcp -j REJECT --reject-with tcp-reset" in text
    assert script.count("-A MESHD_INBOUND -p tcp --dport 9000 -j MESHD_REJECT") == 2


@pytest.mark.parametrize("action", [REDIRECT, REJECT])
@pytest.mark.parametrize("family", [V4, V6], ids=["v4", "v6"])
def test_ssh_admin_and_mesh_ports_are_never_caught(family: Family, action: str) -> None:
    """A registry cannot know this host's SSH ports: connections to them (and to meshd's admin
    and mesh ports) go out untouched, and an endpoint on one of them is left out, with a note."""
    address = "10.0.0.9" if family is V4 else "fd00:77::9"
    endpoints = tuple((address, port) for port in (22, 15000, 15443, 8080))
    rules = dataclasses.replace(RULES, remote_endpoints=endpoints)
    lines = document(rules, "", family, action).splitlines()
    output = [line for line in lines if line.startswith("-A MESHD_OUTPUT")]
    returns = [f"-A MESHD_OUTPUT -p tcp --dport {p} -j RETURN" for p in (22, 15000, 15443)]
    caught = [line for line in output if "-j MESHD_RE" in line]
    assert output.index(returns[-1]) < output.index(caught[0])
    assert all(r in output for r in returns)
    assert [line.split("--dport ")[1].split()[0] for line in caught if "--dport" in line] == [
        "8080"
    ]
    shown = address if family is V4 else f"[{address}]"
    assert notes("\n".join(lines)) == [
        f"meshd rules: left out endpoint {shown}:22: an SSH port of this host",
        f"meshd rules: left out endpoint {shown}:15000: meshd's admin port on this host",
        f"meshd rules: left out endpoint {shown}:15443: meshd's mesh port on this host",
    ]


def test_only_root_skips_interception_by_source_port() -> None:
    """An app binding an SSH or the admin port as its source port is still redirected."""
    for family in (V4, V6):
        document = apply_document(RULES, saved="", family=family)
        returns = [line for line in document.splitlines() if "--sport" in line]
        assert returns == ["-A MESHD_OUTPUT -p tcp --sport 22 -m owner --uid-owner 0 -j RETURN"]


def test_fingerprint_covers_both_families() -> None:
    ipv4_only = dataclasses.replace(
        RULES, remote_endpoints=tuple(e for e in RULES.remote_endpoints if ":" not in e[0])
    )
    assert apply_document(ipv4_only, "") == apply_document(RULES, "")
    assert fingerprint(ipv4_only) != fingerprint(RULES)


def test_nothing_to_remove() -> None:
    assert remove_document("*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n") is None
    assert remove_document("*filter\n:MESHD_OTHER - [0:0]\nCOMMIT\n") is None


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
@pytest.mark.parametrize("family", [V4, V6], ids=["v4", "v6"])
def test_real_iptables_apply_twice_then_remove(netns: Callable[..., str], family: Family) -> None:
    """Apply is idempotent, keeps foreign rules, and remove restores the table as it was."""
    rules = dataclasses.replace(  # numeric users: the names exist only on meshed hosts
        RULES,
        meshd_user="65534",
        services=(ServiceRedirect(9000, "65533", 15101), ServiceRedirect(8081)),
    )
    save, restore = f"{family.tool}-save", f"{family.tool}-restore"
    netns(family.tool, "-t", "nat", *FOREIGN.split())
    before = netns(save, "-t", "nat")
    for _ in range(2):
        document = apply_document(rules, netns(save, "-t", "nat"), family)
        netns(restore, "--test", "--noflush", stdin=document)
        netns(restore, "--noflush", stdin=document)
        if _ == 0:
            once = netns(save, "-t", "nat")
    twice = netns(save, "-t", "nat")
    assert _rules(once) == _rules(twice)
    assert len(our_jumps(twice)) == 2
    assert "--uid-owner 65533 -j REDIRECT --to-ports 15101" in twice
    assert FOREIGN_SAVED in twice
    assert ("fd00:77::12/128" in twice) == (family is V6) != ("10.77.0.12/32" in twice)
    removal = remove_document(twice)
    assert removal is not None
    netns(restore, "--noflush", stdin=removal)
    after = netns(save, "-t", "nat")
    assert _rules(after) == _rules(before)
    assert remove_document(after) is None


@needs_root
@pytest.mark.parametrize("family", [V4, V6], ids=["v4", "v6"])
def test_real_iptables_moves_between_redirecting_and_rejecting(
    netns: Callable[..., str], family: Family
) -> None:
    """The same rule set rejects (filter table) or redirects (nat table): each apply leaves
    ours in one table only, twice changes nothing, and remove leaves both as they were."""
    rules = dataclasses.replace(
        RULES, meshd_user="65534", services=(ServiceRedirect(9000, "65533", 15101),)
    )
    save, restore = f"{family.tool}-save", f"{family.tool}-restore"
    netns(
        family.tool, "-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "9999", "-j", "ACCEPT"
    )

    def tables() -> str:
        return netns(save, "-t", "nat") + netns(save, "-t", "filter")

    before = tables()
    for action in (REJECT, REJECT, REDIRECT, REJECT):
        text = document(rules, tables(), family, action)
        netns(restore, "--test", "--noflush", stdin=text)
        netns(restore, "--noflush", stdin=text)
        now = tables()
        used, other = (FILTER, NAT) if action == REJECT else (NAT, FILTER)
        assert len(our_jumps(now, used)) == 2 and our_jumps(now, other) == []
        assert ("-j REJECT --reject-with tcp-reset" in now) == (action == REJECT)
        assert ("-j REDIRECT --to-ports 15006" in now) == (action == REDIRECT)
    filter_rules = [x for x in netns(save, "-t", "filter").splitlines() if x.startswith("-A ")]
    assert filter_rules[0].startswith("-A INPUT") and "meshd:inbound" in filter_rules[0]
    removal = remove_document(tables())
    assert removal is not None
    netns(restore, "--noflush", stdin=removal)
    assert _rules(tables()) == _rules(before)
    assert remove_document(tables()) is None
