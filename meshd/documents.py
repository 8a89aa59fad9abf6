"""The documents meshctl pushes over the admin API: how each is validated, applied, layered.

    registry  {"version": N, "services": {...}}                 (shape: meshd.registry)
    config    {"version": N, "toml": "<meshd.toml text>"}
    certs     {"version": N, "cert_pem": "...", "bundle_pem": "..."}   (the key stays here)
    policy    {"version": N, "documents": [...]}   (shape: meshd.policy.lang.wire)
    issuer    {"version": N, "cert_pem": "<issuer CA>", "leaf_lifetime": S}  (meshd.issuer)
    trust     {"version": N, "bundle_pem": "..."}   (the roots every peer is verified with)

(The kinds themselves are ``meshd.stats.KINDS``, the admin API's contract.)
``Documents`` registers a validator and an apply hook for each kind on the
daemon's ``DocumentStore`` (``meshd.store``: versions, persistence,
rollback). A push is validated against what meshd runs: a registry's VIPs
must lie in this host's vip_range; a config may change its live parts
(limits, timeouts, mTLS mode, logging) but neither what the rules and
``meshd sync`` read from the file (identity files, ``[[services]]``,
``[interception]``, the registry path) nor what needs a restart (host name,
state directory, listeners); a certificate must carry this host's identity,
fit its key and expire no earlier than a valid one in the files; a policy's
documents must pass the validator meshctl runs (``wire.load``: every problem
is named in the 400, and the policy in force keeps running); a trust bundle
must verify the certificate meshd runs; an issuer CA must fit the issuer
key here and chain to the trust bundle meshd runs
(``meshd.issuer.service``). Every field is checked at the door, so that
applying is swapping references.

Pushed documents stay in the state directory, never written over the files
in /etc: those are the host's bootstrap. At start and on SIGHUP the running
state is built the same way, by ``layer``: the files first (config and
registry must be valid, or nothing changes), then each stored document on
top of them. One that no longer validates on those files (an expired
certificate, a registry an older meshd accepted) is set aside, never a
reason to refuse the files; a registry file newer than the stored push
becomes the store's current document (``Layered.record``). The certificate is
the one exception to "pushed on top": the files' and the pushed one are both
candidates, and meshd runs whichever validates, the later to expire when
both do (``choose_tls``); it refuses to run only when neither does. A
third candidate is the certificate meshd renewed itself
(``meshd.renewal.stored``): a stale or broken one is set aside like a
pushed one. A trust document replaces the bundle every candidate is
verified with (files < pushed certs < trust); one under which no candidate
verifies is set aside.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from meshd.config import IdentityConfig, MeshdConfig
from meshd.errors import CertificateError, ConfigError, MeshError
from meshd.issuer.service import Issuer, IssuerChange
from meshd.policy.bundle import NO_POLICY, AppliedPolicy
from meshd.policy.lang import wire
from meshd.registry import Registry, check_vip_range
from meshd.renewal.stored import load_renewed
from meshd.runtime import (
    NO_PUSH,
    Files,
    Runtime,
    check_identity,
    restart_needed,
)
from meshd.schema import Fields, read_toml
from meshd.stats import CertificateSource
from meshd.store import DocumentStore, VersionConflictError
from meshd.telemetry.events import CertificateRenewed
from meshd.tls.context import TlsMaterial

Doc = dict[str, Any]


@dataclass(frozen=True)
class Layered:
    """The state a start or reload swaps in, and what it did to the stored documents."""

    files: Files
    config: MeshdConfig
    tls: TlsMaterial
    certificate: CertificateSource
    registry: Registry
    policy: AppliedPolicy
    set_aside: dict[str, str] = field(default_factory=dict)  # kind -> why
    record: Registry | None = None  # the registry file, newer than any push: the store's now
    trust: bytes | None = None  # the trust document's bundle, when one runs
    renewed_aside: str | None = None  # why the renewed certificate is not run, if there is one


@dataclass(frozen=True)
class TlsChoice:
    """The certificate to run, whose it is, and why a pushed one is set aside (if it is)."""

    tls: TlsMaterial
    source: CertificateSource
    set_aside: str | None = None
    renewed_aside: str | None = None


class Documents:
    """Validators and apply hooks for one daemon, registered on its DocumentStore.

    ``runtime`` gives the daemon's current Runtime: the store is registered
    (and its documents read) before the start builds one from them.
    """

    def __init__(
        self,
        runtime: Callable[[], Runtime],
        config_path: Path,
        store: DocumentStore,
        issuer: Issuer | None = None,
    ) -> None:
        self.runtime = runtime
        self.directory = config_path.parent  # relative paths in a pushed config start here
        self.store = store
        store.register("registry", self.validate_registry, self.apply_registry)
        store.register("config", self.validate_config, self.apply_config)
        store.register("certs", self.validate_certs, self.apply_certs)
        store.register("policy", self.validate_policy, self.apply_policy)
        self.issuer = issuer
        if issuer is not None:
            store.register("issuer", self.validate_issuer, issuer.apply)
        store.register("trust", self.validate_trust, self.apply_trust)

    # pushes: validated against the running state, applied one layer at a time
    def validate_registry(self, doc: Doc) -> Registry:
        return registry_on(self.runtime().config, doc)

    def apply_registry(self, registry: Registry) -> None:
        rt = self.runtime()
        rt.registry = registry
        rt.recompile()

    def validate_config(self, doc: Doc) -> MeshdConfig:
        return config_on(self.runtime().config, doc, self.directory)

    def apply_config(self, config: MeshdConfig) -> None:
        rt = self.runtime()
        rt.config = config  # the certificate layer (files or pushed) stays as it is
        rt.recompile()

    def validate_certs(self, doc: Doc) -> TlsChoice:
        """A pushed certificate meshd would also run after a restart: one outlasting the files'."""
        rt = self.runtime()
        pushed, version = certs_on(rt.config, doc, rt.trust), Fields(doc, "certs").version()
        if rt.certificate.layer == "renewed" and rt.tls.not_after > pushed.not_after:
            raise _outlasted(pushed, "the renewed certificate", rt.tls)
        if rt.files is None:
            return TlsChoice(pushed, CertificateSource("pushed", version, "pushed"))
        choice = pushed_or_files(pushed, version, rt.files)
        if choice.source.layer == "files":
            raise _outlasted(
                pushed,
                f"the certificate in the files ({rt.files.config.identity.cert})",
                choice.tls,
            )
        return choice

    def apply_certs(self, choice: TlsChoice) -> None:
        rt = self.runtime()
        rt.tls, rt.certificate = choice.tls, choice.source
        rt.bus.publish(CertificateRenewed(choice.tls.not_after.timestamp(), "pushed"))
        rt.recompile()  # the swap hooks: links made with the old certificate retire

    def validate_trust(self, doc: Doc) -> TlsMaterial:
        """The running certificate under the pushed bundle: it must verify there (409 if not)."""
        rt, bundle = self.runtime(), trust_of(doc)
        try:
            return rt.tls.under(bundle)
        except CertificateError as e:
            raise VersionConflictError(
                f"trust: meshd's own certificate (serial {rt.tls.serial}) does not verify under"
                f" bundle_pem: {e.message}",
                "keep the root that signed it in the bundle until every host has renewed",
                "trust",
                self.store.versions().get("trust", 0),
                Fields(doc, "trust").version(),
            ) from e

    def apply_trust(self, tls: TlsMaterial) -> None:
        rt = self.runtime()
        rt.tls, rt.trust = tls, tls.pem.bundle
        rt.bus.publish(CertificateRenewed(tls.not_after.timestamp(), "trust"))
        rt.recompile()  # the swap hooks: links made under the old bundle retire

    def validate_policy(self, doc: Doc) -> AppliedPolicy:
        return policy_of(doc, self.runtime().trust_domain)

    def apply_policy(self, policy: AppliedPolicy) -> None:
        rt = self.runtime()
        rt.policy = policy
        rt.recompile()

    def validate_issuer(self, doc: Doc) -> IssuerChange:
        """An issuer CA for the key here, chained to the roots meshd verifies peers with now."""
        assert self.issuer is not None  # registered only with one
        return self.issuer.validate(doc, self.runtime().tls.server.get_ca_certs(binary_form=True))

    def restore_issuer(self) -> None:
        """At start: run the stored issuer document if it still holds, else set it aside."""
        doc = self.store.get("issuer") if self.issuer is not None else None
        if doc is None or self.issuer is None:  # no issuer component, or never an issuer
            return
        try:
            self.issuer.apply(self.validate_issuer(doc))
        except MeshError as e:
            self.store.set_aside("issuer", e.message)


