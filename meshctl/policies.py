"""The workspace's policy documents (``policies/<name>.toml``), their version and their push.

The applied set is the files of ``policies/``, one document per file, kept as
their author wrote them (comments and all): ``apply`` upserts by document
name, ``delete`` removes one. Every check runs the engine meshd runs
(``meshd.policy.lang``): phases 1-4 per file, then the cross-document rules
over the set with the new versions swapped in, before anything is written.

One version stands for the whole applied set (``applied/policy.json``): it
moves when a document changes, or when what some host enforces changes (its
services did), because meshd refuses the same version with other content.
Each joined host gets only what it enforces (``wire.for_host``) over
``PUT /policy``, in parallel; a host that was down gets the version at the
next push, since a push of the version it has already is answered
"unchanged".
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshctl import state
from meshctl.fleet import Fleet, HostResults, fan_out
from meshctl.inventory import HostSpec
from meshctl.workspace import Workspace
from meshd.errors import PolicyError
from meshd.policy.lang import wire
from meshd.policy.lang.model import Document
from meshd.policy.lang.problems import Problem, errors
from meshd.policy.lang.validate import check_set, check_text

POLICIES = "policies"
RECORD = "policy"  # applied/policy.json: the version and what each host was given
FALLBACK_TRUST_DOMAIN = "mesh.local"  # validate without a workspace, for files that set none
_NAME_LINE = re.compile(r"^\s*name\s*=", re.MULTILINE)
_DOCUMENT_NAME = re.compile(r"[a-z0-9-]{1,63}")  # §2.1: also keeps a NAME inside policies/


@dataclass(frozen=True)
class Source:
    """One policy file: what to call it in messages, and its text as written."""

    file: str
    text: str


@dataclass(frozen=True)
class Checked:
    """Policy files checked together: their clean documents (with their file), the text of
    each by document name, and every problem of every file, cross-document ones included."""

    documents: tuple[tuple[Document, str], ...] = ()
    texts: Mapping[str, str] = field(default_factory=dict)
    problems: tuple[Problem, ...] = ()

    @property
    def failed(self) -> bool:
        return bool(errors(self.problems))

    @property
    def names(self) -> list[str]:
        return [d.name for d, _ in self.documents]

    def only(self) -> list[Document]:
        return [d for d, _ in self.documents]


def check(
    sources: Sequence[Source], trust_domain: str, now: dt.datetime, cross: bool = True
) -> Checked:
    """Phases 1-4 on each file, then phase 5 among the clean ones (POLICY.md §2.12);
    ``cross`` False: not phase 5 (apply runs it over the whole set instead)."""
    documents: list[tuple[Document, str]] = []
    texts: dict[str, str] = {}
    problems: list[Problem] = []
    for source in sources:
        doc, found = check_text(source.text, source.file, trust_domain, now)
        problems += found
        if doc is None:
            continue
        first = next((f for d, f in documents if d.name == doc.name), None)
        if first is not None:
            problems.append(_twice(doc.name, source, first))
            continue
        documents.append((doc, source.file))
        texts[doc.name] = source.text
    if cross and len(documents) > 1:
        problems += check_set(documents)
    return Checked(tuple(documents), texts, _ordered(problems, [s.file for s in sources]))


def check_set_with(current: Checked, new: Checked) -> list[Problem]:
    """Phase 5 over the applied set with ``new``'s documents swapped in by name."""
    return check_set(upserted(current, new))


def upserted(current: Checked, new: Checked) -> list[tuple[Document, str]]:
    """The applied set after ``apply``: ``new``'s documents replace those of the same name."""
    replaced = set(new.names)
    kept = [(d, f) for d, f in current.documents if d.name not in replaced]
    return kept + list(new.documents)


def _twice(name: str, source: Source, first: str) -> Problem:
    found = _NAME_LINE.search(source.text)
    line = source.text.count("\n", 0, found.start()) + 1 if found else 1
    return Problem(
        source.file,
        line,
        "P006",
        "name",
        f'document "{name}" is also in {first}: one file per document name',
    )


def _ordered(problems: Iterable[Problem], files: list[str]) -> tuple[Problem, ...]:
    """By file, in the order given, then by line."""
    rank = {f: i for i, f in reversed(list(enumerate(files)))}
    return tuple(sorted(problems, key=lambda p: (rank.get(p.file, len(files)), p.line)))


# -- the workspace's applied set
def directory(ws: Workspace) -> Path:
    return ws.root / POLICIES


def path_of(ws: Workspace, name: str) -> Path:
    return directory(ws) / f"{name}.toml"


def stored(ws: Workspace) -> list[Source]:
    """The applied documents' files, by name."""
    folder = directory(ws)
    if not folder.is_dir():
        return []
    return [Source(str(p), p.read_text()) for p in sorted(folder.glob("*.toml"))]


def applied(ws: Workspace, now: dt.datetime) -> Checked:
    """The applied set, checked; a file someone broke by hand stops the command, named."""
    checked = check(stored(ws), ws.config.trust_domain, now)
    if checked.failed:
        lines = [p.render() for p in errors(checked.problems)]
        raise PolicyError(
            "the workspace's applied policy does not validate:\n" + "\n".join(lines),
            hint=f"fix or remove the file under {directory(ws)}, "
            "then run meshctl policy apply -f FILE",
        )
    return checked


def save(ws: Workspace, texts: Mapping[str, str]) -> list[str]:
    """Write each document's text as ``policies/<name>.toml``; the names whose text changed."""
    changed = []
    for name, text in texts.items():
        path = path_of(ws, name)
        if not path.exists() or path.read_text() != text:
            state.write_atomic(path, text)
            changed.append(name)
    return changed


