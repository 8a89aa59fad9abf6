"""``meshctl monitor``: let the user's own monitoring scrape meshd (Prometheus)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meshctl import files, monitors, state
from meshctl.cli.context import app_context

app = typer.Typer(help="Scrape meshd with your own monitoring.", no_args_is_help=True)

HEADER = """\
# Prometheus scrape configuration for meshd: every joined host's admin API, over mutual
# TLS as the monitor identity {name}. Made with (run both again to renew the certificate,
# and the second after hosts join or leave):
#   meshctl ca issue-monitor {name}{out}
#   meshctl monitor prometheus-config --identity {name}{files}{interval}
"""


@app.command("prometheus-config")
def prometheus_config(
    ctx: typer.Context,
    identity: Annotated[
        str, typer.Option("--identity", help="the monitor (meshctl ca issue-monitor NAME)")
    ] = "prometheus",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="write the YAML here instead of stdout")
    ] = None,
    files_dir: Annotated[
        Path | None,
        typer.Option(
            "--files",
            help="where Prometheus finds the monitor's files [default: where issue-monitor"
            " put them]",
        ),
    ] = None,
    interval: Annotated[
        str, typer.Option("--interval", help="scrape_interval of the configuration")
    ] = monitors.SCRAPE_INTERVAL,
) -> None:
    """A Prometheus scrape job for meshd: https, mTLS as the monitor, a target per joined host.

    Each target is the host's address and admin port, labelled host=NAME;
    tls_config verifies meshd's certificate against the mesh's trust bundle.

    Example: meshctl monitor prometheus-config --identity prometheus -o meshd.yml
    """
    actx = app_context(ctx)
    ws = actx.workspace()
    where = monitors.monitor_files(ws, monitors.check_monitor_name(identity), files_dir)
    targets = monitors.scrape_targets(
        state.load_inventory(ws).hosts, list(state.joined(ws)), ws.config.defaults.admin_port
    )
    config = monitors.prometheus_config(ws.config.trust_domain, where, targets, interval)
    given = f" {{}} {files_dir}" if files_dir is not None else ""
    every = f" --interval {interval}" if interval != monitors.SCRAPE_INTERVAL else ""
    header = HEADER.format(
        name=identity, out=given.format("--out"), files=given.format("--files"), interval=every
    )
    text = monitors.render_yaml(config, header)
    if out is None:
        actx.out.print(text, end="", markup=False, highlight=False, soft_wrap=True)
        return
    files.write_atomic(out, text.encode(), 0o644)
    actx.err.print(f"[green]wrote[/] {out}: {len(targets)} meshd target(s)")
