#!/bin/sh
# Written by `meshd rules apply` with the rules it applied. meshd-rules.service runs
# it at boot when `meshd rules apply` fails (closed fail mode): the last rule set that
# went in goes in again without meshd or its config, so intercepted connections fail
# (or reach a running meshd) and nothing leaves in plaintext.
touch /run/meshd-rules.fallback
status=0
iptables-restore -w 5 --noflush <<'MESHD_RULES_END' || status=1
*nat
:MESHD_OUTPUT - [0:0]
:MESHD_REDIRECT - [0:0]
:MESHD_INBOUND - [0:0]
-A OUTPUT -p tcp -m comment --comment "meshd:output" -j MESHD_OUTPUT
-A PREROUTING -p tcp -m comment --comment "meshd:inbound" -j MESHD_INBOUND
-A MESHD_OUTPUT -m owner --uid-owner meshd -j RETURN
-A MESHD_OUTPUT -p tcp --sport 22 -m owner --uid-owner 0 -j RETURN
-A MESHD_OUTPUT -d 127.0.0.0/8 -j RETURN
-A MESHD_OUTPUT -p tcp --dport 22 -j RETURN
-A MESHD_OUTPUT -p tcp --dport 15000 -j RETURN
-A MESHD_OUTPUT -p tcp --dport 15443 -j RETURN
-A MESHD_OUTPUT -p tcp -d 10.255.0.0/16 -j MESHD_REDIRECT
-A MESHD_OUTPUT -p tcp -d 10.77.0.12/32 --dport 8080 -j MESHD_REDIRECT
-A MESHD_OUTPUT -p tcp -d 10.77.0.13/32 --dport 5432 -j MESHD_REDIRECT
-A MESHD_REDIRECT -p tcp -m owner --uid-owner web -j REDIRECT --to-ports 15101
-A MESHD_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A MESHD_INBOUND -p tcp --dport 22 -j RETURN
-A MESHD_INBOUND -p tcp --dport 15000 -j RETURN
-A MESHD_INBOUND -p tcp --dport 15443 -j RETURN
-A MESHD_INBOUND -p tcp --dport 8081 -j REDIRECT --to-ports 15006
-A MESHD_INBOUND -p tcp --dport 9000 -j REDIRECT --to-ports 15006
COMMIT
MESHD_RULES_END
if [ -e /proc/net/if_inet6 ]; then
ip6tables-restore -w 5 --noflush <<'MESHD_RULES_END' || status=1
*nat
:MESHD_OUTPUT - [0:0]
:MESHD_REDIRECT - [0:0]
:MESHD_INBOUND - [0:0]
-A OUTPUT -p tcp -m comment --comment "meshd:output" -j MESHD_OUTPUT
-A PREROUTING -p tcp -m comment --comment "meshd:inbound" -j MESHD_INBOUND
-A MESHD_OUTPUT -m owner --uid-owner meshd -j RETURN
-A MESHD_OUTPUT -p tcp --sport 22 -m owner --uid-owner 0 -j RETURN
-A MESHD_OUTPUT -d ::1/128 -j RETURN
-A MESHD_OUTPUT -p tcp --dport 22 -j RETURN
-A MESHD_OUTPUT -p tcp --dport 15000 -j RETURN
-A MESHD_OUTPUT -p tcp --dport 15443 -j RETURN
-A MESHD_OUTPUT -p tcp -d fd00:77::12/128 --dport 8080 -j MESHD_REDIRECT
-A MESHD_OUTPUT -p tcp -d fd00:77::13/128 --dport 5432 -j MESHD_REDIRECT
-A MESHD_REDIRECT -p tcp -m owner --uid-owner web -j REDIRECT --to-ports 15101
-A MESHD_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A MESHD_INBOUND -p tcp --dport 22 -j RETURN
-A MESHD_INBOUND -p tcp --dport 15000 -j RETURN
-A MESHD_INBOUND -p tcp --dport 15443 -j RETURN
-A MESHD_INBOUND -p tcp --dport 8081 -j REDIRECT --to-ports 15006
-A MESHD_INBOUND -p tcp --dport 9000 -j REDIRECT --to-ports 15006
COMMIT
MESHD_RULES_END
fi
ip route replace 10.255.0.0/16 dev lo || status=1
exit $status
