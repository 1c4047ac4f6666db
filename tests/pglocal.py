"""A throwaway local PostgreSQL server (initdb + pg_ctl as the postgres user), for tests."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries here, or the server could not be started; the message says why."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def as_postgres_user(command: list[str]) -> list[str]:
    """`command` run as the postgres user when we are root (initdb and pg_ctl refuse root)."""
    if os.geteuid() != 0:
        return command
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--", *command]
    return ["su", "postgres", "-c", " ".join(command)]


@contextmanager
def local_postgres(root: Path) -> Iterator[str]:
    """A server with its data directory in `root` (an empty folder, made the postgres user's),
    stopped on exit; yields its URL without a database name."""
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not binaries:
        raise PostgresUnavailable(
            "PostgreSQL tests need DATABASE_URL_TEST or the postgresql server binaries "
            "(/usr/lib/postgresql/*/bin/pg_ctl): install postgresql"
        )
    bin_dir = Path(binaries[-1]).parent
    data = root / "data"
    port = free_port()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        root.chmod(0o700)

    def run(*command: str) -> None:
        result = subprocess.run(as_postgres_user(list(command)), capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise PostgresUnavailable(
                f"could not start a throwaway PostgreSQL ({' '.join(command[:2])}): "
                f"{result.stderr or result.stdout}"
            )

    run(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            as_postgres_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
            timeout=60,
        )
