"""meshd: the per-host proxy daemon of the mesh.

meshd depends only on anyio, cryptography and psutil; nothing here may import
meshctl, typer, rich or paramiko (a test enforces it).
"""

__version__ = "0.1.0"
