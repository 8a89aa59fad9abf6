"""Request normalisation (§2.3): every step, every reason, and the fast path."""

from __future__ import annotations

import pytest

from meshd.policy.lang.normalize import Normalized, Rejected, normalize


@pytest.mark.parametrize(
    ("target", "path", "forwarded"),
    [
        ("/", "/", "/"),
        ("/v1/orders", "/v1/orders", "/v1/orders"),
        ("/v1/orders?id=1&x=%2F", "/v1/orders", "/v1/orders?id=1&x=%2F"),  # query untouched
        ("/v1/?", "/v1/", "/v1/?"),
        ("/ADMIN", "/ADMIN", "/ADMIN"),  # case is left alone
        # step 3: unreserved escapes decoded, the others upper-cased
        ("/%7euser", "/~user", "/~user"),
        ("/a%3ab", "/a%3Ab", "/a%3Ab"),
        ("/a%3Ab", "/a%3Ab", "/a%3Ab"),
        ("/%41%7A%30%2D%2E%5F", "/Az0-._", "/Az0-._"),
        ("/a%20b", "/a%20b", "/a%20b"),
        ("/a%25b", "/a%25b", "/a%25b"),  # an encoded "%" stays encoded
        ("/%c3%a9", "/%C3%A9", "/%C3%A9"),
        # step 4: runs of "/" merged
        ("//admin//users", "/admin/users", "/admin/users"),
        ("///", "/", "/"),
        ("/a//", "/a/", "/a/"),
        # step 6: dot segments removed, ".." stops at the root
        ("/public/../admin/users", "/admin/users", "/admin/users"),
        ("/public/%2e%2E/admin", "/admin", "/admin"),
        ("/public/%2E./admin?q=1", "/admin", "/admin?q=1"),
        ("/../../a", "/a", "/a"),
        ("/a/./b/.", "/a/b/", "/a/b/"),
        ("/a/b/..", "/a/", "/a/"),
        ("/a/..", "/", "/"),
        ("/..", "/", "/"),
        ("/.hidden/x", "/.hidden/x", "/.hidden/x"),
        ("/a..b/c", "/a..b/c", "/a..b/c"),
        ("/a;b/c", "/a;b/c", "/a;b/c"),  # params on a normal segment are kept
        ("/a/..%3B/b", "/a/..%3B/b", "/a/..%3B/b"),  # an encoded ";" is no parameter
        ("//public/./..//%2e%2e/admin//", "/admin/", "/admin/"),
    ],
)
def test_normalises(target: str, path: str, forwarded: str) -> None:
    assert normalize("GET", target) == Normalized(path, forwarded)


@pytest.mark.parametrize(
    ("method", "target", "reason"),
    [
        ("get", "/", "method-not-uppercase"),
        ("Get", "/", "method-not-uppercase"),
        ("GET", "/a#frag", "fragment"),
        ("GET", "/a?q=1#frag", "fragment"),
        ("GET", "#", "fragment"),
        ("GET", "a/b", "not-origin-form"),
        ("GET", "*", "not-origin-form"),
        ("GET", "http://api/v1", "not-origin-form"),
        ("GET", "", "not-origin-form"),
        ("GET", "?x=/", "not-origin-form"),
        ("GET", "/a%00b", "encoded-nul"),
        ("GET", "/a%2Fb", "encoded-slash"),
        ("GET", "/a%2fb", "encoded-slash"),
        ("GET", "/a%5Cb", "encoded-slash"),
        ("GET", "/a%5cb", "encoded-slash"),
        ("GET", "/a\\b", "backslash"),
        ("GET", "/a%", "bad-percent-encoding"),
        ("GET", "/a%4", "bad-percent-encoding"),
        ("GET", "/a%zz", "bad-percent-encoding"),
        ("GET", "/a%g0/b", "bad-percent-encoding"),
        ("GET", "/a b", "invalid-character"),
        ("GET", "/a\tb", "invalid-character"),
        ("GET", "/a\x7fb", "invalid-character"),
        ("GET", "/caf\u00e9", "invalid-character"),
        ("GET", "/a\x00", "invalid-character"),
        ("GET", "/a/..;/admin", "dot-segment-with-params"),
        ("GET", "/a/.;x/admin", "dot-segment-with-params"),
        ("GET", "/a/%2e%2e;/admin", "dot-segment-with-params"),
        ("GET", "/a/..;", "dot-segment-with-params"),
        # the first problem from the left is the one reported
        ("GET", "/a\\%00", "backslash"),
        ("GET", "/a%00\\", "encoded-nul"),
    ],
)
def test_rejects(method: str, target: str, reason: str) -> None:
    assert normalize(method, target) == Rejected(reason)
    assert Rejected(reason).rule == "normalize/" + reason


@pytest.mark.parametrize("method", ["GET", "M-SEARCH", "PATCH", "X1"])
def test_upper_case_methods_pass(method: str) -> None:
    assert normalize(method, "/x") == Normalized("/x", "/x")


@pytest.mark.parametrize("target", ["/v1/orders", "/v1/orders?id=7"])
def test_clean_target_is_returned_as_is(target: str) -> None:
    result = normalize("GET", target)
    assert isinstance(result, Normalized)
    assert result.target is target or target.startswith(result.target + "?")
