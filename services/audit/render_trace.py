"""A trace (`streamledger audit trace`, services/audit/trace.py) for a person, with rich: the verdict,
then each link of the chain with its verdict, the model versions and the holds that paid."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from services.audit.render import STYLE

GOOD = frozenset({"PRESENT", "MATCH", "VALID", "COVERED", "PAID", "SETTLED"})
BAD = frozenset({"MISMATCH", "TAMPERED", "DELETED", "NOT_FOUND", "NOT_REGISTERED"})


def _verdict(verdict: Any) -> Text:
    text = str(verdict)
    return Text(text, style="bold green" if text in GOOD else "bold red" if text in BAD else
                STYLE.get(text, "bold yellow"))


def render_trace(console: Console, t: dict[str, Any]) -> None:
    console.print(Text.assemble((t["status"], STYLE.get(t["status"], "bold")), "  ", ("event ", "bold"),
                                (f"{t['tenant']}/{t['event_id']}", "bold")))
    if t.get("detail"):
        console.print(t["detail"], highlight=False)
    links = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for column in ("link", "verdict", "evidence"):
        links.add_column(column, overflow="fold", no_wrap=column != "evidence")
    for link in t.get("links") or []:
        links.add_row(link["link"], _verdict(link["verdict"]), link.get("detail") or "")
    console.print(links)
    models = t.get("models") or []
    page = t.get("page") or {}
    if models:
        table = Table(title=f"model versions that learned from it (page {page.get('page')} of {page.get('pages')}, "
                            f"{page.get('versions')} in all)", show_header=True, header_style="bold")
        for column in ("model", "snapshot offset", "registration", "predictions", "units", "holds"):
            table.add_column(column, overflow="fold")
        for m in models:
            table.add_row(f"{m['model_id']} v{m['version']}", str(m.get("covered_by_offset")), _verdict(m["status"]),
                          str(m.get("predictions")), str(m.get("units")), ", ".join(m.get("holds") or []) or "–")
        console.print(table)
        if page.get("pages", 0) > page.get("page", 0):
            console.print(f"... more versions: --page {page['page'] + 1}", style="dim")
    holds = t.get("holds") or []
    if holds:
        table = Table(title="holds that paid for their predictions", show_header=True, header_style="bold")
        for column in ("hold", "requests", "units", "versions", "status", "charged"):
            table.add_column(column, overflow="fold")
        for h in holds:
            table.add_row(h["hold_id"], str(h.get("requests")), str(h.get("units")), ", ".join(h.get("versions") or []),
                          _verdict(h.get("status")), str(h.get("charged")))
        console.print(table)
        console.print("each bill: streamledger audit bill HOLD_ID", style="dim")
    for problem in t.get("problems") or []:
        console.print(Text.assemble(("✗ ", "red"), (problem["reason"], "bold red"), ": ", problem["detail"]))
    for note in t.get("notes") or []:
        console.print(Text.assemble(("note: ", "yellow"), note))
