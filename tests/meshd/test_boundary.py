"""meshd must stand alone: no meshctl, typer, rich or paramiko, statically or at run time."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import meshd

FORBIDDEN = ("meshctl", "typer", "rich", "paramiko", "click")
MESHD_DIR = Path(meshd.__file__).parent


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_forbidden_import_statements() -> None:
    offenders = {
        str(path.relative_to(MESHD_DIR)): sorted(_imported_roots(path) & set(FORBIDDEN))
        for path in MESHD_DIR.rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_forbidden_modules_loaded_at_run_time() -> None:
    modules = sorted(
        "meshd." + p.relative_to(MESHD_DIR).with_suffix("").as_posix().replace("/", ".")
        for p in MESHD_DIR.rglob("*.py")
        if p.name != "__init__.py"
    )
    assert modules, "no meshd modules found"
    script = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    loaded = json.loads(
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        ).stdout
    )
    assert [m for m in loaded if m.split(".")[0] in FORBIDDEN] == []


def test_checker_catches_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom rich.console import Console\nimport paramiko.client\n")
    assert _imported_roots(bad) & set(FORBIDDEN) == {"rich", "paramiko"}


def test_the_daemon_does_not_load_x509_code() -> None:
    """cryptography's x509 costs ~10 MB of RSS; only ``meshd keygen`` and an issuer need it
    (``meshd.issuer.x509work``, imported when a host becomes one: test_issuer_process.py)."""
    script = (
        "import sys, meshd.cli, meshd.daemon, meshd.issuer.service, meshd.issuer.decide\n"
        "print('cryptography' in sys.modules)"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "False"