def layer(files: Files, docs: dict[str, Doc], directory: Path) -> Layered:
    """The files with the pushed ``docs`` on top; a document that does not fit is set aside.

    CertificateError when neither the files nor a pushed document hold a
    valid certificate; nothing is set aside then.
    """
    set_aside: dict[str, str] = {}

    def on_top(kind: str, base: Any, build: Any) -> Any:
        doc = docs.get(kind)
        if doc is None:
            return base
        try:
            return build(doc)
        except MeshError as e:
            set_aside[kind] = e.message
            return base

    config = on_top("config", files.config, lambda d: config_on(files.config, d, directory))
    trust = on_top("trust", None, lambda d: _trusted(files, docs.get("certs"), config, d))
    choice = trust[1] if trust else choose_tls(files, docs.get("certs"), config)
    if choice.set_aside is not None:
        set_aside["certs"] = choice.set_aside
    pushed = on_top("registry", None, lambda d: registry_on(config, d))
    policy = on_top("policy", NO_POLICY, lambda d: policy_of(d, config.identity.trust_domain))
    registry, record = _newer_registry(files.registry, pushed)
    return Layered(
        files,
        config,
        choice.tls,
        choice.source,
        registry,
        policy,
        set_aside,
        record,
        trust[0] if trust else None,
        choice.renewed_aside,
    )


