"""Where meshctl puts things on a host (what `meshctl join` leaves, and `leave` removes).

``meshctl leave`` removes exactly these; facts read exactly these. What meshd
reads or writes too (its files, the sync note, the rules lock, ...) comes from
``meshd.paths``, the one source both sides import: the names below are the
same objects. The rest only meshctl uses.
"""

from __future__ import annotations

from meshd import paths

# shared with meshd
USER = paths.USER
ETC = paths.ETC
CONFIG = paths.CONFIG
REGISTRY = paths.REGISTRY
TRUST_BUNDLE = paths.TRUST_BUNDLE
CERT = paths.CERT
KEY = paths.KEY
STATE = paths.STATE
PUSHED_REGISTRY = paths.PUSHED_REGISTRY
ADMIN_SOCKET = paths.ADMIN_SOCKET
HOSTS_FILE = paths.HOSTS_FILE
RULES_RECORD = paths.RULES_RECORD
RULES_LOCK = paths.RULES_LOCK
SYNCED = paths.SYNCED
FALLBACK_RAN = paths.FALLBACK_RAN
FILTER_CREATED = paths.FILTER_CREATED
FILTER6_CREATED = paths.FILTER6_CREATED

# meshctl's own
OPT = "/opt/meshd"
LAUNCHER = f"{OPT}/bin/meshd"
# the rules last applied, as a script needing no meshd: closed mode's boot fallback
# (FALLBACK_RAN says it ran: meshd.host.interception)
RULES_FALLBACK = f"{ETC}/rules-fallback"
# RULES_LOCK: every writer of the rules holds it, leave removes it only after stopping
# every unit that could hold or wait for it
ROLLBACK = "/run/meshd-rules.rollback"  # the nat table to go back to (see provision/guard.py)
ROLLBACK_PREV = "/run/meshd-rules.prev"  # ... and the config and route that went with it
NAT_CREATED = f"{ETC}/nat-table-created"  # our first rules created the nat table: leave drops it
NAT6_CREATED = f"{ETC}/nat6-table-created"  # ... and the ip6 nat table
USER_CREATED = f"{ETC}/user-created"  # join created the meshd user: leave removes it
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
