"""meshd's command line: run, reload, check-config, rules, hosts, sync, keygen, version.

Plain argparse, because meshd must not depend on typer or rich. Errors are
one line on stderr with a hint, and a non-zero exit code. Each command
imports only what it needs: the daemon never loads the x509 machinery that
``keygen`` uses (it costs ~10 MB of resident memory).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from meshd import __version__, paths
from meshd.config import MeshdConfig
from meshd.errors import MeshError

EXIT_ERROR = 1
HOSTS_FILE = Path(paths.HOSTS_FILE)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshd", description="The mesh's per-host proxy daemon.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("version", help="print meshd's version")
    config = f"--config {paths.CONFIG}"
    _config_command(sub, "run", "run the proxy daemon", f"meshd run {config}")
    _config_command(
        sub,
        "check-config",
        "validate a config file and the files it names",
        f"meshd check-config {config}",
    )
    _config_command(
        sub,
        "rules",
        "install or remove this host's traffic redirection (needs root)",
        f"meshd rules apply {config}",
        actions=("apply", "remove", "show"),
    )
    _config_command(
        sub,
        "hosts",
        "write or remove the <service>.mesh names in /etc/hosts (needs root)",
        f"meshd hosts apply {config}",
        actions=("apply", "remove", "show"),
        hosts_file=True,
    )
    sync_command = _config_command(
        sub,
        "sync",
        "apply the rules and names of the newest registry, and note it (needs root)",
        f"meshd sync {config}",
        hosts_file=True,
        note="Run by meshd-sync.service when a registry is pushed. ",
    )
    sync_command.add_argument(
        "--while-active",
        metavar="UNIT",
        help="do nothing unless this systemd unit is active, checked under the rules lock "
        "(open fail mode: the rules belong to a running meshd)",
    )
    reload_command = _config_command(
        sub,
        "reload",
        "reload meshd and report its verdict, read from its local admin socket",
        f"meshd reload {config} --unit meshd.service",
        note="Exits non-zero when meshd refused the reload (it then runs on unchanged). ",
    )
    reload_command.add_argument(
        "--unit",
        metavar="UNIT",
        help="trigger through systemctl reload UNIT (default: SIGHUP to the pid meshd reports)",
    )
    reload_command.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the verdict (default 30)"
    )
    keygen = sub.add_parser(
        "keygen",
        help="make a private key (0600) and a CSR for SPIFFE IDs",
        description="Example: meshd keygen --key /etc/meshd/key.pem --csr /tmp/host.csr "
        "--id spiffe://prod.example/host/web1",
    )
    keygen.add_argument("--key", type=Path, required=True, help="where to write the private key")
    keygen.add_argument(
        "--csr", type=Path, required=True, help="where to write the CSR ('-': stdout)"
    )
    keygen.add_argument(
        "--id", dest="ids", action="append", required=True, help="a SPIFFE ID (repeatable)"
    )
    keygen.add_argument("--force", action="store_true", help="replace an existing key")
    return parser


def _config_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_text: str,
    example: str,
    *,
    actions: tuple[str, ...] = (),
    hosts_file: bool = False,
    note: str = "",
) -> argparse.ArgumentParser:
    """A subcommand that takes ``--config`` (and an action, and the hidden ``--hosts-file``)."""
    command = sub.add_parser(name, help=help_text, description=f"{note}Example: {example}")
    if actions:
        command.add_argument("action", choices=actions)
    command.add_argument("--config", type=Path, required=True, help="meshd.toml")
    if hosts_file:
        command.add_argument("--hosts-file", type=Path, default=HOSTS_FILE, help=argparse.SUPPRESS)
    return command


def _left_out(documents: str) -> None:
    """Say on stderr what the rules left out (an endpoint on an SSH port, say)."""
    from meshd.rules import notes  # noqa: PLC0415

    for note in notes(documents):
        print(note, file=sys.stderr)


def rules(action: str, path: Path) -> None:
    """``meshd rules apply|remove|show``."""
    from meshd.host import interception  # noqa: PLC0415 - only this command runs iptables
    from meshd.host.registryfiles import effective_registry  # noqa: PLC0415
    from meshd.rules import V6, apply_document, ruleset  # noqa: PLC0415

    if action == "show":
        config = MeshdConfig.load(path)
        rule_set = ruleset(config, effective_registry(config))
        v4, v6 = apply_document(rule_set, saved=""), apply_document(rule_set, "", V6)
        sys.stdout.write(v4 + "# ip6tables-restore:\n" + v6)
        _left_out(v4 + v6)
        return
    with interception.locked_config(path) as config:
        if action == "apply":
            _left_out(interception.apply(config))
            print("meshd rules applied")
        elif interception.remove(config):
            print("meshd rules removed")
        else:
            print("no meshd rules were installed")


def hosts(action: str, path: Path, hosts_file: Path) -> None:
    """``meshd hosts apply|remove|show``."""
    from meshd.host import hostnames  # noqa: PLC0415 - only this command writes /etc/hosts
    from meshd.host.registryfiles import effective_registry  # noqa: PLC0415
    from meshd.hostsfile import with_block  # noqa: PLC0415

    config = MeshdConfig.load(path)
    if action == "remove":
        done = hostnames.remove(hosts_file)
        print(f"meshd hosts: {'block removed from' if done else 'no meshd block in'} {hosts_file}")
        return
    registry = effective_registry(config)
    names, version = len(registry.services), registry.version
    if action == "show":
        sys.stdout.write(with_block("", hostnames.service_vips(registry)))
        if not names:
            print(f"meshd hosts: registry version {version} has no services", file=sys.stderr)
    elif hostnames.apply(registry, hosts_file):
        print(f"meshd hosts: {hosts_file} updated ({names} names, registry version {version})")
    else:
        print(f"meshd hosts: {hosts_file} already up to date")


def sync(path: Path, hosts_file: Path, while_active: str | None = None) -> None:
    """``meshd sync``: the rules and /etc/hosts names of the newest registry, then note it.

    What meshd-sync.service runs (as root) each time a registry is pushed;
    meshctl waits for the note (meshd reports it on /stats) before it says a
    push is in place. All of it happens under the rules lock, and so does the
    ``--while-active`` check: meshd's stop removes the rules under the same
    lock, so a sync cannot put them back behind it.
    """
    from meshd.host import hostnames, interception  # noqa: PLC0415 - root-only work
    from meshd.host.registryfiles import effective_registry, mark_synced  # noqa: PLC0415

    with interception.locked_config(path) as config:
        if while_active is not None and not interception.unit_active(while_active):
            print(f"meshd sync: {while_active} is not active, so nothing was applied")
            return
        registry = effective_registry(config)  # one snapshot for both, and for the note
        for _ in range(3):  # a push that lands meanwhile does not start another run: look again
            _left_out(interception.apply(config, registry))
            hostnames.apply(registry, hosts_file)
            mark_synced(config, registry.version)
            print(
                f"meshd sync: rules and {hosts_file} names of registry version {registry.version}"
            )
            newest = effective_registry(config)
            if newest.version == registry.version:
                break
            registry = newest


def reload(path: Path, unit: str | None, timeout: float) -> None:
    """``meshd reload``: meshd's verdict on the reload it was asked for, from /stats."""
    from meshd.host import reloading  # noqa: PLC0415

    config = MeshdConfig.load(path)
    verdict = reloading.reload(reloading.socket_of(config.listen.admin_socket, path), unit, timeout)
    if not verdict.ok:
        raise MeshError(
            f"meshd refused the reload (generation {verdict.generation}): {verdict.message}",
            hint="meshd runs on unchanged; fix the files and reload again",
        )
    print(f"meshd reload (generation {verdict.generation}): {verdict.message}")


