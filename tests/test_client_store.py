"""The client table kept as a file: built once per served model and ingested data, mapped by every worker, set
aside when damaged; and its answers equal a plain in-memory ranking's on the shipped data."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import numpy as np
import orjson
import pyarrow as pa
import pytest

from riskwatch.core.config import Config, load_config
from riskwatch.core.files import LockHeld, hold_lock
from riskwatch.core.schema import FEATURES, ID_COLUMN, SCHEMA, UNLABELLED_COLUMNS
from riskwatch.data.batches import CurrentClients, IngestedData, read_ingested_data, read_unlabelled_clients
from riskwatch.data.batches import select_current_clients as select_current
from riskwatch.model.clients import (
    ClientDetail,
    ClientRow,
    ClientTable,
    TableFacts,
    build_client_columns,
    spreadsheet_text,
    stream_clients_csv,
)
from riskwatch.model.clientstore import CLIENT_TABLES_FOLDER, LOCK_FILE
from riskwatch.model.drivers import explain_clients
from riskwatch.stages.ingestion import ingest_folder
from riskwatch.state.artifacts import FINAL_DATA
from riskwatch.web.api.routes import API_STATE, describe_one_client, describe_ranking
from riskwatch.web.app import create_app
from riskwatch.web.sources import DashboardSources, app_sources
from tests.helpers import PROJECT_ROOT, deploy, train_and_score, write_config

# Clients the shipped data does not hold, and one it does (its latest labelled row is then not its state).
PENDING = ",".join(UNLABELLED_COLUMNS) + "\nnewcomer_a,0,0,5000\nnewcomer_b,3,40,12\n"


class PlainTable:
    """The client table as it was kept in each worker's heap: Python lists and dicts, built row by row. The
    reference the stored table's answers must equal."""

    def __init__(self, served: Any, data: IngestedData, current: CurrentClients):
        self.version = served.version
        self.threshold = float(getattr(served.deployed.model, "threshold", 0.5))
        self.drivers_model = served.shortcut
        self.ids = current.ids
        self.features = np.ascontiguousarray(current.features)
        self.probabilities = np.asarray(served.predict(self.features)[0], dtype=np.float64)
        self.unlabelled = current.unlabelled
        self.orders = {"probability": np.argsort(self.probabilities, kind="stable")}
        self.orders[ID_COLUMN] = np.argsort(np.array(self.ids, dtype=object), kind="stable")
        for j, name in enumerate(FEATURES):
            self.orders[name] = np.argsort(self.features[:, j], kind="stable")
        self.rank = np.empty(len(self.ids), dtype=np.int64)
        self.rank[self.orders["probability"][::-1]] = np.arange(1, len(self.ids) + 1)
        self.position = {name: row for row, name in enumerate(self.ids)}
        self.history = plain_histories(data, current)

    @property
    def at_risk(self) -> int:
        return int(np.count_nonzero(self.probabilities >= self.threshold))

    @property
    def expected_exits(self) -> float:
        return float(self.probabilities.sum())

    def row_of(self, corporation: str) -> int | None:
        return self.position.get(corporation)

    def ids_of(self, rows: np.ndarray) -> list[str]:
        return [self.ids[row] for row in rows.tolist()]

    def select(self, query: str, sort: str, descending: bool) -> np.ndarray:
        order = self.orders[sort][::-1] if descending else self.orders[sort]
        query = query.strip().lower()
        if not query:
            return order
        matching = np.fromiter((query in name.lower() for name in self.ids), dtype=bool, count=len(self.ids))
        return order[matching[order]]

    def detail(self, corporation: str) -> ClientDetail | None:
        row = self.position.get(corporation)
        if row is None:
            return None
        drivers = explain_clients(self.drivers_model, self.features[row : row + 1])
        client = drivers.clients[0]
        return ClientDetail(
            corporation=corporation,
            rank=int(self.rank[row]),
            probability=float(self.probabilities[row]),
            at_risk=bool(self.probabilities[row] >= self.threshold),
            values={name: int(self.features[row, j]) for j, name in enumerate(FEATURES)},
            rows=self.history.get(corporation, []),
            baseline=drivers.baseline_log_odds,
            contributions=client.contributions,
            log_odds=client.log_odds,
            driver_sentence=client.reason,
        )


