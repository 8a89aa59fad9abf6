"""The policy's access log: one JSON line per decision worth a line (POLICY.md §2.6).

Denials, resets, bad requests and would-denials are always logged; allows
only when asked (``allows``). Rate-limit refusals get a line of their own
(``event=ratelimit``). The lines are written by the metrics consumer's tap
(``Metrics.tap``), off the relay's path; the events carry only verified
identities, rule ids and normalised paths, and anything else a peer sent
(a rejected target) is ``clean``ed where the event is made.
"""

from __future__ import annotations

import json
import logging

from meshd.telemetry.events import AuthzDecided, RateLimited

log = logging.getLogger("meshd.authz")

UNAUTHENTICATED = "unauthenticated"


class AuthzLog:
    """Writes the lines; ``allows``: log allowed requests too (off by default)."""

    __slots__ = ("allows",)

    def __init__(self, allows: bool = False) -> None:
        self.allows = allows

    def decided(self, event: AuthzDecided) -> None:
        if event.decision != "allow" or event.would_deny or (self.allows and event.request_id):
            log.info("%s", authz_line(event))

    def limited(self, event: RateLimited) -> None:
        log.info("%s", limited_line(event))


def authz_line(e: AuthzDecided) -> str:
    """The JSON object of one decision, on one line."""
    return _dump(
        {
            "event": "authz",
            "decision": e.decision,
            "rule": e.rule,
            "would_deny": list(e.would_deny),
            "service": e.service,
            "source": e.source or UNAUTHENTICATED,
            "port": e.port,
            "method": e.method or None,
            "path": e.path or None,
            "request_id": e.request_id or None,
        }
    )


def limited_line(e: RateLimited) -> str:
    return _dump(
        {
            "event": "ratelimit",
            "decision": "rate-limited",
            "rule": e.rule,
            "retry_after": e.retry_after,
            "service": e.service,
            "source": e.source or UNAUTHENTICATED,
            "port": e.port,
            "method": e.method or None,
            "path": e.path or None,
            "request_id": e.request_id or None,
        }
    )


def _dump(fields: dict[str, object]) -> str:
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=True)
