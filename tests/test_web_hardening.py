"""The web surface against the attacks it was put through: forged and copied sessions, rebound host names,
guessed tokens, formulas in the CSV, ids that rewrite links, framing and sniffing; and one client by id."""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import logging
import re
import sqlite3
import stat
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import quote

import pytest
from flask import Flask
from flask.sessions import SecureCookieSessionInterface

from riskwatch.core.config import Config, load_config
from riskwatch.core.errors import PipelineError
from riskwatch.core.schema import ID_COLUMN, TARGET
from riskwatch.stages.ingestion import ingest_folder
from riskwatch.web.app import create_app
from riskwatch.web.guard import (
    ACCESS_FOLDER,
    FREE_FAILURES,
    SECRET_FILE,
    STORE_FILE,
    AccessStore,
    client_key,
    host_name,
    is_allowed_host,
    token_bits,
    wait_after,
)
from tests.helpers import deploy, train_and_score, write_clients, write_config

TOKEN = "s3cret-token"
STRONG_TOKEN = "kq3J9vXw2LpZr8TnYb6HcFd1GsMe4UaV0oRtEiWy"  # 40 characters of 62: about 238 bits
# Ids a spreadsheet would run, and ids a browser would rewrite in a link.
FORMULA_IDS = ('=HYPERLINK("http://x")', "+cmd", "-2+3", "@SUM(A1)")
PATH_IDS = ("a/../b", "c?d#e", "f/./g")


@pytest.fixture
def odd_ids(tmp_path: Path) -> Config:
    """A deployed project whose active clients include the ids above."""
    write_clients(tmp_path / "sourceddata" / "clients_a.csv", 600, seed=1)
    write_clients(tmp_path / "testdata" / "testdata.csv", 300, seed=3)
    source = tmp_path / "sourceddata" / "clients_a.csv"
    rows = list(csv.DictReader(io.StringIO(source.read_text(encoding="utf-8"))))
    active = [row for row in rows if row[TARGET] == "0"]
    for row, new_id in zip(active, FORMULA_IDS + PATH_IDS, strict=False):
        row[ID_COLUMN] = new_id
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    source.write_text(out.getvalue(), encoding="utf-8")
    config = load_config(write_config(tmp_path))
    ingest_folder(config.input_folder_path, config.output_folder_path)
    train_and_score(config)
    deploy(config)
    return config


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def sign_in(client, token: str = TOKEN):
    csrf = csrf_of(client.get("/dashboard/sign-in").get_data(as_text=True))
    return client.post("/dashboard/sign-in", data={"token": token, "csrf": csrf})


def cookie_of(client) -> str:
    return client.get_cookie("risk_dashboard").value


# Row 6: the session key cannot be found offline from a cookie, and no cookie can be forged from the token.


def test_cookies_are_signed_with_a_random_secret_kept_private_beside_the_deployment(deployed):
    app = create_app(deployed, token=TOKEN)
    secret = deployed.prod_deployment_path / ACCESS_FOLDER / SECRET_FILE
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and len(secret.read_bytes()) >= 32
    assert create_app(deployed, token=TOKEN).secret_key == app.secret_key  # every worker signs alike
    derived = hmac.new(TOKEN.encode(), b"risk-dashboard-session", hashlib.sha256).digest()
    assert app.secret_key != derived and TOKEN.encode() not in app.secret_key


def test_a_session_forged_with_a_key_made_from_the_token_reads_nothing(deployed):
    client = create_app(deployed, token=TOKEN).test_client()
    client.get("/dashboard/sign-in")  # an anonymous visitor's cookie, as the attack began
    forger = Flask("forger")
    forger.secret_key = hmac.new(TOKEN.encode(), b"risk-dashboard-session", hashlib.sha256).digest()
    serializer = SecureCookieSessionInterface().get_signing_serializer(forger)
    assert serializer is not None
    anonymous = cookie_of(client)
    with pytest.raises(Exception, match="Signature"):
        serializer.loads(anonymous)  # the key is not the one derived from the token
    client.set_cookie("risk_dashboard", serializer.dumps({"signed_in": True, "session": "made-up", "csrf": "x"}))
    answer = client.get("/dashboard/clients")
    assert answer.status_code == 302 and "/sign-in" in answer.headers["Location"]
    assert client.get("/dashboard/clients.csv").status_code == 302