def _trusted(
    files: Files, certs: Doc | None, config: MeshdConfig, doc: Doc
) -> tuple[bytes, TlsChoice]:
    """A trust document's bundle and the certificate chosen under it; MeshError if none verifies."""
    bundle = trust_of(doc)
    try:
        return bundle, choose_tls(files, certs, config, bundle)
    except MeshError as e:
        raise CertificateError(f"no certificate verifies under it: {e.message}") from e


def trust_of(doc: Doc) -> bytes:
    """A trust document's bundle: PEM certificates (verified when a certificate is loaded)."""
    fields = Fields(doc, "trust")
    fields.unknown({"version", "bundle_pem"})
    fields.version()
    bundle = fields.get("bundle_pem", str)
    if "-----BEGIN CERTIFICATE-----" not in bundle:
        raise CertificateError(
            "trust: bundle_pem holds no PEM certificate",
            hint="push the mesh's root certificates (meshctl ca rotate does)",
        )
    return bundle.encode()


def choose_tls(
    files: Files, doc: Doc | None, config: MeshdConfig, trust: bytes | None = None
) -> TlsChoice:
    """The files', the pushed or the renewed certificate: the valid one that expires last.

    A join re-signs into the files, an operator pushes, meshd renews: any
    may be the newest, and a start must not fail on an expired one while
    another is good. ``trust``: the bundle all of them are verified with.
    """
    files = files.under(trust)
    base: TlsChoice | None = None
    try:
        base = _files_or_pushed(files, doc, config, trust)
    except CertificateError as e:
        failure = e
    bundle = trust or (base.tls.pem.bundle if base else _file_bundle(files))
    renewed, aside = _renewed(config, bundle)
    if base is not None and (renewed is None or base.tls.not_after > renewed.not_after):
        if renewed is not None:
            aside = f"it expires earlier ({renewed.not_after.isoformat()}) than the one meshd runs"
        return replace(base, renewed_aside=aside)
    if renewed is None:
        raise failure
    why = f"it expires last ({renewed.not_after.isoformat()}) of the valid certificates"
    pushed_aside = base.set_aside if base else (failure.message if doc is not None else None)
    return TlsChoice(renewed, CertificateSource("renewed", None, why), pushed_aside, aside)


