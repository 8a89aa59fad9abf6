"""meshctl: the operator's CLI and control plane of the mesh."""

from meshd import __version__

__all__ = ["__version__"]
