"""Usernames: what a name may be, and its normal form.

Theory of operation
-------------------
A username is a nickname as RFC 8266 defines it: the PRECIS Nickname profile
(case preserved), enforced by the ``precis-i18n`` package. Enforcement maps
non-ASCII spaces to a space, trims and collapses spaces and applies NFKC (so
fullwidth ``admin``, U+FF41 U+FF44 ..., becomes ``admin``), then refuses what the FreeformClass
disallows: controls, unassigned code points, default-ignorable (invisible)
characters, old Hangul jamo, private use. RFC 8266 leaves the rest to the
application ("Enforcement: To be specified by applications"); wschat adds:

1. Emoji sequences (UTS #51) are allowed: a zero-width joiner between two emoji
   (👨‍👩‍👧‍👦), a variation selector after an emoji (❤️), the tags of a
   subdivision flag (🏴 + tags + cancel tag). Strict PRECIS refuses these
   invisible joiners, so they are hidden from the PRECIS check only in those
   places (:func:`emoji_components`); anywhere else they are refused.
2. Length: 1 to 32 Unicode code points after enforcement. Code points, not
   grapheme clusters or UTF-16 units: Python's ``len`` and JavaScript's
   ``[...s].length`` agree on them on every Unicode version, whereas grapheme
   rules change between versions (the page and the server may use different
   ones). 👨‍👩‍👧‍👦 counts 7.
3. Characters that render blank although they are not spaces are refused
   (U+3164 HANGUL FILLER, U+2800 BRAILLE PATTERN BLANK, ...): a name must not
   look empty or like another name padded with nothing.
4. UTS #39 section 5.4: no combining mark without a letter before it, at most
   four nonspacing marks in a row, and never the same mark twice in a row.
5. UTS #39 section 5.2, "Highly Restrictive", word by word: the letters of one
   word come from one script (``admin`` spelt with U+0430 CYRILLIC SMALL LETTER A is
   refused), except
   the usual Latin + Han + Kana (Japanese), Latin + Han + Bopomofo and
   Latin + Han + Hangul combinations. Words may differ (``Саша Smith``).

The page (``wschat/web/static/names.js``) applies the same rules so that it can
explain them before the server refuses; a browser test checks that both agree.

Whether a new name looks like a present one is :mod:`.confusables`' job.

Everything here is pure: strings in, strings or a :class:`UsernameRefused` out.
"""

from __future__ import annotations

import itertools
import unicodedata
from functools import cache

import regex
from precis_i18n import get_profile

from .errors import ChatError

MAX_USERNAME_LENGTH = 32
"""Code points, after enforcement (IRC's NICKLEN is often 30; XMPP MUC nicks are not capped)."""
MAX_RAW_LENGTH = 256
"""Anything longer is refused before it is normalised (a bound on the work per name)."""
MAX_COMBINING_MARKS = 4
"""UTS #39 5.4: "Forbid sequences of more than 4 nonspacing marks"."""

ZWJ = "\u200d"
ZWNJ = "\u200c"
VARIATION_SELECTORS = frozenset({"\ufe0e", "\ufe0f"})
BLACK_FLAG = "\U0001f3f4"
CANCEL_TAG = "\U000e007f"
TAGS = range(0xE0020, 0xE007F)  # TAG SPACE .. TAG TILDE; CANCEL TAG ends the sequence
KEYCAP = "\u20e3"

BLANK_LOOKING = frozenset({0x115F, 0x1160, 0x3164, 0xFFA0, 0x2800, 0x1D159})
"""Not spaces, yet blank on screen: Hangul fillers, BRAILLE PATTERN BLANK, MUSICAL SYMBOL NULL
NOTEHEAD. Spaces themselves are mapped to U+0020 and trimmed by RFC 8266."""

