"""Shared builders for meshctl tests."""

from __future__ import annotations

import datetime as dt

from meshctl.ca import MeshCa, create_ca

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
TD = "t.mesh"


def make_ca() -> MeshCa:
    return create_ca("t", TD, NOW)
