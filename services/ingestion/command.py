"""`streamledger ingest FILE`: the backfill with a progress bar and a summary (rich)."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from services.ingestion.auth import ApiKeys, AuthenticationError
from services.ingestion.backfill import (
    BackfillError,
    BackfillOptions,
    BackfillReport,
    backfill,
)
from services.ingestion.settings import IngestionSettings
from services.ingestion.sink import KafkaUnavailableError

# Quoted values and bare numbers in a message: what varies between rows rejected for one reason.
_VALUE = re.compile(r"'[^']*'|\"[^\"]*\"|(?<![\w-])-?\d[\d.e+]*(?![\w-])")

EXIT_OK, EXIT_KAFKA, EXIT_USAGE, EXIT_SOME_REJECTED = 0, 1, 2, 3


def run_ingest(file: Path, api_key: str | None, tenant: str | None, source: str | None, ts_column: str,
               id_column: str | None, label_column: str | None, topic: str | None, console: Console) -> int:
    """Run the backfill and print its summary; returns the process exit code."""
    settings = IngestionSettings(**({"ingestion_raw_topic": topic} if topic else {}))
    try:
        key_tenant = ApiKeys(settings.ingestion_api_keys).tenant(api_key)
    except AuthenticationError as exc:
        console.print(f"[red]not authorized:[/] {exc} (pass --api-key or set STREAMLEDGER_API_KEY)", highlight=False)
        return EXIT_USAGE
    if tenant and tenant != key_tenant:
        console.print(f"[red]--tenant {tenant!r} does not match the API key's tenant {key_tenant!r}[/]", highlight=False)
        return EXIT_USAGE
    options = BackfillOptions(tenant=key_tenant, source=source or file.name, ts_column=ts_column,
                              id_column=id_column, label_column=label_column)

    started = time.monotonic()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TextColumn("{task.fields[rows]:,} rows"), TextColumn("{task.fields[rate]:,.0f} rows/s"),
                  TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task(file.name, total=1.0, rows=0, rate=0.0)

        def on_progress(p) -> None:
            elapsed = max(time.monotonic() - started, 1e-6)
            bar.update(task, completed=p.done_fraction, rows=p.rows, rate=p.rows / elapsed)

        try:
            report = asyncio.run(backfill(file, options, settings, on_progress))
        except BackfillError as exc:
            console.print(f"[red]cannot backfill:[/] {exc}", highlight=False)
            return EXIT_USAGE
        except KafkaUnavailableError as exc:
            console.print(f"[red]Kafka unavailable:[/] {exc}\nRe-run the same command: event ids are stable, "
                          "so rows already written are not duplicated downstream.", highlight=False)
            return EXIT_KAFKA
    _summary(report, settings.ingestion_raw_topic, time.monotonic() - started, console)
    return EXIT_SOME_REJECTED if report.rejected else EXIT_OK


def _summary(report: BackfillReport, topic: str, seconds: float, console: Console) -> None:
    console.print(f"{report.rows:,} rows read, [green]{report.accepted:,} accepted[/] into {topic}, "
                  f"[{'red' if report.rejected else 'green'}]{len(report.rejected):,} rejected[/] "
                  f"in {seconds:.1f}s ({report.rows / max(seconds, 1e-6):,.0f} rows/s)", highlight=False)
    if not report.rejected:
        return
    reasons = Counter((r.field, _reason(r.error)) for r in report.rejected)
    examples: dict[tuple[str, str], list[int]] = {}
    for r in report.rejected:
        rows = examples.setdefault((r.field, _reason(r.error)), [])
        if len(rows) < 5:
            rows.append(r.index)
    table = Table(title="rejected rows by reason")
    for column in ("rows", "column", "why", "first rows"):
        table.add_column(column)
    for (column, why), count in reasons.most_common(20):
        table.add_row(f"{count:,}", column or "-", why, ", ".join(map(str, examples[(column, why)])))
    console.print(table)


def _reason(error: str) -> str:
    """Group messages that differ only in the offending value (e.g. 'x' is not ...)."""
    return _VALUE.sub("…", error)
