"""/etc/hosts: our block in, our block out, the rest untouched."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.hostsfile import BEGIN, END, with_block, without_block

ORIGINAL = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n10.0.0.5\tdb.internal\n"


def test_add_replace_remove() -> None:
    added = with_block(ORIGINAL, {"web": "10.255.0.2", "api": "10.255.0.1"})
    assert added == ORIGINAL + f"{BEGIN}\n10.255.0.1\tapi.mesh\n10.255.0.2\tweb.mesh\n{END}\n"
    replaced = with_block(added, {"db": "10.255.0.3"})
    assert replaced == ORIGINAL + f"{BEGIN}\n10.255.0.3\tdb.mesh\n{END}\n"
    assert without_block(replaced) == ORIGINAL
    assert with_block(replaced, {}) == ORIGINAL
    assert with_block(added, {"web": "10.255.0.2", "api": "10.255.0.1"}) == added  # idempotent


def test_block_in_the_middle_and_no_trailing_newline() -> None:
    middle = f"a\n{BEGIN}\n10.255.0.9\told.mesh\n{END}\nb\n"
    assert without_block(middle) == "a\nb\n"
    assert with_block("x", {"s": "10.255.0.1"}).startswith("x\n" + BEGIN)


@pytest.mark.parametrize("text", ["", ORIGINAL, "# BEGIN something else\n1.2.3.4 x\n"])
def test_without_block_leaves_foreign_text_alone(text: str) -> None:
    assert without_block(text) == text


lines = st.lists(st.from_regex(r"[0-9a-z.#\t ]{0,30}", fullmatch=True), max_size=8)


@given(
    lines=lines,
    vips=st.dictionaries(
        st.from_regex(r"[a-z]{1,8}", fullmatch=True),
        st.from_regex(r"10\.255\.\d\.\d", fullmatch=True),
        max_size=4,
    ),
)
def test_roundtrip_restores_any_file(lines: list[str], vips: dict[str, str]) -> None:
    text = "".join(line + "\n" for line in lines)
    assert without_block(with_block(text, vips)) == text
