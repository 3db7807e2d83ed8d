"""`make demo` as a test (issue 25's "Done when": the demo shows a paid call settled and prints a
trace and a bill): the real `streamledger demo --rate R` runs as a subprocess on the
shared stack, every service a child of it on its default ports and topics, and its output says
what it showed.

The demo's client freezes a hold as soon as the model answers: some 10 s into the stream on a
stack that already has the model (the inference service is the slowest to start), some 35 s in on
a fresh one (learning's first snapshot comes after 30 s). The hold expires 45 s later
(`DemoClient.hold_seconds`) and the ledger service settles it 5 s after that
(`ledger_settle_grace_seconds`; the local settlement window, 30 s, is longer than the peers'
timewindow plus the lead), so the first settlement lands 57-62 s into the stream on a used stack
and some 90 s in on a fresh one (measured; a fixed 80 s run passed on the former and failed on
the latter). So the test ends the demo as a user would, with Ctrl-C, once the ledger shows a hold
of this run settled, and `SECONDS` only bounds it.

The ledger keeps the demo client's holds from earlier runs (the same `demo` identity of Org2),
and the demo's holds table lists them all: the holds this run froze are those the ledger did not
have before it, and those it had OPEN past their settlement window the demo releases first.
No other test uses the services' default ports, the default topics the demo
writes (events.raw, events.clean, usage, ...), the demo tenant or the `demo` identity, so where
this test falls in the suite's order does not matter; it checks the ports are free first.
Like every test that runs the services on their default ports, run it under
`flock /tmp/fabric.lock`.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from devstack.fabric import FabricNetwork
from services.audit.settings import AuditSettings
from services.dashboard.settings import DashboardSettings
from services.inference.settings import InferenceSettings
from services.ingestion.settings import IngestionSettings
from streamledger.ledger import LedgerClient
from tests.integration.conftest import identity

SECONDS = 240
"""The most the demo streams: it is ended (Ctrl-C, as a user would) as soon as the ledger shows a
hold of this run settled, some 60 s in with a model already on the stack, 90 s on a fresh one
(learning's first snapshot comes 30 s in; see the module doc)."""
RATE = 50
"""Events posted per second: enough for a model version learned from the first event to serve
paid calls well within the run (learning snapshots every 30 s), light on a shared machine."""
RUN_TIMEOUT = SECONDS + 240
"""Start-up (smoke round trip, services), the stream, the ending (trace, bill) and the stop."""

pytestmark = [pytest.mark.integration, pytest.mark.fabric, pytest.mark.timeout(RUN_TIMEOUT + 120)]

CLI = str(Path(sys.executable).with_name("streamledger"))
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
DEFAULT_PORTS = {
    "ingestion http": IngestionSettings.model_fields["ingestion_http_port"].default,
    "ingestion grpc": IngestionSettings.model_fields["ingestion_grpc_port"].default,
    "inference": InferenceSettings.model_fields["inference_port"].default,
    "audit http": AuditSettings.model_fields["audit_http_port"].default,
    "audit grpc": AuditSettings.model_fields["audit_grpc_port"].default,
    "dashboard": DashboardSettings.model_fields["dashboard_port"].default,
}


def taken_ports() -> dict[str, int]:
    """The default ports something listens on (a socket that does not share cannot bind them)."""
    taken = {}
    for name, port in DEFAULT_PORTS.items():
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no listener
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:
                taken[name] = port
    return taken


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time in clock ticks) of process `pid`, None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[0], int(fields[19])


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