def test_a_short_token_is_warned_about_at_start_and_a_long_random_one_is_not(deployed, caplog):
    with caplog.at_level(logging.WARNING, logger="app"):
        create_app(deployed, token=TOKEN)
    assert any("fewer than 128" in record.getMessage() for record in caplog.records)
    assert TOKEN not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="app"):
        create_app(deployed, token=STRONG_TOKEN)
    assert not any("fewer than 128" in record.getMessage() for record in caplog.records)
    assert token_bits("abc") < token_bits("aBc1!") and 127 < token_bits("a" * 28) < 132


# Row 7: only this server's names are answered.


@pytest.mark.parametrize("path", ["/dashboard/clients.csv", "/dashboard/", "/clients", "/health", "/version"])
def test_without_a_token_a_rebound_host_name_is_refused(deployed, path):
    client = create_app(deployed, token="").test_client()
    answer = client.get(path, headers={"Host": "attacker.example"})
    assert answer.status_code == 400
    assert "attacker.example" in answer.get_data(as_text=True) and "allowed_hosts" in answer.get_data(as_text=True)
    for host in ("localhost", "localhost:8000", "127.0.0.1:5000", "[::1]:8000", "LOCALHOST."):
        assert client.get(path, headers={"Host": host}).status_code in (200, 302), host


def test_configured_host_names_are_answered_and_others_are_not(tmp_path, deployed):
    config = load_config(write_config(deployed.path.parent, api={"allowed_hosts": ["risk.example.com"]}))
    client = create_app(config, token="").test_client()
    assert client.get("/health", headers={"Host": "risk.example.com:443"}).status_code == 200
    assert client.get("/health", headers={"Host": "attacker.example"}).status_code == 400
    guarded = create_app(config, token=TOKEN).test_client()
    assert guarded.get("/health", headers={"Host": "attacker.example"}).status_code == 400
    with_token = create_app(deployed, token=TOKEN).test_client()  # a token guards it: any name is answered
    assert with_token.get("/health", headers={"Host": "any.example"}).status_code == 200


def test_host_names_are_read_without_port_brackets_or_case():
    assert host_name("[::1]:8000") == "::1" and host_name("Example.COM.:80") == "example.com"
    assert is_allowed_host("localhost:1", (), token_set=False)
    assert not is_allowed_host("127.0.0.1.attacker.example", (), token_set=False)
    assert is_allowed_host("anything", ("*",), token_set=False)


# Row 8: signing out, or staying away, ends the session on the server.


def test_a_copied_cookie_stops_working_after_sign_out(deployed):
    app = create_app(deployed, token=TOKEN)
    browser, thief = app.test_client(), app.test_client()
    assert sign_in(browser).status_code == 302
    copied = cookie_of(browser)
    thief.set_cookie("risk_dashboard", copied)
    assert thief.get("/dashboard/clients").status_code == 200
    csrf = csrf_of(browser.get("/dashboard/").get_data(as_text=True))
    assert browser.post("/dashboard/sign-out", data={"csrf": csrf}).status_code == 302
    answer = thief.get("/dashboard/clients")
    assert answer.status_code == 302 and "/sign-in" in answer.headers["Location"]


def test_a_session_unused_for_the_idle_time_is_signed_out(deployed):
    config = load_config(write_config(deployed.path.parent, api={"session_idle_hours": 2}))
    app = create_app(config, token=TOKEN)
    assert app.permanent_session_lifetime.total_seconds() == 2 * 3600
    client = app.test_client()
    sign_in(client)
    assert client.get("/dashboard/clients").status_code == 200
    with sqlite3.connect(config.prod_deployment_path / ACCESS_FOLDER / STORE_FILE) as connection:
        connection.execute("UPDATE sessions SET last_seen = last_seen - 2 * 3600 - 1")
    assert client.get("/dashboard/clients").status_code == 302


def test_a_session_in_use_is_kept_alive(tmp_path):
    store = AccessStore(tmp_path / STORE_FILE, idle_seconds=100)
    session = store.start_session(now=1000)
    assert store.is_live(session, now=1090)
    assert store.is_live(session, now=1180)  # used at 1090, so not idle at 1180
    assert not store.is_live(session, now=1400)
    store.end_session(store.start_session(now=2000))
    assert not store.is_live("never-started", now=2000)


# Row 9: the CSV opens in a spreadsheet as data.


def test_ids_that_start_a_formula_are_text_in_the_csv(odd_ids):
    client = create_app(odd_ids, token="").test_client()
    rows = list(csv.DictReader(io.StringIO(client.get("/dashboard/clients.csv").get_data(as_text=True))))
    ids = {row[ID_COLUMN] for row in rows}
    for odd in FORMULA_IDS:
        assert f"'{odd}" in ids and odd not in ids
    for row in rows:
        assert not row[ID_COLUMN].startswith(("=", "+", "-", "@", "\t", "\r"))
        assert float(row["probability"]) >= 0 and int(row["rank"]) >= 1


