"""Where things are on a meshed host: the one source meshctl and meshd both read.

meshctl's join puts files here and its leave removes them
(``meshctl.provision.layout`` re-exports these values); meshd's config
defaults point here. What meshd derives from its config, the notes and lock
beside ``[interception] rules_record`` (``RunFiles``) and the documents in
``[mesh] state_dir`` (``pushed_document``), is derived here too, so that a
config that moves the record moves them all, and the defaults land exactly
where meshctl looks. Pure: names, no file is touched.

The values are text, not ``Path``: meshctl writes them into the shell
commands it runs over SSH; meshd makes a ``Path`` of what it opens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

USER = "meshd"  # the system user meshd runs as ([interception] meshd_user)
ETC = "/etc/meshd"
CONFIG = f"{ETC}/meshd.toml"
REGISTRY = f"{ETC}/registry.json"  # the registry file join writes ([mesh] registry)
TRUST_BUNDLE = f"{ETC}/bundle.pem"
CERT = f"{ETC}/cert.pem"
KEY = f"{ETC}/key.pem"
STATE = "/var/lib/meshd"  # [mesh] state_dir: what was pushed, kept across restarts
ADMIN_SOCKET = "/run/meshd/admin.sock"  # [listen] admin_socket
HOSTS_FILE = "/etc/hosts"  # its managed block names the services (meshd hosts, meshd sync)
RULES_RECORD = "/run/meshd-rules.sha256"  # [interception] rules_record: which rules are in


def pushed_document(state_dir: Path, kind: str) -> Path:
    """Where meshd's DocumentStore keeps the current pushed document of ``kind``."""
    return state_dir / f"{kind}.json"


@dataclass(frozen=True)
class RunFiles:
    """The notes and the lock beside the rules record: in /run, so gone at reboot, like the
    rules they speak of (meshd-rules.service puts both back)."""

    record: Path

    @property
    def lock(self) -> Path:
        """Every writer of the rules holds it (``meshd.host.interception.rules_lock``)."""
        return self.record.with_name("meshd-rules.lock")

    @property
    def synced(self) -> Path:
        """The registry version ``meshd sync`` last put in place (``meshd.host.registryfiles``).

        Not in the state directory: meshd-sync.path watches that one until the
        first registry is pushed, so a note written there would start the sync again.
        """
        return self.record.with_name("meshd-synced.json")

    @property
    def fallback_ran(self) -> Path:
        """Touched by closed mode's boot fallback: the rules in place are not meshd's own."""
        return self.record.with_name("meshd-rules.fallback")

    def filter_created(self, version: int) -> Path:
        """Touched when our rules made IPv``version``'s nft filter table: leave drops it."""
        name = "filter" if version == 4 else f"filter{version}"
        return self.record.with_name(f"meshd-rules.{name}-created")


RUN = RunFiles(Path(RULES_RECORD))  # where the defaults put them
RULES_LOCK = str(RUN.lock)
SYNCED = str(RUN.synced)
FALLBACK_RAN = str(RUN.fallback_ran)
FILTER_CREATED = str(RUN.filter_created(4))
FILTER6_CREATED = str(RUN.filter_created(6))
PUSHED_REGISTRY = str(pushed_document(Path(STATE), "registry"))  # meshd-sync.path watches it