# UTS #31 Table 4 (Recommended Scripts). A letter of another script is
# "limited use": it may form words on its own, not be mixed into others.
SCRIPTS = (
    "Latin",
    "Cyrillic",
    "Greek",
    "Armenian",
    "Georgian",
    "Hebrew",
    "Arabic",
    "Thaana",
    "Devanagari",
    "Bengali",
    "Gurmukhi",
    "Gujarati",
    "Oriya",
    "Tamil",
    "Telugu",
    "Kannada",
    "Malayalam",
    "Sinhala",
    "Thai",
    "Lao",
    "Tibetan",
    "Myanmar",
    "Ethiopic",
    "Khmer",
    "Han",
    "Hiragana",
    "Katakana",
    "Hangul",
    "Bopomofo",
)
# UTS #39 5.1: "augmented" script sets, so Japanese, Chinese and Korean mixtures resolve.
AUGMENTED = {
    "Han": ("Japanese", "Korean", "Han with Bopomofo"),
    "Hiragana": ("Japanese",),
    "Katakana": ("Japanese",),
    "Hangul": ("Korean",),
    "Bopomofo": ("Han with Bopomofo",),
}
WITH_LATIN = frozenset({"Japanese", "Korean", "Han with Bopomofo"})

RULES = (
    "type",
    "empty",
    "too_long",
    "control",
    "blank",
    "invisible",
    "joiner",
    "context",
    "jamo",
    "unassigned",
    "disallowed",
    "leading_mark",
    "marks",
    "mixed_script",
)
"""Names of the rules a username can break (``UsernameRefused.rule``; names.js uses the same)."""

_PROFILE = get_profile("NicknameCasePreserved")
_EMOJI = regex.compile(r"\p{Emoji}")
_PICTOGRAPHIC = regex.compile(r"\p{Extended_Pictographic}")
_MODIFIER = regex.compile(r"\p{Emoji_Modifier}")
_IGNORABLE = regex.compile(r"\p{Default_Ignorable_Code_Point}")
_COMMON = regex.compile(r"[\p{Script=Common}\p{Script=Inherited}]")
_SCRIPT_PATTERNS = {name: regex.compile(rf"\p{{Script_Extensions={name}}}") for name in SCRIPTS}
_NONSPACING = frozenset({"Mn", "Me"})
# A placeholder the PRECIS FreeformClass accepts and no context rule looks at
# (an emoji, like the sequences it stands in for).
_PLACEHOLDER = "\U0001f600"


class UsernameRefused(ChatError):
    """A username that breaks a rule: ``bad_username`` with a reason that says which.

    Attributes:
        rule: Which rule, one of :data:`RULES` (stable; the page uses the same names).
    """

    def __init__(self, rule: str, reason: str) -> None:
        super().__init__("bad_username", reason)
        self.rule = rule


def enforce_username(value: object) -> str:
    """The normal form of a username, or :class:`UsernameRefused` saying why not.

    Two names are the same user exactly when their normal forms are equal.

    Raises:
        UsernameRefused: ``value`` is not an acceptable name; ``reason`` explains.
    """
    if not isinstance(value, str):
        raise UsernameRefused("type", "username must be a string")
    if len(value) > MAX_RAW_LENGTH:
        raise _too_long(len(value))
    _check_characters(value)
    name = _precis(value)
    _check_characters(name)  # NFKC can produce what the raw check looked for
    if len(name) > MAX_USERNAME_LENGTH:
        raise _too_long(len(name))
    _check_marks(name)
    _check_scripts(name)
    return name