def plain_histories(data: IngestedData, current: CurrentClients) -> dict[str, list[ClientRow]]:
    """Every row of each current client in the order written, with its batch; then its unlabelled state."""
    times = {batch.number: batch.ingested_at for batch in data.batches}
    wanted = set(current.ids)
    found: dict[str, list[ClientRow]] = defaultdict(list)
    features, labels = data.features(), data.labels()
    for row, name in enumerate(data.table[ID_COLUMN].to_pylist()):
        if name in wanted:
            number = int(data.batch[row])
            values = {feature: int(features[row, j]) for j, feature in enumerate(FEATURES)}
            found[name].append(ClientRow(number, times.get(number, ""), values, int(labels[row])))
    for row in np.flatnonzero(current.unlabelled).tolist():
        values = {name: int(current.features[row, j]) for j, name in enumerate(FEATURES)}
        found[current.ids[row]].append(ClientRow(0, "", values, None))
    return dict(found)


def plain_csv(table: PlainTable | ClientTable, rows: np.ndarray) -> str:
    """The CSV as it was written: one row at a time through csv.writer."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["rank", ID_COLUMN, "probability", "at_risk", *FEATURES])
    for row in rows.tolist():
        probability = float(table.probabilities[row])
        writer.writerow(
            [
                int(table.rank[row]),
                spreadsheet_text(table.ids[row]),
                repr(probability),
                int(probability >= table.threshold),
                *[int(value) for value in table.features[row]],
            ]
        )
    return out.getvalue()


def table_files(config: Config) -> list[Path]:
    return sorted((config.output_folder_path / CLIENT_TABLES_FOLDER).glob("*.arrow"))


def count_builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one each time a worker scores the clients to build the table."""
    builds: list[int] = []
    original = DashboardSources.score_clients

    def counted(self: DashboardSources, served: Any) -> pa.Table:
        builds.append(1)
        return original(self, served)

    monkeypatch.setattr(DashboardSources, "score_clients", counted)
    return builds


def json_of(payload: dict) -> Any:
    return json.loads(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY))


@pytest.fixture
def shipped(tmp_path: Path) -> Config:
    """The shipped data with rows whose outcome is not known yet (two new clients and one already seen),
    ingested, trained and deployed in tmp_path."""
    shutil.copytree(PROJECT_ROOT / "sourceddata", tmp_path / "sourceddata")
    shutil.copytree(PROJECT_ROOT / "testdata", tmp_path / "testdata")
    first_id = (tmp_path / "sourceddata" / "clients_2026q4.csv").read_text().splitlines()[1].split(",")[0]
    (tmp_path / "sourceddata" / "pending.csv").write_text(PENDING + f"{first_id},1,2,3\n", encoding="utf-8")
    config = load_config(write_config(tmp_path))
    ingest_folder(config.input_folder_path, config.output_folder_path)
    train_and_score(config)
    deploy(config)
    return config


