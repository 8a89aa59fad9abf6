"""meshd: the per-host proxy daemon of the mesh.

meshd runs on anyio over uvloop, parses HTTP/1.1 with httptools and reads
its process metrics with psutil; cryptography only for ``meshd keygen``,
which the daemon never loads (x509 costs it ~10 MB of resident memory).
Nothing here may import meshctl, typer, rich or paramiko. Tests enforce
both (tests/meshd/test_boundary.py).

The modules at the top are the contracts meshctl imports: ``registry`` (the
registry's shape, written and read), ``stats`` (the admin API's payloads and
document kinds), ``paths`` (where things are on a host), ``config``,
``identity``, ``rules`` and the errors; the daemon's parts live in
``proxy``, ``admin``, ``telemetry``, ``host`` and ``tls``.
"""

__version__ = "0.1.0"
