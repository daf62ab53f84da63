"""The one entry point from "which data" to a feature spec and a list of partners.

The CLI and the Flower apps name a data source by a word (``synthetic``, ``uci-credit``,
``cdnow``) or a path; this module resolves it, splits it into partners and checks
that every partner can be encoded, so a bad file fails before any training starts.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pandas as pd

from fedcustomer.data.features import TASKS, DataDerivedBoundsWarning, FeatureSpec
from fedcustomer.data.partition import (
    PartnerDataset,
    partition_by_column,
    partition_dirichlet,
    partition_iid,
    split_train_test,
)
from fedcustomer.data.schema import field_name_for, field_names, listed_names
from fedcustomer.data.source_lines import check_separator
from fedcustomer.errors import ConfigError, DataError

DATA_DIR_ENV = "FEDCUSTOMER_DATA_DIR"
SOURCES = ("synthetic", "uci-credit", "cdnow")
SPLITS = ("iid", "non-iid")
SOURCE_TASKS = {"synthetic": ("repayment", "clv"), "uci-credit": ("repayment",), "cdnow": ("clv",)}
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
DIRICHLET_ALPHA = 0.5  # label skew for non-IID splits of a user's own file
_TARGET_NAMES = frozenset(
    {
        "y",
        "target",
        "label",
        "class",
        "outcome",
        "response",
        "default",
        "defaulted",
        "future_spend",
        "churn",
        "churned",
    }
)
_LABEL_GUESSES = {
    "repayment": ("default", "defaulted", "label", "target"),
    "clv": ("future_spend", "label", "target"),
}
_ID_GUESSES = ("customer_id", "id", "ID")


def default_data_dir() -> Path:
    """The data folder shipped beside a source checkout (``../shared/data`` from the repository)."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def resolve_data_dir(data_dir: Path | None) -> Path:
    """The explicit directory, else ``$FEDCUSTOMER_DATA_DIR``, else the shipped folder if present.

    Every command that reads a public data set (``run``, ``baseline``, ``rfm``, ...) finds it the same way.
    """
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    shipped = default_data_dir()
    if shipped.is_dir():
        return shipped
    raise DataError(
        f"no data directory given: pass --data-dir or set the {DATA_DIR_ENV} environment variable "
        "to the folder holding uci_credit_default/ and cdnow/"
    )


def load_partitions(
    task: str,
    source: str,
    n_partners: int,
    *,
    split: str = "iid",
    seed: int = 0,
    data_dir: Path | None = None,
    test_fraction: float = 0.2,
    label: str | None = None,
    notices: list[str] | None = None,
    spec: FeatureSpec | None = None,
) -> tuple[FeatureSpec, list[PartnerDataset]]:
    """Resolve ``source`` for ``task`` into a spec and ``n_partners`` partners.

    For a user's own file the label is the ``--label`` column; guessed only from the
    usual names, with a notice appended to ``notices``, and refused when the file has
    another column that looks like a target (e.g. ``y``), so a feature never silently
    becomes the label.

    ``synthetic`` is non-IID by construction (banks or retailers of different regions,
    sizes and default rates), so ``split`` does not apply to it. For ``uci-credit``
    non-IID means one education level per partner (where sizes allow), for ``cdnow`` one
    first-purchase cohort per partner, for a user's file a Dirichlet label skew.

    A user's file is encoded by ``spec`` when given (declared bounds and categories).
    Otherwise the spec is inferred from each partner's *training* rows only (numeric
    bounds fitted per partner and combined, text columns as categoricals), and
    ``notices`` says so: those bounds and categories are not covered by the DP guarantee.
    Columns whose names are not valid field names are renamed as the schema would
    (:func:`fedcustomer.data.schema.field_name_for`), with a notice.
    """
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if n_partners < 1:
        raise ConfigError(f"need at least 1 partner, got {n_partners}")
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in [0, 1), got {test_fraction}")

    if source in SOURCES:
        if task not in SOURCE_TASKS[source]:
            raise ConfigError(
                f"data source {source!r} serves the {', '.join(SOURCE_TASKS[source])} task only, not {task!r}: "
                f"add --task {SOURCE_TASKS[source][0]}"
            )
        declared = spec
        spec, partners = _builtin(task, source, n_partners, split, seed, data_dir, test_fraction)
        if declared is not None:  # another encoding of the source's own columns (e.g. uci-credit-dp)
            spec = _declared_for_source(source, declared, spec, partners)
        if label is not None and label != spec.label:
            raise ConfigError(
                f"data source {source!r} has label {spec.label!r}; drop --label or pass {spec.label!r}"
            )
    else:
        path = Path(source)
        if not path.exists():
            if path.suffix.lower() in TABLE_SUFFIXES or os.sep in source or "/" in source:
                raise DataError(f"data file or directory {source} does not exist")
            raise ConfigError(
                f"unknown data source {source!r}; choose one of {', '.join(SOURCES)} or give a CSV/Parquet "
                "file or a directory with one file per partner"
            )
        told: list[str] = []
        spec, partners = _from_path(task, path, n_partners, split, seed, test_fraction, label, spec, told)
        if notices is not None:
            notices.extend(told)
        elif any(INFERRED_MARK in n for n in told):
            warnings.warn(next(n for n in told if INFERRED_MARK in n), DataDerivedBoundsWarning, stacklevel=2)
    _check_partners(spec, partners)
    return spec, partners


