"""The bench's moving parts: a fresh NATS and PostgreSQL with SHVYA's services on them, the fake
model server, wrk, resident-memory sampling and py-spy profiles."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import os
import re
import secrets
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx

from shvya_common.embedded import EmbeddedNats, EmbeddedPostgres, free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
CONNECTIONS = 64
SERVICES = ("ingest", "engage", "dispatch", "scheduler")
FAKE_KEY = "sk-bench"


class Refused(SystemExit):
    """A run whose figures would mean nothing (errors, a busy machine): stop, say why."""


REFUSED_EXIT = 3


def run_bench(main: Callable[[], None]) -> None:
    """A bench's entry point: a refused run prints why and exits with status 3, so a script
    can tell it from a failure."""
    try:
        main()
    except Refused as refused:
        print(str(refused), file=sys.stderr)
        sys.exit(REFUSED_EXIT)


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "wrk"],
            check=True,
            capture_output=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        found = shutil.which("wrk")
    if not found:
        sys.exit("wrk is needed for the benchmark: apt-get install wrk")
    return found


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * _UNITS[unit]


def run_wrk(url: str, seconds: int, script: str = "post.lua") -> dict[str, float]:
    out = subprocess.run(
        [
            ensure_wrk(),
            "-t1",
            f"-c{CONNECTIONS}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(ROOT / "bench" / script),
            url,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    pct = {m.group(1): _ms(m.group(2)) for m in re.finditer(r"\s+(50|99)%\s+(\S+)", out)}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    if non2xx or errors:
        # A figure made of error responses would be meaningless: stop here, loudly.
        raise Refused(f"refused: {url} answered non-2xx or socket errors; wrk said:\n{out}")
    return {"rps": rps, "p50": pct["50"], "p99": pct["99"]}


def wait_http(url: str, timeout: float = 60, contains: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=1)
            if response.status_code < 500 and (contains is None or contains in response.text):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def export_ref(ref: str, dest: Path) -> list[Path]:
    """The `src` folders of `ref`'s packages, exported from git into `dest`."""
    data = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref, "libs", "services"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return [dest / "libs" / "common" / "src", *(dest / "services" / s / "src" for s in SERVICES)]


class FakeModel:
    """The project's fake OpenAI server in a process of its own, answering in `latency` s."""

    def __init__(self, latency: float) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.fakes.openai_server",
                "--port",
                str(self.port),
                "--latency",
                str(latency),
                "--api-key",
                FAKE_KEY,
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stats(self, reset_peak: bool = False) -> dict[str, int]:
        query = "?reset_peak=1" if reset_peak else ""
        result: dict[str, int] = httpx.get(
            f"http://127.0.0.1:{self.port}/_fake/stats{query}", timeout=5
        ).json()
        return result

    def env(self) -> dict[str, str]:
        return {
            "OPENAI_API_KEY": FAKE_KEY,
            "OPENAI_BASE_URL": self.base_url,
            "EMBEDDINGS_PROVIDER": "none",
        }

    def close(self) -> None:
        stop(self.proc)


