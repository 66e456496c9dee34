"""A throwaway PostgreSQL server for the tests: Debian's postgresql binaries, a cluster in a temporary folder.

PostgreSQL refuses to run as root; when the tests run as root (as CI does) the server runs as
the unprivileged ``postgres`` user that Debian's package creates (or ``risk-postgres``, created
here). Connections from 127.0.0.1 need the password, as a real server's would; the socket
folder is the cluster's own, so nothing outside it is touched.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import free_port

USER = "risk"
PASSWORD = "risk-test-password"
PASSWORD_ENV = "RISK_DATABASE_PASSWORD"
SERVICE_USERS = ("postgres", "risk-postgres")


class PostgresUnavailable(Exception):
    """Why no server can be started here (the tests that need one are skipped with this reason)."""


def find_binaries() -> Path:
    """The newest installed PostgreSQL's bin folder."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda path: int(path.parent.parent.name))
    if not found:
        raise PostgresUnavailable("PostgreSQL is not installed (apt-get install postgresql)")
    return found[-1].parent


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def service_user() -> str | None:
    """The unprivileged user the server runs as when the tests run as root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in SERVICE_USERS:
        if user_exists(name):
            return name
    created = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USERS[-1]],
        capture_output=True,
        text=True,
    )
    if created.returncode != 0 and not user_exists(SERVICE_USERS[-1]):  # another test worker may have just made it
        raise PostgresUnavailable(f"running as root and no unprivileged user could be made: {created.stderr.strip()}")
    return SERVICE_USERS[-1]


@dataclass
class PostgresServer:
    """One cluster: started, stopped (as a crash would, with ``immediate``) and started again on the same port."""

    folder: Path
    port: int
    bin: Path
    run_as: str | None

    def command(self, *args: str) -> list[str]:
        return ["runuser", "-u", self.run_as, "--", *args] if self.run_as else list(args)

    def run(self, *args: str) -> None:
        result = subprocess.run(self.command(*args), capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise PostgresUnavailable(f"{Path(args[0]).name} failed: {(result.stderr or result.stdout).strip()}")

    @classmethod
    def create(cls) -> PostgresServer:
        bin_folder, run_as = find_binaries(), service_user()
        folder = Path(tempfile.mkdtemp(prefix="risk-postgres-"))
        if run_as:
            entry = pwd.getpwnam(run_as)
            os.chown(folder, entry.pw_uid, entry.pw_gid)
        server = cls(folder, free_port(), bin_folder, run_as)
        password_file = folder / "password"
        password_file.write_text(PASSWORD)
        if run_as:
            os.chown(password_file, pwd.getpwnam(run_as).pw_uid, -1)
        server.run(
            str(bin_folder / "initdb"),
            "-D",
            str(folder / "data"),
            "-U",
            USER,
            "--pwfile",
            str(password_file),
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        )
        server.start()
        return server

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        data, log = str(self.folder / "data"), str(self.folder / "server.log")
        self.run(str(self.bin / "pg_ctl"), "-D", data, "-o", options, "-l", log, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self.run(str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", mode, "-w", "stop")

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str, encoding: str = "") -> str:
        """A new empty database (in ``encoding``, when given); its URL (no password: that comes from PASSWORD_ENV)."""
        import psycopg

        options = f" ENCODING '{encoding}' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'" if encoding else ""
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=USER, password=PASSWORD, dbname="postgres", autocommit=True
        ) as connection:
            connection.execute(f'CREATE DATABASE "{name}"{options}')
        return self.url(name)

    def remove(self) -> None:
        with contextlib.suppress(PostgresUnavailable):
            self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)
