"""Planning join and leave: from facts and the desired state to steps; empty when converged."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from typing import Any

import pytest
from cryptography import x509

from meshctl.ca import MeshCa, issue_identity
from meshctl.provision import layout
from meshctl.provision.desired import desired_host
from meshctl.provision.facts import HostFacts, MeshdState
from meshctl.provision.plan import (
    ApplyRules,
    Enroll,
    Plan,
    RemovePaths,
    RemoveRules,
    RemoveUser,
    StartMeshd,
    StopUnits,
    WriteFile,
    WriteHostsBlock,
    plan_join,
    plan_leave,
    rules_present,
)
from meshctl.provision.status import ipv6_rules
from meshd import hostsfile
from meshd.identity import SpiffeId, make_id
from meshd.pki import cert_pem
from meshd.registry import Revocation
from meshd.rules import (
    REDIRECT,
    REJECT,
    V4,
    V6,
    Family,
    fallback_document,
    remove_document,
)
from tests.meshctl.helpers import INVENTORY, MESH, NOW, TD, WEB1, make_ca

CA = make_ca()
REGISTRY = INVENTORY.registry(3, MESH.defaults.mesh_port)
VIPS = dict(INVENTORY.vips)
VERSION = "0.3.0-py3.11-x86_64-0123abcd"
DESIRED = desired_host(MESH, WEB1, REGISTRY, VERSION, b"trust bundle\n", 2222)
HOSTS = "127.0.0.1\tlocalhost\n10.0.0.12\tdb1\n"


def certificate(
    ids: list[SpiffeId] | None = None, ca: MeshCa = CA, issued: dt.datetime = NOW
) -> str:
    """A host certificate chain as the host has it in /etc/meshd/cert.pem."""
    ids = list(DESIRED.identities) if ids is None else ids
    _, cert = issue_identity(ids, ca.issuing, issued, dt.timedelta(hours=24))
    return cert_pem(cert, ca.issuing.cert).decode()


PRISTINE = HostFacts(
    os_id="debian",
    os_version="12",
    os_name="Debian GNU/Linux 12 (bookworm)",
    machine="x86_64",
    hostname="web1",
    python="3.11",
    systemd=True,
    iptables="nft",
    user_exists=False,
    hosts=HOSTS,
)
CONVERGED = replace(
    PRISTINE,
    user_exists=True,
    hashes={f.path: f.sha256 for f in DESIRED.files},
    key_mode="600 meshd",
    cert_pem=certificate(),
    enabled={u: "enabled" for u in layout.ENABLED_UNITS} | {"meshd-sync.service": "static"},
    meshd=MeshdState("active", 0, 3600.0, 4242),
    registry=json.loads(REGISTRY.to_json()),  # as read back from the host
    rules_record=DESIRED.rules_fingerprint,
    nat=DESIRED.rules_document,
    route=True,
    hosts=hostsfile.with_block(HOSTS, VIPS),
    versions=("bin", VERSION),
)


def summary(plan: Plan) -> list[str]:
    """Step types, with the file written or the action on meshd."""
    names = []
    for step in plan.steps:
        name = type(step).__name__
        if isinstance(step, WriteFile):
            name += f" {step.file.path}"
        elif isinstance(step, ApplyRules):
            name += "".join(f" {f.path}" for f in step.files)
        elif isinstance(step, StartMeshd):
            name += f" {step.action}"
        names.append(name)
    return names


def join(facts: HostFacts) -> Plan:
    return plan_join(facts, DESIRED, CA.issuing.cert, NOW)


def test_pristine_host_gets_everything_in_order() -> None:
    plan = join(PRISTINE)
    assert summary(plan) == [
        "InstallBundle",
        f"WriteFile {layout.LAUNCHER}",  # before keygen, which runs it
        "CreateUser",
        "Enroll",
        f"WriteFile {layout.TRUST_BUNDLE}",
        *(f"WriteFile {path}" for path in layout.UNIT_FILES.values()),
        "ReloadSystemd",
        "EnableUnits",
        # under the dead-man switch, with the config the rules come from, before meshd starts
        f"ApplyRules {layout.CONFIG} {layout.REGISTRY}",
        "StartMeshd start",
        "WriteHostsBlock",
    ]
    assert plan.host == "web1"


def test_pristine_host_steps_carry_what_they_install() -> None:
    steps = {type(s).__name__: s for s in join(PRISTINE).steps}
    assert steps["Enroll"].detail().splitlines() == [
        f"spiffe://{TD}/host/web1",
        f"spiffe://{TD}/svc/web",
        f"spiffe://{TD}/svc/admin",
    ]
    assert steps["EnableUnits"].units == layout.ENABLED_UNITS  # type: ignore[attr-defined]
    assert steps["ApplyRules"].detail() == DESIRED.rules_document
    hosts = steps["WriteHostsBlock"]
    assert hosts.content == HOSTS + hostsfile.render_block(VIPS)  # type: ignore[attr-defined]


def test_converged_host_has_an_empty_plan() -> None:
    assert join(CONVERGED).empty


def _with_hash(path: str) -> dict[str, str]:
    return CONVERGED.hashes | {path: "0" * 64}


OTHER_CA = make_ca()
CHANGES: list[tuple[str, dict[str, Any], list[str]]] = [
    (
        "config differs",
        {"hashes": _with_hash(layout.CONFIG)},
        [f"WriteFile {layout.CONFIG}", "StartMeshd restart"],
    ),
    (
        "meshd unit differs",
        {"hashes": _with_hash(layout.UNIT_FILES["meshd.service"])},
        [f"WriteFile {layout.UNIT_FILES['meshd.service']}", "ReloadSystemd", "StartMeshd restart"],
    ),
    (
        "sync path unit differs",
        {"hashes": _with_hash(layout.UNIT_FILES["meshd-sync.path"])},
        [f"WriteFile {layout.UNIT_FILES['meshd-sync.path']}", "ReloadSystemd"],
    ),
    (
        "trust bundle differs",
        {"hashes": _with_hash(layout.TRUST_BUNDLE)},
        [f"WriteFile {layout.TRUST_BUNDLE}", "StartMeshd reload"],
    ),
    (
        "launcher differs",
        {"hashes": _with_hash(layout.LAUNCHER)},
        [f"WriteFile {layout.LAUNCHER}", "StartMeshd restart"],
    ),
    (
        "registry differs",
        {"registry": {**REGISTRY.to_dict(), "version": 2}},
        [f"WriteFile {layout.REGISTRY}", "StartMeshd reload"],
    ),
    (
        "registry file stale but pushed one current",  # the pushed one is what meshd uses
        {"hashes": _with_hash(layout.REGISTRY)},
        [],
    ),
    (
        "certificate past 2/3 of its life",
        {"cert_pem": certificate(issued=NOW - dt.timedelta(hours=17))},
        ["Enroll", "StartMeshd reload"],
    ),
    (
        "certificate before 2/3 of its life",
        {"cert_pem": certificate(issued=NOW - dt.timedelta(hours=15))},
        [],
    ),
    (
        "certificate with other identities",
        {"cert_pem": certificate(ids=[make_id(TD, "host", "web1")])},
        ["Enroll", "StartMeshd reload"],
    ),
    (
        "certificate from another CA",
        {"cert_pem": certificate(ca=OTHER_CA)},
        ["Enroll", "StartMeshd reload"],
    ),
    ("certificate unreadable", {"cert_pem": "garbage"}, ["Enroll", "StartMeshd reload"]),
    ("key readable by others", {"key_mode": "644 root"}, ["Enroll", "StartMeshd reload"]),
    ("meshd failed", {"meshd": MeshdState("failed", 5)}, ["StartMeshd start"]),
    ("unit disabled", {"enabled": {"meshd.service": "enabled"}}, ["EnableUnits"]),
    ("rules record differs", {"rules_record": "f" * 64}, ["ApplyRules"]),
    (  # the config the new rules come from is written under their guard, not before
        "config and rule set differ",
        {"hashes": _with_hash(layout.CONFIG), "rules_record": "f" * 64},
        [f"ApplyRules {layout.CONFIG}", "StartMeshd restart"],
    ),
    ("a join was cut short before confirming", {"rollback_pending": True}, ["ApplyRules"]),
    ("route gone", {"route": False}, ["ApplyRules"]),
    ("rules gone (reboot)", {"nat": "", "rules_record": ""}, ["ApplyRules"]),
    ("hosts block missing", {"hosts": HOSTS}, ["WriteHostsBlock"]),
    ("old bundle present", {"versions": ("0.2.0-old", "bin", VERSION)}, ["PruneBundles"]),
    (
        "new bundle",
        {"versions": ("0.2.0-old", "bin")},
        ["InstallBundle", "StartMeshd restart", "PruneBundles"],
    ),
]


@pytest.mark.parametrize(
    ("changes", "expected"), [c[1:] for c in CHANGES], ids=[c[0] for c in CHANGES]
)
def test_one_change_gives_only_its_steps(changes: dict[str, Any], expected: list[str]) -> None:
    assert summary(join(replace(CONVERGED, **changes))) == expected


def test_rules_are_reapplied_without_adding_the_jumps_again() -> None:
    plan = join(replace(CONVERGED, rules_record="f" * 64))
    (step,) = plan.steps
    assert isinstance(step, ApplyRules)
    assert ":MESHD_OUTPUT - [0:0]" in step.document
    assert "-A OUTPUT" not in step.document and "-A PREROUTING" not in step.document


@pytest.mark.parametrize(
    ("cert", "problem"),
    [
        (certificate(issued=NOW - dt.timedelta(hours=17)), "past 2/3 of its life"),
        (certificate(ids=[make_id(TD, "host", "web1")]), "identities differ"),
        (certificate(ca=OTHER_CA), "not issued by this mesh's issuing CA"),
        ("", "no certificate yet"),
    ],
)
def test_enroll_says_why(cert: str, problem: str) -> None:
    (enroll,) = [s for s in join(replace(CONVERGED, cert_pem=cert)).steps if isinstance(s, Enroll)]
    assert problem in enroll.why
    assert enroll.lifetime == MESH.defaults.leaf_lifetime == 86400


REJOINED = NOW - dt.timedelta(minutes=1)  # web1's name, revoked before, joined again
REVOKED_WHY = (
    "the registry revokes it (by serial, or by ID: it started before the host joined again)"
)


@pytest.mark.parametrize(
    ("issued", "serial", "revoked"),
    [
        (REJOINED - dt.timedelta(hours=1), False, True),  # from before: a stolen copy's twin
        (REJOINED + dt.timedelta(minutes=5), False, False),  # starts at the rejoin: good
        (REJOINED + dt.timedelta(minutes=5), True, True),  # its serial is revoked
    ],
    ids=["from-before-the-rejoin", "since-the-rejoin", "revoked-serial"],
)
def test_a_certificate_the_registry_revokes_is_replaced(
    issued: dt.datetime, serial: bool, revoked: bool
) -> None:
    cert = certificate(issued=issued)  # the test CA backdates 5 minutes
    named = (format(x509.load_pem_x509_certificate(cert.encode()).serial_number, "X"),)
    entry = Revocation(
        "web1",
        (str(make_id(TD, "host", "web1")),),
        named if serial else (),
        int((NOW + dt.timedelta(days=1)).timestamp()),
        before=int(REJOINED.timestamp()),
    )
    registry = replace(REGISTRY, revoked=(entry,))
    desired = desired_host(MESH, WEB1, registry, VERSION, b"trust bundle\n", 2222)
    facts = replace(CONVERGED, cert_pem=cert, registry=registry.to_dict())
    enrolls = [
        s for s in plan_join(facts, desired, CA.issuing.cert, NOW).steps if isinstance(s, Enroll)
    ]
    assert [e.why for e in enrolls] == ([REVOKED_WHY] if revoked else [])


def test_leave_on_a_pristine_host_does_nothing() -> None:
    pristine = replace(PRISTINE, enabled={u: "not-found" for u in layout.UNITS})
    assert plan_leave(pristine).empty


def test_leave_on_a_joined_host_removes_everything() -> None:
    plan = plan_leave(replace(CONVERGED, user_created=True))
    assert [type(s) for s in plan.steps] == [
        StopUnits,
        RemoveRules,
        WriteHostsBlock,
        RemovePaths,
        RemoveUser,
    ]
    stop, rules, hosts, paths, _ = plan.steps
    assert isinstance(stop, StopUnits) and stop.units == layout.UNITS
    assert isinstance(rules, RemoveRules)
    assert rules.route and rules.document == remove_document(CONVERGED.nat)
    assert isinstance(hosts, WriteHostsBlock)
    assert (hosts.content, hosts.block) == (HOSTS, "")
    assert isinstance(paths, RemovePaths) and paths.paths == layout.REMOVED_PATHS


def test_leave_after_a_half_finished_join() -> None:
    half = replace(PRISTINE, user_exists=True, user_created=True, versions=(VERSION,))
    assert [type(s) for s in plan_leave(half).steps] == [RemovePaths, RemoveUser]


def test_leave_keeps_a_meshd_user_that_was_there_before_the_join() -> None:
    steps = plan_leave(replace(CONVERGED, user_created=False)).steps
    assert RemovePaths in [type(s) for s in steps] and RemoveUser not in [type(s) for s in steps]


CONVERGED6 = replace(CONVERGED, ipv6=True, nat6=DESIRED.rules_document6)


def test_a_host_with_ipv6_needs_the_ip6tables_rules_too() -> None:
    assert join(CONVERGED6).empty
    missing = join(replace(CONVERGED, ipv6=True))  # an IPv4-only rule set: strict is not strict
    (apply,) = [s for s in missing.steps if isinstance(s, ApplyRules)]
    assert apply.why == "not installed" and apply.document6 == DESIRED.rules_document6
    assert "# ip6tables:\n*nat\n" in apply.detail()
    assert join(replace(CONVERGED, ipv6=False, nat6="")).empty  # a kernel without IPv6


def test_leave_takes_the_ip6tables_rules_and_tables_too() -> None:
    (rules,) = [
        s
        for s in plan_leave(replace(CONVERGED6, nat6_created=True)).steps
        if isinstance(s, RemoveRules)
    ]
    assert rules.document6 == remove_document(CONVERGED6.nat6) and rules.drop_nat6_table
    only6 = replace(CONVERGED6, nat=PRISTINE.nat, route=False, nat_created=False)
    assert RemoveRules in [type(s) for s in plan_leave(only6).steps]


def _held(family: Family) -> tuple[str, str]:
    """A family's nat and filter tables as saved after the boot fallback ran (iptables-save
    lists every rule with -A): our nat chains emptied, the rejects in the filter table."""
    rejects, emptied = fallback_document(DESIRED.rules, family).split("COMMIT\n")[:2]
    return emptied + "COMMIT\n", rejects.replace("\n-I ", "\n-A ") + "COMMIT\n"


HELD = replace(
    CONVERGED6,
    rules_record="",
    fallback=True,
    nat=_held(V4)[0],
    filter=_held(V4)[1],
    nat6=_held(V6)[0],
    filter6=_held(V6)[1],
)


def test_a_host_held_by_the_fallback_gets_its_redirects_back() -> None:
    assert not rules_present(HELD, DESIRED) and not rules_present(HELD)
    (apply,) = [s for s in join(HELD).steps if isinstance(s, ApplyRules)]
    assert apply.why == "not installed"
    for document in (apply.document, apply.document6):  # the rejects go, in the same restore
        assert "*filter\n-D OUTPUT" in document and "-X MESHD_REJECT" in document
    assert ipv6_rules(HELD) == REJECT and ipv6_rules(CONVERGED6) == REDIRECT
    assert ipv6_rules(CONVERGED) == ""  # a kernel without IPv6


def test_a_rule_set_in_the_wrong_table_is_not_in_place() -> None:
    """Rejects where the desired rules redirect (or both at once) are no match."""
    both = replace(CONVERGED6, filter6=HELD.filter6)
    assert not rules_present(both, DESIRED)
    assert join(both).has(ApplyRules)


def test_leave_takes_the_fallbacks_rejects_too() -> None:
    (rules,) = [s for s in plan_leave(HELD).steps if isinstance(s, RemoveRules)]
    for removal in (rules.document, rules.document6):
        assert removal is not None and "*filter\n-D OUTPUT" in removal
        assert "-X MESHD_REJECT" in removal
