"""The host-side snippets for meshd's tables (leave, the rules rollback), on real iptables.

Each test runs in a private network namespace (its own nat and filter tables) and, where a
snippet writes its notes to /run, in a private mount namespace with /run on a tmpfs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator

import pytest

from meshctl.provision import guard, layout, tables
from meshd.rules import REJECT, V4, V6, Family, RuleSet, ServiceRedirect, document

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("iptables-restore") is None or shutil.which("ip") is None,
    reason="needs root, iptables and iproute2",
)
RULES = RuleSet(
    meshd_user="65534",
    outbound_port=15001,
    inbound_port=15006,
    mesh_port=15443,
    admin_port=15000,
    ssh_ports=(22,),
    vip_range="10.255.0.0/16",
    remote_endpoints=(("10.77.0.12", 8080), ("fd00:77::12", 8080)),
    services=(ServiceRedirect(9000),),
)
Run = Callable[..., str]


@pytest.fixture
def netns() -> Iterator[Run]:
    """Runs a shell script in a private network namespace, with /run on a private tmpfs."""
    name = f"mdtables{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)

    def run(script: str) -> str:
        inner = f"mount -t tmpfs meshdtest /run && mkdir -p {layout.ROLLBACK_PREV}\n{script}"
        argv = ["ip", "netns", "exec", name, "unshare", "--mount", "sh", "-c", inner]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    try:
        yield run
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _ours(saved: str) -> list[str]:
    return [line for line in saved.splitlines() if "MESHD" in line]


def _rules(saved: str) -> list[str]:
    return [line for line in saved.splitlines() if line.startswith("-A ")]


def _nft(run: Run) -> str:
    return run("nft list tables 2>/dev/null || true") if shutil.which("nft") else ""


def _put(family: Family) -> str:
    """Our rejecting rules (and someone else's rule before them) into the filter table."""
    ours = document(RULES, "", family, REJECT)
    return (
        f"{family.tool} -t filter -A INPUT -p tcp --dport 9999 -j ACCEPT\n"
        f"{family.tool}-restore --noflush <<'END'\n{ours}END\n"
    )


@pytest.mark.parametrize("family", [V4, V6], ids=["v4", "v6"])
def test_ours_come_out_and_back_and_others_stay(netns: Run, family: Family) -> None:
    tool = family.tool
    out = netns(
        f"{_put(family)}{tool}-save -t filter > /run/saved; cat /run/saved\n"
        f"{tables.remove_ours(tool)}\necho @@removed; {tool}-save -t filter\n"
        f"{tables.restore_ours(tool, '/run/saved')}\necho @@restored; {tool}-save -t filter\n"
    )
    saved, rest = out.split("@@removed")
    removed, restored = rest.split("@@restored")
    assert _rules(saved)[0].startswith("-A INPUT") and "meshd:inbound" in _rules(saved)[0]
    rendered = document(RULES, "", family, REJECT).splitlines()
    assert len(_ours(saved)) == len([x for x in rendered if x.startswith((":", "-"))])
    assert _ours(removed) == [] and _rules(removed) == [
        "-A INPUT -p tcp -m tcp --dport 9999 -j ACCEPT"
    ]
    assert _rules(restored) == _rules(saved)  # ours first again, the other rule kept


@pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft")
def test_a_table_our_rules_made_goes_when_empty_and_only_then(netns: Run) -> None:
    if "nf_tables" not in netns("iptables -V"):
        pytest.skip("the nft backend (legacy tables cannot be dropped)")
    drop = f"{tables.remove_ours('iptables')}\n{tables.drop_empty('iptables', 'filter')}\n"
    kept = netns(f"{_put(V4)}{drop}nft list tables")
    assert "table ip filter" in kept  # someone else's rule is in it
    gone = netns(f"iptables -t filter -D INPUT -p tcp --dport 9999 -j ACCEPT\n{drop}")
    assert "filter" not in _nft(netns) and gone == ""


@pytest.mark.parametrize("family", [V4, V6], ids=["v4", "v6"])
def test_the_rollback_puts_back_the_fallbacks_rejects(netns: Run, family: Family) -> None:
    """The fallback held the host; a join's apply took its rejects out and failed to confirm:
    the rollback puts them back, with the note that they made the table."""
    tool = family.tool
    saved, created = guard.FILTERS[tool]
    note = f"{layout.ROLLBACK_PREV}/{created.rsplit('/', 1)[1]}"
    out = netns(
        f"{_put(family)}{tool}-save -t filter > {saved}; touch {note}; cat {saved}\n"
        f"{tables.remove_ours(tool)}\n"  # the refused apply (it also dropped the note)
        f"echo @@rolled-back; {guard._restore_filter(tool)}\n"
        f"{tool}-save -t filter; [ -f {created} ] && echo @@noted"
    )
    before, after = out.split("@@rolled-back")
    assert _ours(before) and _rules(after) == _rules(before)
    assert "@@noted" in after


@pytest.mark.parametrize("family", [V4, V6], ids=["v4", "v6"])
def test_the_rollback_takes_out_rejects_the_refused_rules_made(netns: Run, family: Family) -> None:
    """The refused rules rejected (IPv6 that meshd does not serve) and made the filter table:
    the rollback takes them out and drops the table, as it was before."""
    tool = family.tool
    saved, created = guard.FILTERS[tool]
    ours = document(RULES, "", family, REJECT)
    out = netns(
        f"{tool}-save -t filter > {saved}; touch {created}\n"
        f"{tool}-restore --noflush <<'END'\n{ours}END\n"
        f"{guard._restore_filter(tool)}\n"
        f"{tool}-save -t filter; [ -f {created} ] || echo @@unnoted"
    )
    assert _ours(out) == [] and "@@unnoted" in out
    if shutil.which("nft") and "nf_tables" in netns(f"{tool} -V"):
        assert "filter" not in _nft(netns)
