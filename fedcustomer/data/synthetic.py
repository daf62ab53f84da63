"""A seeded synthetic federation of banks and retailers that share some customers.

Real partner data cannot be shipped with a product, yet every part of it (horizontal
training across banks, CLV across retailers, private set intersection and vertical
learning across a bank and a retailer, governed ingest of identifying columns) needs
realistic input. Each customer has hidden traits (income, risk appetite, spending
propensity) that drive both their banking and their shopping, so retail behaviour is
informative about repayment and bank data about lifetime value. Partners differ by home
region, size, credit policy and default rate, which makes the federation non-IID.

Identifying (core-tier) columns are generated fake but *valid*: PRC resident ID numbers
with the ISO 7064 MOD 11-2 check character and Luhn-valid card numbers, so ingest
validation can be exercised. They are never features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fedcustomer.data.features import CategoricalFeature, FeatureSpec, NumericFeature
from fedcustomer.data.partition import PartnerDataset, split_train_test
from fedcustomer.data.synthetic_people import _FAMILY, _GIVEN, _card_numbers, _national_ids, _phones
from fedcustomer.errors import ConfigError

REGIONS: tuple[str, ...] = ("north", "south", "east", "west", "central")
_REGION_INCOME = {"north": 0.15, "south": -0.20, "east": 0.25, "west": 0.0, "central": -0.10}
_DEFAULT_RATES = (0.12, 0.22, 0.09, 0.28, 0.16)  # per bank, cycled
_LIMIT_POLICY = (0.30, 0.22, 0.38, 0.18, 0.28)  # credit limit as a share of income, per bank
_BASKET_LEVEL = (1.0, 0.7, 1.5)  # retailer price level, cycled
_MISSING_BANK = ("income", "months_on_book", "debt_to_income")
_MISSING_RETAIL = ("age", "avg_basket", "web_sessions_30d")

REPAYMENT_SPEC = FeatureSpec(
    task="repayment",
    label="defaulted",
    id_column="customer_id",
    features=[
        NumericFeature("age", 18.0, 90.0),
        NumericFeature("income", 8.5, 14.0, log=True),  # about 5,000 .. 1,200,000 a year
        NumericFeature("credit_limit", 6.0, 13.0, log=True),
        NumericFeature("balance", 0.0, 13.0, log=True),
        NumericFeature("utilisation", 0.0, 1.5),
        NumericFeature("num_late_payments", 0.0, 12.0),
        NumericFeature("months_on_book", 0.0, 480.0),
        NumericFeature("num_products", 1.0, 8.0),
        NumericFeature("debt_to_income", 0.0, 3.0),
        CategoricalFeature("region", REGIONS),
    ],
)

CLV_SPEC = FeatureSpec(
    task="clv",
    label="future_spend",
    id_column="customer_id",
    features=[
        NumericFeature("age", 18.0, 90.0),
        NumericFeature("recency_days", 0.0, 730.0),
        NumericFeature("frequency_12m", 0.0, 5.5, log=True),  # up to ~250 purchases
        NumericFeature("monetary_12m", 0.0, 11.0, log=True),
        NumericFeature("avg_basket", 0.0, 8.0, log=True),
        NumericFeature("returns_rate", 0.0, 1.0),
        NumericFeature("web_sessions_30d", 0.0, 5.0, log=True),
        NumericFeature("loyalty_member", 0.0, 1.0),
        CategoricalFeature("region", REGIONS),
    ],
)


@dataclass
class SyntheticFederation:
    """Generated partners plus the ground truth tests may look at (never shipped to a partner)."""

    banks: list[PartnerDataset]
    retailers: list[PartnerDataset]
    latent: pd.DataFrame  # index customer_id; income, risk_appetite, spending_propensity, region, age
    shared_ids: dict[tuple[str, str], set[str]] = field(default_factory=dict)

    @property
    def partners(self) -> list[PartnerDataset]:
        return self.banks + self.retailers


# --------------------------------------------------------------------------- the generator
def generate_federation(
    n_banks: int = 2,
    n_retailers: int = 1,
    *,
    customers_per_bank: int | Sequence[int] = (4000, 2500, 6000, 3000, 5000),
    customers_per_retailer: int | Sequence[int] = (5000, 3500, 7000),
    shared_fraction: float = 0.5,
    missing_rate: float = 0.03,
    seed: int = 0,
    test_fraction: float = 0.2,
    retail_signal: float = 0.0,
) -> SyntheticFederation:
    """Generate banks and retailers; sizes cycle through the given sequences.

    For every (bank, retailer) pair, ``shared_fraction`` of the smaller partner's
    customers are present at both under the same ``customer_id``. Customers may also hold
    accounts at several banks or shop at several retailers when the overlap asks for it.

    ``retail_signal`` > 0 plants a hidden *financial stress* trait that raises default
    risk and shows only in retail behaviour (more returns, smaller baskets, more bargain
    browsing), none of the bank's columns: the situation joint bank + retailer modelling
    is for. At 0 (the default) it has no effect and every other value is unchanged.
    """
    if n_banks < 0 or n_retailers < 0 or n_banks + n_retailers < 1:
        raise ConfigError(f"need at least one partner, got n_banks={n_banks}, n_retailers={n_retailers}")
    if not 0.0 <= shared_fraction <= 1.0:
        raise ConfigError(f"shared_fraction must be in [0, 1], got {shared_fraction}")
    if not 0.0 <= missing_rate < 0.5:
        raise ConfigError(f"missing_rate must be in [0, 0.5), got {missing_rate}")
    if not (0.0 <= retail_signal <= 5.0):
        raise ConfigError(f"retail_signal must be in [0, 5], got {retail_signal}")
    bank_sizes = _cycle(customers_per_bank, n_banks, "customers_per_bank")
    retail_sizes = _cycle(customers_per_retailer, n_retailers, "customers_per_retailer")
    bank_names = _names("bank", n_banks, 0)
    retail_names = _names("retail", n_retailers, 2)

    seeds = np.random.SeedSequence(seed).spawn(
        5
    )  # the first four as before: adding the fifth changes nothing else
    members_b, members_r, origin = _memberships(
        bank_sizes, retail_sizes, shared_fraction, np.random.default_rng(seeds[0])
    )
    customers = _customers(origin, n_banks, np.random.default_rng(seeds[1]))
    customers["stress"] = retail_signal * np.random.default_rng(seeds[4]).normal(0, 1, len(customers))

    rng_b = np.random.default_rng(seeds[2])
    rng_r = np.random.default_rng(seeds[3])
    banks = []
    for i, name in enumerate(bank_names):
        frame = _bank_frame(customers.iloc[members_b[i]], i, missing_rate, rng_b)
        train, test = split_train_test(frame, test_fraction, seed + 17 * (i + 1), stratify="defaulted")
        banks.append(PartnerDataset(name=name, kind="bank", train=train, test=test))
    retailers = []
    for j, name in enumerate(retail_names):
        frame = _retail_frame(customers.iloc[members_r[j]], j, missing_rate, rng_r)
        train, test = split_train_test(frame, test_fraction, seed + 31 * (j + 1))
        retailers.append(PartnerDataset(name=name, kind="retailer", train=train, test=test))

    ids = customers["customer_id"].to_numpy()
    shared = {
        (bank_names[i], retail_names[j]): set(ids[np.intersect1d(members_b[i], members_r[j])].tolist())
        for i in range(n_banks)
        for j in range(n_retailers)
    }
    latent = customers.set_index("customer_id")[
        ["income", "risk_appetite", "spending_propensity", "region", "age"]
    ]
    return SyntheticFederation(banks=banks, retailers=retailers, latent=latent, shared_ids=shared)


def _cycle(sizes: int | Sequence[int], n: int, what: str) -> list[int]:
    seq = [sizes] if isinstance(sizes, int) else list(sizes)
    if n and not seq:
        raise ConfigError(f"{what} is empty")
    out = [int(seq[i % len(seq)]) for i in range(n)]
    if any(s < 10 for s in out):
        raise ConfigError(f"{what}: every partner needs at least 10 customers, got {out}")
    return out


def _names(kind: str, n: int, offset: int) -> list[str]:
    names = []
    for i in range(n):
        region = REGIONS[(i + offset) % len(REGIONS)]
        lap = (i // len(REGIONS)) + 1
        names.append(f"{kind}_{region}" if lap == 1 else f"{kind}_{region}_{lap}")
    return names


def _memberships(
    bank_sizes: list[int], retail_sizes: list[int], fraction: float, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """Who is a customer where, so every (bank, retailer) overlap is exactly the requested size.

    Pairs are served in order. A needed shared customer is either a new customer of both,
    or an existing customer of one partner not yet linked to any other partner of the
    second kind (so earlier pairs' overlaps stay exact). New customers are preferred, which
    keeps customers at one bank where possible; when that runs out of room, the plan is
    redone preferring existing customers. ``origin`` is the partner whose region mix a
    customer is drawn from (bank index, or ``n_banks + retailer index``).
    """
    state = rng.bit_generator.state
    plan = _plan_memberships(bank_sizes, retail_sizes, fraction, rng, fresh_first=True)
    if plan is None:
        rng.bit_generator.state = state
        plan = _plan_memberships(bank_sizes, retail_sizes, fraction, rng, fresh_first=False)
    if plan is None:
        raise ConfigError(
            f"shared_fraction={fraction} cannot be met with bank sizes {bank_sizes} and retailer sizes "
            f"{retail_sizes}; lower shared_fraction or enlarge the partners"
        )
    banks, retail, origin = plan
    shuffled = lambda xs: rng.permutation(np.array(xs, dtype=int))
    return [shuffled(x) for x in banks], [shuffled(x) for x in retail], origin


def _plan_memberships(
    bank_sizes: list[int],
    retail_sizes: list[int],
    fraction: float,
    rng: np.random.Generator,
    *,
    fresh_first: bool,
) -> tuple[list[list[int]], list[list[int]], list[int]] | None:
    nb = len(bank_sizes)
    banks: list[list[int]] = [[] for _ in bank_sizes]
    retail: list[list[int]] = [[] for _ in retail_sizes]
    banks_of: list[set[int]] = []
    retail_of: list[set[int]] = []
    origin: list[int] = []

    def new_customer(where: int) -> int:
        banks_of.append(set())
        retail_of.append(set())
        origin.append(where)
        return len(origin) - 1

    def add_fresh(b: int, r: int, need: int) -> int:
        count = max(0, min(need, bank_sizes[b] - len(banks[b]), retail_sizes[r] - len(retail[r])))
        for _ in range(count):
            c = new_customer(b)
            banks[b].append(c)
            retail[r].append(c)
            banks_of[c].add(b)
            retail_of[c].add(r)
        return count

    def pick(pool: list[int], links: list[set[int]], take: int) -> list[int]:
        # least-linked customers first, so later pairs are not pushed past their target
        order = sorted(pool, key=lambda c: (len(links[c]), rng.random()))
        return order[:take]

    def reuse(b: int, r: int, need: int) -> int:
        # Adding a customer to one side raises the overlap of every pair it then forms; only pairs
        # not yet served may grow: retailers >= r for a new bank link, banks >= b for a new retail link.
        done = 0
        if need > 0 and len(banks[b]) < bank_sizes[b]:
            pool = [c for c in retail[r] if b not in banks_of[c] and min(retail_of[c]) >= r]
            for c in pick(pool, retail_of, min(need, bank_sizes[b] - len(banks[b]))):
                banks[b].append(c)
                banks_of[c].add(b)
                done += 1
        if need - done > 0 and len(retail[r]) < retail_sizes[r]:
            pool = [c for c in banks[b] if r not in retail_of[c] and min(banks_of[c]) >= b]
            for c in pick(pool, banks_of, min(need - done, retail_sizes[r] - len(retail[r]))):
                retail[r].append(c)
                retail_of[c].add(r)
                done += 1
        return done

    for b, size_b in enumerate(bank_sizes):
        for r, size_r in enumerate(retail_sizes):
            need = int(round(fraction * min(size_b, size_r)))
            need -= sum(1 for c in banks[b] if r in retail_of[c])
            if fresh_first:
                need -= add_fresh(b, r, need)
                need -= reuse(b, r, need)
            else:
                need -= reuse(b, r, need)
                need -= add_fresh(b, r, need)
            if need != 0:  # short, or overshot by customers linked while serving earlier pairs
                return None
    for b, size_b in enumerate(bank_sizes):
        banks[b].extend(new_customer(b) for _ in range(size_b - len(banks[b])))
    for r, size_r in enumerate(retail_sizes):
        retail[r].extend(new_customer(nb + r) for _ in range(size_r - len(retail[r])))
    return banks, retail, origin


def _customers(origin: list[int], n_banks: int, rng: np.random.Generator) -> pd.DataFrame:
    """One row per customer: latent traits and identity (core-tier) attributes."""
    n = len(origin)
    home = np.array(
        [
            REGIONS[o % len(REGIONS)] if o < n_banks else REGIONS[(o - n_banks + 2) % len(REGIONS)]
            for o in origin
        ]
    )
    away = rng.choice(np.array(REGIONS), size=n)
    region = np.where(rng.random(n) < 0.65, home, away)
    age = np.clip(rng.normal(42, 13, n), 19, 85).astype(int)
    z_income = rng.normal(0, 1, n)
    region_effect = np.array([_REGION_INCOME[r] for r in region])
    income = np.exp(10.55 + region_effect + 0.02 * (np.minimum(age, 55) - 40) + 0.55 * z_income)
    risk = rng.normal(0, 1, n)
    spending = 0.35 * z_income + 0.35 * risk + np.sqrt(1 - 2 * 0.35**2) * rng.normal(0, 1, n)
    male = rng.random(n) < 0.5
    family = rng.choice(np.array(_FAMILY), size=n)
    given = rng.choice(np.array(_GIVEN), size=n)
    return pd.DataFrame(
        {
            "customer_id": [f"C{i + 1:07d}" for i in range(n)],
            "region": region,
            "age": age,
            "income": income.round(2),
            "z_income": z_income,
            "risk_appetite": risk,
            "spending_propensity": spending,
            "national_id": _national_ids(region, age, male, rng),
            "full_name": [f"{f} {g}" for f, g in zip(family, given)],
            "phone": _phones(n, rng),
            "email": [
                f"{g.lower()}.{f.lower()}{k}@example.{d}"
                for g, f, k, d in zip(
                    given, family, rng.integers(10, 10000, n), rng.choice(["com", "net", "org"], n)
                )
            ],
            "card_number": _card_numbers(n, rng),
        }
    )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _intercept_for_rate(score: np.ndarray, rate: float) -> float:
    """Intercept making the mean default probability equal ``rate`` (bisection; deterministic)."""
    lo, hi = -15.0, 15.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if _sigmoid(score + mid).mean() < rate:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _updated_at(n: int, rng: np.random.Generator) -> pd.Series:
    start = pd.Timestamp("2024-01-01", tz="UTC")
    seconds = rng.integers(0, 366 * 24 * 3600, n)
    return pd.Series(start + pd.to_timedelta(seconds, unit="s"))


def _blank(frame: pd.DataFrame, columns: Sequence[str], rate: float, rng: np.random.Generator) -> None:
    for col in columns:
        mask = rng.random(len(frame)) < rate
        frame[col] = frame[col].astype("float64").mask(mask)


def _bank_frame(c: pd.DataFrame, index: int, missing_rate: float, rng: np.random.Generator) -> pd.DataFrame:
    """A bank's customer table; default depends on risk, spending and income through observable proxies."""
    n = len(c)
    z, risk, spend = (c[k].to_numpy() for k in ("z_income", "risk_appetite", "spending_propensity"))
    age = c["age"].to_numpy()
    income = c["income"].to_numpy()
    reported_income = np.round(income * np.exp(rng.normal(0, 0.1, n)), -2)
    policy = _LIMIT_POLICY[index % len(_LIMIT_POLICY)]
    limit = np.maximum(
        500, np.round(income * policy * np.exp(0.25 * z - 0.2 * risk + rng.normal(0, 0.25, n)), -2)
    )
    util = np.clip(1.15 * _sigmoid(-0.6 + 0.9 * risk + 0.2 * spend - 0.4 * z + rng.normal(0, 0.8, n)), 0, 1.2)
    balance = np.round(util * limit, 2)
    late = np.minimum(rng.poisson(np.exp(-1.2 + 0.6 * risk + 0.1 * spend - 0.3 * z)), 15)
    months = np.clip(((age - 18) * 12 * rng.uniform(0.05, 0.7, n) + 3).astype(int), 1, 480)
    products = np.clip(1 + rng.poisson(np.exp(-0.1 + 0.3 * z + 0.1 * (months > 60))), 1, 8)
    other_debt = income * np.exp(-1.6 + 0.45 * risk + 0.15 * spend + rng.normal(0, 0.5, n))
    dti = np.clip((balance + other_debt) / income, 0, 5).round(3)
    score = 0.9 * risk + 0.8 * spend - 0.45 * z + 0.8 * (util - 0.5) + 0.12 * late + 0.3 * (dti - 0.4)
    score += rng.normal(0, 0.5, n) - 0.006 * (np.minimum(months, 240) - 60)  # shocks no partner sees
    score = score + c["stress"].to_numpy()  # seen by the retailer only (0 unless retail_signal is set)
    rate = _DEFAULT_RATES[index % len(_DEFAULT_RATES)]
    p = _sigmoid(score + _intercept_for_rate(score, rate))
    frame = pd.DataFrame(
        {
            "customer_id": c["customer_id"].to_numpy(),
            "national_id": c["national_id"].to_numpy(),
            "full_name": c["full_name"].to_numpy(),
            "phone": c["phone"].to_numpy(),
            "region": c["region"].to_numpy(),
            "age": age,
            "income": reported_income,
            "credit_limit": limit,
            "balance": balance,
            "utilisation": util.round(4),
            "num_late_payments": late.astype(int),
            "months_on_book": months.astype(int),
            "num_products": products.astype(int),
            "debt_to_income": dti,
            "defaulted": (rng.random(n) < p).astype(int),
            "updated_at": _updated_at(n, rng),
        }
    )
    _blank(frame, _MISSING_BANK, missing_rate, rng)
    return frame


def _retail_frame(c: pd.DataFrame, index: int, missing_rate: float, rng: np.random.Generator) -> pd.DataFrame:
    """A retailer's customer table; future spend follows engagement, which follows the latent traits."""
    n = len(c)
    z, risk, spend, stress = (
        c[k].to_numpy() for k in ("z_income", "risk_appetite", "spending_propensity", "stress")
    )
    age = c["age"].to_numpy()
    level = _BASKET_LEVEL[index % len(_BASKET_LEVEL)]
    engagement = 0.8 * spend + 0.2 * z + rng.normal(0, 0.6, n)
    rate_12m = np.exp(1.2 + 0.6 * engagement)
    frequency = rng.poisson(rate_12m)
    basket_true = level * np.exp(np.log(35) + 0.35 * z + 0.2 * spend - 0.25 * stress + rng.normal(0, 0.3, n))
    avg_basket = np.where(frequency > 0, basket_true * np.exp(rng.normal(0, 0.1, n)), 0.0).round(2)
    monetary = (frequency * avg_basket).round(2)
    recency = np.where(
        frequency > 0,
        np.minimum(365, rng.exponential(365 / (frequency + 1))),
        365 + rng.uniform(0, 365, n),
    ).astype(int)
    returns = np.clip(rng.beta(2, 2 / _sigmoid(-2.2 + 0.6 * risk + 0.6 * stress) - 2), 0, 1).round(3)
    sessions = rng.poisson(np.exp(0.7 + 0.5 * engagement + 0.3 * (age < 40) + 0.3 * stress))
    loyalty = (rng.random(n) < _sigmoid(-0.6 + 0.8 * engagement)).astype(int)
    active = rng.random(n) < _sigmoid(0.8 + 1.0 * engagement - 0.004 * recency)
    future_count = rng.poisson(rate_12m * rng.gamma(4.0, 0.25, n))
    future = np.where(active, future_count * basket_true * np.exp(rng.normal(0, 0.2, n)), 0.0).round(2)
    frame = pd.DataFrame(
        {
            "customer_id": c["customer_id"].to_numpy(),
            "full_name": c["full_name"].to_numpy(),
            "email": c["email"].to_numpy(),
            "card_number": c["card_number"].to_numpy(),
            "region": c["region"].to_numpy(),
            "age": age,
            "recency_days": recency,
            "frequency_12m": frequency.astype(int),
            "monetary_12m": monetary,
            "avg_basket": avg_basket,
            "returns_rate": returns,
            "web_sessions_30d": sessions.astype(int),
            "loyalty_member": loyalty,
            "future_spend": future,
            "updated_at": _updated_at(n, rng),
        }
    )
    _blank(frame, _MISSING_RETAIL, missing_rate, rng)
    return frame
