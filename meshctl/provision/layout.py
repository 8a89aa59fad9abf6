"""Where meshctl puts things on a host (DESIGN.md, "Host layout"), in one place.

``meshctl leave`` removes exactly these; facts read exactly these.
"""

from __future__ import annotations

USER = "meshd"
OPT = "/opt/meshd"
LAUNCHER = f"{OPT}/bin/meshd"
ETC = "/etc/meshd"
CONFIG = f"{ETC}/meshd.toml"
REGISTRY = f"{ETC}/registry.json"
TRUST_BUNDLE = f"{ETC}/bundle.pem"
CERT = f"{ETC}/cert.pem"
KEY = f"{ETC}/key.pem"
STATE = "/var/lib/meshd"
RULES_RECORD = "/run/meshd-rules.sha256"  # gone at reboot, like the rules it describes
# the rules last applied, as a script needing no meshd: closed mode's boot fallback
RULES_FALLBACK = f"{ETC}/rules-fallback"
FALLBACK_RAN = "/run/meshd-rules.fallback"  # the fallback holds the host (meshd.host.interception)
SYNCED = "/run/meshd-synced.json"  # the registry version meshd-sync last put in place
# every writer of the rules holds it (meshd.host.interception.lock_path: beside RULES_RECORD).
# leave removes it only after stopping every unit that could hold or wait for it
RULES_LOCK = "/run/meshd-rules.lock"
ROLLBACK = "/run/meshd-rules.rollback"  # the nat table to go back to (see provision/guard.py)
ROLLBACK_PREV = "/run/meshd-rules.prev"  # ... and the config and route that went with it
NAT_CREATED = f"{ETC}/nat-table-created"  # our first rules created the nat table: leave drops it
NAT6_CREATED = f"{ETC}/nat6-table-created"  # ... and the ip6 nat table
# meshd's rejecting rules made the filter table (meshd.host.interception.filter_created): in /run,
# since those rules go at reboot, and the table with them
FILTER_CREATED = "/run/meshd-rules.filter-created"
FILTER6_CREATED = "/run/meshd-rules.filter6-created"
USER_CREATED = f"{ETC}/user-created"  # join created the meshd user: leave removes it
HOSTS_FILE = "/etc/hosts"
UNIT_DIR = "/etc/systemd/system"

UNIT_FILES = {
    "meshd.service": f"{UNIT_DIR}/meshd.service",
    "meshd-rules.service": f"{UNIT_DIR}/meshd-rules.service",
    "meshd-sync.service": f"{UNIT_DIR}/meshd-sync.service",
    "meshd-sync.path": f"{UNIT_DIR}/meshd-sync.path",
}
UNITS = tuple(UNIT_FILES)
# enabled at join: meshd itself, the boot-time rules, the registry watcher
ENABLED_UNITS = ("meshd.service", "meshd-rules.service", "meshd-sync.path")

MANAGED_FILES = (LAUNCHER, CONFIG, REGISTRY, TRUST_BUNDLE, CERT, KEY, *UNIT_FILES.values())
REMOVED_PATHS = (
    OPT,
    ETC,
    STATE,
    RULES_RECORD,
    FALLBACK_RAN,
    FILTER_CREATED,
    FILTER6_CREATED,
    SYNCED,
    ROLLBACK,
    RULES_LOCK,
    ROLLBACK_PREV,
    "/run/meshd",
    *UNIT_FILES.values(),
)
