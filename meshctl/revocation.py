"""Revocations as meshctl keeps them: what ``leave``/``revoke`` take away, and for how long.

Pure: values in, values out, the clock passed in. A host's entry names its
host identity and the certificate serials meshctl knows of (the one ``join``
signed, the one meshd reported on /stats), and lasts until anything signed
for it before now has expired: ``now + leaf lifetime + backdate``. The
registry carries the entries still in force (``in_force``), so every meshd
refuses them at once; the workspace keeps them in ``state``.

A revoked host name that joins again keeps its entry, now with ``before``
set to when it joined less the backdate (``readmitted``): its ID still
revokes every certificate signed before the join (every signer backdates
the same: a stolen copy, and anything an issuer renewed for it), while the
join's certificate keeps its tolerance for clock skew; meshctl and the
issuers never start the host's new ones earlier (``Registry.not_before_floor``).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from dataclasses import replace

from cryptography import x509

from meshctl.config import MeshConfig
from meshd import pki
from meshd.identity import make_id
from meshd.registry import MAX_REVOKED_NAMES, SERIAL, Revocation, serial_key


def leaf_lifetime(config: MeshConfig) -> int:
    """The mesh's leaf lifetime in seconds (``[defaults]`` of mesh.toml)."""
    return config.defaults.leaf_lifetime


def backdate(lifetime: int) -> int:
    """How far a leaf of ``lifetime`` seconds is backdated (``meshd.pki.backdate``), in seconds."""
    return math.ceil(pki.backdate(dt.timedelta(seconds=lifetime)).total_seconds())


def serial_of(pem: str) -> str:
    """The serial of the (first) certificate in ``pem`` as peers spell it; "" without one."""
    try:
        return format(x509.load_pem_x509_certificate(pem.encode()).serial_number, "X")
    except ValueError:
        return ""


def revoke_host(
    host: str, trust_domain: str, serials: Iterable[str], now: dt.datetime, lifetime: int
) -> Revocation:
    """The entry revoking ``host``: its host identity and ``serials``, until they expire."""
    until = int(now.timestamp()) + lifetime + backdate(lifetime)
    ids = (str(make_id(trust_domain, "host", host)),)
    # what a meshd reported is checked like the registry will check it: one odd serial
    # must not make every later registry unreadable
    spelled = (serial_key(s.strip()) for s in serials if SERIAL.fullmatch(s.strip().upper()))
    return Revocation(host, ids, _unique(spelled), until)


def merged(old: Revocation | None, new: Revocation) -> Revocation:
    """``new`` on top of ``old`` (a host revoked again): every name, the later end, and
    ``new``'s ``before`` (a fresh revocation's 0: every certificate of the host again).

    Serials beyond what the registry takes drop the oldest first.
    """
    if old is None:
        return new
    serials = _unique((*old.serials, *new.serials))[-MAX_REVOKED_NAMES:]
    ids, until = _unique((*old.ids, *new.ids)), max(old.until, new.until)
    return Revocation(new.host, ids, serials, until, new.before)


def readmitted(
    entries: Mapping[str, Revocation], names: Iterable[str], now: dt.datetime, lifetime: int
) -> dict[str, Revocation]:
    """``entries`` once the hosts ``names`` join (again) at ``now``: a name revoked in
    full only revokes certificates signed before ``now`` from then on (leaves of
    ``lifetime`` seconds start ``backdate`` before they are signed). A name that joined
    again earlier keeps its time: its certificates since are good."""
    kept = dict(entries)
    for name in names:
        entry = kept.get(name)
        if entry is not None and entry.before == 0:
            kept[name] = replace(entry, before=int(now.timestamp()) - backdate(lifetime))
    return kept


def in_force(entries: Iterable[Revocation], now: dt.datetime) -> tuple[Revocation, ...]:
    """What the registry carries: entries not yet expired that name something."""
    live = (e for e in entries if e.until > now.timestamp())
    return tuple(e for e in live if e.ids or e.serials)


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))
