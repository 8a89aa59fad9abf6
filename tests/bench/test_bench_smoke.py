"""bench/ without running a benchmark: parsers, generated configs, the report.

The configs are checked by the real tools (haproxy -c, envoy --mode validate,
meshd's own config and registry parsers) where they are installed.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from meshd.config import MeshdConfig
from meshd.policy.lang.compiled import CompiledPolicy
from meshd.policy.lang.evaluate import explain
from meshd.policy.lang.wire import PolicyDocument, load
from meshd.registry import Registry

# bench/run.py imports its sibling modules by name (bench/ is sys.path[0] when it runs)
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import policy as bench_policy
from backend import Pki, make_pki
from breakdown import categorize
from breakdown import to_markdown as breakdown_markdown
from chains import (
    Ctx,
    chains,
    envoy_a_config,
    envoy_b_config,
    envoy_binary,
    haproxy_config,
    meshd_configs,
)
from common import SCENARIOS, LoadError, Settings
from load import parse_h2load, parse_wrk, percentile
from measure import Cell, Results, Sample
from policy import DENIED_PATH, DENIED_RULE
from procs import Ports, Processes
from report import header, policy_verdicts, to_json, to_markdown

WRK_OUT = """\
Running 3s test @ http://127.0.0.1:40000/small
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   450.12us  100.00us   5.00ms   90.00%
    Req/Sec    50.00k     1.00k   52.00k    70.00%
  Latency Distribution
     50%  390.00us
     75%  450.00us
     90%  600.00us
     99%    1.20ms
  150000 requests in 3.00s, 170.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  49999.50
