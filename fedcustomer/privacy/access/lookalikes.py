"""When two actor names denote the same person, for rules such as "two distinct approvers".

Until identities are authenticated keys, a name is all the two-person rule has, so names
that *look* alike must count as one person: ``rіck`` with a Cyrillic ``і`` or ``ｒｉｃｋ``
in fullwidth letters is Rick. A name is compared by its identity keys:

1. Unicode NFKC (fullwidth, ligatures, compatibility forms fold to plain letters);
2. case folding;
3. the confusables *skeleton* of Unicode Technical Standard #39: every character is
   replaced by the prototype Unicode's confusables data gives for it (``і`` -> ``i``,
   ``ο`` -> ``o``, ``I`` -> ``l``), so look-alikes from any script meet.

Two keys are kept, skeleton-then-casefold and casefold-then-skeleton, because case and
look-alikes interact (``I`` folds to ``i`` but looks like ``l``); names are the same
person when either key matches. The confusables data comes from the maintained
``confusable_homoglyphs`` package (Unicode's confusables.txt and Scripts.txt), whose
pairs this module orients into source -> prototype mappings; multi-character
prototypes (``rn`` for ``m``) are applied too. Names mixing scripts (Latin with Cyrillic,
say) are refused outright, as UTS #39 "highly restrictive" names are: Han may mix with
Hiragana and Katakana, Hangul or Bopomofo; Common and Inherited characters (digits,
punctuation, combining marks) go with any script.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

from confusable_homoglyphs import categories, confusables

from fedcustomer.errors import ConfigError

__all__ = ["check_single_script", "identity_keys", "same_identity", "scripts_of", "skeleton"]

_LRM = "\u200e"  # the data wraps right-to-left characters in marks; they are not part of them
_NEUTRAL = {"COMMON", "INHERITED"}
_HAN_MIXES = ({"HAN", "HIRAGANA", "KATAKANA"}, {"HAN", "HANGUL"}, {"HAN", "BOPOMOFO"})


@lru_cache(maxsize=1)
def _prototypes() -> dict[str, str]:
    """Source character -> prototype string, oriented from the package's two-way pairs.

    In confusables.txt every source maps to exactly one prototype and no prototype is a
    source, so a character paired with one partner that itself has several partners is a
    source; a character with several partners is a prototype. A pair of two characters
    that only know each other is folded onto the smaller code point (the same key either
    way), unless one of them occurs in a multi-character prototype, which makes it the
    prototype.
    """
    pairs: dict[str, set[str]] = {}
    for key, entries in confusables.confusables_data.items():
        k = key.replace(_LRM, "")
        pairs.setdefault(k, set()).update(e["c"].replace(_LRM, "") for e in entries)
    in_multi = {c for k in pairs if len(k) > 1 for c in k}
    out: dict[str, str] = {}
    for char, partners in pairs.items():
        if len(char) != 1 or len(partners) != 1:
            continue
        (target,) = partners
        if not target or target == char:
            continue
        if len(target) > 1 or len(pairs.get(target, ())) > 1:
            out[char] = target
        elif char in in_multi:
            continue
        elif target in in_multi or target < char:
            out[char] = target
    return out


def skeleton(text: str) -> str:
    """UTS #39 skeleton: NFD, each character to its confusables prototype, NFD again."""
    table = _prototypes()
    decomposed = unicodedata.normalize("NFD", text)
    return unicodedata.normalize("NFD", "".join(table.get(c, c) for c in decomposed))


def identity_keys(name: str) -> tuple[str, str]:
    """The two comparison keys of a name (see the module docstring)."""
    folded = unicodedata.normalize("NFKC", name)
    first = skeleton(unicodedata.normalize("NFKC", folded.casefold()))
    second = skeleton(unicodedata.normalize("NFKC", skeleton(folded).casefold()))
    return first, second


def same_identity(a: str, b: str) -> bool:
    """Whether two actor names must be treated as one person."""
    ka, kb = identity_keys(a), identity_keys(b)
    return ka[0] == kb[0] or ka[1] == kb[1]


def scripts_of(name: str) -> set[str]:
    """Scripts (Unicode Scripts.txt aliases) of a name's characters, Common and Inherited left out."""
    return {categories.alias(c) for c in unicodedata.normalize("NFKC", name)} - _NEUTRAL


def check_single_script(name: str) -> None:
    """ConfigError for a name mixing scripts, a classic way to fake someone else's name."""
    scripts = scripts_of(name)
    if len(scripts) <= 1 or any(scripts <= allowed for allowed in _HAN_MIXES):
        return
    raise ConfigError(
        f"actor name mixes scripts ({', '.join(sorted(s.title() for s in scripts))}); write it in one script, "
        f"since mixed-script names can imitate another person's name"
    )