def _declared_for_source(
    source: str, declared: FeatureSpec, own: FeatureSpec, partners: list[PartnerDataset]
) -> FeatureSpec:
    """A declared spec for a built-in source: same label and id, columns the source has."""
    if declared.label != own.label or declared.id_column != own.id_column:
        raise ConfigError(
            f"--feature-spec declares label {declared.label!r} and id {declared.id_column!r}; data source "
            f"{source!r} has label {own.label!r} and id {own.id_column!r}"
        )
    have = set(partners[0].train.columns) if partners else set()
    missing = [c for c in declared.columns() if c not in have]
    if missing:
        raise ConfigError(f"--feature-spec names columns data source {source!r} does not have: {missing}")
    return declared


def _builtin(
    task: str, source: str, n: int, split: str, seed: int, data_dir: Path | None, test_fraction: float
) -> tuple[FeatureSpec, list[PartnerDataset]]:
    if source == "synthetic":
        from fedcustomer.data.synthetic import CLV_SPEC, REPAYMENT_SPEC, generate_federation

        if task == "repayment":
            fed = generate_federation(n_banks=n, n_retailers=1, seed=seed, test_fraction=test_fraction)
            return REPAYMENT_SPEC, fed.banks
        fed = generate_federation(n_banks=1, n_retailers=n, seed=seed, test_fraction=test_fraction)
        return CLV_SPEC, fed.retailers
    root = resolve_data_dir(data_dir)
    if source == "uci-credit":
        from fedcustomer.data.uci_credit import UCI_SPEC, load_uci_credit, uci_path

        frame = load_uci_credit(uci_path(root))
        same = dict(kind="bank", prefix="bank", test_fraction=test_fraction, stratify="default")
        if split == "iid":
            return UCI_SPEC, partition_iid(frame, n, seed, **same)
        return UCI_SPEC, partition_by_column(frame, n, "education", seed, **same)
    from fedcustomer.data.cdnow import CDNOW_SPEC, cdnow_path, load_cdnow

    frame = load_cdnow(cdnow_path(root))
    same = dict(kind="retailer", prefix="retailer", test_fraction=test_fraction)
    if split == "iid":
        return CDNOW_SPEC, partition_iid(frame, n, seed, **same)
    return CDNOW_SPEC, partition_by_column(frame, n, "cohort", seed, **same)


