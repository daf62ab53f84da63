"""Alternative public feature specs for UCI credit default, compared by bench_federated.py --uci-features.

Every bound and category below is declared from the data set's documentation (amounts in NT
dollars, repayment status -2..8 where -2/-1/0 mean no use / paid duly / revolving credit and
1..8 months of delay), never fitted on rows, so each spec keeps the DP guarantee. ``v1`` is the
product's ``UCI_SPEC``; the others change how the repayment status and the amounts are encoded.
"""

from __future__ import annotations

from fedcustomer.data.features import CategoricalFeature, Feature, FeatureSpec, NumericFeature
from fedcustomer.data.uci_credit import UCI_SPEC, UCI_SPEC_DP

_PAY = ["pay_0", "pay_2", "pay_3", "pay_4", "pay_5", "pay_6"]
_BILL = [f"bill_amt{i}" for i in range(1, 7)]
_PAID = [f"pay_amt{i}" for i in range(1, 7)]
STATUS = tuple(str(v) for v in range(-2, 9))  # -2 no use, -1 paid duly, 0 revolving, 1..8 months late


def _spec(features: list[Feature]) -> FeatureSpec:
    return FeatureSpec(task="repayment", label="default", id_column="id", features=features)


def _profile(*, tight: bool, lean: bool) -> list[Feature]:
    """Limit, demographics and age; ``lean`` drops sex and marriage."""
    out: list[Feature] = [NumericFeature("limit_bal", 9.0, 14.0, log=True)]
    if not lean:
        out.append(CategoricalFeature("sex", ("1", "2")))
    out.append(CategoricalFeature("education", ("1", "2", "3", "4")))
    if not lean:
        out.append(CategoricalFeature("marriage", ("1", "2", "3")))
    out.append(NumericFeature("age", 20.0, 70.0) if tight else NumericFeature("age", 18.0, 80.0))
    return out


def _amounts(*, tight: bool, lean: bool) -> list[Feature]:
    """Bills and payments, log-scaled; ``tight``: credits (negative bills) count as 0, NT$ 1..1,000,000;
    ``lean``: the latest bill only (the six bills are nearly collinear)."""
    bills = _BILL[:1] if lean else _BILL
    if tight:
        return [
            *[NumericFeature(c, 0.0, 13.8, log=True) for c in bills],
            *[NumericFeature(c, 0.0, 13.8, log=True) for c in _PAID],
        ]
    return [
        *[NumericFeature(c, -13.0, 14.5, log=True) for c in bills],
        *[NumericFeature(c, 0.0, 14.5, log=True) for c in _PAID],
    ]


def _status(onehot: int, ramp: tuple[float, float] = (-2.0, 9.0)) -> list[Feature]:
    """The first ``onehot`` repayment status columns one-hot, the others numeric over ``ramp``."""
    return [
        CategoricalFeature(c, STATUS) if i < onehot else NumericFeature(c, *ramp) for i, c in enumerate(_PAY)
    ]


VARIANTS: dict[str, FeatureSpec] = {
    "v1": UCI_SPEC,
    # the latest repayment status one-hot, the rest as in v1
    "pay0": _spec([*_profile(tight=False, lean=False), *_status(1), *_amounts(tight=False, lean=False)]),
    # all six repayment statuses one-hot
    "payhot": _spec([*_profile(tight=False, lean=False), *_status(6), *_amounts(tight=False, lean=False)]),
    # pay_0 one-hot, older statuses as a 0..3-months-late ramp (-2/-1/0 -> 0), tighter amount bounds:
    # chosen on validation rows, now the product's built-in "uci-credit-dp"
    "tight": UCI_SPEC_DP,
    # "tight" without sex, marriage and bills 2..6
    "lean": _spec(
        [*_profile(tight=True, lean=True), *_status(1, (0.0, 3.0)), *_amounts(tight=True, lean=True)]
    ),
    # "lean" with all six repayment statuses one-hot
    "leanhot": _spec([*_profile(tight=True, lean=True), *_status(6), *_amounts(tight=True, lean=True)]),
}
