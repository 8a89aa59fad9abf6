"""Stand-ins for helper D's issuer API, so that ``ca rotate`` works and is tested on its own.

D's branch (issue 12) adds these with the same names and signatures:
``meshctl.ca.sign_issuer``, ``meshctl.issuers.install``,
``meshctl.workspace.renew_operator`` and ``HostSpec.issuer``. Once both are
merged, this module goes: import them from there instead.
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from meshctl import files
from meshctl.admin_client import AdminClient
from meshctl.ca import OPERATOR_CERT_LIFETIME, Authority, _check_csr, issue_identity
from meshctl.fleet import Fleet
from meshctl.inventory import HostSpec
from meshctl.revocation import leaf_lifetime
from meshctl.workspace import Workspace
from meshd.errors import ProvisionError
from meshd.files import write_private
from meshd.identity import make_id
from meshd.pki import cert_pem, private_pem

ISSUER_LIFETIME = dt.timedelta(days=30)  # mesh.toml's issuer_lifetime once D's is merged


def flagged_issuer(host: HostSpec) -> bool:
    """hosts.toml's ``issuer = true`` (D's ``HostSpec.issuer``)."""
    return bool(getattr(host, "issuer", False))


def sign_issuer(
    csr: x509.CertificateSigningRequest,
    host: str,
    root: Authority,
    now: dt.datetime,
    lifetime: dt.timedelta,
    trust_domain: str,
) -> x509.Certificate:
    """An issuer CA for ``host``'s meshd, signed by ``root`` (path length 0, the trust domain)."""
    wanted = make_id(trust_domain, "issuer", host)
    _check_csr(csr, [wanted])
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{host} issuer CA")])
    usage = x509.KeyUsage(True, False, False, False, False, True, True, False, False)
    constraint = x509.NameConstraints([x509.UniformResourceIdentifier(trust_domain)], None)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(root.cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - min(dt.timedelta(minutes=5), lifetime / 10))
        .not_valid_after(min(now + lifetime, root.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(constraint, critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(wanted))]),
            critical=False,
        )
        .sign(root.key, hashes.SHA256())
    )


def install(ro: Fleet, client: AdminClient, host: HostSpec, root: Authority) -> str:
    """A fresh issuer key on ``host``, its CA signed by ``root`` and installed."""
    endpoint = ro.endpoint(host)
    ro.progress(host.name, "asking meshd for a fresh issuer key")
    answer = client.call(endpoint, "POST", "/issuer/csr", {}) or {}
    try:
        csr = x509.load_pem_x509_csr(str(answer.get("csr_pem", "")).encode())
    except ValueError as e:
        raise ProvisionError(f"{host.name}: meshd sent no usable issuer CSR: {e}") from e
    config = ro.ws.config
    cert = sign_issuer(csr, host.name, root, ro.now(), ISSUER_LIFETIME, config.trust_domain)
    ro.progress(host.name, "installing its issuer CA")
    current = client.call(endpoint, "GET", "/issuer") or {}
    doc = {
        "version": int(current.get("version", 0)) + 1,
        "cert_pem": cert_pem(cert).decode(),
        "leaf_lifetime": leaf_lifetime(config),
    }
    client.call(endpoint, "PUT", "/issuer", doc)
    return f"issuer CA signed by the root, valid until {cert.not_valid_after_utc:%Y-%m-%d %H:%M}"


def renew_operator(ws: Workspace, issuing: Authority, now: dt.datetime) -> x509.Certificate:
    """A new operator key and certificate from ``issuing``, in place of the old (key first)."""
    operator = make_id(ws.config.trust_domain, "operator", ws.config.operator)
    key, cert = issue_identity([operator], issuing, now, OPERATOR_CERT_LIFETIME)
    write_private(ws.operator_key, private_pem(key))
    files.write_atomic(ws.operator_cert, cert_pem(cert, issuing.cert))
    return cert