def read_table(path: Path) -> pd.DataFrame:
    """A CSV or Parquet file as a frame; DataError saying what is wrong with it."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path)
            check_separator(path, frame.columns)
            return frame
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    raise DataError(f"{path}: unsupported file type {suffix or '(none)'}; use .csv or .parquet")


def _from_path(
    task: str,
    path: Path,
    n: int,
    split: str,
    seed: int,
    test_fraction: float,
    label: str | None,
    declared: FeatureSpec | None,
    notices: list[str],
) -> tuple[FeatureSpec, list[PartnerDataset]]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in TABLE_SUFFIXES)
        if not files:
            raise DataError(f"directory {path} holds no .csv or .parquet partner files")
        if len(files) != n:
            raise ConfigError(
                f"directory {path} holds {len(files)} partner file(s) ({', '.join(p.name for p in files)}) "
                f"but {n} partner(s) were asked for; set the number of partners to {len(files)}"
            )
        frames = {p.stem: _valid_names(read_table(p), p, notices) for p in files}
        for name, frame in frames.items():
            if frame.empty:
                raise DataError(f"partner {name!r} ({path / name}) has no rows")
        columns = list(next(iter(frames.values())).columns)
        guessed = label is None and declared is None
        label, id_column = _roles(columns, task, label, declared, path)
        partners = []
        for i, (name, frame) in enumerate(frames.items()):
            stratify = label if task == "repayment" else None
            train, test = split_train_test(frame, test_fraction, seed + 1000 * (i + 1), stratify)
            partners.append(PartnerDataset(name=name, kind="partner", train=train, test=test))
    else:
        frame = _valid_names(read_table(path), path, notices)
        if frame.empty:
            raise DataError(f"{path} has no rows")
        guessed = label is None and declared is None
        label, id_column = _roles(list(frame.columns), task, label, declared, path)
        stratify = label if task == "repayment" else None
        same = dict(kind="partner", prefix="partner", test_fraction=test_fraction, stratify=stratify)
        if split == "iid":
            partners = partition_iid(frame, n, seed, **same)
        else:
            partners = partition_dirichlet(frame, n, label, DIRICHLET_ALPHA, seed, **same)
    if guessed:
        notices.insert(
            0,
            f"label column guessed: {label!r} (the usual name for the {task} target); "
            "pass --label to name another",
        )
    if declared is not None:
        return _renamed_spec(declared, id_column), partners
    spec, told = FeatureSpec.infer_from_partners([p.train for p in partners], task, label, id_column)
    notices.extend(told)
    return spec, partners


# Marks the notice that says bounds or categories were read off the data.
INFERRED_MARK = "NOT covered by the DP guarantee"


def _valid_names(frame: pd.DataFrame, where: Path, notices: list[str]) -> pd.DataFrame:
    """The frame with every column under a valid field name (as the store would keep it), said in a notice."""
    names = field_names([str(c) for c in frame.columns], str(where))
    renamed = {c: f for c, f in names.items() if c != f}
    if renamed:
        text = ", ".join(f"{c!r} -> {f!r}" for c, f in renamed.items())
        notice = f"columns read under valid field names (lower-case letters, digits, '_'): {text}"
        if notice not in notices:
            notices.append(notice)
    return frame.rename(columns=names)


def _roles(
    columns: list[str], task: str, label: str | None, declared: FeatureSpec | None, where: Path
) -> tuple[str, str | None]:
    """The label and id columns: declared by the spec or --label, else guessed (with a notice by the caller)."""
    if declared is not None:
        wanted = field_name_for(declared.label)
        if label is not None and field_name_for(label) != wanted:
            raise ConfigError(
                f"--label {label!r} differs from the feature spec's label {declared.label!r}; "
                "drop --label or make them agree"
            )
        if wanted not in columns:
            raise DataError(
                f"{where}: the feature spec's label {declared.label!r} is not a column of the data"
            )
        id_column = field_name_for(declared.id_column) if declared.id_column else None
        if id_column is not None and id_column not in columns:
            raise DataError(
                f"{where}: the feature spec's id column {declared.id_column!r} is not in the data"
            )
        return wanted, id_column if id_column else _guess_id(columns, wanted)
    if label is not None:
        label = field_name_for(label)
        if label not in columns:
            raise DataError(
                f"label column {label!r} is missing from the data (columns present: "
                f"{listed_names(columns)}); pass the right label name or add the column"
            )
    else:
        label = next((c for c in _LABEL_GUESSES[task] if c in columns), None)
        rivals = [c for c in columns if c != label and str(c).strip().lower() in _TARGET_NAMES]
        if label is not None and rivals:
            raise ConfigError(
                f"{where}: no label column given; {label!r} looks like the label but {', '.join(map(repr, rivals))} "
                "looks like a target too; name the label column with --label"
            )
        if label is None:
            raise ConfigError(
                f"{where}: no label column given and none of {', '.join(_LABEL_GUESSES[task])} is present; "
                "name the label column with --label"
            )
    return label, _guess_id(columns, label)


def _guess_id(columns: list[str], label: str) -> str | None:
    """The customer id column: ``customer_id``, ``id``, else one named like an id (``customerID``...)."""
    from fedcustomer.data.schema_draft import is_customer_id_name

    guessed = next((c for c in _ID_GUESSES if c in columns and c != label), None)
    return guessed or next((c for c in columns if c != label and is_customer_id_name(c)), None)


def _renamed_spec(spec: FeatureSpec, id_column: str | None) -> FeatureSpec:
    """A declared spec whose names are read as valid field names, as the data's columns were."""
    from dataclasses import replace

    features = [replace(f, name=field_name_for(f.name)) for f in spec.features]
    return FeatureSpec(spec.task, field_name_for(spec.label), id_column, features)


def _check_partners(spec: FeatureSpec, partners: list[PartnerDataset]) -> None:
    """Every partner has training rows and encodes cleanly; errors name the partner.

    The encoding is row-wise, so when every frame has the same columns and types all of them
    are encoded together once (1,000 partners: one call instead of 2,000); only if that
    fails are they encoded one by one, to name the partner.
    """
    for p in partners:
        if len(p.train) == 0:
            raise DataError(
                f"partner {p.name!r} has no training rows; use fewer partners or a smaller test fraction"
            )
    frames = [f for p in partners for f in (p.train, p.test) if len(f)]
    if len(frames) > 1 and all(f.dtypes.equals(frames[0].dtypes) for f in frames):
        try:
            spec.transform(pd.concat(frames, ignore_index=True))
            return
        except DataError:
            pass  # find the partner below
    for p in partners:
        for part, frame in (("train", p.train), ("test", p.test)):
            if len(frame) == 0:
                continue
            try:
                spec.transform(frame)
            except DataError as exc:
                # the row number counts the rows of that partner's split: it is not the file's line
                raise DataError(
                    f"partner {p.name!r} ({part} split; its row numbers count that split's rows, not the file's): {exc}"
                ) from None