Transfer/sec:     56.00MB
"""

H2LOAD_OUT = """\
finished in 3.00s, 2000.00 req/s, 2.00MB/s
requests: 6000 total, 6000 started, 6000 done, 5999 succeeded, 1 failed, 0 errored, 0 timeout
"""


def test_parse_wrk() -> None:
    load = parse_wrk(WRK_OUT)
    assert load.throughput == pytest.approx(49999.5)
    assert load.units == 150000
    assert load.p50_ms == pytest.approx(0.39)
    assert load.p99_ms == pytest.approx(1.2)
    assert load.errors == 7


def test_parse_wrk_refuses_garbage() -> None:
    with pytest.raises(LoadError):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused")


def test_parse_h2load_percentiles_from_log() -> None:
    log = "".join(f"1700000000{i:06d}\t{200 if i else 503}\t{(i + 1) * 1000}\n" for i in range(100))
    load = parse_h2load(H2LOAD_OUT, log, 3.0)
    assert load.throughput == pytest.approx(2000.0)
    assert load.p50_ms == pytest.approx(50.0)
    assert load.p99_ms == pytest.approx(99.0)
    assert load.errors == 1


def test_percentile_nearest_rank() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([5.0], 99) == 5.0
    assert percentile(list(map(float, range(1, 1001))), 99) == 990.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_haproxy_configs(pki: Pki, tmp_path: Path) -> None:
    haproxy = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )
    for mode in ("tcp", "http"):
        for role in ("a", "b"):
            text = haproxy_config(role, mode, 40001, 40002, pki)
            assert f"mode {mode}" in text
            assert ("http-reuse always" in text) == (mode == "http")
            assert "verify required" in text
            if haproxy:
                conf = tmp_path / f"{mode}-{role}.cfg"
                conf.write_text(text)
                check = subprocess.run(
                    [haproxy, "-c", "-q", "-f", str(conf)],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                assert check.returncode == 0, check.stdout + check.stderr


def test_envoy_configs(pki: Pki, tmp_path: Path) -> None:
    a = envoy_a_config(40001, 40002, pki)
    b = envoy_b_config(40002, 40003, pki)
    listener = a["static_resources"]["listeners"][0]
    tcp_proxy = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert "hostname" in tcp_proxy["tunneling_config"]
    hcm = b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["upgrade_configs"] == [{"upgrade_type": "CONNECT"}]
    envoy = envoy_binary()
    if envoy is None:
        pytest.skip("envoy not installed (sh bench/setup.sh)")
    for name, config in (("a", a), ("b", b)):
        conf = tmp_path / f"envoy-{name}.json"
        conf.write_text(json.dumps(config))
        check = subprocess.run(
            [str(envoy), "--mode", "validate", "-c", str(conf), "--disable-hot-restart"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]


def test_meshd_configs_parse(pki: Pki, tmp_path: Path) -> None:
    # the configs need no processes or ports: empty ones, never started
    ctx = Ctx(procs=Processes(tmp_path, pin=False), ports=Ports(), pki=pki, backend=40003)
    config_a, config_b, registry = meshd_configs(ctx, 40004, 40005)
    a = MeshdConfig.from_dict(tomllib.loads(config_a), "a.toml", tmp_path)
    b = MeshdConfig.from_dict(tomllib.loads(config_b), "b.toml", tmp_path)
    assert a.upstreams[0].listen == ("127.0.0.1", 40005)
    assert a.upstreams[0].service == "web"
    assert b.listen.mesh == ("127.0.0.1", 40004)
    assert b.services[0].port == 40003
    reg = Registry.from_dict(json.loads(registry), "registry.json")
    web = reg.service("web")
    assert web is not None
    assert web.endpoints[0].mesh_port == 40004


def _results() -> Results:
    settings = Settings.make(quick=True, pin=True)
    selected = chains()
    cells = {sc: {c.name: Cell() for c in selected} for sc in SCENARIOS}
    for scenario in SCENARIOS:
        for chain, thr in (
            ("direct", 100.0),
            ("haproxy-tcp", 40.0),
            ("envoy", 50.0),
            ("meshd", 20.0),
            ("meshd-policy", 19.0),
            ("python-floor", 32.0),
        ):
            proxied = chain != "direct"
            cells[scenario][chain].samples.append(
                Sample(
                    thr, thr * 3, 1.0, 2.0, 0, 0.5 if proxied else None, 30.0 if proxied else None
                )
            )
    results = Results(settings, selected, cells)
    results.failed["haproxy-http"] = "did not start"
    results.idle["meshd"] = {"meshd-a": 20.0, "meshd-b": 22.0}
    return results


def test_report_markdown_and_json() -> None:
    results = _results()
    head = header(results.settings)
    text = to_markdown(results, head)
    assert "| (a) | meshd |" in text
    assert "haproxy-http" in text and "did not start" in text
    assert "| (a) | haproxy-tcp | 0.50 |" in text  # meshd 20 req/s vs haproxy-tcp 40
    assert "**42.0**" in text
    doc = to_json(results, head)
    json.dumps(doc)
    assert doc["ratios_meshd"]["keepalive"]["envoy"]["throughput"] == pytest.approx(0.4)
    assert doc["ratios_meshd"]["keepalive"]["python-floor"]["throughput"] == pytest.approx(0.625)
    assert doc["ratios_python_floor"]["bulk"]["haproxy"]["throughput"] == pytest.approx(0.8)
    assert "python-floor" not in doc["ratios_python_floor"]["bulk"]
    assert "## The Python floor (bench/floor.py) vs HAProxy and Envoy" in text
    assert "| (d) | haproxy-tcp | 0.80 |" in text  # the floor's 32 MiB/s vs haproxy-tcp's 40
    assert doc["scenarios"]["bulk"]["unit"] == "MiB/s"
    # meshd-policy / meshd: 19 vs 20 req/s, the same CPU seconds over 57 vs 60 requests
    assert doc["ratios_meshd_policy"]["close"]["throughput"] == pytest.approx(0.95)
    assert doc["ratios_meshd_policy"]["keepalive"]["cpu_per_unit"] == pytest.approx(60 / 57)
    assert [v["met"] for v in doc["policy_bounds"]] == [True, True]
    assert "## meshd with a policy vs meshd without (same run)" in text
    assert "| (a) | 0.950 | 1.000 | 1.053 | 1.000 |" in text
    assert "- keep-alive CPU per request (keepalive): 1.053x, bound <= 1.150x: **met**" in text
    assert "- new connections/s (close): 0.950x, bound >= 0.909x: **met**" in text


def test_policy_bounds_are_missed_past_the_limits() -> None:
    table = {"keepalive": {"cpu_per_unit": 1.16}, "close": {"throughput": 0.90}}
    assert [v["met"] for v in policy_verdicts(table)] == [False, False]  # type: ignore[arg-type]
    table = {"keepalive": {"cpu_per_unit": 1.15}, "close": {"throughput": 1 / 1.10}}
    assert [v["met"] for v in policy_verdicts(table)] == [True, True]  # type: ignore[arg-type]
    assert [v["met"] for v in policy_verdicts({})] == [None, None]


A = "spiffe://bench.mesh/host/a"


@pytest.mark.parametrize(
    ("method", "target", "decision", "rule", "would_deny"),
    [
        ("GET", "/small", "allow", "web/allow/bench-client", []),  # what the load sends
        ("GET", "/bulk", "allow", "web/allow/bench-client", []),
        ("GET", DENIED_PATH, "deny", DENIED_RULE, []),  # the smoke check's 403
        ("GET", "/debug/vars", "deny", "mesh/deny/no-debug", []),
        ("DELETE", "/small", "deny", "mesh/authz/default", ["web/deny/retire-deletes"]),
        ("POST", "/small", "deny", "mesh/authz/default", []),
    ],
)
def test_bench_policy_judges_the_bench_requests(
    method: str, target: str, decision: str, rule: str, would_deny: list[str]
) -> None:
    """The pushed body, loaded as meshd loads it, gives these decisions for host a -> web."""
    body = bench_policy.checked(40003)
    documents = load(PolicyDocument.from_json(body.wire), "bench.mesh", dt.datetime.now(dt.UTC))
    policy = CompiledPolicy.compile(documents, "bench.mesh", body.wire["version"])
    got = explain(policy, "web", 40003, A, method, target, []).to_json()
    assert (got["decision"], got["rule"], got["would_deny"]) == (decision, rule, would_deny)


def test_bench_policy_is_as_large_as_the_issue_asks() -> None:
    body = bench_policy.checked(40003)
    assert body.rules >= 200 and body.services >= 50
    assert body.wire["version"] == bench_policy.POLICY_VERSION > 0
    modes = {c.name: c.mode for c in chains()}
    assert f"{body.rules} rules over {body.services} services" in modes["meshd-policy"]


PERF_REPORT = """\
# Samples: 9K of event 'cpu-clock:pppH'
#
# Overhead  Shared Object
# ........  ..........................
#
    42.10%  [kernel.kallsyms]
    33.33%  libpython3.11.so.1.0
     7.67%  libc.so.6
     6.46%  libcrypto.so.3
     3.93%  loop.cpython-311-x86_64-linux-gnu.so
     3.72%  parser.cpython-311-x86_64-linux-gnu.so
     1.86%  libssl.so.3
     0.28%  [vdso]
     0.26%  _ssl.cpython-311-x86_64-linux-gnu.so
"""


def test_breakdown_splits_perf_samples_by_category() -> None:
    shares = categorize(PERF_REPORT)
    assert shares["kernel"] == pytest.approx(42.10)
    assert shares["OpenSSL"] == pytest.approx(6.46 + 1.86 + 0.26)
    assert shares["Python interpreter"] == pytest.approx(33.33)
    assert shares["uvloop"] == pytest.approx(3.93)
    assert shares["httptools"] == pytest.approx(3.72)
    assert shares["other"] == pytest.approx(0.28)
    assert sum(shares.values()) == pytest.approx(99.61)
    table = breakdown_markdown(
        [{"chain": "meshd", "scenario": "keepalive", "cost": 20.0, "cost_unit": "us/req",
          "shares": shares}]
    )  # fmt: skip
    assert "| kernel | 8.42 (42%) |" in table
    assert "| **total** | **20.00** |" in table