def test_every_answer_equals_the_plain_in_memory_tables_on_the_shipped_data(shipped, monkeypatch):
    app = create_app(shipped, token="")
    client = app.test_client()
    with app.app_context():
        served = app.extensions[API_STATE].watcher.served()
        table = app_sources(app).clients(served)
    folder = shipped.output_folder_path
    data = read_ingested_data(folder)
    current = select_current(data.table, read_unlabelled_clients(folder))
    plain = PlainTable(served, data, current)
    assert len(table.ids) == len(plain.ids) > 7000 and int(plain.unlabelled.sum()) == 3
    assert list(table.ids) == plain.ids
    assert np.array_equal(table.probabilities, plain.probabilities) and np.array_equal(table.features, plain.features)
    assert np.array_equal(table.rank, plain.rank) and np.array_equal(table.unlabelled, plain.unlabelled)
    for key, order in plain.orders.items():
        assert np.array_equal(table.orders[key], order), key
    assert (table.at_risk, table.expected_exits) == (plain.at_risk, plain.expected_exits)
    # Every client's rows as they arrived, and its place by id.
    for row, name in enumerate(plain.ids):
        assert table.history(row) == plain.history[name], name
        assert table.row_of(name) == row
    assert table.row_of("nobody") is None and table.row_of("") is None and table.row_of("\uffff") is None
    assert any(len(rows) > 1 for rows in plain.history.values())
    # The JSON API: the ranking, with paging, and single clients.
    for limit, offset in ((50, 0), (1000, 0), (7, 123), (1000, len(plain.ids) - 10), (5, len(plain.ids) + 5)):
        answer = client.get(f"/clients?limit={limit}&offset={offset}")
        assert answer.get_json() == json_of(describe_ranking(served, plain, limit, offset))
    for name in (*plain.ids[:3], plain.ids[-1], "newcomer_a", "newcomer_b"):
        assert client.get(f"/clients/{name}").get_json() == json_of(describe_one_client(served, plain, name))
        assert table.detail(name) == plain.detail(name)
    assert client.get("/clients/nobody").status_code == 404
    # The pages and the CSV: the same HTML as from the plain table.
    queries = ["", "?q=ab", "?q=%20AB%20", "?q=zzzz", "?sort=corporation&order=asc", "?sort=number_of_employees"]
    queries += ["?sort=lastmonth_activity&order=desc&per=250&page=3", "?per=25&page=9999", "?q=new"]
    pages = ["/dashboard/", *(f"/dashboard/clients{query}" for query in queries)]
    pages += [f"/dashboard/clients/{name}" for name in (plain.ids[0], "newcomer_a", plain.ids[-1])]
    downloads = [f"/dashboard/clients.csv{query}" for query in queries]
    ours = {page: client.get(page) for page in pages + downloads}
    assert all(answer.status_code == 200 for answer in ours.values())
    for query, download in zip(queries, downloads, strict=True):
        assert ours[download].is_streamed
        args = {name: values[0] for name, values in parse_qs(query.lstrip("?")).items()}
        sort = args.get("sort", "probability")
        descending = args.get("order", "desc" if sort == "probability" else "asc") == "desc"
        rows = plain.select(args.get("q", ""), sort, descending)
        assert ours[download].get_data(as_text=True) == plain_csv(plain, rows), query
    monkeypatch.setattr(DashboardSources, "clients", lambda self, served: plain)
    theirs = create_app(shipped, token="").test_client()
    for page in pages + downloads:
        mine, reference = (without_ages(answer.get_data(as_text=True)) for answer in (ours[page], theirs.get(page)))
        assert mine == reference, page


def without_ages(page: str) -> str:
    """A page with its "12 minutes ago" left out: two renderings a moment apart may differ there."""
    return re.sub(r"\d+ (?:day|hour|minute)s? ago|just now", "", page)


def test_search_and_lookup_follow_pythons_own_case_rules():
    """Ids Python lowers differently from a simple case fold (a dotted capital I, a Kelvin sign, a final sigma)."""
    ids = ["İstanbul-1", "\u212aelvin", "ΟΔΟΣ", "abc", "ABD", "Ärger", "-2+3", "zz", 'a,"b"', "c\nd", "=1"]
    current = CurrentClients(ids, np.arange(len(ids) * 3, dtype=np.float64).reshape(-1, 3), np.arange(len(ids)))
    data = IngestedData(SCHEMA.empty_table(), np.zeros(0, np.uint64), np.zeros(0, np.int32), ())
    probabilities = np.linspace(0.1, 0.9, len(ids))
    table = ClientTable(build_client_columns(probabilities, data, current), "v0001", 0.5, None)
    for query in ("i̇", "k", "ς", "σ", "ab", "AB", " Är ", "-", "x", "\ud800"):
        expected = [row for row in table.orders["probability"] if query.strip().lower() in ids[row].lower()]
        assert table.select(query, "probability", False).tolist() == expected, query
    for row, name in enumerate(ids):
        assert table.row_of(name) == row and name in table.ids
    assert table.row_of("İ") is None and "nobody" not in table.ids
    assert sorted(ids) == [ids[row] for row in table.orders[ID_COLUMN]]
    assert table.history(0) == [] and table.detail("abc").rows == []
    rows = table.select("", "probability", True)
    assert "".join(stream_clients_csv(table, rows, chunk_rows=3)) == plain_csv(table, rows)


