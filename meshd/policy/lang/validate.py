"""The validator of POLICY.md §2.12: a document's text or data to a ``Document`` and its problems.

Phases 1-4 (syntax, schema, field semantics, checks across one document's
fields) run in ``check_text`` / ``check_data`` and report every problem they
find, sorted by line; phase 5 (``check_set``) checks documents against each
other. meshctl runs ``check_text`` on files; meshd runs ``check_data`` on the
documents pushed to it, so both ends accept exactly the same policies.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeVar

from meshd.identity import trust_domain_problem
from meshd.policy.lang import fields, patterns
from meshd.policy.lang.fields import Report, Where
from meshd.policy.lang.lines import Lines, scan
from meshd.policy.lang.model import (
    ANY_SERVICE,
    Document,
    RateLimit,
    Rule,
    Selector,
    Setting,
)
from meshd.policy.lang.problems import Problem, by_line

VERSION = 1
RESERVED_NAMES = ("builtin", "normalize", "config", "registry")
KINDS = ("allow", "deny", "rate_limit")
REFUSED = ("route", "fault", "resilience")
TOP_KEYS = ("version", "name", "trust_domain", "description", "mtls", "authz", *KINDS, *REFUSED)
MODES = ("strict", "permissive")
DEFAULTS = ("deny", "allow", "audit")
BUCKETS = ("shared", "per-source")
_SELECTOR_KEYS = ("name", "to", "from", "ports", "methods", "paths", "headers")
RULE_KEYS: Mapping[str, tuple[str, ...]] = {
    "allow": _SELECTOR_KEYS,
    "deny": (*_SELECTOR_KEYS, "audit"),
    "rate_limit": (*_SELECTOR_KEYS, "limit", "per", "burst", "bucket"),
}
_DOCUMENT_NAME = re.compile(r"[a-z0-9-]{1,63}")
_AT_LINE = re.compile(r"\(at line (\d+), column \d+\)")
_TOP = Where((), "")
T = TypeVar("T")


def check_text(
    text: str, file: str, trust_domain: str, now: datetime
) -> tuple[Document | None, list[Problem]]:
    """Phases 1-4 on a file's text: the Document (only when there is no error) and every problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        return None, [Problem(file, _syntax_line(str(error), text), "P001", "(syntax)", str(error))]
    return _check(data, Report(file, scan(text)), trust_domain, now)


def check_data(
    data: Mapping[str, Any], file: str, trust_domain: str, now: datetime
) -> tuple[Document | None, list[Problem]]:
    """Phases 2-4 on already-parsed data (a pushed document): no lines, so every line is 0."""
    report = Report(file, Lines())
    if not isinstance(data, Mapping):
        fields.wrong_type(report, _TOP, "a policy document (a table)", data)
        return None, report.problems
    return _check(data, report, trust_domain, now)


def _syntax_line(message: str, text: str) -> int:
    match = _AT_LINE.search(message)
    return int(match[1]) if match else max(1, text.count("\n") + (not text.endswith("\n")))


def _check(
    data: Mapping[str, Any], report: Report, mesh_trust_domain: str, now: datetime
) -> tuple[Document | None, list[Problem]]:
    del now  # only faults (§2.10, not supported yet) depend on the time
    draft = _Draft(trust_domain=mesh_trust_domain)
    _top_level(report, data, draft)
    _settings(report, data, draft)
    for kind in KINDS:
        _rules(report, data, kind, draft)
    _never_matching(report, draft)
    problems = by_line(report.problems)
    if report.failed:
        return None, problems
    return draft.document(_plain(data)), problems


@dataclass(slots=True)
class _Draft:
    """What the checks found so far; becomes a Document when nothing was wrong."""

    trust_domain: str
    name: str = "-"
    description: str = ""
    settings: dict[tuple[str, ...], Setting] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)
    rate_limits: list[RateLimit] = field(default_factory=list)

    def setting(self, report: Report, where: Where, value: str, *id_parts: str) -> None:
        setting_id = "/".join((self.name, *id_parts))
        self.settings[id_parts] = Setting(value, setting_id, report.lines.line(where.path))

    def document(self, data: Mapping[str, object]) -> Document:
        return Document(
            name=self.name,
            trust_domain=self.trust_domain,
            description=self.description,
            mtls_mode=self.settings.get(("mtls", "mode")),
            mtls_services=self._services("mtls"),
            authz_default=self.settings.get(("authz", "default")),
            authz_services=self._services("authz"),
            rules=tuple(self.rules),
            rate_limits=tuple(self.rate_limits),
            data=data,
        )

    def _services(self, section: str) -> dict[str, Setting]:
        return {
            key[2]: setting
            for key, setting in self.settings.items()
            if key[0] == section and key[1] == "services"
        }


