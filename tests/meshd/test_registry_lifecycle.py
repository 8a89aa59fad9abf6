"""The registry's identity-lifecycle lists: issuers and revocations, both ways, checked."""

from __future__ import annotations

import json
from typing import Any

import pytest

from meshd.errors import ConfigError
from meshd.registry import Endpoint, IssuerRef, Registry, Revocation, Service

REG = Registry.of(
    4,
    [Service("api", "10.255.0.2", 80, (Endpoint("h2", "10.77.0.12", 8080),))],
    [IssuerRef("h1", "10.77.0.11", 15000)],
    [
        Revocation("h3", ("spiffe://t.mesh/host/h3",), ("1F2E",), 1767225600),
        Revocation("h4", ("spiffe://t.mesh/host/h4",), (), 1767225600, before=1767139200),
    ],
)
REJOINED = 1767139200  # h4's name joined again then: certificates from then on are good


def test_issuers_and_revocations_read_back_as_written() -> None:
    doc = REG.to_dict()
    assert doc["issuers"] == [{"host": "h1", "address": "10.77.0.11", "port": 15000}]
    assert doc["revoked"] == [
        {"host": "h3", "ids": ["spiffe://t.mesh/host/h3"], "serials": ["1F2E"], "until": 1767225600},
        {"host": "h4", "ids": ["spiffe://t.mesh/host/h4"], "serials": [], "until": 1767225600,
         "before": REJOINED},
    ]  # fmt: skip
    assert Registry.from_dict(doc, "r") == REG
    assert Registry.from_dict(json.loads(REG.to_json()), "registry.json") == REG


def test_empty_lists_stay_out_of_the_document_for_older_meshd() -> None:
    assert set(Registry.of(1, []).to_dict()) == {"version", "services"}


def test_services_of_a_host_and_what_is_revoked() -> None:
    assert REG.services_of("h2") == frozenset({"api"})
    assert REG.services_of("h1") == frozenset()
    assert REG.revocation(["spiffe://t.mesh/host/h3"], "AB", 2e9) == REG.revoked[0]
    assert REG.revocation(["spiffe://t.mesh/host/h2"], "1F2E", 0) == REG.revoked[0]
    assert REG.revocation(["spiffe://t.mesh/host/h2"], "AB", 0) is None
    assert REG.revocation([], "001F2E", 0) == REG.revoked[0]  # as ssl spells it: whole bytes


@pytest.mark.parametrize(
    ("not_before", "revoked"),
    [(0, True), (REJOINED - 1, True), (REJOINED, False), (REJOINED + 3600, False)],
    ids=["ancient", "a-second-before-the-rejoin", "at-the-rejoin", "after-the-rejoin"],
)
def test_a_rejoined_name_revokes_only_certificates_from_before(
    not_before: int, revoked: bool
) -> None:
    found = REG.revocation(["spiffe://t.mesh/host/h4"], "AB", not_before)
    assert (found == REG.revoked[1]) is revoked and (found is None) is not revoked


def test_a_revocation_without_before_stays_out_of_the_document_for_older_meshd() -> None:
    assert "before" not in REG.to_dict()["revoked"][0]


@pytest.mark.parametrize(
    ("ids", "floor"),
    [
        (["spiffe://t.mesh/host/h4"], REJOINED),
        (["spiffe://t.mesh/host/h4", "spiffe://t.mesh/svc/api"], REJOINED),
        (["spiffe://t.mesh/host/h3"], 0),  # revoked in full: nothing is signed for it anyway
        (["spiffe://t.mesh/host/h2"], 0),
    ],
)
def test_the_not_before_floor_of_new_certificates(ids: list[str], floor: int) -> None:
    assert REG.not_before_floor(ids) == floor


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"issuers": [{"host": "H1", "address": "10.77.0.11", "port": 15000}]}, "issuers[0].host"),
        ({"issuers": [{"host": "h1", "address": "nope", "port": 15000}]}, "issuers[0].address"),
        ({"issuers": [{"host": "h1", "address": "10.77.0.11", "port": 0}]}, "issuers[0].port"),
        (
            {"issuers": [{"host": "h1", "address": "10.77.0.11", "port": 1}] * 2},
            "listed twice",
        ),
        ({"revoked": [{"host": "h3", "ids": ["http://x"]}]}, "revoked[0].ids"),
        ({"revoked": [{"host": "h3", "serials": ["1f2e"]}]}, "revoked[0].serials"),
        ({"revoked": [{"host": "h3", "serials": ["A" * 41]}]}, "revoked[0].serials"),
        ({"revoked": [{"host": "h3", "serials": ["0A1B"]}]}, "write it as A1B"),
        ({"revoked": [{"host": "h3", "ids": ["spiffe://t/host/x"] * 257}]}, "more than 256"),
        ({"revoked": [{"host": "h3", "until": -1}]}, "revoked[0].until"),
        ({"revoked": [{"host": "h3", "before": -1}]}, "revoked[0].before"),
        ({"revoked": [{"host": "h3", "before": "1767139200"}]}, "revoked[0].before"),
        ({"revoked": [{"host": "h3", "extra": 1}]}, "extra"),
    ],
)
def test_a_bad_entry_is_refused_naming_its_field(patch: dict[str, Any], message: str) -> None:
    doc = {**Registry.of(1, []).to_dict(), **patch}
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Registry.from_dict(doc, "registry")
