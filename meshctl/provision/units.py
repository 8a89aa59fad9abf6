"""The systemd units meshctl installs on a host, rendered from a few values.

``meshd.service`` runs the daemon as the unprivileged ``meshd`` user with
only the capabilities it needs, Type=notify with a watchdog, restarted on
failure. Its sandbox scores under 2.0 in ``systemd-analyze security`` (1.6,
checked on a real host by tests/meshctl/provision/test_units_testbed.py).
What it keeps is what a proxy needs: the host's network (no PrivateNetwork,
IPAddressDeny or PrivateUsers, which would strip its capabilities), internet,
unix and netlink sockets, CAP_NET_ADMIN and CAP_NET_BIND_SERVICE (ambient: the
user is not root), and /proc's non-process files (``ProcSubset=pid`` would hide
``/proc/net/if_inet6``, how meshd tells whether the host has IPv6). It writes
only its state directory (``/var/lib/meshd``, 0700, where renewal keeps its
key) and ``/run/meshd``, and runs ``meshd keygen`` there for renewal.

The redirect rules are applied by ``meshd-rules.service`` before the
network comes up, so after a reboot no connection leaves before they
are back. In ``closed`` fail mode the rules stay while meshd is down
(intercepted traffic fails, nothing leaks in plaintext), and that holds from
boot: if ``meshd rules apply`` fails there (a broken config, registry or
bundle), the unit runs the script the last successful apply wrote (the same
matches rejected with a TCP reset, since meshd is down too: plain
``iptables-restore``, nothing of meshd) and still fails, for ``meshctl
status`` to show. In ``open`` mode meshd.service removes the rules
when it stops and puts them back when it starts.

A registry pushed over the admin API lands in meshd's state directory;
``meshd-sync.path`` watches that file and starts ``meshd-sync.service``, a
root oneshot (``meshd sync``) that re-applies the rules and the ``/etc/hosts``
block from the newer registry (meshd itself may write neither: /etc is
read-only for it) and notes the version, which meshctl waits for.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshctl.provision import layout

MESHD = layout.LAUNCHER
CONFIG = layout.CONFIG
PUSHED_REGISTRY = layout.PUSHED_REGISTRY  # meshd's DocumentStore keeps pushes here


@dataclass(frozen=True)
class UnitOptions:
    fail_mode: str  # "open" | "closed"
    watchdog_seconds: int = 30
    drain_seconds: int = 10


def meshd_service(options: UnitOptions) -> str:
    lines = [
        "# Managed by meshctl: changes are overwritten by the next join.",
        "[Unit]",
        "Description=meshd, the service mesh proxy of this host",
        # ordered after the boot-time rules, but starting meshd never applies them
        # unguarded: meshctl applies them itself under its dead-man switch
        "Wants=network-online.target",
        "After=network-online.target meshd-rules.service",
        "StartLimitIntervalSec=0",  # keep restarting: closed mode must not give up
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={MESHD} run --config {CONFIG}",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ]
    if options.fail_mode == "open":  # the "+" runs these with full privileges, not as meshd
        lines += [
            f"ExecStartPre=+{MESHD} rules apply --config {CONFIG}",
            f"ExecStopPost=+{MESHD} rules remove --config {CONFIG}",
        ]
    lines += [
        "Restart=on-failure",
        "RestartSec=1",
        f"WatchdogSec={options.watchdog_seconds}",
        f"TimeoutStopSec={options.drain_seconds + 5}",
        "User=meshd",
        "Group=meshd",
        "RuntimeDirectory=meshd",
        "StateDirectory=meshd",
        "StateDirectoryMode=0700",
        "LimitNOFILE=1048576",
        "UMask=0077",  # its files (the renewed key above all) are its own alone
        "AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "ProtectProc=invisible",  # it reads only its own /proc/self (process metrics)
        "RemoveIPC=yes",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "MemoryDenyWriteExecute=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "SystemCallFilter=~@privileged @resources",
        # a call outside the list fails (meshd logs it) instead of killing meshd unexplained
        "SystemCallErrorNumber=EPERM",
        "ReadOnlyPaths=/etc/meshd",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def rules_service(options: UnitOptions) -> str:
    """Applies the redirect rules at boot, before the network (closed mode keeps them up)."""
    apply = f"{MESHD} rules apply --config {CONFIG}"
    if options.fail_mode == "closed":
        start = f"/bin/sh -c '{apply} || {{ /bin/sh {layout.RULES_FALLBACK}; exit 1; }}'"
        stop = []
    else:
        start, stop = apply, [f"ExecStop={MESHD} rules remove --config {CONFIG}"]
    return "\n".join(
        [
            "# Managed by meshctl: changes are overwritten by the next join.",
            "[Unit]",
            "Description=meshd's traffic redirection rules",
            "DefaultDependencies=no",
            "Wants=network-pre.target",
            "Before=network-pre.target",
            "After=local-fs.target",
            "",
            "[Service]",
            "Type=oneshot",
            "RemainAfterExit=yes",
            f"ExecStart={start}",
            *stop,
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
    )


def sync_path() -> str:
    """Watches the pushed registry; each change starts meshd-sync.service."""
    return "\n".join(
        [
            "# Managed by meshctl: changes are overwritten by the next join.",
            "[Unit]",
            "Description=Watch meshd's pushed registry",
            "",
            "[Path]",
            f"PathChanged={PUSHED_REGISTRY}",
            "Unit=meshd-sync.service",
            "",
            "[Install]",
            "WantedBy=paths.target",
            "",
        ]
    )


def sync_service(options: UnitOptions) -> str:
    """Re-applies the rules and the /etc/hosts block as root from the newest registry."""
    # open mode: rules belong only to a running meshd. meshd sync checks that under the
    # rules lock that meshd's ExecStopPost removal also takes (an ExecCondition here would
    # check it too early: meshd could stop between the check and the apply)
    gate = " --while-active meshd.service" if options.fail_mode == "open" else ""
    return "\n".join(
        [
            "# Managed by meshctl: changes are overwritten by the next join.",
            "[Unit]",
            "Description=Refresh meshd's redirection rules and /etc/hosts names from its registry",
            "After=meshd-rules.service",
            "",
            "[Service]",
            "Type=oneshot",
            # rules and names, then a note of the registry version meshctl waits for
            f"ExecStart={MESHD} sync --config {CONFIG}{gate}",
            "",
        ]
    )
