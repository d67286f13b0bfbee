"""`make bench`: start SHVYA on embedded defaults and measure, in one run, on this machine:

1. a minimal FastAPI handler (the yardstick) under wrk, 64 connections — before and after the
   SHVYA rows; a run whose two yardsticks differ by more than 15% was made on a busy machine
   and is refused, not reported;
2. POST /inbound-message under the same load (ingest alone, so it has the CPU it would have on
   its own node; jobs wait in JetStream);
3. the pipeline (engage + dispatch, offline responder, log channel) draining a backlog of
   messages from distinct leads;
4. end-to-end latency from inbound to outbound (inbound created_at → outbound sent_at) at a
   steady moderate rate, with all services running, and the scheduler's CPU meanwhile (it runs
   the outbox relay and reconciler, which is what committing first adds besides ingest's own
   confirmation statement).

With `--baseline REF` (or BENCH_BASELINE_REF), rows 2 and 4 are measured for the code at that
git ref as well, in the same run on its own fresh servers, so a change's cost is a ratio of two
figures from one run. The baseline's services run from an export of the ref's sources put in
front of the installed packages on PYTHONPATH; they must install from the same lock.

Figures are printed as a table with ratios against the yardstick measured in this run, and
written to docs/performance.md. Ratios, not absolute numbers, are what compare across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx

from shvya_common.embedded import EmbeddedNats, EmbeddedPostgres, free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
CONNECTIONS = 64
DURATION = int(os.environ.get("BENCH_SECONDS", "15"))
E2E_MESSAGES = int(os.environ.get("BENCH_E2E_MESSAGES", "300"))
E2E_RATE = float(os.environ.get("BENCH_E2E_RATE", "50"))
PIPELINE_MESSAGES = int(os.environ.get("BENCH_PIPELINE_MESSAGES", "3000"))
YARDSTICK_DRIFT = 0.15
SERVICES = ("ingest", "engage", "dispatch", "scheduler")


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


def run_wrk(url: str, threads: int = 1) -> dict[str, float]:
    out = subprocess.run(
        [
            ensure_wrk(),
            f"-t{threads}",
            f"-c{CONNECTIONS}",
            f"-d{DURATION}s",
            "--latency",
            "-s",
            str(ROOT / "bench" / "post.lua"),
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
        raise SystemExit(f"{url}: non-2xx responses or socket errors; wrk said:\n{out}")
    return {"rps": rps, "p50": pct["50"], "p99": pct["99"]}


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


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


@dataclass
class Stack:
    """Fresh NATS and PostgreSQL, and the services of one version of the code."""

    name: str
    tmp: Path
    pythonpath: list[Path] = field(default_factory=list)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    link_secret: str = field(default_factory=lambda: secrets.token_urlsafe(48))

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
            "WORKER_CONCURRENCY": "64",
            "SHVYA_IGNORE_DOTENV": "1",
        }
        env.pop("OPENAI_API_KEY", None)
        if self.pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(str(p) for p in self.pythonpath)
        return env

    def start_servers(self) -> None:
        self.nats.start()
        self.pg.start()

    def start(self, name: str) -> subprocess.Popen[bytes]:
        env = self.env()
        env["METRICS_PORT"] = str(free_port())
        log = (self.logs / f"{name}.log").open("wb")
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
        return proc

    def stop(self) -> None:
        for proc in self.procs.values():
            stop(proc)
        self.procs.clear()
        self.nats.stop()
        self.pg.stop()


async def drain(db_url: str, expected: int) -> tuple[float, int]:
    """Seconds until `expected` outbound messages are recorded, and how many were."""
    conn = await asyncpg.connect(db_url)
    try:
        start = time.monotonic()
        done = 0
        while time.monotonic() - start < 600:
            done = await conn.fetchval(
                "SELECT count(*) FROM messages WHERE direction = 'outbound' AND sent_at IS NOT NULL"
            )
            if done >= expected:
                break
            await asyncio.sleep(0.25)
        return time.monotonic() - start, done
    finally:
        await conn.close()


async def e2e_latency(base: str, db_url: str) -> dict[str, float]:
    """Send E2E_MESSAGES at E2E_RATE/s and read inbound→outbound latency from the database."""
    conn = await asyncpg.connect(db_url)
    before = await conn.fetchval("SELECT count(*) FROM messages WHERE direction = 'outbound'")
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        tasks = []
        for i in range(E2E_MESSAGES):
            body = {
                "phone_number": f"+1303555{i:04d}",
                "contact_name": "Latency",
                "message_text": f"ping {i}",
                "channel": "log",
            }
            tasks.append(asyncio.create_task(client.post("/inbound-message", json=body)))
            await asyncio.sleep(1 / E2E_RATE)
        responses = await asyncio.gather(*tasks)
    if not all(r.status_code == 200 for r in responses):
        raise SystemExit("end-to-end run: some inbound messages were not accepted")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = await conn.fetchval(
            "SELECT count(*) FROM messages WHERE direction = 'outbound' AND sent_at IS NOT NULL"
        )
        if done - before >= E2E_MESSAGES:
            break
        await asyncio.sleep(0.2)
    rows = await conn.fetch(
        """
        SELECT extract(epoch FROM (o.sent_at - i.created_at)) * 1000 AS ms
        FROM messages o JOIN messages i ON i.id = o.reply_to_id
        WHERE o.direction = 'outbound' AND o.sent_at IS NOT NULL AND i.body LIKE 'ping %'
        """
    )
    await conn.close()
    values = sorted(float(r["ms"]) for r in rows)
    if len(values) < E2E_MESSAGES:
        raise SystemExit(f"end-to-end run: only {len(values)}/{E2E_MESSAGES} replies recorded")
    return {
        "count": len(values),
        "p50": statistics.median(values),
        "p99": values[min(len(values) - 1, int(len(values) * 0.99))],
        "max": values[-1],
    }


async def post_many(base: str, count: int) -> None:
    """`count` messages from `count` different leads, 64 at a time (workers stopped)."""
    limit = asyncio.Semaphore(64)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:

        async def one(i: int) -> None:
            async with limit:
                body = {
                    "phone_number": f"+1404555{i:04d}",
                    "contact_name": f"Lead {i}",
                    "message_text": "Do you have the blue one in stock?",
                    "channel": "log",
                }
                response = await client.post("/inbound-message", json=body)
                response.raise_for_status()

        await asyncio.gather(*(one(i) for i in range(count)))


def yardstick() -> dict[str, float]:
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
        return run_wrk(f"http://127.0.0.1:{port}/inbound-message")
    finally:
        stop(minimal)


def measure(stack: Stack, *, pipeline: bool) -> dict[str, dict[str, float]]:
    """Ingest alone under wrk, then (optionally) the pipeline, then e2e with the scheduler's
    CPU, for one version of the code."""
    out: dict[str, dict[str, float]] = {}
    stack.start_servers()
    try:
        stack.start("ingest")
        out["ingest"] = run_wrk(f"{stack.url}/inbound-message")
        stop(stack.procs.pop("ingest"))
        asyncio.run(reset(stack.pg.url, stack.nats.url))
        stack.start("ingest")
        if pipeline:
            asyncio.run(post_many(stack.url, PIPELINE_MESSAGES))
            for name in ("engage", "dispatch", "scheduler"):
                stack.start(name)
            seconds, done = asyncio.run(drain(stack.pg.url, PIPELINE_MESSAGES + 1))
            out["pipeline"] = {"rps": done / seconds}
        else:
            for name in ("engage", "dispatch", "scheduler"):
                stack.start(name)
        time.sleep(3)  # the scheduler's start-up work is not the relay's cost
        scheduler = stack.procs["scheduler"]
        cpu0, t0 = cpu_seconds(scheduler.pid), time.monotonic()
        out["e2e"] = asyncio.run(e2e_latency(stack.url, stack.pg.url))
        out["scheduler_cpu"] = {
            "percent": 100 * (cpu_seconds(scheduler.pid) - cpu0) / (time.monotonic() - t0)
        }
    finally:
        stack.stop()
    return out


async def reset(db_url: str, nats_url: str) -> None:
    """Drop the ingest run's leads, messages and jobs, and its queued JetStream messages."""
    import nats

    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("TRUNCATE leads, messages, jobs, events, ai_sessions CASCADE")
    finally:
        await conn.close()
    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().purge_stream("SHVYA_JOBS")
    finally:
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--baseline",
        default=os.environ.get("BENCH_BASELINE_REF") or None,
        help="git ref whose ingest and end-to-end figures are measured too, for comparison",
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="shvya-bench-"))
    results: dict[str, dict[str, dict[str, float]]] = {}
    steps = 3 + (1 if args.baseline else 0)
    print(f"[1/{steps}] yardstick: minimal FastAPI handler, {CONNECTIONS} conns", flush=True)
    first = yardstick()
    step = 2
    if args.baseline:
        print(f"[{step}/{steps}] baseline {args.baseline}: ingest, e2e", flush=True)
        path = export_ref(args.baseline, tmp / "baseline-src")
        results["baseline"] = measure(Stack("baseline", tmp, path), pipeline=False)
        step += 1
    print(f"[{step}/{steps}] this code: ingest, pipeline ({PIPELINE_MESSAGES}), e2e", flush=True)
    results["current"] = measure(Stack("current", tmp), pipeline=True)
    print(f"[{steps}/{steps}] yardstick again", flush=True)
    last = yardstick()
    drift = abs(first["rps"] - last["rps"]) / max(first["rps"], last["rps"])
    if drift > YARDSTICK_DRIFT:
        raise SystemExit(
            f"refused: the yardstick moved {drift:.0%} during the run ({first['rps']:,.0f} →"
            f" {last['rps']:,.0f} req/s); the machine was busy, so no figure here is comparable"
        )
    base = {k: (first[k] + last[k]) / 2 for k in ("rps", "p50", "p99")}
    report(base, drift, results, args.baseline)
    print(f"logs kept in {tmp}")