def _top_level(report: Report, data: Mapping[str, Any], draft: _Draft) -> None:
    fields.unknown_keys(report, _TOP, data, TOP_KEYS)
    for kind in REFUSED:
        _refuse(report, kind, data.get(kind))
    _version(report, data)
    _name(report, data, draft)
    if "trust_domain" in data:
        _trust_domain(report, data["trust_domain"], draft)
    if "description" in data:
        draft.description = fields.text(report, _TOP.key("description"), data["description"]) or ""


def _refuse(report: Report, kind: str, value: object) -> None:
    """§2.8-2.10 come in a later version: refuse each entry, never accept and ignore it."""
    if value is None:
        return
    message = (
        f"`[[{kind}]]` is not supported by this meshctl yet "
        "(routes, faults and resilience come in a later version)"
    )
    entries = value if isinstance(value, list) else [value]
    for index, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, Mapping) else None
        where = Where(
            (kind, index), f'{kind}."{name}"' if isinstance(name, str) else f"{kind}[{index}]"
        )
        report.add("P002", where, message)


def _version(report: Report, data: Mapping[str, Any]) -> None:
    where = _TOP.key("version")
    if "version" not in data:
        report.add("P004", where, "missing required field: start the document with version = 1")
        return
    version = fields.integer(report, where, data["version"], "1")
    if version is not None and version != VERSION:
        report.add(
            "P007", where, f"unsupported version {version}: this meshctl understands version 1"
        )


def _name(report: Report, data: Mapping[str, Any], draft: _Draft) -> None:
    where = _TOP.key("name")
    if "name" not in data:
        report.add(
            "P004", where, 'missing required field: name the document, e.g. name = "zero-trust"'
        )
        return
    name = fields.text(report, where, data["name"], ', e.g. "zero-trust"')
    if name is None:
        return
    if not _DOCUMENT_NAME.fullmatch(name):
        report.add("P006", where, f"invalid document name '{name}': use 1-63 of a-z, 0-9, '-'")
    elif name in RESERVED_NAMES:
        report.add(
            "P006", where, f"document name '{name}' is reserved: rule ids {name}/... are built in"
        )
    else:
        draft.name = name


def _trust_domain(report: Report, value: object, draft: _Draft) -> None:
    where = _TOP.key("trust_domain")
    domain = fields.text(report, where, value, ', e.g. "prod.example"')
    if domain is None:
        return
    problem = trust_domain_problem(domain)
    if problem:
        report.add("P006", where, f"invalid trust domain: {problem}")
    else:
        draft.trust_domain = domain


def _settings(report: Report, data: Mapping[str, Any], draft: _Draft) -> None:
    for section, key, choices in (("mtls", "mode", MODES), ("authz", "default", DEFAULTS)):
        if section not in data:
            continue
        where = _TOP.key(section)
        found = fields.table(report, where, data[section], f"[{section}]")
        if found is None:
            continue
        fields.unknown_keys(report, where, found, (key, "services"))
        if key in found:
            _setting(report, where.key(key), found[key], choices, draft, section, key)
        if "services" in found:
            _services(report, where.key("services"), found["services"], choices, draft, section)


def _services(
    report: Report,
    where: Where,
    value: object,
    choices: tuple[str, ...],
    draft: _Draft,
    section: str,
) -> None:
    found = fields.table(report, where, value, f'{{ api = "{choices[0]}" }}')
    for service, choice in (found or {}).items():
        at = where.key(service)
        if fields.service_name(report, at, service):
            _setting(report, at, choice, choices, draft, section, "services", service)


