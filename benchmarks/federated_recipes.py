"""The training recipes of bench_federated.py: one set of hyper-parameters per model family.

Kept apart from the script so the chosen values (and the ``--recipe`` override syntax) read as
one table, and so the report and the round-overhead timing use the very same recipes.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields, replace
from typing import Any

SOURCE, TASK, DELTA = "uci-credit", "repayment", 1e-5


@dataclass(frozen=True)
class Recipe:
    """Training hyper-parameters of one model family (SGD with momentum 0.9 throughout)."""

    epochs: int  # centralised: epochs; federated: local epochs per round
    batch_size: int
    lr: float
    rounds: int = 1  # federated only
    max_grad_norm: float = 1.0  # DP only

    def job_fields(self) -> dict[str, Any]:
        """The JobConfig fields a federated recipe sets (the noise cap left wide: the budget decides)."""
        return {
            "rounds": self.rounds,
            "local_epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "max_grad_norm": self.max_grad_norm,
            "max_noise_multiplier": 100.0,
        }

    def describe(self, federated: bool, dp: bool) -> str:
        work = f"{self.rounds} rounds x {self.epochs} local epochs" if federated else f"{self.epochs} epochs"
        clip = f", clip {self.max_grad_norm:g}" if dp else ""
        return f"{work}, batch {self.batch_size}, lr {self.lr:g}{clip}"


# Chosen on validation rows (see bench_federated.py's docstring and RESULTS.md). "family@N" overrides
# a family for N partners: a partner's DP batch is best kept at a similar share of its rows.
RECIPES: dict[str, Recipe] = {
    "central": Recipe(epochs=30, batch_size=256, lr=0.1),
    "central-dp": Recipe(epochs=30, batch_size=1024, lr=1.0, max_grad_norm=0.5),
    "fed": Recipe(rounds=10, epochs=6, batch_size=128, lr=0.1),
    "fed-dp": Recipe(rounds=10, epochs=3, batch_size=512, lr=1.0, max_grad_norm=0.5),
    "fed-dp@10": Recipe(rounds=10, epochs=3, batch_size=128, lr=0.5, max_grad_norm=0.5),
    # epochs: passes over the union (rounds = passes x int(1/q)); batch: expected union batch (q = batch / rows)
    "dist-dp": Recipe(epochs=30, batch_size=2048, lr=2.0, max_grad_norm=0.5),
}
QUICK = {
    "central": Recipe(epochs=5, batch_size=256, lr=0.1),
    "central-dp": Recipe(epochs=5, batch_size=1024, lr=1.0, max_grad_norm=0.5),
    "fed": Recipe(rounds=3, epochs=2, batch_size=128, lr=0.1),
    "fed-dp": Recipe(rounds=3, epochs=2, batch_size=512, lr=1.0, max_grad_norm=0.5),
    "dist-dp": Recipe(epochs=5, batch_size=1024, lr=1.0, max_grad_norm=0.5),
}
FAMILY_LABEL = {
    "central": "centralised non-private",
    "central-dp": "centralised DP-SGD",
    "fed": "federated non-private",
    "fed-dp": "federated DP-SGD",
    "dist-dp": "distributed DP-SGD (SecAgg+)",
    "gbm": "gradient boosting (centralised)",
}


def parse_recipe(text: str, recipes: dict[str, Recipe]) -> tuple[str, Recipe]:
    """``family:key=value,...`` -> (family, the family's recipe with those fields replaced)."""
    family, _, body = text.partition(":")
    base = family.partition("@")[0]
    if base not in recipes or (family != base and not family.partition("@")[2].isdigit()):
        raise argparse.ArgumentTypeError(
            f"unknown recipe {family!r}; choose one of {', '.join(recipes)} (optionally @N for N partners)"
        )
    types = {f.name: f.type for f in fields(Recipe)}
    changes: dict[str, Any] = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if key not in types or not value:
            raise argparse.ArgumentTypeError(
                f"--recipe {text!r}: expected key=value with key in {', '.join(types)}"
            )
        changes[key] = float(value) if types[key] == "float" else int(value)
    return family, replace(recipes.get(family, recipes[base]), **changes)


def recipe_for(recipes: dict[str, Recipe], family: str, partners: int) -> Recipe:
    """The family's recipe for this many partners (``family@N`` when there is one)."""
    return recipes.get(f"{family}@{partners}", recipes[family])