def test_the_file_is_built_once_and_every_app_maps_it(deployed, monkeypatch):
    builds = count_builds(monkeypatch)
    first = create_app(deployed, token="").test_client().get("/clients?limit=1000").get_json()
    (path,) = table_files(deployed)
    before = path.stat()
    for _ in range(3):  # each app is a worker of its own: it maps the file, it does not build
        assert create_app(deployed, token="").test_client().get("/clients?limit=1000").get_json() == first
    assert len(builds) == 1
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns) and table_files(deployed) == [path]
    app = create_app(deployed, token="")
    with app.app_context():
        table = app_sources(app).clients(app.extensions[API_STATE].watcher.served())
    assert not table.probabilities.flags.writeable and not table.features.flags.writeable  # views of the file
    assert str(path) in Path("/proc/self/maps").read_text()


def test_a_new_version_or_changed_data_builds_a_new_file_and_removes_the_old(deployed, monkeypatch):
    builds = count_builds(monkeypatch)
    client = create_app(deployed, token="").test_client()
    first = client.get("/clients").get_json()
    (old,) = table_files(deployed)
    train_and_score(deployed, C=0.01)
    deploy(deployed)
    second = client.get("/clients").get_json()
    assert second["model_version"] == "v0002" and second["clients"] != first["clients"]
    (new,) = table_files(deployed)
    assert new != old and not old.exists() and "v0002" in new.name and len(builds) == 2
    final = deployed.output_folder_path / FINAL_DATA
    final.write_text(final.read_text() + "newcorp,0,0,9000,0\n")
    third = client.get("/clients?limit=1").get_json()
    assert third["count"] == second["count"] + 1 and client.get("/clients/newcorp").status_code == 200
    assert len(builds) == 3 and not new.exists() and len(table_files(deployed)) == 1


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "other-key"])
def test_a_damaged_file_is_set_aside_and_built_again_never_served(deployed, monkeypatch, caplog, damage):
    builds = count_builds(monkeypatch)
    expected = create_app(deployed, token="").test_client().get("/clients?limit=1000").get_json()
    (path,) = table_files(deployed)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":  # one byte in the middle: Arrow alone reads the file without a complaint
        data[len(data) // 2] ^= 0xFF
    elif damage == "empty":
        data = bytearray()
    elif damage == "other-key":  # a whole table, its checksum right, that records another key than its name's
        data = bytearray(with_key(path, "clients-v0009-another"))
        path.unlink()
        path = path.with_name(f"{path.name.rsplit('-', 1)[0]}-{zlib.crc32(data):08x}.arrow")
    path.write_bytes(bytes(data))
    answer = create_app(deployed, token="").test_client().get("/clients?limit=1000").get_json()
    assert answer == expected and len(builds) == 2
    damaged = list(path.parent.glob("*.damaged"))
    assert len(damaged) == 1 and "set aside" in caplog.text
    assert len(table_files(deployed)) == 1


@pytest.mark.slow
def test_two_processes_asking_at_once_build_it_once(deployed, tmp_path):
    folder = deployed.output_folder_path / CLIENT_TABLES_FOLDER
    script = tmp_path / "ask.py"
    script.write_text(ASKING_SCRIPT, encoding="utf-8")
    marks = [tmp_path / f"ready-{n}" for n in range(2)]
    config = deployed.output_folder_path.parent / "config.json"
    # The test holds the lock until both have started asking: then both find no file, and one waits for the other.
    with hold_lock(folder / LOCK_FILE, "the test", "held"):
        workers = [
            subprocess.Popen(
                [sys.executable, str(script), str(config), str(mark)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=PROJECT_ROOT,
            )
            for mark in marks
        ]
        deadline = time.monotonic() + 120
        for worker, mark in zip(workers, marks, strict=True):
            while not mark.exists():
                assert worker.poll() is None, worker.communicate()
                assert time.monotonic() < deadline, "a process did not start asking within 2 minutes"
                time.sleep(0.05)
    answers = sorted((json.loads(worker.communicate(timeout=120)[0]) for worker in workers), key=lambda a: a["built"])
    assert [answer["built"] for answer in answers] == [0, 1]
    assert answers[0]["clients"] == answers[1]["clients"] and len(table_files(deployed)) == 1
    assert not answers[0]["pandas"]  # the worker that maps the table converts nothing through pandas


ASKING_SCRIPT = """
import json, sys
from pathlib import Path
sys.path.insert(0, ".")
from riskwatch.web.app import create_app
from riskwatch.web.sources import DashboardSources

built = []
original = DashboardSources.score_clients
def counted(self, served):
    built.append(1)
    return original(self, served)
DashboardSources.score_clients = counted
client = create_app(Path(sys.argv[1]), token="").test_client()
Path(sys.argv[2]).touch()
answer = client.get("/clients?limit=1000").get_json()
print(json.dumps({"built": len(built), "clients": answer["clients"], "pandas": "pandas" in sys.modules}))
"""


def test_a_build_elsewhere_that_takes_too_long_is_a_503_naming_it(deployed, monkeypatch):
    monkeypatch.setattr("riskwatch.model.clientstore.BUILD_WAIT_SECONDS", 0.2)
    folder = deployed.output_folder_path / CLIENT_TABLES_FOLDER
    client = create_app(deployed, token="").test_client()
    with hold_lock(folder / LOCK_FILE, "building clients-v0001-test", "held"):
        answer = client.get("/clients")
    assert answer.status_code == 503 and "building clients-v0001-test" in answer.get_json()["error"]
    assert str(deployed.output_folder_path) not in answer.get_json()["error"]
    assert client.get("/clients").status_code == 200


def test_a_folder_that_cannot_be_written_still_answers(deployed, monkeypatch, caplog):
    builds = count_builds(monkeypatch)
    (deployed.output_folder_path / CLIENT_TABLES_FOLDER).write_text("not a folder")
    client = create_app(deployed, token="").test_client()
    answer = client.get("/clients")
    assert answer.status_code == 200 and answer.get_json()["count"] > 0
    assert client.get("/dashboard/clients.csv").status_code == 200
    assert len(builds) == 1 and "cannot be kept" in caplog.text


def test_a_lock_is_waited_for_when_asked_and_refused_at_once_otherwise(tmp_path):
    path = tmp_path / "lock"
    acquired = threading.Event()
    with hold_lock(path, "first", "held by {holder}"):
        with pytest.raises(LockHeld, match="held by pid"), hold_lock(path, "second", "held by {holder}"):
            pass

        def wait_for_it() -> None:
            with hold_lock(path, "third", "held by {holder}", wait_seconds=60):
                acquired.set()

        waiting = threading.Thread(target=wait_for_it)
        waiting.start()
        assert not acquired.is_set()
    waiting.join(timeout=60)
    assert acquired.is_set() and "third" in path.read_text()


def with_key(path: Path, key: str) -> bytes:
    """A stored table's bytes with another key recorded in it."""
    with pa.memory_map(str(path)) as source:
        columns = pa.ipc.open_file(source).read_all()
    facts = TableFacts.from_columns(columns)
    columns = columns.replace_schema_metadata(TableFacts(facts.batch_times, key).to_metadata())
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, columns.schema) as writer:
        writer.write_table(columns)
    return bytes(sink.getvalue().to_pybytes())