def emoji_components(text: str) -> frozenset[int]:
    """Indexes of the invisible parts of emoji sequences in ``text`` (UTS #51).

    A variation selector right after an emoji character; a zero-width joiner
    between two emoji (after the first one's modifier or variation selector);
    the tag characters between 🏴 and CANCEL TAG.
    """
    allowed: set[int] = set()
    for start, char in enumerate(text):
        if char != BLACK_FLAG:
            continue
        end = start + 1
        while end < len(text) and ord(text[end]) in TAGS:
            end += 1
        if end > start + 1 and end < len(text) and text[end] == CANCEL_TAG:
            allowed.update(range(start + 1, end + 1))
    for index, char in enumerate(text):
        before = text[index - 1] if index else ""
        if not before:
            continue
        if char in VARIATION_SELECTORS:
            emoji_part = bool(_EMOJI.match(before))
        elif char == ZWJ:
            after = text[index + 1] if index + 1 < len(text) else ""
            emoji_part = bool(after and _PICTOGRAPHIC.match(after)) and bool(
                _PICTOGRAPHIC.match(before) or _MODIFIER.match(before) or index - 1 in allowed
            )
        else:
            emoji_part = False
        if emoji_part:
            allowed.add(index)
    return frozenset(allowed)


def describe(char: str) -> str:
    """``U+0431 CYRILLIC SMALL LETTER BE``: how reasons name a character."""
    name = unicodedata.name(char, "")
    if not name and unicodedata.category(char) == "Cc":
        name = "(a control character)"
    return f"U+{ord(char):04X} {name}".rstrip()


def _too_long(count: int) -> UsernameRefused:
    return UsernameRefused(
        "too_long",
        f"username is {count} characters long; at most {MAX_USERNAME_LENGTH} are allowed "
        "(counted in Unicode code points: an emoji like 👨‍👩‍👧‍👦 counts 7)",
    )


def _check_characters(text: str) -> None:
    """Refuse controls, blank-looking and invisible characters, naming the first."""
    components = emoji_components(text)
    for index, char in enumerate(text):
        if unicodedata.category(char) == "Cc":
            raise UsernameRefused(
                "control", f"username contains a control character ({describe(char)})"
            )
        if ord(char) in BLANK_LOOKING:
            raise UsernameRefused(
                "blank",
                f"username contains {describe(char)}, which looks blank: a name must be visible",
            )
        if index in components or char in (ZWJ, ZWNJ):
            continue  # emoji parts are fine; PRECIS's context rules judge the joiners
        if _IGNORABLE.match(char):
            raise UsernameRefused(
                "invisible", f"username contains an invisible character ({describe(char)})"
            )


def _precis(value: str) -> str:
    """RFC 8266 enforcement, with emoji sequences let through (rule 1 above)."""
    try:
        mapped = _PROFILE.idempotence_check(_PROFILE.apply_five_rules(value))
    except UnicodeEncodeError as exc:
        raise _refusal(exc) from None
    if not mapped:
        raise _empty()
    components = emoji_components(mapped)
    masked = "".join(
        _PLACEHOLDER if index in components else char for index, char in enumerate(mapped)
    )
    try:
        _PROFILE.base.enforce(masked, _PROFILE.name)
    except UnicodeEncodeError as exc:
        raise _refusal(exc, mapped) from None
    return mapped


def _empty() -> UsernameRefused:
    return UsernameRefused("empty", "username is empty: type at least one visible character")


