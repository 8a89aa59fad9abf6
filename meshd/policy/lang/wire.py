"""The ``/policy`` document meshctl pushes to a host: one typed contract both sides import.

meshctl builds it with ``for_host`` (each applied document cut down to what
the host enforces) and ``PolicyDocument.to_json``; meshd reads it back with
``PolicyDocument.from_json`` (shape only) and ``load``, which checks every
document again with the same validator, so a document pushed by hand gets
exactly the checks a file gets. ``{"version": 0}`` with no documents is "no
policy": nothing is enforced.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from meshd.errors import ConfigError
from meshd.policy.lang.model import ANY_SERVICE, Document
from meshd.policy.lang.problems import Problem, errors
from meshd.policy.lang.validate import KINDS, check_data, check_set

MAX_DOCUMENTS = 1024  # a pushed body is bounded; a real mesh has a handful
_HINT = "fix the policy files and run meshctl policy apply again"


@dataclass(frozen=True, slots=True)
class PolicyDocument:
    """What ``PUT /policy`` carries: the applied set's version and its documents' data."""

    version: int
    documents: tuple[Mapping[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "documents": [dict(d) for d in self.documents]}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> PolicyDocument:
        """Check the shape only (``load`` checks the documents); ConfigError when it is wrong."""
        if not isinstance(doc, Mapping):
            raise ConfigError("policy document must be a JSON object", hint=_HINT)
        unknown = sorted(set(doc) - {"version", "documents"})
        if unknown:
            raise ConfigError(f"policy document has unknown fields {unknown}", hint=_HINT)
        version = doc.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise ConfigError(
                f"policy version must be an integer >= 0, got {version!r}", hint=_HINT
            )
        documents = doc.get("documents", [])
        if not isinstance(documents, list) or len(documents) > MAX_DOCUMENTS:
            raise ConfigError(
                f"policy documents must be a list of at most {MAX_DOCUMENTS} objects", hint=_HINT
            )
        if not all(isinstance(item, Mapping) for item in documents):
            raise ConfigError("every policy document must be a JSON object", hint=_HINT)
        return cls(version, tuple(documents))


def for_host(
    documents: Sequence[Document], services: Collection[str]
) -> tuple[Mapping[str, Any], ...]:
    """Each document's data with only what a host running ``services`` enforces.

    Rules are kept when their ``to`` is one of ``services`` or "*", per-service
    settings when they name one of them; mesh-wide settings always.
    """
    return tuple(_cut(document.data, services) for document in documents)


def _cut(data: Mapping[str, Any], services: Collection[str]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for key, value in data.items():
        if key in KINDS:
            rules = [rule for rule in value if rule["to"] == ANY_SERVICE or rule["to"] in services]
            if rules:
                kept[key] = rules
        elif key in ("mtls", "authz"):
            kept[key] = _cut_section(value, services)
        else:
            kept[key] = value
    return kept


def _cut_section(section: Mapping[str, Any], services: Collection[str]) -> dict[str, Any]:
    kept = dict(section)
    if "services" in section:
        chosen = {s: v for s, v in section["services"].items() if s in services}
        if chosen:
            kept["services"] = chosen
        else:
            del kept["services"]
    return kept


def load(doc: PolicyDocument, trust_domain: str, now: datetime) -> list[Document]:
    """Every pushed document checked (phases 2-5); ConfigError listing every problem on error."""
    checked: list[tuple[Document, str]] = []
    problems: list[Problem] = []
    for index, data in enumerate(doc.documents):
        file = f"documents[{index}]"
        document, found = check_data(data, file, trust_domain, now)
        problems += errors(found)
        if document is not None:
            checked.append((document, file))
    if not problems:
        problems = errors(check_set(checked))
    if problems:
        listing = "\n".join(problem.render() for problem in problems)
        raise ConfigError(
            f"policy version {doc.version} is invalid ({len(problems)} problems):\n{listing}",
            hint=_HINT,
        )
    return [document for document, _ in checked]
