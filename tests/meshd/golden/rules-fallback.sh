#!/bin/sh
# Written by `meshd rules apply`. meshd-rules.service runs it at boot when `meshd
# rules apply` fails (closed fail mode): meshd is down, so every connection the
# rules catch is refused (TCP reset) without meshd or its config, and nothing is
# redirected to meshd's ports, which any local user could bind meanwhile.
touch /run/meshd-rules.fallback
status=0
if iptables -V 2>/dev/null | grep -q nf_tables && command -v nft >/dev/null && ! nft list tables ip 2>/dev/null | grep -qx 'table ip filter'; then touch /run/meshd-rules.filter-created; fi
iptables-restore -w 5 --noflush <<'MESHD_RULES_END' || status=1
*filter
:MESHD_OUTPUT - [0:0]
:MESHD_REJECT - [0:0]
:MESHD_INBOUND - [0:0]
-I OUTPUT -p tcp -m conntrack --ctdir ORIGINAL -m comment --comment "meshd:output" -j MESHD_OUTPUT
-I INPUT -p tcp -m conntrack --ctdir ORIGINAL -m comment --comment "meshd:inbound" -j MESHD_INBOUND
-A MESHD_OUTPUT -m owner --uid-owner meshd -j RETURN
-A MESHD_OUTPUT -p tcp --sport 22 -m owner --uid-owner 0 -j RETURN
-A MESHD_OUTPUT -d 127.0.0.0/8 -j RETURN
-A MESHD_OUTPUT -p tcp --dport 22 -j RETURN
-A MESHD_OUTPUT -p tcp --dport 15000 -j RETURN
-A MESHD_OUTPUT -p tcp --dport 15443 -j RETURN
-A MESHD_OUTPUT -p tcp -d 10.255.0.0/16 -j MESHD_REJECT
-A MESHD_OUTPUT -p tcp -d 10.77.0.12/32 --dport 8080 -j MESHD_REJECT
-A MESHD_OUTPUT -p tcp -d 10.77.0.13/32 --dport 5432 -j MESHD_REJECT
-A MESHD_REJECT -p tcp -j REJECT --reject-with tcp-reset
-A MESHD_INBOUND -i lo -j RETURN
-A MESHD_INBOUND -p tcp --dport 22 -j RETURN
-A MESHD_INBOUND -p tcp --dport 15000 -j RETURN
-A MESHD_INBOUND -p tcp --dport 15443 -j RETURN
-A MESHD_INBOUND -p tcp --dport 8081 -j MESHD_REJECT
-A MESHD_INBOUND -p tcp --dport 9000 -j MESHD_REJECT
COMMIT
*nat
:MESHD_OUTPUT - [0:0]
:MESHD_REDIRECT - [0:0]
:MESHD_INBOUND - [0:0]
COMMIT
MESHD_RULES_END
if [ -e /proc/net/if_inet6 ]; then
if ip6tables -V 2>/dev/null | grep -q nf_tables && command -v nft >/dev/null && ! nft list tables ip6 2>/dev/null | grep -qx 'table ip6 filter'; then touch /run/meshd-rules.filter6-created; fi
ip6tables-restore -w 5 --noflush <<'MESHD_RULES_END' || status=1
*filter
:MESHD_OUTPUT - [0:0]
:MESHD_REJECT - [0:0]
:MESHD_INBOUND - [0:0]
-I OUTPUT -p tcp -m conntrack --ctdir ORIGINAL -m comment --comment "meshd:output" -j MESHD_OUTPUT
-I INPUT -p tcp -m conntrack --ctdir ORIGINAL -m comment --comment "meshd:inbound" -j MESHD_INBOUND
-A MESHD_OUTPUT -m owner --uid-owner meshd -j RETURN
-A MESHD_OUTPUT -p tcp --sport 22 -m owner --uid-owner 0 -j RETURN
-A MESHD_OUTPUT -d ::1/128 -j RETURN
-A MESHD_OUTPUT -p tcp --dport 22 -j RETURN
-A MESHD_OUTPUT -p tcp --dport 15000 -j RETURN
-A MESHD_OUTPUT -p tcp --dport 15443 -j RETURN
-A MESHD_OUTPUT -p tcp -d fd00:77::12/128 --dport 8080 -j MESHD_REJECT
-A MESHD_OUTPUT -p tcp -d fd00:77::13/128 --dport 5432 -j MESHD_REJECT
-A MESHD_REJECT -p tcp -j REJECT --reject-with tcp-reset
-A MESHD_INBOUND -i lo -j RETURN
-A MESHD_INBOUND -p tcp --dport 22 -j RETURN
-A MESHD_INBOUND -p tcp --dport 15000 -j RETURN
-A MESHD_INBOUND -p tcp --dport 15443 -j RETURN
-A MESHD_INBOUND -p tcp --dport 8081 -j MESHD_REJECT
-A MESHD_INBOUND -p tcp --dport 9000 -j MESHD_REJECT
COMMIT
*nat
:MESHD_OUTPUT - [0:0]
:MESHD_REDIRECT - [0:0]
:MESHD_INBOUND - [0:0]
COMMIT
MESHD_RULES_END
fi
ip route replace 10.255.0.0/16 dev lo || status=1
exit $status
