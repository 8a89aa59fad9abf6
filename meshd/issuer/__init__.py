"""meshd as an issuer: it signs renewed leaves for the hosts of its mesh.

``decide`` is the pure rule (which identities a caller may have signed),
``service`` the daemon's component (the issuer key and CA document, the
counters, the signing run in a worker thread), ``x509work`` everything that
needs cryptography: imported only on a host that is, or is becoming, an issuer.
"""
