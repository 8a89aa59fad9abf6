"""The exit code of a multi-host command: OK, PARTIAL, or what the one failure stands for."""

from __future__ import annotations

import pytest

from meshctl.cli.common import exit_code
from meshctl.cli.errors import ExitCode
from meshd.errors import ConnectError, MeshError, ProvisionError

DOWN, BROKEN = ConnectError("api1: no answer"), ProvisionError("web1: meshd did not start")


@pytest.mark.parametrize(
    ("errors", "hosts", "code"),
    [
        ([], 0, ExitCode.OK),
        ([], 3, ExitCode.OK),
        ([DOWN], 3, ExitCode.PARTIAL),
        ([DOWN, BROKEN], 3, ExitCode.PARTIAL),
        ([DOWN], 1, ExitCode.CONNECT),
        ([BROKEN, DOWN], 2, ExitCode.PROVISION),  # every host failed: the first one's code
        ([MeshError("odd")], 1, ExitCode.ERROR),
    ],
)
def test_exit_code(errors: list[MeshError], hosts: int, code: ExitCode) -> None:
    assert exit_code(errors, hosts) == code
