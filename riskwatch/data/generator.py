"""Write the client-activity files the project ships, or a later batch, deterministically (seeded).

Activity and head-count are heavy-tailed (log-normal with dormant clients at zero); about a
quarter of clients exit, and the exit risk falls with recent and yearly activity and rises with
size. Later batches can come from a changed world, for demos and drift tests:
``--shift`` moves the population (larger clients, less activity) under the same risk
relationship; ``--drift`` moves the population and changes the relationship too (larger
clients now stay, yearly activity no longer protects), so a model trained before goes wrong.
``--world nonlinear`` keeps the population but makes the risk non-linear in the log counts (a
threshold, a non-monotone effect and an interaction), where no log-linear model can follow;
``--world riskier`` keeps the clients and doubles their odds of exit (the probabilities move, the
ranking does not); ``--world ramp-1`` ... ``ramp-8`` move the relationship a step at a time (a slow
change that then settles);
``exit_probability`` gives any world's true exit probability, so a test can compute the
Bayes-optimal F1 of a sample.

    python generate_data.py                      # rewrite practicedata/, sourceddata/, testdata/
    python generate_data.py batch --rows 5000 --out sourceddata/dataset5.csv --seed 5 [--shift | --drift | --world W]
    python generate_data.py world --world nonlinear --root /tmp/project   # sourceddata/ and testdata/ of a world
    python generate_data.py database --url sqlite:///clients.sqlite [--table client_activity] [FILE.csv ...]
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from riskwatch.core.cli import add_logging_flags, run_command
from riskwatch.core.config import PROJECT_ROOT
from riskwatch.core.databases import DEFAULT_PASSWORD_ENV, check_identifier, parse_database_url, unreachable
from riskwatch.core.errors import PipelineError
from riskwatch.core.files import CLASSIC_TEST_FILE, write_text_atomic
from riskwatch.core.schema import COLUMNS, FEATURES, ID_COLUMN, UNLABELLED_COLUMNS

log = logging.getLogger("generate_data")

ID_LETTERS = 6
SHIPPED_SEED = 20261120


@dataclass(frozen=True)
class World:
    """Parameters of one client population and its exit-risk relationship."""

    employees_median: float = 40.0
    employees_sigma: float = 1.3
    activity_per_employee_median: float = 60.0
    activity_sigma: float = 1.0
    monthly_trend_sigma: float = 0.6
    dormant_year_share: float = 0.03
    dormant_month_share: float = 0.06
    intercept: float = 1.3
    coef_month: float = -0.85
    coef_year: float = -0.30
    coef_employees: float = 0.75
    # "loglinear": the log-odds is linear in the log1p counts (the coefficients above); "nonlinear": see
    # ``nonlinear_log_odds`` (the coefficients are not used).
    risk: str = "loglinear"


STABLE = World()
SHIFTED = World(
    employees_median=90.0,
    activity_per_employee_median=25.0,
    monthly_trend_sigma=0.9,
    dormant_month_share=0.15,
)
DRIFTED = World(
    employees_median=90.0,
    activity_per_employee_median=25.0,
    monthly_trend_sigma=0.9,
    dormant_month_share=0.15,
    intercept=1.5,
    coef_month=-1.1,
    coef_year=0.1,
    coef_employees=-0.4,
)
NONLINEAR = World(risk="nonlinear")
# The same clients, twice the odds of exit: the log-odds all move by log 2, so the ranking (and the F1 a model
# can reach) barely changes, but every probability a model learned before is too low.
RISKIER = World(intercept=STABLE.intercept + float(np.log(2.0)))
# A relationship that moves a little at each step and then stays (``ramp-1`` ... ``ramp-8``, then ``ramp-8`` again):
# the same clients, the log-odds moving by an eighth of the way to SETTLED at each step.
RAMP_STEPS = 8
SETTLED = World(intercept=0.75, coef_month=-1.12, coef_year=0.02, coef_employees=0.48)


def ramp_world(step: int, steps: int = RAMP_STEPS, start: World = STABLE, end: World = SETTLED) -> World:
    """The world ``step`` steps of ``steps`` along the way from ``start``'s risk relationship to ``end``'s."""
    share = min(max(step / steps, 0.0), 1.0)

    def between(name: str) -> float:
        return float(getattr(start, name) + share * (getattr(end, name) - getattr(start, name)))

    return World(
        intercept=between("intercept"),
        coef_month=between("coef_month"),
        coef_year=between("coef_year"),
        coef_employees=between("coef_employees"),
    )


WORLDS = {
    "stable": STABLE,
    "shifted": SHIFTED,
    "drifted": DRIFTED,
    "nonlinear": NONLINEAR,
    "riskier": RISKIER,
    **{f"ramp-{step}": ramp_world(step) for step in range(1, RAMP_STEPS + 1)},
}


def nonlinear_log_odds(month: np.ndarray, year: np.ndarray, employees: np.ndarray) -> np.ndarray:
    """A risk no log-linear model can follow (about a third of clients exit; see the module docstring).

    - a threshold: a month with fewer than about 20 activities raises the log-odds by 2.5;
    - a non-monotone effect: the smallest and the largest clients leave more, quadratically in log size;
    - an interaction: large clients (over about 90 employees) with little yearly activity per head;
    - a bounded protective effect of yearly activity.
    """
    log_month, log_year, log_employees = np.log1p(month), np.log1p(year), np.log1p(employees)
    log_odds = (
        -3.5
        + 1.0 * (log_employees - 3.7) ** 2
        + 2.5 * (log_month < 3.0)
        + 2.5 * ((log_employees > 4.5) & (log_year - log_employees < 3.3))
        - 0.6 * np.clip(log_year - 7.0, -2.0, 2.0)
    )
    return np.asarray(log_odds, dtype=np.float64)


def exit_probability(world: World, month: np.ndarray, year: np.ndarray, employees: np.ndarray) -> np.ndarray:
    """The true probability of exit of clients with these counts in ``world``."""
    if world.risk == "nonlinear":
        logit = nonlinear_log_odds(month, year, employees)
    else:
        logit = (
            world.intercept
            + world.coef_month * np.log1p(month)
            + world.coef_year * np.log1p(year)
            + world.coef_employees * np.log1p(employees)
        )
    return np.asarray(1 / (1 + np.exp(-logit)), dtype=np.float64)


def make_ids(count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct lowercase ids of ``ID_LETTERS`` letters."""
    codes = rng.choice(26**ID_LETTERS, size=count, replace=False)
    letters = np.empty((count, ID_LETTERS), dtype=np.uint8)
    for position in range(ID_LETTERS - 1, -1, -1):
        letters[:, position] = codes % 26 + ord("a")
        codes = codes // 26
    return letters.view(f"S{ID_LETTERS}").ravel().astype(str)


