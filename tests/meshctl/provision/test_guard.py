"""The dead-man switch around new rules, with a scripted host (the real thing runs in
tests/meshctl/provision/test_join_testbed.py): arm, write, apply, confirm anew."""

from __future__ import annotations

import subprocess
import time

import pytest

from meshctl.provision import guard, layout
from meshctl.provision.apply import Applier
from meshctl.provision.desired import FileSpec
from meshctl.transport import Result, Transport, UnreachableError
from meshd.errors import ConnectError, ProvisionError
from tests.meshctl.provision.test_apply import MKTEMP, OK, STAGE, Host, never

ARM = {"set -e; umask 077": OK}
DISARM = {"flock /run/meshd-rules.lock": OK}
FIRED = {"flock /run/meshd-rules.lock": Result(3, "", "")}
RULES = "meshd rules apply"


@pytest.mark.parametrize(
    "script",
    [guard.arm_command("u", 20), guard.ROLLBACK, guard.disarm_command("u")],
    ids=["arm", "rollback", "disarm"],
)
def test_the_host_side_scripts_are_valid_sh(script: str) -> None:
    done = subprocess.run(["sh", "-n"], input=script, text=True, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr


def test_arming_keeps_the_snapshot_of_a_join_cut_short() -> None:
    arm = guard.arm_command("u", 20)
    assert f"if [ ! -f {layout.ROLLBACK} ]; then" in arm  # the last confirmed state stays
    assert "systemctl stop 'meshd-rules-rollback-*.timer'" in arm  # its timer is replaced
    assert "cp -p /etc/meshd/$f" in arm and "meshd.toml registry.json" in arm


def test_rules_confirmed_by_a_new_connection_with_their_config() -> None:
    host = Host(prefixes=ARM | MKTEMP | {"set -e\n": OK, RULES: OK})
    confirm = Host(prefixes=DISARM)
    config = FileSpec(layout.CONFIG, b"new config")
    Applier(host, lambda: confirm).apply_rules_guarded(RULES, (config,))
    arm, mktemp, write, rules = host.commands
    assert "--on-active=20s" in arm and mktemp.startswith("mktemp")
    assert f"mv -f {layout.CONFIG}.meshctl-tmp {layout.CONFIG}" in write  # after arming
    assert host.files == {f"{STAGE}/0": b"new config"} and rules == RULES
    (disarm,) = confirm.commands
    unit = arm.split("--unit=")[1].split()[0]
    assert f"systemctl stop {unit}.timer" in disarm and confirm.closed


def test_a_rollback_that_fired_before_the_confirmation_is_reported() -> None:
    host, confirm = Host(prefixes=ARM | {RULES: OK}), Host(prefixes=FIRED)
    with pytest.raises(ProvisionError, match="rolled back before meshctl could confirm them"):
        Applier(host, lambda: confirm).apply_rules_guarded(RULES)


@pytest.mark.parametrize(
    ("unreachable_tries", "after"),
    [
        (0, "they were rolled back with the previous configuration; the host is reachable"),
        (3, "they were rolled back with the previous configuration; the host is reachable"),
        (99, "they should have been rolled back, but the host is still unreachable 15s after"),
        (-1, "but reconnecting failed (host key of 10.0.0.11 changed: it now offers SHA256:x)"),
    ],
    ids=["back-at-once", "back-after-a-slow-rollback", "never-back", "not-worth-waiting-for"],
)
def test_rules_that_cut_ssh_are_rolled_back(
    monkeypatch: pytest.MonkeyPatch, unreachable_tries: int, after: str
) -> None:
    clock = [1000.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:  # meshctl waits for the host's timer: no real sleep
        waits.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(time, "sleep", sleep)
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    attempts: list[int] = []

    def reconnect() -> Transport:
        attempts.append(1)
        if len(attempts) == 1:  # the confirmation
            raise UnreachableError("10.0.0.11:22: no answer within 10s")
        if unreachable_tries < 0:
            raise ConnectError("host key of 10.0.0.11 changed: it now offers SHA256:x")
        if len(attempts) <= 1 + unreachable_tries:
            raise UnreachableError("10.0.0.11:22: no answer within 10s")
        return Host()

    host = Host(prefixes=ARM | {RULES: OK})
    with pytest.raises(ProvisionError) as caught:
        Applier(host, reconnect, rollback_deadline=0).apply_rules_guarded(RULES)
    message = caught.value.message
    assert message.startswith("web1: a new SSH connection failed after the redirect rules")
    assert "(10.0.0.11:22: no answer within 10s)" in message and after in message
    assert waits[0] == 2  # deadline + 2 s of slack, from arming
    if unreachable_tries < 0:  # asked once more, not waited for
        assert len(attempts) == 2 and waits[1:] == []
    elif unreachable_tries < 99:
        assert len(attempts) == 2 + unreachable_tries and waits[1:] == [1] * unreachable_tries
    else:  # tries once a second until ROLLBACK_GRACE past the deadline, then gives up
        assert clock[0] - 1000.0 == guard.ROLLBACK_GRACE
    assert not any(c.startswith("flock ") for c in host.commands)  # left armed


class CutByRules(Host):
    def run(self, command: str, *, timeout: float = 120, root: bool = True) -> Result:
        if command == RULES:
            raise ConnectError("web1: lost the SSH connection: EOF")
        return super().run(command, timeout=timeout, root=root)


def test_rules_that_cut_the_applying_session_are_rolled_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(time, "sleep", lambda _: None)
    with pytest.raises(ProvisionError, match=r"\(web1: lost the SSH connection: EOF\); they were"):
        Applier(CutByRules(prefixes=ARM), Host, rollback_deadline=0).apply_rules_guarded(RULES)


def test_a_failing_rules_command_leaves_the_rollback_armed() -> None:
    """It may have changed the table before failing: the timer puts everything back."""
    failed = Result(2, "", "iptables-restore: line 7 failed\nTry `iptables-restore -h'\n")
    host = Host(prefixes=ARM | {RULES: failed})
    with pytest.raises(ProvisionError) as caught:
        Applier(host, never).apply_rules_guarded(RULES)
    assert caught.value.message == (
        "web1: applying the redirect rules failed: iptables-restore: line 7 failed; "
        "the previous rules and configuration come back by themselves within 20s"
    )
    assert not any(c.startswith("flock ") for c in host.commands)
