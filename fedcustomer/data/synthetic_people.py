"""Synthetic people: names, phone numbers, national ids and card numbers that pass their real checksums.

Core-tier test values must look real to the validators (GB 11643 check character, Luhn) while
belonging to nobody; they are generated here, apart from the federation's behavioural model.
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np

_REFERENCE_DAY = date(2024, 6, 30)  # "today" for ages and birth dates

# Real county-level administrative division codes per region, as the first six ID digits.
_AREA_CODES = {
    "north": ("110101", "110105", "120101", "130102"),
    "south": ("440103", "440304", "450102", "460105"),
    "east": ("310101", "310115", "320102", "330106"),
    "west": ("510104", "500103", "530102", "610113"),
    "central": ("420102", "430103", "410105", "360102"),
}


_FAMILY = [
    "Wang",
    "Li",
    "Zhang",
    "Liu",
    "Chen",
    "Yang",
    "Huang",
    "Zhao",
    "Wu",
    "Zhou",
    "Xu",
    "Sun",
    "Ma",
    "Zhu",
    "Hu",
    "Guo",
    "He",
    "Gao",
    "Lin",
    "Luo",
    "Zheng",
    "Liang",
    "Xie",
    "Song",
    "Tang",
    "Han",
    "Feng",
    "Deng",
    "Cao",
    "Peng",
    "Zeng",
    "Xiao",
    "Tian",
    "Dong",
    "Yuan",
    "Pan",
    "Jiang",
    "Cai",
    "Yu",
    "Du",
]


_GIVEN = [
    "Wei",
    "Fang",
    "Na",
    "Xiuying",
    "Min",
    "Jing",
    "Li",
    "Qiang",
    "Lei",
    "Jun",
    "Yang",
    "Yong",
    "Yan",
    "Jie",
    "Juan",
    "Tao",
    "Ming",
    "Chao",
    "Xiulan",
    "Xia",
    "Ping",
    "Gang",
    "Hui",
    "Hong",
    "Yu",
    "Bo",
    "Lan",
    "Ning",
    "Hao",
    "Xin",
    "Yi",
    "Rui",
    "Kai",
    "Lin",
    "Jia",
    "Chen",
    "Yun",
    "Peng",
    "Qing",
    "Zhen",
]


# --------------------------------------------------------------------------- check digits
_PRC_WEIGHTS = tuple(pow(2, 17 - i, 11) for i in range(17))


_PRC_CHECK = "10X98765432"


def prc_id_check_char(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character of a PRC resident ID's first 17 digits."""
    if len(first17) != 17 or not first17.isdigit():
        raise ValueError("expected exactly 17 digits")
    return _PRC_CHECK[sum(int(c) * w for c, w in zip(first17, _PRC_WEIGHTS)) % 11]


def is_valid_prc_id(value: str) -> bool:
    """18 characters, a real calendar birth date, and a matching check character."""
    if len(value) != 18 or not value[:17].isdigit():
        return False
    try:
        date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        return False
    return prc_id_check_char(value[:17]) == value[17].upper()


def luhn_check_digit(partial: str) -> str:
    """The digit that makes ``partial + digit`` pass the Luhn check."""
    if not partial.isdigit():
        raise ValueError("expected digits only")
    total = 0
    for i, c in enumerate(reversed(partial)):
        d = int(c)
        if i % 2 == 0:  # these positions are doubled once the check digit is appended
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def is_luhn_valid(value: str) -> bool:
    """True when a digit string passes the Luhn (mod 10) check."""
    return len(value) >= 2 and value.isdigit() and luhn_check_digit(value[:-1]) == value[-1]


def _national_ids(
    region: np.ndarray, age: np.ndarray, male: np.ndarray, rng: np.random.Generator
) -> list[str]:
    seen: set[str] = set()
    out = []
    for reg, a, m in zip(region, age, male):
        while True:
            area = _AREA_CODES[reg][int(rng.integers(len(_AREA_CODES[reg])))]
            birth = _REFERENCE_DAY - timedelta(days=int(a) * 365 + int(a) // 4 + int(rng.integers(1, 365)))
            seq = int(rng.integers(0, 500)) * 2 + (1 if m else 0)  # odd sequence digit: male
            first17 = f"{area}{birth:%Y%m%d}{seq:03d}"
            value = first17 + prc_id_check_char(first17)
            if value not in seen:
                seen.add(value)
                out.append(value)
                break
    return out


def _phones(n: int, rng: np.random.Generator) -> list[str]:
    prefixes = np.array(["130", "135", "138", "139", "150", "158", "186", "188", "199"])
    return [f"{p}{int(d):08d}" for p, d in zip(rng.choice(prefixes, n), rng.integers(0, 10**8, n))]


def _card_numbers(n: int, rng: np.random.Generator) -> list[str]:
    seen: set[str] = set()
    out = []
    while len(out) < n:
        partial = "62" + "".join(str(d) for d in rng.integers(0, 10, 13))  # UnionPay-style 16-digit number
        value = partial + luhn_check_digit(partial)
        if value not in seen:
            seen.add(value)
            out.append(value)
    return out
