#!/bin/sh
# Set up meshctl and meshd in ./.venv. Idempotent: run it again at any time.
#
#   ./install.sh          the toolkit (meshctl, meshd) into .venv and, as root,
#                         the Debian packages `meshctl demo` needs
#   ./install.sh --dev    plus the test tools and the packages the tests need
set -eu

cd "$(dirname "$0")"
DEV=0
for arg in "$@"; do
    case "$arg" in
        --dev) DEV=1 ;;
        -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
    esac
done

say() { printf '==> %s\n' "$*"; }
PYTHON=${PYTHON:-python3}

# Debian packages `meshctl demo` uses on this machine (local hosts with systemd-nspawn),
# and those the tests add (captures, certificates, load, a real Prometheus and promtool
# scraping meshd: tests/meshd/admin/test_prometheus.py).
DEMO_PACKAGES="systemd-container debootstrap iproute2 util-linux iptables openssh-client ca-certificates"
TEST_PACKAGES="openssl tcpdump wrk prometheus"

apt_install() {
    missing=""
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing="$missing $pkg"
    done
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "install.sh: missing Debian packages:$missing; run as root or: sudo apt-get install -y$missing" >&2
        exit 1
    fi
    say "installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    apt-get install -y -qq $missing >/dev/null
}

command -v "$PYTHON" >/dev/null 2>&1 || { echo "install.sh: $PYTHON not found; install python3 (>= 3.11)" >&2; exit 1; }
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "install.sh: meshctl needs Python >= 3.11, $PYTHON is $("$PYTHON" -V 2>&1)" >&2; exit 1; }

if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    # Debian splits venv out of python3
    apt_install python3-venv
fi

if [ ! -x .venv/bin/python ]; then
    say "creating .venv with $("$PYTHON" -V 2>&1)"
    "$PYTHON" -m venv .venv
fi

say "installing meshctl and meshd into .venv"
.venv/bin/python -m pip install --quiet --upgrade pip
if [ "$DEV" -eq 1 ]; then
    .venv/bin/python -m pip install --quiet -e '.[dev]'
else
    .venv/bin/python -m pip install --quiet -e .
fi
PACKAGES=$DEMO_PACKAGES
if [ "$DEV" -eq 1 ]; then PACKAGES="$PACKAGES $TEST_PACKAGES"; fi
if [ "$(id -u)" -eq 0 ]; then
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    apt_install $PACKAGES
else
    say "not root: skipping Debian packages ($PACKAGES); meshctl demo and the end-to-end tests need them and root"
fi

say "done: $(.venv/bin/meshctl --version), $(.venv/bin/meshd version)"
if [ "$DEV" -eq 1 ]; then
    say "next: .venv/bin/pytest    (end-to-end tests boot real hosts and need root)"
else
    say "next: .venv/bin/meshctl demo up    (as root), or .venv/bin/meshctl init --help"
fi