def _refusal(exc: UnicodeEncodeError, text: str | None = None) -> UsernameRefused:
    """Turn precis-i18n's ``DISALLOWED/kind`` into a reason a person understands."""
    kind = exc.reason.partition("/")[2]
    text = exc.object if text is None else text
    if kind == "empty" or not text:
        return _empty()
    char = describe(text[exc.start]) if exc.end - exc.start == 1 else "a character"
    if kind == "unassigned":
        return UsernameRefused(
            "unassigned",
            f"{char} is not assigned in this server's Unicode {unicodedata.unidata_version} "
            "data (it may be newer than the server)",
        )
    if kind == "old_hangul_jamo":
        return UsernameRefused(
            "jamo",
            f"{char} is a Hangul letter on its own (a jamo), which RFC 8266 refuses because "
            "such letters can render blank; write whole syllables, such as 한",
        )
    if kind == "zero_width_joiner":
        return UsernameRefused(
            "joiner",
            f"{char} is only allowed between two emoji (as in 👨‍👩‍👧) or after a virama",
        )
    if kind == "zero_width_nonjoiner":
        return UsernameRefused(
            "joiner",
            f"{char} is only allowed where a script needs it (after a virama, or "
            "between Arabic-script letters)",
        )
    if kind == "controls":
        return UsernameRefused("control", f"username contains a control character ({char})")
    if kind == "precis_ignorable_properties":
        return UsernameRefused("invisible", f"username contains an invisible character ({char})")
    if kind in ("middle_dot", "greek", "hebrew", "katakana_middle_dot") or "arabic" in kind:
        return UsernameRefused(
            "context",
            f"{char} is only allowed next to the letters it belongs with "
            f"(RFC 5892 context rule: {kind})",
        )
    return UsernameRefused("disallowed", f"{char} is not allowed in names (RFC 8266)")


def _check_marks(name: str) -> None:
    """UTS #39 5.4, on the decomposed name (so é + U+0301 counts two acute accents)."""
    text = unicodedata.normalize("NFD", name)
    components = emoji_components(text)
    index = 0
    while index < len(text):
        if not _is_mark(text, index, components):
            index += 1
            continue
        start = index
        while index < len(text) and _is_mark(text, index, components):
            index += 1
        run = text[start:index]
        if start == 0 or text[start - 1] == " ":
            raise UsernameRefused(
                "leading_mark",
                f"{describe(run[0])} is a combining mark with no letter before it to sit on",
            )
        if len(run) > MAX_COMBINING_MARKS:
            raise UsernameRefused(
                "marks",
                f"username stacks {len(run)} combining marks on one letter; "
                f"at most {MAX_COMBINING_MARKS} are allowed (UTS #39)",
            )
        for before, char in itertools.pairwise(run):
            if before == char:
                raise UsernameRefused(
                    "marks", f"username puts {describe(char)} twice on one letter (UTS #39)"
                )


def _is_mark(text: str, index: int, components: frozenset[int]) -> bool:
    char = text[index]
    if unicodedata.category(char) not in _NONSPACING or index in components:
        return False
    # 1⃣ (a keycap sequence) is an emoji, not an accented letter.
    return not (char == KEYCAP and index and _EMOJI.match(text[index - 1]))


@cache
def _scripts(char: str) -> frozenset[str] | None:
    """The augmented script set of ``char``; None for Common and Inherited (any script)."""
    found = [name for name, pattern in _SCRIPT_PATTERNS.items() if pattern.match(char)]
    if not found:
        if _COMMON.match(char):
            return None
        # A limited-use script: named by the first word of the character's name.
        return frozenset({unicodedata.name(char, "other").split(" ")[0].title()})
    augmented = set(found)
    for name in found:
        augmented.update(AUGMENTED.get(name, ()))
    return frozenset(augmented)


def _script_name(scripts: frozenset[str]) -> str:
    for name in SCRIPTS:
        if name in scripts:
            return name
    return sorted(scripts)[0]


def _check_scripts(name: str) -> None:
    for word in name.split(" "):
        letters = [(char, scripts) for char in word if (scripts := _scripts(char)) is not None]
        if not letters or frozenset.intersection(*(s for _, s in letters)):
            continue
        others = [s for _, s in letters if s != {"Latin"}]
        if others and frozenset.intersection(*others) & WITH_LATIN:
            continue  # Latin with Japanese, Korean, or Han + Bopomofo
        first, common = letters[0]
        for char, scripts in letters[1:]:
            if not common & scripts:
                raise UsernameRefused(
                    "mixed_script",
                    f"the word “{word}” mixes {_script_name(common)} ({first}) and "
                    f"{_script_name(scripts)} ({char}) letters, which can look alike; "
                    "write each word in one script",
                )
            common &= scripts