def _renewed(config: MeshdConfig, bundle: bytes | None) -> tuple[TlsMaterial | None, str | None]:
    """The certificate meshd renewed itself, if there is one and it is valid; else why not."""
    if bundle is None or config.state_dir is None:
        return None, None
    try:
        renewed = load_renewed(config.state_dir, bundle)
        if renewed is not None:
            check_identity(config, renewed)
    except MeshError as e:
        return None, e.message
    return renewed, None


def _file_bundle(files: Files) -> bytes | None:
    try:
        return files.config.identity.bundle.read_bytes()
    except OSError:
        return None


def _files_or_pushed(
    files: Files, doc: Doc | None, config: MeshdConfig, trust: bytes | None
) -> TlsChoice:
    """The files' certificate or the pushed one: whichever validates, the later to expire if both.

    On a tie the pushed one wins (it is what meshd ran before).
    """
    if doc is None:
        return TlsChoice(files.required_tls(), CertificateSource("files", None, NO_PUSH))
    version = Fields(doc, "certs").version()
    try:
        pushed = certs_on(config, doc, trust)
    except MeshError as e:
        if files.tls is None:
            raise _no_certificate(files, version, e) from e
        why = f"pushed certs version {version} does not validate"
        return TlsChoice(files.tls, CertificateSource("files", None, why), e.message)
    return pushed_or_files(pushed, version, files)


def pushed_or_files(pushed: TlsMaterial, version: int, files: Files) -> TlsChoice:
    """A valid pushed certificate, unless the files hold one that expires later."""
    if files.tls is None:
        why = f"the files' certificate does not validate: {files.tls_problem}"
        return TlsChoice(pushed, CertificateSource("pushed", version, why))
    theirs, ours = files.tls.not_after.isoformat(), pushed.not_after.isoformat()
    if files.tls.not_after > pushed.not_after:
        why = f"it expires later ({theirs}) than pushed certs version {version} ({ours})"
        return TlsChoice(files.tls, CertificateSource("files", None, why))
    why = f"it expires no earlier ({ours}) than the files' certificate ({theirs})"
    return TlsChoice(pushed, CertificateSource("pushed", version, why))


def _outlasted(pushed: TlsMaterial, what: str, theirs: TlsMaterial) -> CertificateError:
    return CertificateError(
        f"certs: cert_pem expires {pushed.not_after.isoformat()}, before {what}"
        f" (expires {theirs.not_after.isoformat()}), which meshd would run instead",
        hint="push a certificate that expires later",
    )


def _no_certificate(files: Files, version: int, pushed: MeshError) -> CertificateError:
    return CertificateError(
        f"no valid certificate: {files.tls_problem};"
        f" pushed certs version {version}: {pushed.message}",
        hint="put a current certificate for this host's key into the files (meshctl join)",
    )


def _newer_registry(
    from_file: Registry, pushed: Registry | None
) -> tuple[Registry, Registry | None]:
    """The registry to run, and the file's when the store must take it as current.

    On a tie the pushed one wins: it is the one meshd ran before.
    """
    if pushed is not None and pushed.version >= from_file.version:
        return pushed, None
    return from_file, from_file if from_file.version > 0 else None