# Row 10: guessing is slowed down, and every wrong guess is logged.


def test_wrong_sign_ins_make_the_address_wait_and_are_logged(deployed, caplog):
    client = create_app(deployed, token=TOKEN).test_client()
    with caplog.at_level(logging.WARNING, logger="app"):
        for _ in range(FREE_FAILURES + 1):
            assert sign_in(client, "wrong").status_code == 401
        refused = sign_in(client, "wrong")
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        assert sign_in(client, TOKEN).status_code == 429  # not even the right token, while it waits
    failures = [record for record in caplog.records if "wrong token from" in record.getMessage()]
    assert len(failures) == FREE_FAILURES + 1 and "dashboard sign-in" in failures[0].getMessage()
    assert "wrong" not in " ".join(record.getMessage().split("wrong token")[1] for record in failures)


def test_wrong_bearer_tokens_make_the_address_wait_and_are_logged(deployed, caplog):
    client = create_app(deployed, token=TOKEN).test_client()
    with caplog.at_level(logging.WARNING, logger="app"):
        for _ in range(FREE_FAILURES + 1):
            assert client.get("/version", headers={"Authorization": "Bearer guess"}).status_code == 401
    answer = client.get("/version", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 429 and int(answer.headers["Retry-After"]) >= 1
    assert "wait" in answer.get_json()["error"]
    assert sum("wrong token from" in record.getMessage() for record in caplog.records) == FREE_FAILURES + 1
    assert "guess" not in caplog.text
    assert client.get("/health").status_code == 200  # the health check needs no token


def test_the_waits_grow_and_failures_long_past_are_forgiven(tmp_path):
    store = AccessStore(tmp_path / STORE_FILE, idle_seconds=100)
    for n in range(1, FREE_FAILURES + 1):
        assert store.record_failure("10.0.0.1", now=1000) == n and store.refusal("10.0.0.1", now=1000) is None
    store.record_failure("10.0.0.1", now=1000)
    assert store.refusal("10.0.0.1", now=1000).retry_after == wait_after(FREE_FAILURES + 1) > 0
    assert store.refusal("10.0.0.1", now=1000 + wait_after(FREE_FAILURES + 1)) is None  # the wait is over
    assert store.refusal("10.0.0.2", now=1000) is None  # per address
    assert wait_after(FREE_FAILURES + 2) == 2 * wait_after(FREE_FAILURES + 1) and wait_after(10**6) == 15 * 60
    assert store.record_failure("10.0.0.1", now=10**6) == 1


def test_failures_are_counted_per_ipv6_network_and_old_ones_are_dropped(tmp_path):
    assert client_key("2001:db8:1:2:3:4:5:6") == client_key("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:10.0.0.7") == client_key("10.0.0.7") == "10.0.0.7" and client_key(None) == "unknown"
    store = AccessStore(tmp_path / STORE_FILE, idle_seconds=100)
    store.record_failure("10.0.0.1", now=1000)
    store.record_failure("10.0.0.2", now=10**6)  # the first's failure is long past: forgotten, not kept for ever
    with sqlite3.connect(tmp_path / STORE_FILE) as connection:
        assert [row[0] for row in connection.execute("SELECT address FROM failures")] == ["10.0.0.2"]
    assert stat.S_IMODE((tmp_path / STORE_FILE).stat().st_mode) == 0o600


def test_behind_trusted_proxies_the_clients_own_address_is_counted(deployed, tmp_path):
    config = load_config(write_config(deployed.path.parent, api={"trusted_proxies": 1}))
    client = create_app(config, token=TOKEN).test_client()
    wrong = {"Authorization": "Bearer guess", "X-Forwarded-For": "203.0.113.9"}
    for _ in range(FREE_FAILURES + 1):
        assert client.get("/version", headers=wrong).status_code == 401
    assert client.get("/version", headers={**wrong, "Authorization": f"Bearer {TOKEN}"}).status_code == 429
    other = {"Authorization": f"Bearer {TOKEN}", "X-Forwarded-For": "198.51.100.4"}
    assert client.get("/version", headers=other).status_code == 200  # another client behind the same proxy


@pytest.mark.parametrize("target", ["/\\evil.example/", "/\tevil", "//evil.example", "https://evil.example/"])
def test_sign_in_never_sends_people_off_site(deployed, target):
    client = create_app(deployed, token=TOKEN).test_client()
    page = client.get(f"/dashboard/sign-in?next={quote(target)}").get_data(as_text=True)
    answer = client.post(
        "/dashboard/sign-in", data={"token": TOKEN, "csrf": csrf_of(page), "next": target}, follow_redirects=False
    )
    assert answer.status_code == 302 and answer.headers["Location"].endswith("/dashboard/")


# Row 20: links keep the whole id; nothing is framed or sniffed.


def test_client_links_keep_the_whole_id_and_find_the_client(odd_ids):
    client = create_app(odd_ids, token="").test_client()
    for odd in PATH_IDS:
        page = client.get("/dashboard/clients", query_string={"q": odd}).get_data(as_text=True)
        link = f"/dashboard/clients/{quote(odd, safe='')}"
        assert f'href="{link}"' in page, odd
        assert "/../" not in link and "/./" not in link and "?" not in link and "#" not in link
        answer = client.get(link)
        assert answer.status_code == 200, odd
        assert odd.replace("#", "&#35;") in answer.get_data(as_text=True) or odd in answer.get_data(as_text=True)


@pytest.mark.parametrize("path", ["/health", "/nowhere", "/dashboard/", "/dashboard/nowhere", "/clients?limit=x"])
def test_every_answer_forbids_framing_and_sniffing(deployed, path):
    answer = create_app(deployed, token="").test_client().get(path)
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["X-Frame-Options"] == "DENY"


# GET /clients reaches every client: one by id, and pages past the first 1,000.


def test_one_client_by_id_and_an_unknown_one(odd_ids):
    client = create_app(odd_ids, token="").test_client()
    ranking = client.get("/clients?limit=1000").get_json()["clients"]
    for odd in PATH_IDS:
        answer = client.get(f"/clients/{quote(odd, safe='')}")
        assert answer.status_code == 200, odd
        body = answer.get_json()
        listed = next(row for row in ranking if row["corporation"] == odd)
        assert body["corporation"] == odd and body["probability"] == listed["probability"]
        assert body["label"] == listed["label"] and body["drivers"] == listed["drivers"]
        assert body["reason"] == listed["reason"] and ranking[body["rank"] - 1]["corporation"] == odd
    missing = client.get("/clients/no-such-client")
    assert missing.status_code == 404 and "no-such-client" in missing.get_json()["error"]


def test_clients_page_with_offset(deployed):
    client = create_app(deployed, token="").test_client()
    everyone = client.get("/clients?limit=1000").get_json()
    ids = [row["corporation"] for row in everyone["clients"]]
    assert len(ids) == everyone["count"] > 20
    second = client.get("/clients?limit=10&offset=10").get_json()
    assert [row["corporation"] for row in second["clients"]] == ids[10:20] and second["offset"] == 10
    assert client.get(f"/clients?offset={len(ids)}").get_json()["clients"] == []
    for bad in ("-1", "x", "1.5", "9" * 5000):
        answer = client.get(f"/clients?offset={bad}")
        assert answer.status_code == 400 and "offset must be" in answer.get_json()["error"], bad
    assert client.get("/clients?limit=" + "9" * 5000).status_code == 400


def test_a_folder_the_server_cannot_write_is_named_in_one_sentence(deployed):
    (deployed.prod_deployment_path / ACCESS_FOLDER).write_text("not a folder", encoding="utf-8")
    with pytest.raises(PipelineError, match=f"{ACCESS_FOLDER} cannot be made or read"):
        create_app(deployed, token=TOKEN)


def test_after_sign_in_a_client_link_leads_back_to_the_same_client(deployed):
    client = create_app(deployed, token=TOKEN).test_client()
    link = f"/dashboard/clients/{quote('a/../b', safe='')}"
    answer = client.get(link, environ_overrides={"RAW_URI": link})  # as gunicorn passes the request line
    assert answer.status_code == 302
    page = client.get(answer.headers["Location"]).get_data(as_text=True)
    assert re.search(r'name="next" value="([^"]+)"', page).group(1) == link


def hours_left(set_cookie: str) -> float:
    expires = parsedate_to_datetime(re.search(r"Expires=([^;]+)", set_cookie).group(1))
    return (expires - datetime.now(UTC)).total_seconds() / 3600


def test_a_signed_in_cookie_runs_out_with_the_idle_time_and_is_renewed_by_use(deployed):
    client = create_app(deployed, token=TOKEN).test_client()
    assert 7.9 < hours_left(sign_in(client).headers["Set-Cookie"]) <= 8  # not Flask's 31 days
    assert 7.9 < hours_left(client.get("/dashboard/").headers["Set-Cookie"]) <= 8  # renewed by each page
