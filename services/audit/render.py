"""Audit answers (the JSON dicts of the API) for a person, with rich: the verdict first, then the
evidence, step by step, each check marked."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

STYLE = {
    "VERIFIED": "bold green", "MATCH": "bold green", "FOUND": "bold green",
    "NOT_ANCHORED_YET": "bold yellow", "NOT_FOUND": "bold yellow", "UNKNOWN": "bold yellow",
    "NO_SNAPSHOT": "bold yellow", "NOT_REGISTERED": "bold red",
    "TAMPERED": "bold red", "DELETED": "bold red", "MISMATCH": "bold red",
    "LEDGER_UNREACHABLE": "bold magenta", "STORE_UNREACHABLE": "bold magenta", "INVALID_ARGUMENT": "bold red",
}


def _mark(ok: bool | None, text: str = "") -> Text:
    if ok is None:
        return Text("")
    return Text(("✓ " if ok else "✗ ") + text, style="green" if ok else "red")


def _headline(console: Console, status: str, subject: str, detail: str) -> None:
    console.print(Text.assemble((f"{status}", STYLE.get(status, "bold")), "  ", (subject, "bold")))
    if detail:
        console.print(detail, highlight=False)


def _table() -> Table:
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    table.add_column("evidence", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_column("check", no_wrap=True)
    return table


def render_error(console: Console, answer: dict[str, Any]) -> None:
    _headline(console, answer.get("status", "ERROR"), answer.get("field", ""), answer.get("error", ""))


def render_verification(console: Console, v: dict[str, Any]) -> None:
    _headline(console, v["status"], v["event_id"], v.get("detail", ""))
    record, proof, anchor = v.get("record"), v.get("proof"), v.get("anchor")
    leaf = proof.get("content_hash") if proof else None
    ledger_root = anchor.get("merkle_root") if anchor else None
    table = _table()
    if record is not None:
        features = record.get("features")
        summary = (f"tenant {record.get('tenant')} · source {record.get('source')} · ts {record.get('ts')} · "
                   f"{len(features) if isinstance(features, dict) else '?'} features · label {record.get('label')!r}")
        table.add_row("stored record", summary, "")
    else:
        table.add_row("stored record", Text("none", style="dim"), "")
    if v.get("recomputed_hash"):
        table.add_row("recomputed hash", v["recomputed_hash"],
                      _mark(v["recomputed_hash"] == leaf, "= proof leaf") if leaf else "")
    if v.get("stored_hash") is not None or record is not None:
        table.add_row("stored content_hash", str(v.get("stored_hash")),
                      _mark(v.get("stored_hash") == v.get("recomputed_hash"), "= recomputed")
                      if v.get("recomputed_hash") else "")
    if proof is not None:
        siblings = proof.get("siblings") if isinstance(proof.get("siblings"), list) else []
        table.add_row("Merkle proof", f"batch {proof.get('batch_id')} · leaf {proof.get('index')} of {proof.get('size')}"
                                      f" · offset {proof.get('offset')} · {len(siblings)} siblings", "")
        table.add_row("proof leaf", str(leaf), "")
        for depth, sibling in enumerate(siblings):
            table.add_row(f"  sibling {depth}", Text(str(sibling), style="dim"), "")
    else:
        table.add_row("Merkle proof", Text("none", style="dim"), "")
    if v.get("computed_root"):
        table.add_row("computed root", v["computed_root"],
                      _mark(v["computed_root"] == ledger_root, "= ledger root") if ledger_root else "")
    if anchor is not None:
        table.add_row("root on the ledger", str(ledger_root), "")
        table.add_row("anchored batch", f"{anchor.get('batch_id')} · {anchor.get('count')} records · offsets "
                                        f"{anchor.get('first_offset')}-{anchor.get('last_offset')} · "
                                        f"{anchor.get('anchored_at')} by {anchor.get('submitter')}", "")
        table.add_row("Fabric transaction", str(anchor.get("tx_id")),
                      _mark(anchor.get("tx_validation") == "VALID", str(anchor.get("tx_validation")))
                      if anchor.get("tx_validation") else "")
        table.add_row("block", str(anchor.get("block_number")), "")
    elif v["status"] not in ("UNKNOWN", "LEDGER_UNREACHABLE", "STORE_UNREACHABLE"):
        table.add_row("root on the ledger", Text("none", style="dim"), "")
    if v["status"] != "UNKNOWN" and v["status"] != "STORE_UNREACHABLE":
        console.print(table)
    for problem in v.get("problems", []):
        console.print(Text.assemble(("✗ ", "red"), (problem["reason"], "bold red"), ": ", problem["detail"]))


def render_model(console: Console, m: dict[str, Any]) -> None:
    version = m.get("version")
    _headline(console, m["status"], f"{m['model_id']}" + (f" v{version}" if version is not None else ""),
              m.get("detail", ""))
    registered, snapshot = m.get("registered"), m.get("snapshot")
    if registered is None and snapshot is None and m["status"] != "LEDGER_UNREACHABLE":
        return
    table = _table()
    both = registered is not None and snapshot is not None
    table.add_row("registered sha256", str(registered.get("sha256")) if registered else Text("none", style="dim"),
                  _mark(registered.get("sha256") == snapshot.get("sha256"), "= snapshot") if both else "")
    table.add_row("snapshot sha256", str(snapshot.get("sha256")) if snapshot else Text("none", style="dim"), "")
    if registered:
        table.add_row("Fabric transaction", str(registered.get("tx_id")), "")
        table.add_row("block", str(registered.get("block_number")), "")
        table.add_row("registered", f"{registered.get('registered_at')} by {registered.get('submitter')}", "")
    if snapshot:
        table.add_row("snapshot", f"created {snapshot.get('created')} · {snapshot.get('events_seen')} events seen · "
                                  f"format {snapshot.get('format')}", "")
    table.add_row("latest versions", f"ledger {m.get('latest_registered')} · MongoDB {m.get('latest_snapshot')}", "")
    console.print(table)


def render_account(console: Console, a: dict[str, Any]) -> None:
    _headline(console, a["status"], a["account"], a.get("detail", ""))
    if a["status"] != "FOUND":
        return
    totals = a.get("totals") or {}
    console.print(f"balance {a.get('balance')} · frozen in open holds {totals.get('frozen', 0)} · paid "
                  f"{totals.get('paid', 0)} · refunded {totals.get('refunded', 0)} · earned {totals.get('earned', 0)}",
                  highlight=False)
    if a.get("holds"):
        holds = Table(title="holds", show_header=True, header_style="bold")
        for column in ("hold", "role", "counterparty", "status", "amount", "charged", "refunded", "closed by tx"):
            holds.add_column(column, overflow="fold")
        for h in a["holds"]:
            other = h.get("provider") if h.get("role") == "client" else h.get("client")
            holds.add_row(str(h.get("hold_id")), str(h.get("role")), str(other), str(h.get("status")),
                          str(h.get("amount")), str(h.get("charged")), str(h.get("refunded")),
                          str(h.get("close_tx_id") or ""))
        console.print(holds)
    if a.get("settlements"):
        settled = Table(title="settlements, oldest first", show_header=True, header_style="bold")
        for column in ("closed at", "hold", "status", "charged", "refunded", "tx"):
            settled.add_column(column, overflow="fold")
        for s in a["settlements"]:
            settled.add_row(str(s.get("closed_at")), str(s.get("hold_id")), str(s.get("status")), str(s.get("charged")),
                            str(s.get("refunded")), str(s.get("tx_id")))
        console.print(settled)
    history = a.get("history") or []
    if history:
        changes = Table(title=f"balance history ({len(history)} changes, last 10)", show_header=True,
                        header_style="bold")
        for column in ("timestamp", "balance", "tx"):
            changes.add_column(column, overflow="fold")
        for h in history[-10:]:
            changes.add_row(str(h.get("timestamp")), "deleted" if h.get("is_delete") else str(h.get("balance")),
                            str(h.get("tx_id")))
        console.print(changes)


RENDERERS = {"verify": render_verification, "model": render_model, "account": render_account}
