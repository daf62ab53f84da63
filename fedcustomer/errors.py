"""One exception family for the whole product.

Every error a user can cause maps to one subclass with its own CLI exit code, so
scripts can tell an exhausted budget from a tampered log without parsing text.
Messages must never carry a customer's core-tier value: use the pseudonym.
"""

from __future__ import annotations

from typing import Any


class FedCustomerError(Exception):
    """Base class; ``exit_code`` is what the CLI returns for this kind of failure."""

    exit_code: int = 1


class ConfigError(FedCustomerError):
    """Invalid option or configuration (epsilon <= 0, unknown strategy, bad TOML)."""

    exit_code = 3


class DataError(FedCustomerError):
    """Input data unusable: missing file or column, non-numeric feature, empty partner."""

    exit_code = 4


class SchemaError(DataError):
    """A schema file is malformed or does not match the data."""

    exit_code = 4


class AccessDenied(FedCustomerError):
    """The access policy refused a request (the refusal itself is audit-logged)."""

    exit_code = 5


class BudgetExhausted(FedCustomerError):
    """A privacy charge would push a partner past its (epsilon, delta) target.

    Raised by the one release point with the ledger's spend when it refused (``spend``) and
    the epsilon the release would have reached (``projected``), so callers can report both.
    """

    exit_code = 6

    def __init__(self, reason: str = "", spend: Any = None, projected: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.spend = spend
        self.projected = projected


class IntegrityError(FedCustomerError):
    """Tampering or corruption: audit chain broken, ciphertext moved or altered."""

    exit_code = 7


class KeyMaterialError(FedCustomerError):
    """Key file missing, unreadable, wrong, or a retired key version was needed."""

    exit_code = 8


class FederationError(FedCustomerError):
    """A federated job could not go on: too few partners left, node lost mid-round."""

    exit_code = 9


EXIT_CODES: dict[str, int] = {
    cls.__name__: cls.exit_code
    for cls in (
        FedCustomerError,
        ConfigError,
        DataError,
        SchemaError,
        AccessDenied,
        BudgetExhausted,
        IntegrityError,
        KeyMaterialError,
        FederationError,
    )
}


def error_class(name: str) -> type[FedCustomerError]:
    """The product error named ``name`` (as another process reported it, e.g. ``ConfigError``), so the
    exit code says why; FederationError for any other name."""
    found = globals().get(name)
    return found if isinstance(found, type) and issubclass(found, FedCustomerError) else FederationError