def generate_clients(count: int, rng: np.random.Generator, world: World = STABLE) -> dict[str, np.ndarray]:
    """One row per client in the schema's columns."""
    employees = np.maximum(1, np.rint(rng.lognormal(np.log(world.employees_median), world.employees_sigma, count)))
    per_employee = rng.lognormal(np.log(world.activity_per_employee_median), world.activity_sigma, count)
    year = np.rint(employees**0.8 * per_employee)
    year[rng.random(count) < world.dormant_year_share] = 0
    month = np.rint(year / 12 * rng.lognormal(0.0, world.monthly_trend_sigma, count))
    month[rng.random(count) < world.dormant_month_share] = 0
    exited = (rng.random(count) < exit_probability(world, month, year, employees)).astype(np.int64)
    return {
        "corporation": make_ids(count, rng),
        "lastmonth_activity": month.astype(np.int64),
        "lastyear_activity": year.astype(np.int64),
        "number_of_employees": employees.astype(np.int64),
        "exited": exited,
    }


def take_rows(clients: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    return {name: values[index] for name, values in clients.items()}


def rows_of(clients: dict[str, np.ndarray], columns: tuple[str, ...] = COLUMNS) -> list[list[str]]:
    """The clients as rows of text cells, in the schema's column order (``columns``: a subset of it)."""
    return [list(row) for row in zip(*(clients[name].astype(str) for name in columns), strict=True)]


def add_export_noise(rows: list[list[str]], rng: np.random.Generator) -> list[list[str]]:
    """Add what real exports carry: a few repeated rows and a few blank cells."""
    count = len(rows)
    for index in rng.choice(count, size=max(1, count // 200), replace=False):
        rows.insert(int(rng.integers(0, len(rows))), list(rows[index]))
    for index in rng.choice(len(rows), size=max(1, count // 1000), replace=False):
        rows[index][int(rng.integers(1, len(COLUMNS) - 1))] = ""
    return rows


def format_csv(rows: list[list[str]], columns: tuple[str, ...] = COLUMNS) -> str:
    """CSV text with the schema's header (ids are plain letters, so no quoting is needed)."""
    return ",".join(columns) + "\n" + "".join(",".join(row) + "\n" for row in rows)


def write_shipped_data(root: Path = PROJECT_ROOT, seed: int = SHIPPED_SEED) -> list[Path]:
    """Write practicedata/ (2 small files), sourceddata/ (10,000 clients in 4 files), testdata/."""
    rng = np.random.default_rng(seed)
    plan = {"practice": 750, "source": 10_000, "test": 3_000}
    clients = generate_clients(sum(plan.values()), rng)
    order = np.arange(sum(plan.values()))
    practice, source, test = np.split(order, np.cumsum([plan["practice"], plan["source"]]))
    outputs: dict[Path, str] = {}
    for number, part in enumerate(np.array_split(practice, [400]), start=1):
        outputs[root / "practicedata" / f"dataset{number}.csv"] = format_csv(rows_of(take_rows(clients, part)))
    for number, part in enumerate(np.array_split(source, 4), start=1):
        rows = add_export_noise(rows_of(take_rows(clients, part)), rng)
        outputs[root / "sourceddata" / f"clients_2026q{number}.csv"] = format_csv(rows)
    outputs[root / "testdata" / CLASSIC_TEST_FILE] = format_csv(rows_of(take_rows(clients, test)))
    for path, text in outputs.items():
        write_text_atomic(path, text)
        log.info("wrote %s (%d rows)", path.relative_to(root), text.count("\n") - 1)
    return list(outputs)


def write_world_data(
    root: Path, world: str, seed: int, source_rows: int = 10_000, test_rows: int = 3_000, files: int = 4
) -> list[Path]:
    """Write ``source_rows`` clients of ``world`` to ``root/sourceddata/`` (in ``files`` files) and ``test_rows``
    more to ``root/testdata/testdata.csv``: a project's data drawn from another world than the shipped one."""
    rng = np.random.default_rng(seed)
    clients = generate_clients(source_rows + test_rows, rng, WORLDS[world])
    source, test = np.split(np.arange(source_rows + test_rows), [source_rows])
    outputs = {
        root / "sourceddata" / f"{world}_{number}.csv": format_csv(rows_of(take_rows(clients, part)))
        for number, part in enumerate(np.array_split(source, files), start=1)
    }
    outputs[root / "testdata" / CLASSIC_TEST_FILE] = format_csv(rows_of(take_rows(clients, test)))
    for path, text in outputs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)
    log.info("wrote %d %s clients to %s/sourceddata and %d to its testdata", source_rows, world, root, test_rows)
    return list(outputs)


def write_batch(
    out: Path,
    rows: int,
    seed: int,
    world: str = "stable",
    files: int = 1,
    labelled: bool = True,
    faulty_join: str | None = None,
) -> list[Path]:
    """Write ``rows`` new clients of ``world`` (see WORLDS) to ``out`` (a .csv file, or a folder when ``files`` > 1).

    ``labelled=False`` leaves out the ``exited`` column: clients whose outcome is not known yet.
    ``faulty_join``: a feature whose values are paired with other clients' rows, as a faulty join leaves
    them (``break_join``).
    """
    columns = COLUMNS if labelled else UNLABELLED_COLUMNS
    rng = np.random.default_rng(seed)
    clients = generate_clients(rows, rng, WORLDS[world])
    if faulty_join is not None:
        clients = break_join(clients, faulty_join, rng)
    if files == 1 and out.suffix == ".csv":
        targets = [out]
    else:
        targets = [out / f"batch_{seed}_{number:02d}.csv" for number in range(1, files + 1)]
    for target, part in zip(targets, np.array_split(np.arange(rows), len(targets)), strict=True):
        write_text_atomic(target, format_csv(rows_of(take_rows(clients, part), columns), columns))
    log.info("wrote %d %s rows to %d file(s) under %s", rows, world, len(targets), out)
    return targets


def break_join(clients: dict[str, np.ndarray], column: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The clients with ``column``'s values shuffled across rows: each column's values exactly as before, their
    relationship gone (a join on the wrong key; the outcomes stay with the rows they were drawn for)."""
    if column not in FEATURES:
        raise PipelineError(f"--faulty-join must name a feature ({', '.join(FEATURES)}), not {column!r}")
    return {**clients, column: clients[column][rng.permutation(clients[column].size)]}


DEFAULT_TABLE = "client_activity"


def read_csv_rows(paths: list[Path]) -> list[dict[str, object]]:
    """The rows of schema CSV files as column values (blank cells None, counts as numbers), in file order."""
    import csv

    rows: list[dict[str, object]] = []
    for path in paths:
        with open(path, newline="", encoding="utf-8") as handle:
            for record in csv.DictReader(handle):
                values = {name: (record.get(name) or "").strip() or None for name in COLUMNS}
                rows.append(
                    {
                        name: value if value is None or name == ID_COLUMN else int(value)
                        for name, value in values.items()
                    }
                )
    return rows


def load_into_database(url: str, table_name: str, paths: list[Path], password_env: str = DEFAULT_PASSWORD_ENV) -> int:
    """Append the rows of ``paths`` to a table (created if missing, with an ``id`` watermark); return how many.

    The table holds the schema's columns, ``id`` (an integer that grows with each row added)
    and ``loaded_at`` (when the row was added), so either can serve as the watermark.
    """
    from sqlalchemy import BigInteger, Column, DateTime, Integer, MetaData, Table, Text, create_engine, func
    from sqlalchemy.engine import make_url

    where = "--url"
    parsed = parse_database_url(url, Path.cwd(), where, password_env)
    check_identifier(table_name, "--table", qualified=True)
    schema, _, name = table_name.rpartition(".")
    metadata = MetaData(schema=schema or None)
    table = Table(
        name,
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column(COLUMNS[0], Text),
        *(Column(column, BigInteger) for column in COLUMNS[1:]),
        Column("loaded_at", DateTime(timezone=True), server_default=func.current_timestamp(), index=True),
    )
    rows = read_csv_rows(paths)
    engine = create_engine(make_url(parsed.url).set(password=parsed.password()))
    try:
        with engine.begin() as connection:
            metadata.create_all(connection)
            if rows:
                connection.execute(table.insert(), rows)
    except Exception as exc:  # any driver error: one sentence, the URL masked
        raise unreachable(parsed, exc, "written", "no row was added") from None
    finally:
        engine.dispose()
    log.info("added %d rows from %d file(s) to table %s of %s", len(rows), len(paths), table_name, parsed.shown)
    return len(rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_logging_flags(parser)
    sub = parser.add_subparsers(dest="command")
    shipped = sub.add_parser("shipped", help="rewrite the data the project ships (the default)")
    shipped.add_argument("--root", type=Path, default=PROJECT_ROOT, help="folder to write under")
    batch = sub.add_parser("batch", help="write a later batch of new clients")
    batch.add_argument("--out", type=Path, required=True, help="a .csv file, or a folder with --files")
    batch.add_argument("--rows", type=int, default=2_000)
    batch.add_argument("--files", type=int, default=1)
    batch.add_argument("--seed", type=int, default=1)
    changed = batch.add_mutually_exclusive_group()
    changed.add_argument(
        "--shift",
        dest="world",
        action="store_const",
        const="shifted",
        help="move the population, same risk relationship",
    )
    changed.add_argument(
        "--drift", dest="world", action="store_const", const="drifted", help="move the population and change the risk"
    )
    changed.add_argument("--world", choices=sorted(WORLDS), help="draw the rows from this world")
    batch.add_argument("--unlabelled", action="store_true", help="leave out the exited column (outcomes not known yet)")
    batch.add_argument(
        "--faulty-join",
        metavar="FEATURE",
        help="pair this feature's values with other clients' rows, as a faulty join would",
    )
    batch.set_defaults(world="stable")
    whole = sub.add_parser("world", help="write sourceddata/ and testdata/ of a world under a folder")
    whole.add_argument("--root", type=Path, required=True, help="folder to write sourceddata/ and testdata/ under")
    whole.add_argument("--world", choices=sorted(WORLDS), default="nonlinear")
    whole.add_argument("--rows", type=int, default=10_000, help="source rows (the test data holds 3,000 more)")
    whole.add_argument("--seed", type=int, default=1)
    database = sub.add_parser(
        "database", help="add the shipped source data (or the given CSV files) to a database table"
    )
    database.add_argument(
        "--url", required=True, help="sqlite:///clients.sqlite or postgresql+psycopg://user@host:port/db"
    )
    database.add_argument(
        "--table", default=DEFAULT_TABLE, help=f"table to create or append to (default {DEFAULT_TABLE})"
    )
    database.add_argument("--password-env", default=DEFAULT_PASSWORD_ENV, help="variable holding the password")
    database.add_argument("csv", nargs="*", type=Path, help="CSV files to add (default: sourceddata/*.csv)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "database":
        paths = args.csv or sorted((PROJECT_ROOT / "sourceddata").glob("*.csv"))
        return run_command(
            "generate_data", args, lambda: load_into_database(args.url, args.table, paths, args.password_env)
        )
    if args.command == "world":
        return run_command("generate_data", args, lambda: write_world_data(args.root, args.world, args.seed, args.rows))
    if args.command == "batch":
        return run_command(
            "generate_data",
            args,
            lambda: write_batch(
                args.out, args.rows, args.seed, args.world, args.files, not args.unlabelled, args.faulty_join
            ),
        )
    return run_command("generate_data", args, lambda: write_shipped_data(getattr(args, "root", PROJECT_ROOT)))


if __name__ == "__main__":
    raise SystemExit(main())
