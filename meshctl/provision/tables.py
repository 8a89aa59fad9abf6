"""Shell snippets that handle meshd's iptables tables on a host without meshd.

leave and the rules rollback run them as root: meshd may be broken or gone
by then. meshd's rules live in our own chains of the nat table (redirects)
and, where they reject, of the filter table (``meshd.rules``); these
snippets take ours out of a table, put back ours from a saved table, and
drop a table that our rules made (nft backend) once it is empty again, so
that leave restores ``iptables-save`` to what it was.
"""

from __future__ import annotations

from meshd.rules import COMMENT, FILTER, V4, V6, Table

TOOLS = {V4.tool: "ip", V6.tool: "ip6"}  # tool -> nft family
HAS_IPV6 = "[ -e /proc/net/if_inet6 ]"
BUILT_IN = {"nat": "PREROUTING|INPUT|OUTPUT|POSTROUTING", "filter": "INPUT|FORWARD|OUTPUT"}
# the lines of ours in a saved table: our jumps (by their comment) and our chains
_JUMP = f'^-A [A-Z]+ .*--comment "?{COMMENT}:'


def drop_empty(tool: str, table: str) -> str:
    """Drop the nft ``table`` when it holds nothing: no rules, no chains of anyone's, ACCEPT
    policies (what the backend made for our first rule). Legacy tables cannot be unloaded."""
    family = TOOLS[tool]
    return f"""\
if {tool} -V 2>/dev/null | grep -q nf_tables && command -v nft >/dev/null &&
    nft list tables {family} 2>/dev/null | grep -qx 'table {family} {table}'; then
  saved=$({tool}-save -t {table})
  if ! printf '%s\\n' "$saved" | grep -q '^-A ' &&
      ! printf '%s\\n' "$saved" | grep '^:' | grep -qvE '^:({BUILT_IN[table]}) ACCEPT '; then
    nft delete table {family} {table}
  fi
fi"""


def remove_ours(tool: str, table: Table = FILTER) -> str:
    """Take our jumps and chains out of ``table``, as they are now, in one restore."""
    return (
        f"{tool}-save -t {table.name} | awk '"
        f'BEGIN {{ print "*{table.name}" }} '
        f'/{_JUMP}/ {{ sub(/^-A /, "-D "); print }} '
        "/^:MESHD_/ { n++; chain[n] = substr($1, 2) } "
        'END { for (i = 1; i <= n; i++) print "-F " chain[i]; '
        'for (i = 1; i <= n; i++) print "-X " chain[i]; print "COMMIT" }'
        f"' | {tool}-restore -w 5 --noflush"
    )


def restore_ours(tool: str, saved: str, table: Table = FILTER) -> str:
    """Put back our jumps (first in their chains, as meshd puts them) and chains of ``table``
    from the file ``saved`` (an ``iptables-save -t TABLE``); nothing when it held none."""
    first = "-I " if table.first else "-A "
    return (
        f"if grep -q '^:MESHD_' {saved}; then awk '"
        f'BEGIN {{ print "*{table.name}" }} '
        "/^:MESHD_/ { print } "
        f'/{_JUMP}/ {{ sub(/^-A /, "{first}"); print; next }} '
        "/^-A MESHD_/ { print } "
        'END { print "COMMIT" }'
        f"' {saved} | {tool}-restore -w 5 --noflush; fi"
    )