class Descendants:
    """Every process seen below `root` while it runs (polled from /proc), so that once it has
    exited the test can tell whether any of them is still alive (same pid, same start time)."""

    def __init__(self, root: int, every_s: float = 0.5) -> None:
        self.root = root
        self.every_s = every_s
        self.seen: dict[int, tuple[int, list[str]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> Descendants:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _poll(self) -> None:
        while not self._stop.is_set():
            parents = {}
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
                    parents[int(entry.name)] = stat
            below = {self.root}
            grew = True
            while grew:
                new = {pid for pid, (ppid, _, _) in parents.items() if ppid in below and pid not in below}
                below |= new
                grew = bool(new)
            for pid in below - {self.root}:
                if pid not in self.seen and (cmd := _cmdline(pid)):
                    self.seen[pid] = (parents[pid][2], cmd)
            self._stop.wait(self.every_s)

    def services(self) -> dict[str, int]:
        """The `streamledger serve NAME` processes seen, by name."""
        found = {}
        for pid, (_, cmd) in self.seen.items():  # [python, .../streamledger, serve, NAME]: a script's argv
            at = next((i for i, arg in enumerate(cmd[:-2]) if arg.endswith("/streamledger") and cmd[i + 1] == "serve"),
                      None)
            if at is not None:
                found[cmd[at + 2]] = pid
        return found

    def alive(self) -> dict[int, str]:
        """Those seen that still run (not a zombie), with their command lines."""
        left = {}
        for pid, (started, cmd) in self.seen.items():
            stat = _stat(pid)
            if stat is not None and stat[2] == started and stat[1] != "Z":
                left[pid] = " ".join(cmd)
        return left


async def holds_of_the_demo_client() -> dict[str, dict]:
    """The holds the ledger has for the demo's paying client (Org2's `demo`), acting as it, by id."""
    async with LedgerClient.connect(identity("demo", "Org2")) as ledger:
        me = await ledger.who_am_i()
        return {h["hold_id"]: h for h in await ledger.holds_of(me["Account"])}


def run_the_demo(log: Path, before: dict[str, dict]) -> tuple[int, str, Descendants, float]:
    """`streamledger demo --seconds SECONDS --rate RATE`, given Ctrl-C (SIGINT, to it alone, as the
    first Ctrl-C of a user would end its stream) once the ledger shows a hold it froze (one not in
    `before`) settled, and run to its end; (exit code, output, the processes it started, seconds).
    Its stdout is a file, as a pipe would be: rich prints the live table once, at its end, and wraps
    at COLUMNS. Past RUN_TIMEOUT it gets Ctrl-C (it then stops its services), then SIGKILL with its
    process group."""
    env = {**os.environ, "COLUMNS": "240", "NO_COLOR": "1"}
    started = time.monotonic()
    with open(log, "wb") as out:
        demo = subprocess.Popen([CLI, "demo", "--seconds", str(SECONDS), "--rate", str(RATE)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        with Descendants(demo.pid) as processes:
            try:
                while demo.poll() is None and not a_hold_settled(before):
                    time.sleep(3)
                demo.send_signal(signal.SIGINT)  # (the demo may have ended meanwhile: then a no-op)
                code = demo.wait(RUN_TIMEOUT - (time.monotonic() - started))
            except subprocess.TimeoutExpired:
                demo.send_signal(signal.SIGINT)
                try:
                    demo.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(demo.pid, signal.SIGKILL)
                    demo.wait(10)
                output = ANSI.sub("", log.read_text(errors="replace"))
                raise AssertionError(f"the demo did not end within {RUN_TIMEOUT}s; its output ends:\n"
                                     f"{tail(output)}") from None
    return code, ANSI.sub("", log.read_text(errors="replace")), processes, time.monotonic() - started


def a_hold_settled(before: dict[str, dict]) -> bool:
    """Whether the ledger shows a hold of the demo client, not in `before`, settled with a charge."""
    now = asyncio.run(holds_of_the_demo_client())
    return any(h not in before and hold["status"] == "SETTLED" and hold["charged"] for h, hold in now.items())


def tail(output: str, lines: int = 80) -> str:
    return "\n".join(output.splitlines()[-lines:])


def section(output: str, start: str, end: str | None = None) -> str:
    """The output from the line holding `start` up to the next line holding `end` (the live table's
    last line ends with no newline, so what is printed next may follow it on the same line)."""
    lines = output.splitlines()
    first = next((i for i, line in enumerate(lines) if start in line), None)
    if first is None:
        return ""
    last = next((i for i in range(first + 1, len(lines)) if end and end in lines[i]), len(lines))
    return "\n".join(lines[first:last])


def cells(line: str) -> list[str]:
    """A rich table row's cells, stripped."""
    return [cell.strip() for cell in line.strip().strip("│").split("│")]


def test_the_demo_shows_a_paid_call_settled_and_prints_a_verified_trace_and_bill(
        network: FabricNetwork, tmp_path: Path) -> None:
    assert not (taken := taken_ports()), f"the demo needs the services' default ports; taken: {taken}"
    before = asyncio.run(holds_of_the_demo_client())
    left_open = {h for h, hold in before.items() if hold["status"] == "OPEN" and hold["settle_by"] <= time.time()}

    code, output, processes, took = run_the_demo(tmp_path / "demo.log", before)
    print(f"the demo ran {took:.0f}s (--rate {RATE}, ended by Ctrl-C once a hold settled); output in "
          f"{tmp_path / 'demo.log'}")

    def shown(what: str) -> str:
        return f"{what}; the demo's output ends:\n{tail(output)}"

    assert code == 0, shown(f"the demo exited with {code}")
    # every service it started has stopped, and nothing it started is left behind
    started = re.search(r"^starting services: (.+?) \(logs in", output, re.MULTILINE)
    assert started, shown("the demo did not say which services it started")
    names = started.group(1).split(", ")
    assert {"ingestion", "inference", "ledger", "audit"} <= set(names), shown(f"services started: {names}")
    assert set(processes.services()) == set(names), shown(f"`serve` processes seen: {processes.services()}")
    assert not (left := processes.alive()), shown(f"processes the demo started are still running: {left}")
    assert not (taken := taken_ports()), shown(f"default ports still taken after the demo: {taken}")
    assert "services stopped" in output, shown("the demo did not say its services stopped")
    assert not re.search(r"^\S+ exited with", output, re.MULTILINE), shown("a service exited with an error")

    # the holds an earlier run left open past their settlement window were released first
    assert re.search(r"^(released \d+ holds|no hold) of the demo client", output, re.MULTILINE), \
        shown("the demo did not say which holds an earlier run left open")
    after = asyncio.run(holds_of_the_demo_client())
    assert not (still := {h for h in left_open if after[h]["status"] == "OPEN"}), \
        shown(f"holds left open past their settlement window by an earlier run are still open: {still}")

    # paid calls: some, none failed
    calls = re.search(r"paid inference calls to \S+ ok / failed\s*│\s*([\d,]+) / ([\d,]+)", output)
    assert calls, shown("no count of paid inference calls")
    ok, failed = (int(n.replace(",", "")) for n in calls.groups())
    assert ok > 0 and failed == 0, shown(f"paid inference calls ok {ok}, failed {failed}")

    # a hold this run froze was settled and charged
    holds = section(output, "the demo client's holds on the ledger", "$ streamledger audit")
    rows = [cells(line) for line in holds.splitlines() if re.match(r"\s*│ [0-9a-f]{16}… │", line)]
    ours = {row[0].rstrip("…"): row for row in rows if not any(h.startswith(row[0].rstrip("…")) for h in before)}
    assert ours, shown("the holds table lists no hold of this run")
    settled = {prefix: row for prefix, row in ours.items() if row[1] == "SETTLED" and int(row[5]) > 0}
    assert settled, shown(f"no hold of this run settled with a charge: {list(ours.values())}")

    # the trace of the run's first event verifies, names model versions and the holds that paid
    trace = section(output, "$ streamledger audit trace demo ", "$ streamledger audit bill")
    event = re.search(r"\$ streamledger audit trace demo (\S+) ", trace)
    assert event, shown("the demo printed no trace")
    assert f"VERIFIED  event demo/{event.group(1)}" in trace, shown("the trace did not verify")
    versions = [cells(line) for line in trace.splitlines() if re.match(r"\s*│ \S+ v\d+\s+│ \d+\s+│", line)]
    assert versions and all(v[2] == "MATCH" for v in versions), shown(f"model versions in the trace: {versions}")
    paid_by = section(trace, "holds that paid for their predictions")
    payers = [cells(line)[0] for line in paid_by.splitlines() if re.match(r"\s*│ [0-9a-f]{32} │", line)]
    assert payers, shown("the trace names no hold that paid for the predictions")
    assert all(h[:16] in ours for h in payers), shown(f"holds named by the trace that this run did not freeze: "
                                                      f"{payers}")

    # the bill of a hold this run settled verifies, every receipt with it
    bill = section(output, "$ streamledger audit bill ")
    billed = re.search(r"\$ streamledger audit bill ([0-9a-f]{32})", bill)
    assert billed, shown("the demo printed no bill")
    hold = billed.group(1)
    assert hold[:16] in settled, shown(f"the bill is for {hold}, not a hold this run settled")
    assert f"VERIFIED  hold {hold}" in bill, shown("the bill did not verify")
    receipts = re.search(r"all (\d+) receipts verify against the client's certificate", bill)
    assert receipts and int(receipts.group(1)) > 0, shown("the bill's receipts do not all verify")
    signed = [cells(line) for line in section(bill, "receipts signed by the client", "usage on ").splitlines()
              if re.match(r"\s*│ \d+\s+│", line)]
    assert signed and all(row[-1] == "✓ verifies" for row in signed), shown(f"the bill's receipts: {signed}")