class MemoryWatch:
    """Samples each service's resident memory while a row runs; keeps the peak."""

    def __init__(self) -> None:
        self.peak: dict[str, float] = collections.defaultdict(float)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def watch(self, procs: dict[str, subprocess.Popen[bytes]]) -> None:
        self._procs = procs

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for name, proc in list(self._procs.items()):
                with contextlib.suppress(OSError, ValueError):
                    self.peak[name] = max(self.peak[name], rss_mb(proc.pid))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Stack:
    """Fresh NATS and PostgreSQL, and the services of one version of the code."""

    name: str
    tmp: Path
    pythonpath: list[Path] = field(default_factory=list)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    metrics: dict[str, int] = field(default_factory=dict)
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    link_secret: str = field(default_factory=lambda: secrets.token_urlsafe(48))
    # What a worker's /metrics shows once it pulls (an older ref may report it later or not).
    ready_metric: str = "shvya_consumer_pending{"

    def __post_init__(self) -> None:
        self.dir = self.tmp / self.name
        self.logs = self.dir / "logs"
        self.logs.mkdir(parents=True)
        self.nats = EmbeddedNats(self.dir / "nats", free_port(), free_port())
        self.pg = EmbeddedPostgres(self.dir / "pg", free_port())
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "NATS_URL": self.nats.url,
            "DATABASE_URL": self.pg.url,
            "ADMIN_TOKEN": self.admin_token,
            "LINK_SECRET": self.link_secret,
            "PORT": str(self.port),
            "LOG_LEVEL": "warning",
            "LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
            "DB_POOL_MAX": "32",
            "SHVYA_IGNORE_DOTENV": "1",
            # The bench fills the database with rows dated "now": nothing is old enough for
            # retention, and its pass would only add noise.
            "RETENTION_INTERVAL_SECONDS": "3600",
            # wrk's static body is one sender: the per-sender limit would answer 429s.
            "INBOUND_RATE_LIMIT": "1000000000/minute",
            "API_RATE_LIMIT": "1000000000/minute",
        }
        for key in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "WORKER_CONCURRENCY"):
            env.pop(key, None)
        if self.pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(str(p) for p in self.pythonpath)
        return env

    def start_servers(self) -> None:
        self.nats.start()
        self.pg.start()

    def start(self, name: str, extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        env = {**self.env(), **(extra or {})}
        port = free_port()
        self.metrics[name] = port
        env["METRICS_PORT"] = str(port)
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", f"shvya_{name}"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
        )
        self.procs[name] = proc
        if name == "ingest":
            wait_http(f"{self.url}/healthz")
            # Warm the company/pipeline cache and the connection pool before measuring.
            httpx.post(
                f"{self.url}/inbound-message",
                json={"phone_number": "+12025550100", "message_text": "warm", "channel": "log"},
                timeout=30,
            ).raise_for_status()
        else:
            # The worker reports its consumers once it has started pulling.
            wait_http(f"http://127.0.0.1:{port}/metrics", 90, contains=self.ready_metric)
        return proc

    def start_all(self, extra: dict[str, dict[str, str]] | None = None) -> None:
        for name in SERVICES:
            if name not in self.procs:
                self.start(name, (extra or {}).get(name))

    def stop_service(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            stop(proc)

    def stop_services(self) -> None:
        for name in list(self.procs):
            self.stop_service(name)

    def stop(self) -> None:
        self.stop_services()
        self.nats.stop()
        self.pg.stop()

    async def reset(self) -> None:
        """Drop every lead, message, job, event and timer, and the queued JetStream messages."""
        import nats

        conn = await asyncpg.connect(self.pg.url)
        try:
            # Only the tables this version has: an older ref (`--baseline`, bench/relay_cost.py)
            # predates the event feed and the timers.
            present = await conn.fetchval(
                "SELECT string_agg(quote_ident(t), ', ') FROM unnest($1::text[]) AS t"
                " WHERE to_regclass(t) IS NOT NULL",
                ["leads", "messages", "jobs", "events", "event_feed", "ai_sessions", "timers"],
            )
            await conn.execute(f"TRUNCATE {present} CASCADE")
        finally:
            await conn.close()
        nc = await nats.connect(self.nats.url)
        try:
            await nc.jetstream().purge_stream("SHVYA_JOBS")
        finally:
            await nc.close()


# A quiet machine of this kind runs the yardstick at 6,900–9,400 req/s (../shared/MEASURED.md).
# Far below that, something else holds the cores (another tenant of the host, a test suite):
# figures in msg/s would measure that, so the run is refused before it starts. Another kind of
# machine sets its own floor (0 turns the check off).
YARDSTICK_DRIFT = 0.15
YARDSTICK_FLOOR = float(os.environ.get("BENCH_MIN_YARDSTICK", "5000"))


def check_quiet(first: dict[str, float], last: dict[str, float] | None = None) -> float:
    """Refuse a run on a busy machine: a yardstick under the floor, or one that moved more than
    15% between the start and the end of the run. Returns the movement (0 before the end)."""
    for reading in (first, last or first):
        if reading["rps"] < YARDSTICK_FLOOR:
            raise Refused(
                f"refused: the yardstick ran at {reading['rps']:,.0f} req/s, under the"
                f" {YARDSTICK_FLOOR:,.0f} req/s this machine gives when it is quiet; something"
                " else holds the cores, so no figure would be comparable"
                " (BENCH_MIN_YARDSTICK sets the floor for another kind of machine)"
            )
    if last is None:
        return 0.0
    drift = abs(first["rps"] - last["rps"]) / max(first["rps"], last["rps"])
    if drift > YARDSTICK_DRIFT:
        raise Refused(
            f"refused: the yardstick moved {drift:.0%} during the run ({first['rps']:,.0f} →"
            f" {last['rps']:,.0f} req/s); the machine was busy, so no figure here is comparable"
        )
    return drift


def yardstick(seconds: int) -> dict[str, float]:
    port = free_port()
    minimal = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.minimal_app:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
            "--loop",
            "uvloop",
            "--http",
            "httptools",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        return run_wrk(f"http://127.0.0.1:{port}/inbound-message", seconds)
    finally:
        stop(minimal)


class Profiler:
    """py-spy on each running service for a while; the top functions by own time."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")

    def start(self, services: dict[str, subprocess.Popen[bytes]], seconds: int, tag: str) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for name, proc in services.items():
            self.procs[f"{tag}-{name}"] = subprocess.Popen(
                [
                    self.exe,
                    "record",
                    "--pid",
                    str(proc.pid),
                    "--duration",
                    str(seconds),
                    "--rate",
                    "100",
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--output",
                    str(self.out / f"{tag}-{name}.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def finish(self) -> None:
        for proc in self.procs.values():
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()

    def top(self, limit: int = 8) -> dict[str, list[tuple[str, float]]]:
        """Per profile: the functions with the most samples on top of the stack (own time),
        as a share of the samples where the process was busy."""
        out: dict[str, list[tuple[str, float]]] = {}
        for path in sorted(self.out.glob("*.txt")):
            own: collections.Counter[str] = collections.Counter()
            total = 0
            for line in path.read_text().splitlines():
                stack, _, count = line.rpartition(" ")
                if not stack or not count.isdigit():
                    continue
                frames = stack.split(";")
                leaf = frames[-1]
                # py-spy's raw frames read "function (file:line)"; group by function and file.
                leaf = re.sub(r":\d+\)$", ")", leaf)
                own[leaf] += int(count)
                total += int(count)
            if total:
                out[path.stem] = [(f, 100 * n / total) for f, n in own.most_common(limit)]
        return out


async def wait_until(probe, predicate, timeout: float, what: str, every: float = 0.2):  # type: ignore[no-untyped-def]
    """Poll `probe` every `every` seconds until `predicate` holds of its value; a poll that
    reads the database costs the database CPU the row under measurement competes for, so the
    polls whose figures come from recorded timestamps poll once a second."""
    deadline = time.monotonic() + timeout
    value = await probe()
    while not predicate(value):
        if time.monotonic() > deadline:
            raise Refused(f"refused: {what} did not happen within {timeout:.0f} s (last: {value})")
        await asyncio.sleep(every)
        value = await probe()
    return value
