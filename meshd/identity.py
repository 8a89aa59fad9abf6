"""SPIFFE identities: parsing, validation and the mesh's naming scheme.

Pure functions over a frozen value; shared by meshd and meshctl. The rules
follow the SPIFFE ID specification: a lowercase trust domain of letters,
digits, dots, dashes and underscores, and a path of non-empty segments
without "." or "..".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from meshd.errors import ConfigError

SCHEME = "spiffe://"
MAX_ID_LENGTH = 2048
KINDS = ("svc", "host", "operator", "issuer", "monitor")
# What an issuer CA may vouch for; operator, monitor and issuer IDs come from meshctl's CA only.
ISSUED_KINDS = ("host", "svc")
# An issuer CA's common name is "<host> issuer CA" (``issuer_ca_name``): meshctl names it so,
# and meshd tells a leaf an issuer signed by its issuer's name (``meshd.tls.context``).
ISSUER_CA_SUFFIX = " issuer CA"

_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


@dataclass(frozen=True, order=True)
class SpiffeId:
    """A SPIFFE ID such as ``spiffe://prod.example/svc/api``."""

    trust_domain: str
    path: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain}{self.path}"

    @property
    def kind(self) -> str | None:
        """The mesh role of the ID ("svc", "host", "operator", "issuer", "monitor"), if ours."""
        segments = self.path.split("/")[1:]
        if len(segments) == 2 and segments[0] in KINDS:
            return segments[0]
        return None

    @property
    def name(self) -> str:
        """The last path segment: the service, host or operator name."""
        return self.path.rsplit("/", 1)[-1]

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        """Parse and validate ``text``; raise ConfigError naming what is wrong."""
        problem = _id_problem(text)
        if problem:
            raise ConfigError(
                f"invalid SPIFFE ID {text!r}: {problem}",
                hint="a SPIFFE ID looks like spiffe://example.org/svc/api",
            )
        rest = text[len(SCHEME) :]
        slash = rest.find("/")
        return cls(rest[:slash], rest[slash:])


def _id_problem(text: str) -> str | None:
    if len(text) > MAX_ID_LENGTH:
        return f"longer than {MAX_ID_LENGTH} characters"
    if not text.startswith(SCHEME):
        return "must start with spiffe://"
    rest = text[len(SCHEME) :]
    domain, slash, path = rest.partition("/")
    problem = trust_domain_problem(domain)
    if problem:
        return problem
    if not slash or not path:
        return "needs a path after the trust domain"
    return _path_problem("/" + path)


def _path_problem(path: str) -> str | None:
    for segment in path.split("/")[1:]:
        if not segment:
            return "path has an empty segment"
        if segment in (".", ".."):
            return "path segments may not be '.' or '..'"
        if not _SEGMENT.fullmatch(segment):
            return f"path segment {segment!r} may hold only letters, digits, '.', '-', '_'"
    return None


def trust_domain_problem(domain: str) -> str | None:
    """Why ``domain`` is not a valid trust domain, or None when it is."""
    if not domain:
        return "trust domain is empty"
    if not _TRUST_DOMAIN.fullmatch(domain):
        return f"trust domain {domain!r} may hold only lowercase letters, digits, '.', '-', '_'"
    return None


def check_name(kind: str, name: str) -> str:
    """Validate a service, host or operator name (a DNS label); return it."""
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"invalid {kind} name {name!r}",
            hint="use 1-63 lowercase letters, digits and '-', starting and ending alphanumeric",
        )
    return name


_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}|[0-9]{1,10}")


def check_user(user: str) -> str:
    """Validate a Unix user name or numeric uid (it ends up in iptables rules); return it."""
    if not _USER.fullmatch(user):
        raise ConfigError(
            f"invalid user {user!r}",
            hint="a Unix user name (lowercase letters, digits, '_', '-') or a numeric uid",
        )
    return user


def issuer_ca_name(host: str) -> str:
    """The common name of ``host``'s issuer CA (host names hold no space, so it is unambiguous;
    meshctl's own CAs are "<mesh> root CA" and "<mesh> issuing CA")."""
    return f"{host}{ISSUER_CA_SUFFIX}"


def make_id(trust_domain: str, kind: str, name: str) -> SpiffeId:
    """The mesh's ID for a service ("svc"), host or operator called ``name``."""
    if kind not in KINDS:
        raise ValueError(f"unknown identity kind {kind!r}")
    problem = trust_domain_problem(trust_domain)
    if problem:
        raise ConfigError(problem, hint="a trust domain looks like prod.example.org")
    return SpiffeId(trust_domain, f"/{kind}/{check_name(kind, name)}")