def config_on(base: MeshdConfig, doc: Doc, directory: Path) -> MeshdConfig:
    """A pushed config, checked against the one meshd runs on: only live parts may change."""
    fields = Fields(doc, "config")
    fields.unknown({"version", "toml"})
    parsed = read_toml(fields.get("toml", str), "config: toml")
    config = MeshdConfig.from_dict(parsed, "config.toml", directory)
    problem = _host_owned_change(base, config)
    if problem:
        raise ConfigError(
            f"config: {problem}",
            hint="change it on the host: meshctl join writes the file and the rules from it",
        )
    problem = restart_needed(base, config)
    if problem:
        raise ConfigError(f"config: {problem}", hint="change it on the host and restart meshd")
    return config


def _host_owned_change(base: MeshdConfig, new: MeshdConfig) -> str | None:
    """What a push may not change because something other than meshd reads it from the file."""
    if new.identity != base.identity:  # a push must not point meshd at other files
        return _identity_change(base.identity, new.identity)
    if new.local_services != base.local_services:  # name, port, run_as, outbound; not the order
        return "[[services]] changed (meshd rules renders them from the file)"
    if new.interception != base.interception:
        return "[interception] changed (meshd rules and meshd sync read it from the file)"
    if new.registry != base.registry:
        return "[mesh] registry changed (meshd sync reads it from the file)"
    return None


def _identity_change(base: IdentityConfig, new: IdentityConfig) -> str:
    name = next(
        n for n in IdentityConfig.__dataclass_fields__ if getattr(base, n) != getattr(new, n)
    )
    change = f"{getattr(base, name)} to {getattr(new, name)}"
    return (
        f"identity.{name} changed ({change}): a push may not change meshd's identity or its files"
    )


def certs_on(config: MeshdConfig, doc: Doc, trust: bytes | None = None) -> TlsMaterial:
    """A pushed certificate and bundle, with this host's key: current, ours, verified.

    ``trust``: a trust document's bundle, which then replaces the pushed one.
    """
    fields = Fields(doc, "certs")
    fields.unknown({"version", "cert_pem", "bundle_pem"})
    cert, bundle = fields.get("cert_pem", str).encode(), fields.get("bundle_pem", str).encode()
    bundle = trust or bundle
    with tempfile.TemporaryDirectory(prefix="meshd-certs-") as tmp:
        cert_path, bundle_path = Path(tmp) / "cert.pem", Path(tmp) / "bundle.pem"
        cert_path.write_bytes(cert)
        bundle_path.write_bytes(bundle)
        try:
            tls = TlsMaterial.load(cert_path, config.identity.key, bundle_path)
        except CertificateError as e:  # name the fields, not the scratch files
            message = e.message.replace(str(cert_path), "cert_pem")
            message = message.replace(str(bundle_path), "bundle_pem")
            raise CertificateError(f"certs: {message}", hint=e.hint) from e
    try:
        check_identity(config, tls)
    except ConfigError as e:
        raise ConfigError(f"certs: {e.message}", hint=e.hint) from e
    return tls


def registry_on(config: MeshdConfig, doc: Doc) -> Registry:
    """A pushed registry, every field checked, its VIPs inside this host's vip_range."""
    registry = Registry.from_dict(doc, "registry")
    vip_range, mesh_host = config.interception.vip_range, config.listen.mesh[0]
    return check_vip_range(registry, vip_range, "registry", mesh_host=mesh_host)


def policy_of(doc: Doc, trust_domain: str) -> AppliedPolicy:
    """A pushed policy, checked by the validator meshctl runs (``wire.load``), whole.

    ``{"version": N}`` without documents is "no policy": nothing is enforced.
    ConfigError (a 400 naming every problem) when anything in it is wrong.
    """
    version = Fields(doc, "policy").version()
    pushed = wire.PolicyDocument.from_json(doc)
    if not pushed.documents:
        return AppliedPolicy(version)
    documents = wire.load(pushed, trust_domain, dt.datetime.now(dt.UTC))
    return AppliedPolicy(version, tuple(documents))
