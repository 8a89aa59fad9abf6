"""Views of ``meshctl policy``: problems, the applied documents, diffs and explained decisions."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from meshctl.policydiff import DocumentDiff
from meshctl.policyprobes import OTHER_SERVICE, ChangeLine, DecisionDiff, Outcome
from meshd.policy.lang.evaluate import Decision
from meshd.policy.lang.model import Document
from meshd.policy.lang.problems import Problem


def problems_summary(problems: Sequence[Problem], files: int) -> str:
    """``2 errors, 1 warning in 3 files`` (or that they are valid)."""
    bad = sum(p.severity == "error" for p in problems)
    warned = len(problems) - bad
    where = f"{files} file{'s' if files != 1 else ''}"
    if not problems:
        return f"{where} valid"
    parts = [f"{bad} error{'s' if bad != 1 else ''}"] if bad else []
    parts += [f"{warned} warning{'s' if warned != 1 else ''}"] if warned else []
    return f"{', '.join(parts)} in {where}"


def problems_json(problems: Sequence[Problem]) -> dict[str, Any]:
    return {"problems": [p.to_json() for p in problems]}


@dataclass(frozen=True)
class Listed:
    """One applied document, as ``meshctl policy list`` shows it."""

    name: str
    file: str
    trust_domain: str
    description: str
    allow: int
    deny: int
    rate_limit: int
    settings: tuple[str, ...]

    @classmethod
    def of(cls, doc: Document, file: str) -> Listed:
        settings = [s.id for s in (doc.mtls_mode, doc.authz_default) if s is not None]
        settings += [s.id for s in (*doc.mtls_services.values(), *doc.authz_services.values())]
        return cls(
            doc.name,
            file,
            doc.trust_domain,
            doc.description,
            sum(r.kind == "allow" for r in doc.rules),
            sum(r.kind == "deny" for r in doc.rules),
            len(doc.rate_limits),
            tuple(sorted(settings)),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "file": self.file,
            "trust_domain": self.trust_domain,
            "description": self.description,
            "allow": self.allow,
            "deny": self.deny,
            "rate_limit": self.rate_limit,
            "settings": list(self.settings),
        }


def documents_table(rows: Sequence[Listed], version: int | None) -> Table:
    pushed = "never pushed" if version is None else f"version {version}"
    table = Table(title=f"applied policy ({pushed})", title_justify="left")
    for column in ("document", "trust domain", "allow", "deny", "rate limits", "settings"):
        table.add_column(column, justify="right" if column in ("allow", "deny") else "left")
    table.add_column("description", overflow="fold", ratio=1)
    for r in rows:
        table.add_row(
            escape(r.name),
            escape(r.trust_domain),
            str(r.allow),
            str(r.deny),
            str(r.rate_limit),
            escape("\n".join(r.settings)) or "-",
            escape(r.description),
        )
    return table


_MARKS = {"added": ("+", "green"), "removed": ("-", "red"), "changed": ("~", "yellow")}


def _value(value: object) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def diff_view(diffs: Sequence[DocumentDiff]) -> RenderableType:
    """Per document: new/changed/unchanged, then one line per id added, removed or changed."""
    parts: list[RenderableType] = []
    for d in diffs:
        count = f"{len(d.changes)} change{'s' if len(d.changes) != 1 else ''}"
        head = {"new": f"new document ({count})", "changed": count, "unchanged": "unchanged"}
        parts.append(Text(f"{d.name}: {head[d.status]}", style="bold"))
        for c in d.changes:
            mark, style = _MARKS[c.change]
            if c.change == "changed":
                detail = f"{_value(c.before)} -> {_value(c.after)}"
            else:
                detail = _value(c.after if c.change == "added" else c.before)
            parts.append(Text.assemble(f"  {mark} ", (c.id, style), f"  {detail}"))
    return Group(*parts)


PROBES_NOTE = (
    "judged with meshd's evaluator, applied set -> with these files, for the services whose "
    "rules or settings differ; the probes are representatives (each named identity, one "
    "unnamed, plaintext; each rule's methods, paths and headers, one request no rule "
    "matches; opaque TCP), not every possible request"
)


MAX_LINES = 200  # a mesh-wide change can touch every probe: --json has them all


def decisions_view(dd: DecisionDiff) -> RenderableType:
    """The decisions that change: one line per changed probe, or per (source, destination,
    port) when every request there changed alike; then what the probes were."""
    count = f"{len(dd.changes)} of {dd.probes} probe{'s' if dd.probes != 1 else ''}"
    head = f"decisions: {count} change" if dd.changes else f"decisions: none of {dd.probes} change"
    if not dd.probes:
        head = "decisions: none change (no service's rules or settings differ)"
    parts: list[RenderableType] = [Text(head, style="bold")]
    parts += [_change_line(line) for line in dd.lines[:MAX_LINES]]
    if len(dd.lines) > MAX_LINES:
        more = len(dd.lines) - MAX_LINES
        parts.append(Text(f"  ... and {more} more (--json lists every changed probe)"))
    parts.append(Text(f"({PROBES_NOTE})", style="dim"))
    return Group(*parts)


def _change_line(line: ChangeLine) -> Text:
    source = line.source if line.named else f"{line.source} (an identity no rule names)"
    service = "any other service" if line.destination == OTHER_SERVICE else line.destination
    port = "<a port no rule names>" if line.port is None else str(line.port)
    request = "every request" if line.request is None else line.request
    return Text.assemble(
        f"  {source} → {service}:{port} {request}: ",
        _outcome(line.before),
        " → ",
        _outcome(line.after),
    )


def _outcome(o: Outcome) -> Text:
    extra = f", would deny: {', '.join(o.would_deny)}" if o.would_deny else ""
    extra += f", rate limit: {', '.join(o.rate_limits)}" if o.rate_limits else ""
    return Text.assemble((o.decision, _STYLE[o.decision]), f" ({o.rule}{extra})")


def decision_json(d: Decision) -> dict[str, Any]:
    """Exactly ``{"decision", "status", "rule", "would_deny"}`` (the interface of explain)."""
    return {
        "decision": d.decision,
        "status": d.status,
        "rule": d.rule,
        "would_deny": list(d.would_deny),
    }


_STYLE = {"allow": "green", "deny": "red", "reset": "red", "bad-request": "yellow"}


def decision_view(d: Decision, request: str) -> RenderableType:
    """The decision, its status, the rule that decided and the would-deny list."""
    status = "-" if d.status is None else str(d.status)
    outcome = {
        "allow": "forwarded to the service",
        "deny": f"answered {status} by meshd",
        "reset": "connection reset",
        "bad-request": f"answered {status} by meshd (normalisation)",
    }[d.decision]
    lines = [
        Text(request, style="dim"),
        Text.assemble("decision:   ", (d.decision, f"bold {_STYLE[d.decision]}"), f" ({outcome})"),
        Text(f"status:     {status}"),
        Text(f"rule:       {d.rule}"),
    ]
    if d.detail:
        lines.append(Text(f"detail:     {d.detail}"))
    lines.append(Text(f"would-deny: {', '.join(d.would_deny) or 'none'}"))
    return Group(*lines)