def existing(ws: Workspace, name: str) -> Path:
    """The file of the applied document ``name``; PolicyError naming those there are."""
    path = path_of(ws, name)
    if not _DOCUMENT_NAME.fullmatch(name) or not path.is_file():
        known = ", ".join(Path(s.file).stem for s in stored(ws)) or "none"
        raise PolicyError(
            f"no applied policy document named {name!r} (applied: {known})",
            hint="meshctl policy list shows the applied documents",
        )
    return path


def remove(ws: Workspace, name: str) -> None:
    existing(ws, name).unlink()


# -- versions
@dataclass(frozen=True)
class Release:
    """One version of the applied set: what each joined host enforces of it."""

    version: int
    hosts: Mapping[str, tuple[Mapping[str, Any], ...]]
    record: Mapping[str, Any]
    changed: bool  # a new version (not the one recorded)

    def document(self, host: str) -> dict[str, Any]:
        """The ``PUT /policy`` body for ``host``."""
        return wire.PolicyDocument(self.version, self.hosts[host]).to_json()


def _plain(value: object) -> Any:
    """JSON-shaped (lists, not tuples), to compare with what was recorded."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def last_release(ws: Workspace) -> dict[str, Any] | None:
    path = ws.root / "applied" / f"{RECORD}.json"
    if not path.exists():
        return None
    record: dict[str, Any] = json.loads(path.read_text())
    return record


def recorded_version(ws: Workspace) -> int | None:
    """The workspace's policy version (None: no policy was ever pushed)."""
    record = last_release(ws)
    return None if record is None else int(record["version"])


def release(ws: Workspace, documents: Sequence[Document], hosts: Sequence[HostSpec]) -> Release:
    """The version of ``documents`` as ``hosts`` get them: the recorded one when nothing any
    host enforces changed, else the next."""
    content = {d.name: _plain(d.data) for d in sorted(documents, key=lambda d: d.name)}
    per_host = {h.name: for_host(documents, [s.name for s in h.services]) for h in hosts}
    plain = {name: _plain(docs) for name, docs in per_host.items()}
    last = last_release(ws)
    version = next_version(last, content, plain)
    same = last is not None and version == last["version"]
    kept = {**(last or {}).get("hosts", {}), **plain} if same else plain
    record = {"version": version, "documents": content, "hosts": kept}
    return Release(version, per_host, record, not same)


def for_host(documents: Sequence[Document], services: Collection[str]) -> tuple[Any, ...]:
    return tuple(wire.for_host(documents, services))


def next_version(
    last: Mapping[str, Any] | None, content: Mapping[str, Any], hosts: Mapping[str, Any]
) -> int:
    """1 at first; the recorded version while the set and what each host gets stay the same;
    else the next one."""
    if last is None:
        return 1
    version = int(last["version"])
    seen = last.get("hosts", {})
    same = last.get("documents") == content and all(
        seen.get(host, docs) == docs for host, docs in hosts.items()
    )
    return version if same else version + 1


def record(ws: Workspace, rel: Release) -> None:
    state.write_atomic(
        ws.root / "applied" / f"{RECORD}.json", json.dumps(rel.record, indent=2, sort_keys=True)
    )


# -- the push
def joined_hosts(ws: Workspace) -> list[HostSpec]:
    members = state.joined(ws)
    return [h for h in state.load_inventory(ws).hosts if h.name in members]


def push(fleet: Fleet, rel: Release, hosts: Sequence[HostSpec]) -> HostResults[str]:
    """``rel`` to each of ``hosts`` in parallel: host -> what it did, or its error."""
    client = fleet.admin()

    def one(host: HostSpec) -> str:
        fleet.progress(host.name, f"pushing policy version {rel.version}")
        answer = client.put_document(fleet.endpoint(host), RECORD, rel.document(host.name))
        if answer.get("status") == "applied":
            return f"policy version {rel.version} applied"
        return f"policy version {rel.version}: up to date"

    return fan_out(one, hosts)


def publish(fleet: Fleet, documents: Sequence[Document]) -> tuple[Release, HostResults[str]]:
    """``documents`` as the applied set's next release, to every joined host."""
    hosts = joined_hosts(fleet.ws)
    rel = release(fleet.ws, documents, hosts)
    record(fleet.ws, rel)
    return rel, push(fleet, rel, hosts)


def push_at_join(fleet: Fleet, names: Collection[str]) -> HostResults[str]:
    """The applied set to the hosts that just joined (to every joined host when the version
    had to move: a host's services changed). Nothing when no policy was ever applied."""
    documents = applied(fleet.ws, fleet.now()).only()
    if not documents and recorded_version(fleet.ws) is None:
        return {}
    hosts = joined_hosts(fleet.ws)
    rel = release(fleet.ws, documents, hosts)
    record(fleet.ws, rel)
    return push(fleet, rel, hosts if rel.changed else [h for h in hosts if h.name in names])


# -- what the operator should know of the applied set
def notes(documents: Sequence[Document]) -> list[str]:
    """Default allow, and permissive mTLS (plaintext admitted): one line each."""
    found = []
    for doc in documents:
        setting = doc.authz_default
        if setting is not None and setting.value == "allow":
            found.append(
                f"the mesh runs with authz default allow ({setting.id}): every authenticated "
                "peer that no deny rule stops is admitted; policies/mesh.toml says how to go "
                "zero-trust"
            )
        mode = doc.mtls_mode
        if mode is not None and mode.value == "permissive":
            found.append(
                f"mTLS is permissive mesh-wide ({mode.id}): plaintext peers are admitted as "
                "unauthenticated"
            )
        for service, svc_mode in sorted(doc.mtls_services.items()):
            if svc_mode.value == "permissive":
                found.append(
                    f"service {service} runs permissive mTLS ({svc_mode.id}): plaintext peers "
                    "are admitted as unauthenticated"
                )
    return found