def _setting(
    report: Report,
    where: Where,
    value: object,
    choices: tuple[str, ...],
    draft: _Draft,
    *id_parts: str,
) -> None:
    choice = fields.enum(report, where, value, choices)
    if choice is None:
        return
    draft.setting(report, where, choice, *id_parts)
    if id_parts == ("authz", "default") and choice == "allow":
        report.add(
            "W002",
            where,
            'default = "allow" admits every authenticated peer not denied by a rule',
            "warning",
        )


def _rules(report: Report, data: Mapping[str, Any], kind: str, draft: _Draft) -> None:
    if kind not in data:
        return
    entries = data[kind]
    if not isinstance(entries, list):
        fields.wrong_type(report, _TOP.key(kind), f"an array of tables ([[{kind}]])", entries)
        return
    first: dict[str, int] = {}  # name -> line of its first definition
    for index, entry in enumerate(entries):
        where = _TOP.key(kind).item(index)
        if not isinstance(entry, Mapping):
            fields.wrong_type(report, where, f"a table ([[{kind}]])", entry)
            continue
        name = _rule_name(report, where, entry, kind, first)
        label = Where(where.path, f'{kind}."{name}"') if name else where
        _rule(report, label, entry, kind, name, draft)


def _rule_name(
    report: Report, where: Where, entry: Mapping[str, Any], kind: str, first: dict[str, int]
) -> str | None:
    """The rule's name when it is valid and not a duplicate (else the index labels it)."""
    at = where.key("name")
    if "name" not in entry:
        report.add("P004", at, f"missing required field: every {kind} needs a unique name")
        return None
    name = fields.text(report, at, entry["name"], ', e.g. "web-to-api"')
    if name is None:
        return None
    if not _DOCUMENT_NAME.fullmatch(name):
        report.add("P006", at, f"invalid {kind} name '{name}': use 1-63 of a-z, 0-9, '-'")
        return None
    line = report.lines.line(where.path)
    if name in first:
        report.add(
            "P005", at, f'duplicate {kind} name "{name}" (first defined at line {first[name]})'
        )
        return None
    first[name] = line
    return name


def _rule(
    report: Report,
    where: Where,
    entry: Mapping[str, Any],
    kind: str,
    name: str | None,
    draft: _Draft,
) -> None:
    fields.unknown_keys(report, where, entry, RULE_KEYS[kind])
    selector = _selector(report, where, entry, kind, draft.trust_domain)
    line = report.lines.line(where.path)
    rule_id = f"{draft.name}/{kind}/{name}"
    if kind == "rate_limit":
        limit = _rate_limit(report, where, entry, rule_id, name or "", selector)
        if limit is not None:
            draft.rate_limits.append(_at_line(limit, line))
        return
    audit = fields.flag(report, where.key("audit"), entry["audit"]) if "audit" in entry else False
    if selector is not None and name is not None and audit is not None:
        rule_kind: Literal["allow", "deny"] = "allow" if kind == "allow" else "deny"
        draft.rules.append(Rule(rule_id, rule_kind, name, selector, audit, line))


def _selector(
    report: Report, where: Where, entry: Mapping[str, Any], kind: str, trust_domain: str
) -> Selector | None:
    if "to" not in entry:
        report.add(
            "P004", where.key("to"), 'missing required field: the destination service, or "*"'
        )
    if kind == "allow" and "from" not in entry:
        report.add(
            "P004",
            where,
            'allow rules must name their sources: add from = ["*"] for any authenticated peer',
        )
    failed = len(report.problems)

    def check(key: str, parse: Callable[[Report, Where, object], T | None]) -> T | None:
        return parse(report, where.key(key), entry[key]) if key in entry else None

    to = check("to", fields.to)
    sources = check("from", lambda r, w, v: fields.sources(r, w, v, trust_domain))
    ports = check("ports", fields.ports)
    methods = check("methods", fields.methods)
    paths = check("paths", patterns.paths)
    headers = check("headers", patterns.headers)
    if to is None or len(report.problems) > failed:
        return None
    return Selector(to, sources, ports, methods, paths, headers)