def check_config(path: Path) -> None:
    """Load everything ``meshd run`` would load, and say what it found."""
    from meshd.runtime import Runtime  # noqa: PLC0415 - keygen must not load the daemon

    rt = Runtime.load(MeshdConfig.load(path))
    ids = ", ".join(sorted(str(i) for i in rt.tls.ids))
    print(
        f"{path}: ok; identities {ids}; "
        f"certificate valid until {rt.tls.not_after:%Y-%m-%d %H:%M} UTC;"
        f" registry version {rt.registry.version} with {len(rt.registry.services)} services"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``meshd`` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "version":
            print(f"meshd {__version__}")
        elif args.command == "keygen":
            from meshd.pki import keygen  # noqa: PLC0415 - the daemon must not load x509 code

            keygen(args.key, args.csr, args.ids, args.force)
        elif args.command == "rules":
            rules(args.action, args.config)
        elif args.command == "hosts":
            hosts(args.action, args.config, args.hosts_file)
        elif args.command == "sync":
            sync(args.config, args.hosts_file, args.while_active)
        elif args.command == "reload":
            reload(args.config, args.unit, args.timeout)
        elif args.command == "check-config":
            check_config(args.config)
        elif args.command == "run":
            from meshd.daemon import run  # noqa: PLC0415 - the daemon's imports are not needed by keygen

            run(args.config)
    except MeshError as e:
        print(f"meshd: error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
