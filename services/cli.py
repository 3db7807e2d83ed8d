"""The `streamledger` command line.

`streamledger serve NAME` runs one service and loads nothing else: the local dev stack
(`devstack`) is imported only inside the commands that use it (`stack ...`, `demo`, `serve all`).
"""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

SERVICES = ("storage", "cleaning", "learning", "inference", "ingestion", "ledger", "audit", "dashboard")
"""What `serve NAME` runs, in the order `serve all` and the demo start them: consumers before
producers, so nothing waits on a missing topic."""

app = typer.Typer(help="StreamLedger: auditable, pay-per-use machine learning on live data.",
                  pretty_exceptions_show_locals=False,
                  no_args_is_help=True)
stack_app = typer.Typer(help="The local stack: Kafka and FerretDB as local processes.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
console = Console()

_STATE_STYLE = {"healthy": "green", "starting": "yellow", "stopped": "dim", "died": "red", "foreign": "red"}


def _show(statuses) -> None:
    table = Table(title="StreamLedger local stack")
    for column in ("part", "version", "pid", "address", "state"):
        table.add_column(column)
    for s in statuses:
        style = _STATE_STYLE.get(s.state, "")
        table.add_row(s.name, s.version, str(s.pid or "-"), f"127.0.0.1:{s.port}", f"[{style}]{s.state}[/]")
    console.print(table)
    for s in statuses:
        if s.detail and s.state != "healthy":
            console.print(f"[bold]{s.name}[/]: {s.detail}", markup=True, highlight=False)


@stack_app.command()
def up(
    fabric: bool = typer.Option(False, "--fabric", help="also the local Fabric network (or STREAMLEDGER_STACK_FABRIC=1)"),
    kafka_brokers: int | None = typer.Option(None, "--kafka-brokers", min=1, max=9,
                                      help="KRaft nodes (default 1, or STREAMLEDGER_STACK_KAFKA_BROKERS); "
                                           "3: replication factor 3, min.insync.replicas 2"),
) -> None:
    """Install (first run only) and start every part; return once each answers."""
    from devstack import Stack, StackError
    from devstack.settings import StackSettings

    started = time.monotonic()
    try:
        chosen = {"fabric": True} if fabric else {}
        if kafka_brokers is not None:
            chosen["kafka_brokers"] = kafka_brokers
        settings = StackSettings(**chosen)
        statuses = Stack(settings, say=console.print).up()
    except StackError as exc:
        console.print(f"[red]stack up failed:[/] {exc}", highlight=False)
        raise typer.Exit(1)
    _show(statuses)
    if settings.kafka_brokers > 1:
        console.print(f"Kafka clients: STREAMLEDGER_KAFKA_BOOTSTRAP={settings.kafka_bootstrap}", highlight=False)
        console.print(f"(their default, recorded in {settings.kafka_auth_dir / 'bootstrap'})", highlight=False)
    console.print(f"stack up in {time.monotonic() - started:.1f}s")


@stack_app.command()
def down() -> None:
    """Stop every part this stack started; leaves data in place."""
    from devstack import Stack

    stopped = Stack(say=console.print).down()
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@stack_app.command()
def status() -> None:
    """Each part's pid, address and health; exit 1 unless all are healthy."""
    from devstack import Stack

    statuses = Stack(say=console.print).status()
    _show(statuses)
    if any(s.state != "healthy" for s in statuses):
        raise typer.Exit(1)


@stack_app.command()
def logs(part: str, lines: int = typer.Option(50, "--lines", "-n")) -> None:
    """The last lines of a part's log."""
    from devstack import Stack

    try:
        process = Stack().part(part).process
    except KeyError as exc:
        console.print(f"[red]{exc.args[0]}[/]")
        raise typer.Exit(2)
    console.print(f"[dim]{process.logfile}[/]")
    print(process.tail(lines))


@app.command()
def demo(
    seconds: float = typer.Option(None, help="stop after this many seconds (default: run until Ctrl-C)"),
    rate: float = typer.Option(100.0, help="demo events posted per second"),
) -> None:
    """The main job: stack up, every built service, and a live demo stream through them."""
    import asyncio

    from devstack.demo import run_demo
    from devstack.runner import built_services
    from streamledger.settings import CommonSettings

    # the whole system (the ledger service anchors the demo stream); a call, not the command line:
    # every option is given (a default left out would be typer's OptionInfo, not its value)
    up(fabric=True, kafka_brokers=None)
    try:
        asyncio.run(run_demo(CommonSettings(), console, seconds, rate, built_services(SERVICES)))
    except KeyboardInterrupt:
        console.print("stopped")


@app.command()
def serve(service: str = typer.Argument(..., help=f"one of: {', '.join(SERVICES)}, or all"),
          replicas: int = typer.Option(1, "--replicas", min=1,
                                       help="processes of each service that can have replicas (the dashboard runs "
                                            "once); they share its ports (SO_REUSEPORT) and consumer groups")) -> None:
    """Run one service (or `all` built ones, or several replicas, as child processes) until Ctrl-C."""
    if service != "all" and service not in SERVICES:
        console.print(f"[red]unknown service {service!r}[/]; choose one of: {', '.join(SERVICES)}, all")
        raise typer.Exit(2)
    if service == "all" or replicas > 1:
        _serve_group(service, replicas)
        return
    # On Kafka each service is its own principal (streamledger/kafka/acls.py) unless told otherwise.
    os.environ.setdefault("STREAMLEDGER_KAFKA_SASL_USERNAME", service)
    try:
        module = importlib.import_module(f"services.{service}.app")
    except ModuleNotFoundError as exc:
        if exc.name != f"services.{service}" and exc.name != f"services.{service}.app":
            raise
        console.print(f"[red]service {service!r} is not built yet[/] (no services/{service}/app.py)")
        raise typer.Exit(2)
    module.main()


def _serve_group(service: str, replicas: int) -> None:
    from devstack.runner import ServiceGroup, built_services

    group = ServiceGroup()
    names = built_services(SERVICES if service == "all" else [service])
    if not names:
        console.print(f"[red]service {service!r} is not built yet[/] (no services/{service}/app.py)")
        raise typer.Exit(2)
    keys = group.start(names, replicas=replicas)
    console.print(f"running {', '.join(keys)}; logs in {group.log_dir}/service-*.log; Ctrl-C stops them")
    try:
        while not group.exited():
            time.sleep(1)
        for key, code in group.exited().items():
            console.print(f"[red]{key} exited with {code}[/]:\n{group.log_tail(key)}")
        raise typer.Exit(1)
    except KeyboardInterrupt:
        pass
    finally:
        group.stop()


# -- ingest: historical backfill (issue 4) --------------------------------------------------

@app.command()
def ingest(
    file: Path = typer.Argument(..., help="a .csv, .jsonl/.ndjson or .parquet file"),
    api_key: str = typer.Option(None, "--api-key", envvar="STREAMLEDGER_API_KEY", help="the tenant's API key"),
    tenant: str = typer.Option(None, help="must match the API key's tenant (default: the key's)"),
    source: str = typer.Option(None, help="source name of the events (default: the file name)"),
    ts_column: str = typer.Option("ts", help="column with the event time (epoch ms or ISO-8601 with zone)"),
    id_column: str = typer.Option(None, help="column with event ids (default: stable ids from file and row)"),
    label_column: str = typer.Option(None, help="column with the label, if any"),
    topic: str = typer.Option(None, help="target topic (default: STREAMLEDGER_INGESTION_RAW_TOPIC or events.raw)"),
) -> None:
    """Backfill a file into Kafka as RawEvents; re-running the same file adds nothing."""
    from services.ingestion.command import run_ingest

    raise typer.Exit(run_ingest(file, api_key, tenant, source, ts_column, id_column, label_column, topic, console))


# -- audit: record, model and account audits against the ledger (issue 8) ------------------

audit_app = typer.Typer(help="Audit records, models and accounts against the ledger (read-only). Runs in-process "
                             "on MongoDB and the ledger, or asks a running audit API with --api.",
                        no_args_is_help=True)
app.add_typer(audit_app, name="audit")
_AUDIT_JSON = typer.Option(False, "--json", help="print the answer as JSON (the audit API's format)")
_AUDIT_API = typer.Option(None, "--api", envvar="STREAMLEDGER_AUDIT_API_URL",
                          help="ask the audit API at this URL (e.g. http://127.0.0.1:8090) instead of in-process")
_AUDIT_TOKEN = typer.Option(None, "--token", envvar="STREAMLEDGER_AUDIT_TOKEN", show_default=False,
                            help="auditor token for --api")
_AUDIT_CA = typer.Option(None, "--ca", envvar="STREAMLEDGER_AUDIT_API_CA", show_default=False,
                         help="CA certificate (PEM) that issued an https --api's certificate, if not a system-trusted one")


@audit_app.command("verify")
def audit_verify(event_id: str = typer.Argument(..., help="the event id of a stored record"),
                 tenant: str = typer.Option(None, "--tenant", show_default=False,
                                            help="the tenant that sent the event (required: event ids are per tenant)"),
                 as_json: bool = _AUDIT_JSON, api: str = _AUDIT_API, token: str = _AUDIT_TOKEN,
                 ca: Path = _AUDIT_CA) -> None:
    """VERIFIED, TAMPERED, NOT_ANCHORED_YET, DELETED or UNKNOWN, with the chain of evidence."""
    from services.audit.command import run_audit

    raise typer.Exit(run_audit("verify", {"tenant": tenant, "event_id": event_id}, as_json, api, token, console, ca))


@audit_app.command("model")
def audit_model(model_id: str = typer.Argument(...),
                version: int = typer.Argument(None, help="default: the latest version either side knows"),
                as_json: bool = _AUDIT_JSON, api: str = _AUDIT_API, token: str = _AUDIT_TOKEN,
                ca: Path = _AUDIT_CA) -> None:
    """The hash registered on the ledger against the stored snapshot's hash."""
    from services.audit.command import run_audit

    raise typer.Exit(run_audit("model", {"model_id": model_id, "version": version}, as_json, api, token,
                               console, ca))


@audit_app.command("account")
def audit_account(account: str = typer.Argument(..., help="account id, e.g. 'Org1MSP::CN=User1@...'"),
                  as_json: bool = _AUDIT_JSON, api: str = _AUDIT_API, token: str = _AUDIT_TOKEN,
                  ca: Path = _AUDIT_CA) -> None:
    """Balance, holds and settlement history from the ledger."""
    from services.audit.command import run_audit

    raise typer.Exit(run_audit("account", {"account": account}, as_json, api, token, console, ca))


@audit_app.command("bill")
def audit_bill(hold_id: str = typer.Argument(..., help="the hold id (32 hex digits)"),
               as_json: bool = _AUDIT_JSON, api: str = _AUDIT_API, token: str = _AUDIT_TOKEN,
               ca: Path = _AUDIT_CA) -> None:
    """A hold's terms, its client-signed receipts (verified), the usage behind them, the settlement and
    the model versions paid for: VERIFIED, DISPUTED, NOT_SETTLED_YET or NOT_FOUND."""
    from services.audit.command import run_audit

    raise typer.Exit(run_audit("bill", {"hold_id": hold_id}, as_json, api, token, console, ca))


@audit_app.command("trace")
def audit_trace(tenant: str = typer.Argument(..., help="the tenant that sent the event"),
                event_id: str = typer.Argument(..., help="the event id of a stored record"),
                limit: int = typer.Option(20, "--limit", help="model versions a page (1-200)"),
                page: int = typer.Option(1, "--page", help="which page of model versions, from 1"),
                as_json: bool = _AUDIT_JSON, api: str = _AUDIT_API, token: str = _AUDIT_TOKEN,
                ca: Path = _AUDIT_CA) -> None:
    """One event end to end: the record ingested, the clean record and its hash, its Merkle proof, the
    batch, transaction, block and endorsing organisations, the model versions that learned from it (with
    their registrations), and the predictions they served and the holds that paid for them."""
    from services.audit.command import run_audit

    raise typer.Exit(run_audit("trace", {"tenant": tenant, "event_id": event_id, "limit": limit, "page": page},
                               as_json, api, token, console, ca))


# -- wallet: a paying client's credit, holds and receipts (issue 25) ------------------------

wallet_app = typer.Typer(help="A paying client's credit on the ledger, acting as its own identity: an MSP folder "
                              "(--msp-dir, --msp-id) or a local user of the stack (--user User5 --org Org2).",
                         no_args_is_help=True)
app.add_typer(wallet_app, name="wallet")
_WALLET_MSP_DIR = typer.Option(None, "--msp-dir", help="MSP folder of the identity (signcerts/, keystore/)")
_WALLET_MSP_ID = typer.Option(None, "--msp-id", help="its organisation's MSP id, e.g. Org2MSP")
_WALLET_USER = typer.Option(None, "--user", help="a local user of the stack, e.g. User5")
_WALLET_ORG = typer.Option("Org2", "--org", help="the local user's organisation")
_WALLET_JSON = typer.Option(False, "--json", help="print the answer as JSON")


def _wallet(action: str, ask, msp_dir: Path | None, msp_id: str | None, user: str | None, org: str,
            as_json: bool, usage_topic: str | None = None) -> None:
    from streamledger.client.wallet import run_wallet, wallet_settings

    raise typer.Exit(run_wallet(action, ask, lambda: wallet_settings(msp_dir and str(msp_dir), msp_id, user, org),
                                as_json, console, **({"usage_topic": usage_topic} if usage_topic else {})))


@wallet_app.command("balance")
def wallet_balance(msp_dir: Path = _WALLET_MSP_DIR, msp_id: str = _WALLET_MSP_ID, user: str = _WALLET_USER,
                   org: str = _WALLET_ORG, as_json: bool = _WALLET_JSON) -> None:
    """Your spendable credit, and what is frozen in your open holds."""
    _wallet("balance", lambda w: w.balance(), msp_dir, msp_id, user, org, as_json)


@wallet_app.command("freeze")
def wallet_freeze(provider: str = typer.Option(..., "--provider", help="the provider's account id"),
                  amount: int = typer.Option(..., "--amount", help="credit to freeze"),
                  price: int = typer.Option(..., "--price", help="price per unit, fixed for the hold's life"),
                  expires: str = typer.Option(..., "--expires", help="seconds from now (3600) or an ISO-8601 time"),
                  window: int = typer.Option(0, "--window", help="settlement window in seconds (0: the minimum)"),
                  msp_dir: Path = _WALLET_MSP_DIR, msp_id: str = _WALLET_MSP_ID, user: str = _WALLET_USER,
                  org: str = _WALLET_ORG, as_json: bool = _WALLET_JSON) -> None:
    """Freeze credit for a provider at a fixed price; prints the hold id."""
    from streamledger.client.wallet import expiry

    _wallet("freeze", lambda w: w.freeze(provider, amount, price, expiry(expires), window), msp_dir, msp_id, user,
            org, as_json)


@wallet_app.command("holds")
def wallet_holds(msp_dir: Path = _WALLET_MSP_DIR, msp_id: str = _WALLET_MSP_ID, user: str = _WALLET_USER,
                 org: str = _WALLET_ORG, as_json: bool = _WALLET_JSON) -> None:
    """Every hold naming you (HoldsOf), with its receipt and settlement."""
    _wallet("holds", lambda w: w.holds(), msp_dir, msp_id, user, org, as_json)


@wallet_app.command("release")
def wallet_release(hold: str = typer.Argument(..., help="the hold id"),
                   msp_dir: Path = _WALLET_MSP_DIR, msp_id: str = _WALLET_MSP_ID, user: str = _WALLET_USER,
                   org: str = _WALLET_ORG, as_json: bool = _WALLET_JSON) -> None:
    """Take back what no receipt covers, once the hold's settlement window has passed (settle_by)."""
    _wallet("release", lambda w: w.release(hold), msp_dir, msp_id, user, org, as_json)


@wallet_app.command("receipts")
def wallet_receipts(hold: str = typer.Argument(..., help="the hold id"),
                    usage_topic: str = typer.Option(None, "--usage-topic", help="where usage is (default: usage)"),
                    msp_dir: Path = _WALLET_MSP_DIR, msp_id: str = _WALLET_MSP_ID, user: str = _WALLET_USER,
                    org: str = _WALLET_ORG, as_json: bool = _WALLET_JSON) -> None:
    """The receipt recorded on the ledger and those the usage topic carries, each verified."""
    _wallet("receipts", lambda w: w.receipts(hold), msp_dir, msp_id, user, org, as_json, usage_topic)


if __name__ == "__main__":
    app()
