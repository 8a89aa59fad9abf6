"""One vocabulary for failed handshakes on every port, and one classifier into it.

The reasons are metric label values (``meshd_handshake_failures_total``):
the table pins them. The scan proves that every place in meshd that
publishes a ``HandshakeFailed`` names its reason from the vocabulary,
never with a string of its own (mypy --strict says so too).
"""

from __future__ import annotations

import ast
import ssl
from pathlib import Path

import anyio
import pytest

import meshd
from meshd.tls.failures import HandshakeFailure, classify

MESHD = Path(meshd.__file__).parent

LABELS = {  # as dashboards and tests read them: a rename is a breaking change
    "timeout",
    "closed",
    "evicted",
    "not_yet_valid",
    "expired",
    "untrusted",
    "verify_failed",
    "no_certificate",
    "not_tls",
    "old_tls",
    "tls_error",
    "error",
    "refused",
    "wrong_identity",
    "too_many_links",
    "connect_failed",
}


def test_the_label_values_are_those_of_meshd_0_1() -> None:
    assert {f.value for f in HandshakeFailure} == LABELS
    assert f"{HandshakeFailure.NOT_TLS}" == "%s" % HandshakeFailure.NOT_TLS == "not_tls"  # noqa: UP031


def _verify_error(code: int) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_code = code
    return error


def _ssl_error(reason: str) -> ssl.SSLError:
    error = ssl.SSLError(1, reason)
    error.reason = reason
    return error


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (TimeoutError(), "timeout"),
        (_verify_error(9), "not_yet_valid"),
        (_verify_error(10), "expired"),
        (_verify_error(18), "untrusted"),
        (_verify_error(20), "untrusted"),
        (_verify_error(26), "verify_failed"),
        (_ssl_error("PEER_DID_NOT_RETURN_A_CERTIFICATE"), "no_certificate"),
        (_ssl_error("TLSV13_ALERT_CERTIFICATE_REQUIRED"), "no_certificate"),
        (_ssl_error("WRONG_VERSION_NUMBER"), "not_tls"),
        (_ssl_error("HTTP_REQUEST"), "not_tls"),
        (_ssl_error("UNSUPPORTED_PROTOCOL"), "old_tls"),
        (_ssl_error("TLSV1_ALERT_UNKNOWN_CA"), "untrusted"),
        (_ssl_error("SSLV3_ALERT_CERTIFICATE_EXPIRED"), "expired"),
        (_ssl_error("SOMETHING_NEW"), "tls_error"),
        (ConnectionResetError(), "closed"),
        (EOFError(), "closed"),
        (anyio.EndOfStream(), "closed"),  # the admin API's streams
        (anyio.BrokenResourceError(), "closed"),
        (ValueError("a bug"), "error"),
    ],
)
def test_classify(error: BaseException, reason: str) -> None:
    assert classify(error) == reason
    assert isinstance(classify(error), HandshakeFailure)


# --- every publisher speaks the vocabulary ---------------------------------------------------
def _annotated_params(tree: ast.AST) -> dict[str, tuple[int, str]]:
    """Functions of the module with a HandshakeFailure parameter: name -> the parameter's
    index in a call (``self`` not counted) and its name."""
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            params = [a for a in node.args.args if a.arg != "self"]
            typed = [(i, arg.arg) for i, arg in enumerate(params) if _typed(arg)]
            if typed:
                found[node.name] = typed[0]
    return found


def _own_calls(function: ast.AST) -> list[ast.Call]:
    """The calls in ``function``'s body, not in the functions it defines."""
    calls, todo = [], list(ast.iter_child_nodes(function))
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        calls += [node] if isinstance(node, ast.Call) else []
        todo += ast.iter_child_nodes(node)
    return sorted(calls, key=lambda call: (call.lineno, call.col_offset))


def _argument(call: ast.Call, index: int, name: str) -> ast.expr | None:
    if len(call.args) > index:
        return call.args[index]
    return next((k.value for k in call.keywords if k.arg == name), None)


def _callee(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def _from_vocabulary(arg: ast.expr, params: set[str]) -> bool:
    """A member (``HandshakeFailure.X``), ``classify(...)``, or a parameter typed as one."""
    if isinstance(arg, ast.Attribute) and isinstance(arg.value, ast.Name):
        return arg.value.id == "HandshakeFailure" and arg.attr in HandshakeFailure.__members__
    if isinstance(arg, ast.Call):
        return _callee(arg) == "classify"
    return isinstance(arg, ast.Name) and arg.id in params


def _reasons(source: str, name: str) -> list[tuple[str, ast.expr, set[str]]]:
    """Every reason handed to HandshakeFailed (or to a helper that publishes it) in module
    ``name``, with the names of the enclosing function's HandshakeFailure parameters."""
    tree = ast.parse(source, name)
    helpers = {"HandshakeFailed": (2, "reason"), **_annotated_params(tree)}
    found = []
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        typed = {a.arg for a in function.args.args if _typed(a)}
        for call in _own_calls(function):
            helper = helpers.get(_callee(call))
            reason = _argument(call, *helper) if helper else None
            if reason is not None:
                found.append((f"{name}:{call.lineno}", reason, typed))
    return found


def _typed(arg: ast.arg) -> bool:
    return isinstance(arg.annotation, ast.Name) and arg.annotation.id == "HandshakeFailure"


def _stray(source: str, name: str) -> list[str]:
    reasons = _reasons(source, name)
    return [
        f"{at}: {ast.unparse(arg)}"
        for at, arg, typed in reasons
        if not _from_vocabulary(arg, typed)
    ]


def test_every_handshake_failure_published_in_meshd_is_from_the_vocabulary() -> None:
    modules = {str(p.relative_to(MESHD)): p.read_text() for p in sorted(MESHD.rglob("*.py"))}
    publishers = {name for name, source in modules.items() if _reasons(source, name)}
    expected = {"tls/handshake.py", "admin/server.py", "proxy/inbound.py", "proxy/pool.py"}
    assert expected <= publishers  # the scan sees them: it is not vacuous
    assert [line for name, source in modules.items() for line in _stray(source, name)] == []


def test_the_scan_catches_a_reason_spelled_on_its_own() -> None:
    source = (
        "def dial(key):\n"
        "    publish(HandshakeFailed('link', key, HandshakeFailure.REFUSED))\n"
        "    publish(HandshakeFailed('link', key, 'refused'))\n"
        "    publish(HandshakeFailed('link', key, HandshakeFailure.REFUSD))\n"
        "def _refuse(link, code: HandshakeFailure) -> None:\n"
        "    publish(HandshakeFailed('mesh', link, code))\n"
        "def check(link, code: str):\n"
        "    _refuse(link, f'too_{link}')\n"
        "    _refuse(link, classify(link.error))\n"
        "    _refuse(link, code)\n"
        "    _refuse(link, code='wrong')\n"
        "    publish(HandshakeFailed('mesh', link, reason='wrong'))\n"
    )
    assert _stray(source, "planted.py") == [
        "planted.py:3: 'refused'",
        "planted.py:4: HandshakeFailure.REFUSD",
        "planted.py:8: f'too_{link}'",
        "planted.py:10: code",
        "planted.py:11: 'wrong'",
        "planted.py:12: 'wrong'",
    ]
