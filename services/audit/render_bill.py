"""A bill (`streamledger audit bill`, services/audit/bill.py) for a person, with rich: the verdict,
the hold's terms, each receipt checked, the usage, the settlement, the models paid for."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from services.audit.render import STYLE, _mark, _table

BILL_STYLE = {**STYLE, "DISPUTED": "bold red", "NOT_SETTLED_YET": "bold yellow"}
USAGE_ROWS_SHOWN = 20
CHARGE_REASONS = frozenset({"charge_without_receipt", "charge_exceeds_receipt", "amounts_inconsistent"})


def render_bill(console: Console, b: dict[str, Any]) -> None:
    console.print(Text.assemble((b["status"], BILL_STYLE.get(b["status"], "bold")), "  ", ("hold ", "bold"),
                                (b["hold_id"], "bold")))
    if b.get("detail"):
        console.print(b["detail"], highlight=False)
    terms = b.get("terms")
    if terms:
        table = _table()
        table.add_row("client", f"{terms.get('client')}", "")
        table.add_row("provider", f"{terms.get('provider')}", "")
        table.add_row("amount", f"{terms.get('amount')} at {terms.get('price_per_unit')} a unit · authorized "
                                f"{terms.get('authorized')} · {terms.get('status')}", "")
        table.add_row("expires", f"{_when(terms.get('expires_at'))} · settle by {_when(terms.get('settle_by'))} "
                                 f"(window {terms.get('settlement_window_seconds')} s)", "")
        table.add_row("frozen", f"{terms.get('created_at')} in tx {terms.get('freeze_tx_id')}", "")
        table.add_row("client certificate", str(terms.get("client_cert_subject")), "")
        settlement = b.get("settlement")
        if settlement:
            table.add_row("settlement", f"{settlement.get('status')} · charged {settlement.get('charged')} "
                                        f"(receipt covers {settlement.get('expected_charge')}) · refunded "
                                        f"{settlement.get('refunded')} · {settlement.get('closed_at')}",
                          _mark(not any(p["reason"] in CHARGE_REASONS for p in b.get("problems") or []),
                                "= receipt"))
            table.add_row("settlement tx", f"{settlement.get('tx_id')} · block {settlement.get('block_number')}",
                          _mark(settlement.get("tx_validation") == "VALID", str(settlement.get("tx_validation")))
                          if settlement.get("tx_validation") else "")
        console.print(table)
    receipts = b.get("receipts") or []
    if receipts:
        table = Table(title="receipts signed by the client", show_header=True, header_style="bold")
        for column in ("sequence", "units", "seen on", "requests", "signature"):
            table.add_column(column, overflow="fold")
        for r in receipts:
            requests = r.get("request_ids") or []
            table.add_row(str(r.get("sequence")), str(r.get("units")), ", ".join(r.get("sources") or []),
                          str(len(requests)), _mark(bool(r.get("verified")), "verifies" if r.get("verified")
                                                    else str(r.get("problem"))))
        console.print(table)
    usage = b.get("usage")
    if usage:
        console.print(f"usage on {usage.get('topic')}: {usage.get('requests')} requests, {usage.get('units')} units"
                      f" ({usage.get('duplicates')} duplicates, {usage.get('skipped')} undecodable records skipped)",
                      highlight=False)
        rows = usage.get("records") or []
        if rows:
            table = Table(show_header=True, header_style="bold")
            for column in ("request", "model", "units", "receipt", "offset"):
                table.add_column(column, overflow="fold")
            for u in rows[:USAGE_ROWS_SHOWN]:
                table.add_row(str(u.get("request_id")) + (" (duplicate)" if u.get("duplicate") else ""),
                              f"{u.get('model_id')} v{u.get('model_version')}", str(u.get("units")),
                              f"#{u.get('receipt_sequence')} ({u.get('receipt_units')} units)",
                              f"{u.get('partition')}:{u.get('offset')}")
            console.print(table)
            if len(rows) > USAGE_ROWS_SHOWN:
                console.print(f"... {len(rows) - USAGE_ROWS_SHOWN} more (--json lists all)", style="dim")
    for m in b.get("models") or []:
        console.print(Text.assemble(("model ", "bold"), (f"{m.get('model_id')} v{m.get('version')}", "bold"),
                                    f"  {m.get('requests')} requests, {m.get('units')} units  ",
                                    (str(m.get("status")), BILL_STYLE.get(str(m.get("status")), "bold"))))
        console.print(f"  registered sha256 {m.get('registered_sha256')} (tx {m.get('registered_tx_id')})",
                      highlight=False)
        learned = m.get("learned_from")
        if learned is None:
            console.print("  learned from: unknown (no stored snapshot with offsets)", style="dim")
        for r in learned or []:
            anchored = (f"anchored {r.get('anchored_first')}-{r.get('anchored_last')} in {r.get('batches')} batches, "
                        f"last {r.get('last_batch_id')}" if r.get("batches") else "no anchored batch found")
            console.print(Text.assemble(f"  learned from {r.get('topic')}[{r.get('partition')}] offsets before "
                                        f"{r.get('before_offset')}: {anchored} ",
                                        _mark(r.get("last_batch_on_ledger"), "on the ledger")
                                        if r.get("last_batch_on_ledger") is not None else ""))
    for problem in b.get("problems") or []:
        console.print(Text.assemble(("✗ ", "red"), (problem["reason"], "bold red"), ": ", problem["detail"]))
    for note in b.get("notes") or []:
        console.print(Text.assemble(("note: ", "yellow"), note))


def _when(seconds: Any) -> str:
    if not isinstance(seconds, int) or isinstance(seconds, bool):
        return str(seconds)
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")