def report(
    base: dict[str, float],
    drift: float,
    results: dict[str, dict[str, dict[str, float]]],
    baseline_ref: str | None,
) -> None:
    cur = results["current"]
    rows = [
        (
            "minimal FastAPI handler (yardstick)",
            f"{base['rps']:,.0f} req/s",
            f"{base['p50']:.1f} ms",
            f"{base['p99']:.1f} ms",
            "1.00",
        )
    ]
    versions = [("", cur)]
    if "baseline" in results:
        versions = [(f" — baseline {baseline_ref}", results["baseline"]), (" — this code", cur)]
    for label, res in versions:
        ingest = res["ingest"]
        rows.append(
            (
                f"ingest POST /inbound-message{label}",
                f"{ingest['rps']:,.0f} req/s",
                f"{ingest['p50']:.1f} ms",
                f"{ingest['p99']:.1f} ms",
                f"{ingest['rps'] / base['rps']:.2f}",
            )
        )
    drain_rate = cur["pipeline"]["rps"]
    rows.append(
        (
            "pipeline: inbound → AI (offline) → reply recorded",
            f"{drain_rate:,.0f} msg/s",
            "",
            "",
            f"{drain_rate / base['rps']:.2f}",
        )
    )
    for label, res in versions:
        e2e = res["e2e"]
        rows.append(
            (
                f"end-to-end latency ({int(e2e['count'])} msgs at {E2E_RATE:.0f}/s){label}",
                f"scheduler CPU {res['scheduler_cpu']['percent']:.1f}%",
                f"{e2e['p50']:.1f} ms",
                f"{e2e['p99']:.1f} ms",
                "",
            )
        )
    header = ("what", "throughput", "p50", "p99", "ratio to yardstick")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(5)]
    lines = [
        " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]
    ]
    table = "\n".join([lines[0], "-+-".join("-" * w for w in widths), *lines[1:]])
    print("\n" + table + "\n")
    notes = [f"The yardstick moved {drift:.0%} between the start and the end of the run."]
    if "baseline" in results:
        old, new = results["baseline"], cur
        change = new["ingest"]["rps"] / old["ingest"]["rps"] - 1
        notes.append(
            f"Against {baseline_ref}: ingest throughput {change:+.1%}, end-to-end p50"
            f" {old['e2e']['p50']:.1f} → {new['e2e']['p50']:.1f} ms, p99"
            f" {old['e2e']['p99']:.1f} → {new['e2e']['p99']:.1f} ms, scheduler CPU"
            f" {old['scheduler_cpu']['percent']:.1f}% → {new['scheduler_cpu']['percent']:.1f}%."
        )
    for note in notes:
        print(note)
    md_rows = "\n".join("| " + " | ".join(r) + " |" for r in rows)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    doc = ROOT / "docs" / "performance.md"
    text = doc.read_text() if doc.exists() else ""
    marker = "<!-- bench:latest -->"
    section = (
        f"{marker}\n## Latest `make bench` ({stamp}, {os.cpu_count()} cores)\n\n"
        f"| what | throughput | p50 | p99 | ratio to yardstick |\n|---|---|---|---|---|\n"
        f"{md_rows}\n\n{' '.join(notes)}\n\nRaw: `{json.dumps(results)}`\n{marker}\n"
    )
    if marker in text:
        start = text.index(marker)
        end = text.index(marker, start + len(marker)) + len(marker) + 1
        text = text[:start] + section + text[end:]
    else:
        text = text + "\n" + section
    doc.write_text(text)
    print(f"written to {doc}")


if __name__ == "__main__":
    main()