def _rate_limit(
    report: Report,
    where: Where,
    entry: Mapping[str, Any],
    rule_id: str,
    name: str,
    selector: Selector | None,
) -> RateLimit | None:
    failed = len(report.problems)
    for key in ("limit", "per"):
        if key not in entry:
            report.add("P004", where.key(key), f"missing required field: rate limits need {key}")
    limit = fields.count(report, where.key("limit"), entry["limit"]) if "limit" in entry else None
    per = fields.duration_ms(report, where.key("per"), entry["per"]) if "per" in entry else None
    burst = fields.count(report, where.key("burst"), entry["burst"]) if "burst" in entry else limit
    bucket = fields.enum(report, where.key("bucket"), entry.get("bucket", "shared"), BUCKETS)
    if len(report.problems) > failed or selector is None or not name:
        return None
    assert limit is not None and per is not None and burst is not None and bucket is not None
    return RateLimit(rule_id, name, selector, limit, per, burst, bucket)  # type: ignore[arg-type]


def _at_line(limit: RateLimit, line: int) -> RateLimit:
    return RateLimit(
        limit.id,
        limit.name,
        limit.selector,
        limit.limit,
        limit.per_ms,
        limit.burst,
        limit.bucket,
        line,
    )


def _never_matching(report: Report, draft: _Draft) -> None:
    """W001 where this document alone decides it: its own strict mode for the service."""
    for rule in _unauthenticated(draft.rules, draft.rate_limits):
        setting = draft.settings.get(("mtls", "services", rule.selector.to))
        if setting is not None and setting.value == "strict":
            report.problems.append(_w001(report.file, rule))


def _unauthenticated(
    rules: Sequence[Rule], rate_limits: Sequence[RateLimit]
) -> list[Rule | RateLimit]:
    """The rules with an "unauthenticated" source."""
    every: list[Rule | RateLimit] = [*rules, *rate_limits]
    return [
        rule
        for rule in every
        if any(source.kind == "unauthenticated" for source in rule.selector.sources or ())
    ]


def _w001(file: str, rule: Rule | RateLimit) -> Problem:
    kind = rule.id.split("/")[1]
    to = rule.selector.to
    message = f'"unauthenticated" can never match: mtls mode for "{to}" is strict'
    return Problem(file, rule.line, "W001", f'{kind}."{rule.name}".from', message, "warning")


def check_set(documents: Sequence[tuple[Document, str]]) -> list[Problem]:
    """Phase 5 over (document, file) pairs: settings owned twice (P040), W001 over the set."""
    problems: list[Problem] = []
    owners: dict[str, tuple[str, str, int]] = {}  # setting -> document, file, line
    for document, file in documents:
        for key, setting in _settings_of(document):
            owner = owners.setdefault(key, (document.name, file, setting.line))
            if owner[0] != document.name or owner[1] != file:
                where = f"{owner[1]}:{owner[2]}" if owner[2] else owner[1]
                message = f'already set by document "{owner[0]}" ({where})'
                problems.append(Problem(file, setting.line, "P040", key, message))
    problems.extend(_never_matching_set(documents))
    return by_line(problems)


def _settings_of(document: Document) -> list[tuple[str, Setting]]:
    found = [("mtls.mode", document.mtls_mode), ("authz.default", document.authz_default)]
    found += [(f"mtls.services.{s}", v) for s, v in document.mtls_services.items()]
    found += [(f"authz.services.{s}", v) for s, v in document.authz_services.items()]
    return [(key, setting) for key, setting in found if setting is not None]


def _never_matching_set(documents: Sequence[tuple[Document, str]]) -> list[Problem]:
    """W001 for "unauthenticated" sources whose service is strict across the whole set."""
    mode = next((d.mtls_mode.value for d, _ in documents if d.mtls_mode), "strict")
    services = {s: v.value for d, _ in documents for s, v in d.mtls_services.items()}
    return [
        _w001(file, rule)
        for document, file in documents
        for rule in _unauthenticated(document.rules, document.rate_limits)
        # a document that sets its service's mode itself was warned in phase 4
        if rule.selector.to not in document.mtls_services
        and _strict(rule.selector.to, mode, services)
    ]


def _strict(to: str, mode: str, services: Mapping[str, str]) -> bool:
    if to == ANY_SERVICE:
        return mode == "strict" and "permissive" not in services.values()
    return services.get(to, mode) == "strict"


def _plain(value: Any) -> Any:
    """A JSON-safe copy: dicts and lists all the way down (tomllib's output is already close)."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value
