"""Policy files as TOML text, built from Python values: documents and their rule tables.

Pure functions returning the text an operator would write (POLICY.md §2.1):
the bench's realistic policy and the tests that feed policy files to meshctl
build them here. It lives in bench/ because bench/ imports no tests module,
while the tests can import bench's (tests/meshd/policy/lang/build.py makes it
importable and re-exports it):

    document(
        "web-api",
        allow("web-to-api", "api", ["web"], ports=[8081], methods=["GET"]),
        authz={"default": "deny"},
    )

Keyword arguments are the TOML keys, in order (``from`` is ``sources``: it is
a Python keyword); a dict value inside a rule is an inline table, a dict
inside a document's section a sub-table (``mtls={"services": {"db": ...}}``).
Input whose exact bytes matter (line numbers of validation errors) stays
literal in its test.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

Value = str | int | bool | Sequence["Value"] | Mapping[str, "Value"]
BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def document(
    name: str,
    *tables: str,
    description: str | None = None,
    comment: str | None = None,
    **sections: Mapping[str, Value],
) -> str:
    """A policy document: ``comment`` lines, version, name, description, the ``sections``
    (``mtls``, ``authz``) and then ``tables`` (from `allow`, `deny`, `rate_limit`)."""
    head = [f"# {line}" for line in (comment or "").splitlines()]
    head += ["version = 1", f"name = {value(name)}"]
    if description is not None:
        head.append(f"description = {value(description)}")
    parts = ["\n".join(head) + "\n"]
    parts += [section(key, fields) for key, fields in sections.items()]
    return "\n".join([*parts, *tables])


def section(path: str, fields: Mapping[str, Value]) -> str:
    """``[path]`` with its keys; dict values become ``[path.key]`` tables after it."""
    scalars = {k: v for k, v in fields.items() if not isinstance(v, Mapping)}
    text = f"[{path}]\n" + "".join(f"{key(k)} = {value(v)}\n" for k, v in scalars.items())
    subs = [section(f"{path}.{key(k)}", v) for k, v in fields.items() if isinstance(v, Mapping)]
    return "\n".join([text, *subs]) if scalars else "\n".join(subs)


def allow(name: str, to: str, sources: Sequence[str], **fields: Value) -> str:
    """An ``[[allow]]`` table: ``sources`` is its ``from``; ``fields`` the other keys."""
    return rule("allow", {"name": name, "from": sources, "to": to, **fields})


def deny(name: str, to: str, sources: Sequence[str] | None = None, **fields: Value) -> str:
    """A ``[[deny]]`` table (``sources`` None: no ``from`` key, every caller)."""
    head: dict[str, Value] = {"name": name}
    if sources is not None:
        head["from"] = sources
    return rule("deny", {**head, "to": to, **fields})


def rate_limit(name: str, to: str, limit: int, per: str, **fields: Value) -> str:
    """A ``[[rate_limit]]`` table; ``fields``: ``paths``, ``bucket``, ``burst``..."""
    return rule("rate_limit", {"name": name, "to": to, **fields, "limit": limit, "per": per})


def rule(kind: str, fields: Mapping[str, Value]) -> str:
    """``[[kind]]`` with ``fields`` as its keys, in order."""
    return f"[[{kind}]]\n" + "".join(f"{key(k)} = {value(v)}\n" for k, v in fields.items())


def key(name: str) -> str:
    return name if BARE_KEY.fullmatch(name) else json.dumps(name)


def value(v: Value) -> str:
    """A TOML value: JSON's strings and numbers are TOML's; lists, inline tables."""
    if isinstance(v, str | int):  # bool too: JSON's true and false are TOML's
        return json.dumps(v)
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + " }"
    return "[" + ", ".join(value(x) for x in v) + "]"
