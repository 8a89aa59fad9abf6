#!/bin/sh
# One test host: runs inside `setsid unshare --mount --propagation private`.
# Joins the host's own cgroups, mounts its overlay and a tmpfs on /run/systemd
# (nspawn refuses to clean up its propagation dir on a non-tmpfs /run), then
# boots systemd-nspawn again and again while the host asks to reboot (exit 133)
# and the stop file does not exist.
# Environment: TB_CGROUPS (space separated dirs), TB_LOWER, TB_UPPER, TB_WORK,
# TB_MERGED, TB_MACHINE, TB_BRIDGE, TB_STOP, TB_PIDFILE, TB_NSPAWN_PIDFILE.
set -u

for cg in $TB_CGROUPS; do
    echo $$ > "$cg/cgroup.procs" || exit 70
done
echo $$ > "$TB_PIDFILE"

mount -t overlay overlay \
    -o "lowerdir=$TB_LOWER,upperdir=$TB_UPPER,workdir=$TB_WORK" "$TB_MERGED" || exit 71
mkdir -p /run/systemd && mount -t tmpfs -o mode=0755 tmpfs /run/systemd || exit 72

while :; do
    [ -e "$TB_STOP" ] && break
    systemd-nspawn --quiet -D "$TB_MERGED" -M "$TB_MACHINE" --boot --register=no \
        --keep-unit --network-bridge="$TB_BRIDGE" --capability=CAP_NET_ADMIN \
        --console=passive &
    child=$!
    echo $child > "$TB_NSPAWN_PIDFILE"
    wait $child
    rc=$?
    echo "launcher: systemd-nspawn exited with $rc at $(date +%T)"
    [ "$rc" -eq 133 ] || break
done
rm -f "$TB_NSPAWN_PIDFILE"
