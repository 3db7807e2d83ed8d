"""The learner's core: routes consumed events to the declared models and tracks what each reflects.

Each model keeps, for every input partition, the next offset it has not yet processed.
A snapshot records those offsets with the model's state, so on restart the consumer seeks
every partition to the smallest recorded offset and each model skips the events it
already reflects: no event is learned twice or skipped, whatever the crash point.

Ordering. Within one partition, events reach a model in offset order, so with one input
partition the model sees exactly the stream order (that is what makes its metrics equal
`river.evaluate.progressive_val_score` and a restarted run's final hash equal an
uninterrupted run's). With several partitions each event is still learned exactly once,
but the interleaving across partitions follows fetch timing and is not reproducible, so
two runs may end with different (equally valid) models. Put the events of a model whose
result must be reproducible on one partition (e.g. key by tenant/source upstream).

`LearnerSet` does no I/O: `handle` takes a consumed record (`streamledger.core.records.Consumed`,
its `tp` the (topic, partition) pair) and returns the records to publish, as
`Output(record_name, key, record)`.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

from services.learning.fetched import Fetched
from services.learning.prequential import Drift, OnlineModel, RejectedEvent
from streamledger.core.models import ModelDeclaration
from streamledger.core.records import Consumed, dead_letter
from streamledger.core.snapshots import FORMAT, SnapshotError, seal, unseal

SERVICE = "learning"
Partition = tuple[str, int]


@dataclass(frozen=True)
class Output:
    record_name: str  # Avro record: DeadLetter, ModelMetrics or ModelSnapshot
    key: str | None
    record: dict[str, Any]


@dataclass
class TrackedModel:
    online: OnlineModel
    version: int = 0
    offsets: dict[Partition, int] = field(default_factory=dict)
    """Per input partition, the next offset this model has not processed."""
    unsnapshotted: int = 0
    """Input records this model has moved past since its last snapshot."""
    last_snapshot_at: float = 0.0
    """When its latest snapshot was sealed (or the model was loaded)."""
    snapshot_offsets: dict[Partition, int] = field(default_factory=dict)
    """The offsets the latest durable snapshot reflects."""
    retry_at: float = 0.0
    """After a failed snapshot write, no new attempt before this time."""
    writing: int | None = None
    """While a sealed snapshot is being written: the input records it covers (`unsnapshotted` when
    sealed; learning goes on meanwhile). None: none in flight."""

    @property
    def model_id(self) -> str:
        return self.online.declaration.model_id


@dataclass(frozen=True)
class Refusal:
    model_id: str
    version: int
    error: SnapshotError | ValueError


class LearnerSet:
    """The declared models one service instance holds: all of them, or those of the shards the
    group gives this replica (`hold`, `drop`; services/learning/shards.py).

    Undecodable records are dead-lettered as the first declared model passes them (they belong to
    no model), so with the models spread over replicas exactly one replica reports each.
    """

    def __init__(self, declarations: list[ModelDeclaration], clock: Callable[[], float] = time.monotonic,
                 holding: Iterable[str] | None = None) -> None:
        self.clock = clock
        self.declarations = {d.model_id: d for d in declarations}
        self.reporter = declarations[0].model_id if declarations else None
        """The model whose passing dead-letters undecodable records."""
        self.models: dict[str, TrackedModel] = {}
        """The models held, in declaration order."""
        self.hold(self.declarations if holding is None else holding)

    # -- which models --------------------------------------------------------------------------

    def hold(self, model_ids: Iterable[str]) -> list[str]:
        """Hold `model_ids` too (fresh: from the beginning, until `resume`d); returns those not held before."""
        wanted = set(model_ids)
        unknown = wanted - set(self.declarations)
        if unknown:
            raise KeyError(f"no declared model {', '.join(sorted(unknown))}")
        new = [m for m in self.declarations if m in wanted and m not in self.models]
        models = {m: self.models.get(m) or TrackedModel(OnlineModel(self.declarations[m]), last_snapshot_at=self.clock())
                  for m in self.declarations if m in wanted or m in self.models}
        self.models = models
        return new

    def drop(self, model_ids: Iterable[str]) -> None:
        """Forget `model_ids` (another replica takes them over from their last snapshot)."""
        for model_id in model_ids:
            self.models.pop(model_id, None)

    # -- restart ---------------------------------------------------------------------------

    def resume(self, model_id: str, snapshots: list[dict[str, Any]]) -> tuple[int | None, list[Refusal]]:
        """Load the newest snapshot of `model_id` that verifies; returns its version and the refused ones.

        A snapshot is refused (never unpickled) if its bytes do not hash to its sha256; the
        next older one is tried. With none left, the model starts fresh from the beginning.
        """
        tracked = self.models[model_id]
        refusals: list[Refusal] = []
        for snapshot in sorted(snapshots, key=lambda s: s["version"], reverse=True):
            try:
                state = unseal(snapshot["model"], snapshot["sha256"], snapshot["format"])
                online = OnlineModel.restore(tracked.online.declaration, state)
            except (SnapshotError, ValueError, KeyError) as exc:
                refusals.append(Refusal(model_id, snapshot["version"], exc))
                continue
            tracked.online = online
            tracked.offsets = {(o["topic"], o["partition"]): o["offset"] for o in snapshot["offsets"]}
            tracked.snapshot_offsets = dict(tracked.offsets)
            # Versions keep rising past refused ones, so a newer snapshot is never shadowed.
            tracked.version = max(s["version"] for s in snapshots)
            return snapshot["version"], refusals
        if snapshots:
            tracked.version = max(s["version"] for s in snapshots)
        return None, refusals

    def start_offsets(self, partitions: list[Partition]) -> dict[Partition, int | None]:
        """Where to seek each partition: the smallest next offset over the models (None: the beginning)."""
        start: dict[Partition, int | None] = {}
        for tp in partitions:
            offsets = [m.offsets.get(tp) for m in self.models.values()]
            start[tp] = None if any(o is None for o in offsets) else min(offsets)
        return start

    # -- the stream ------------------------------------------------------------------------

    def handle(self, consumed: Consumed, event: dict[str, Any] | Exception) -> list[Output]:
        """Feed one consumed record (decoded, or the decode error) to every model still behind it."""
        return self.handle_batch([(consumed, event)])

    def handle_batch(self, records: list[tuple[Consumed, dict[str, Any] | Exception]]) -> list[Output]:
        """Feed consumed records, in offset order per partition, to every model still behind each one."""
        return self.handle_fetched([Fetched.of(list(run)) for _, run in groupby(records, key=lambda r: r[0].tp)])

    def handle_fetched(self, runs: list[Fetched]) -> list[Output]:
        """Feed fetched runs of records, each from one partition in offset order, to every model
        still behind each record.

        One-at-a-time models take each event as it comes; mini-batch models (`batch_size`
        above 1) collect theirs and learn them after the loop, within this same call, so a
        snapshot always sees every model exactly at the offsets it records. Outputs come
        per run: its dead letters for undecodable records first, then each model's, in
        model order.
        """
        outputs: list[Output] = []
        collected: dict[str, list[tuple[Fetched, int]]] = {}
        models = list(self.models.values())
        if not models:
            return outputs
        reporter = self.models.get(self.reporter)
        for run in runs:
            offsets, events = run.offsets, run.events
            if not offsets:
                continue
            tp = (run.topic, run.partition)
            begins = [bisect_left(offsets, tracked.offsets.get(tp, 0)) for tracked in models]
            undecodable = {i for i in range(min(begins), len(events)) if isinstance(events[i], Exception)}
            reported = len(events) if reporter is None else bisect_left(offsets, reporter.offsets.get(tp, 0))
            for index in sorted(i for i in undecodable if i >= reported):
                error = events[index]
                outputs.append(self._dead_letter(run.consumed(index), getattr(error, "reason", "undecodable"),
                                                 str(error)))
            for tracked, begin in zip(models, begins):
                if begin == len(offsets):
                    continue
                if tracked.online.declaration.batch_size > 1:
                    collected.setdefault(tracked.model_id, []).extend(
                        (run, i) for i in range(begin, len(events)) if i not in undecodable)
                else:
                    outputs.extend(self._feed(tracked, run, begin, undecodable))
                tracked.offsets[tp] = offsets[-1] + 1
                tracked.unsnapshotted += len(offsets) - begin
        for model_id, taken in collected.items():
            outputs.extend(self._feed_many(self.models[model_id], taken))
        return outputs

    def _feed_many(self, tracked: TrackedModel, records: list[tuple[Fetched, int]]) -> list[Output]:
        declaration = tracked.online.declaration
        taken = [(run, i, run.events[i]) for run, i in records]
        if not declaration.tenant == declaration.source == "*":
            taken = [(run, i, e) for run, i, e in taken if declaration.takes(e["tenant"], e["source"])]
        # The ref lets a batch learned later (after more fetches) dead-letter by source position.
        events = [(e["features"], e["label"], (run.topic, run.partition, run.offsets[i], e["event_id"]))
                  for run, i, e in taken]
        try:
            outcome = tracked.online.process_many(events)
        except Exception as exc:  # River failed while learning a batch: report each event, keep going
            return [self._dead_letter(run.consumed(i), "model_error",
                                      f"model {tracked.model_id!r}: {type(exc).__name__}: {exc}", e["event_id"])
                    for run, i, e in taken]
        outputs = [
            self._dead_letter(run.consumed(i), rejection.reason, f"model {tracked.model_id!r}: {rejection}",
                              event["event_id"])
            for (run, i, event), rejection in zip(taken, outcome.rejected) if rejection is not None
        ]
        for (topic, partition, offset, event_id), error in outcome.refused:
            # Learned in an earlier fetch: the original bytes are no longer at hand, its position is.
            outputs.append(self._dead_letter(Consumed((topic, partition), topic, partition, offset, None, None),
                                             error.reason,
                                             f"model {tracked.model_id!r}: {error}", event_id))
        outputs.extend(self._metrics(tracked, drift) for drift in outcome.drifts)
        return outputs

    def _feed(self, tracked: TrackedModel, run: Fetched, begin: int, undecodable: set[int]) -> list[Output]:
        """Events `begin`.. of `run` to a one-at-a-time model: the hot loop, one River step per event."""
        outputs: list[Output] = []
        declaration = tracked.online.declaration
        takes = None if declaration.tenant == declaration.source == "*" else declaration.takes
        process = tracked.online.process
        events = run.events
        for index in range(begin, len(events)):
            if undecodable and index in undecodable:
                continue
            event = events[index]
            if takes is not None and not takes(event["tenant"], event["source"]):
                continue
            try:
                step = process(event["features"], event["label"])
            except RejectedEvent as exc:
                outputs.append(self._dead_letter(run.consumed(index), exc.reason,
                                                 f"model {tracked.model_id!r}: {exc}", event["event_id"]))
                continue
            except Exception as exc:  # River failed while learning: report it, keep serving the other events
                outputs.append(self._dead_letter(run.consumed(index), "model_error",
                                                 f"model {tracked.model_id!r}: {type(exc).__name__}: {exc}",
                                                 event["event_id"]))
                continue
            if step.drift is not None:
                outputs.append(self._metrics(tracked, step.drift))
        return outputs

    # -- what to publish -------------------------------------------------------------------

    def due_snapshots(self, every_events: int, every_seconds: float) -> list[TrackedModel]:
        """The models that moved `every_events` input records, or `every_seconds`, since their last
        snapshot was sealed (a snapshot still being written counts as taken)."""
        now = self.clock()
        due = []
        for m in self.models.values():
            moved = m.unsnapshotted - (m.writing or 0)
            if moved and now >= m.retry_at and (moved >= every_events or now - m.last_snapshot_at >= every_seconds):
                due.append(m)
        return due

    def snapshot(self, tracked: TrackedModel) -> Output:
        """The next ModelSnapshot of a model, sealed now; then `snapshot_written` once it is durable, or
        `snapshot_failed` (the model is not due again until one of them)."""
        sealed = seal(tracked.online.state())
        tracked.writing = tracked.unsnapshotted
        tracked.last_snapshot_at = self.clock()
        record = {
            "model_id": tracked.model_id,
            "version": tracked.version + 1,
            "sha256": sealed.sha256,
            "format": FORMAT,
            "offsets": [{"topic": t, "partition": p, "offset": o} for (t, p), o in sorted(tracked.offsets.items())],
            "events_seen": tracked.online.learned,
            "metrics": tracked.online.metric_values(),
            "model": sealed.data,
            "created": _now_ms(),
        }
        return Output("ModelSnapshot", tracked.model_id, record)

    def snapshot_written(self, tracked: TrackedModel, record: dict[str, Any]) -> None:
        tracked.version = record["version"]
        # What the model moved past while this snapshot was being written stays due.
        tracked.unsnapshotted -= tracked.unsnapshotted if tracked.writing is None else tracked.writing
        tracked.writing = None
        tracked.snapshot_offsets = {(o["topic"], o["partition"]): o["offset"] for o in record["offsets"]}

    def snapshot_registered(self, tracked: TrackedModel, record: dict[str, Any]) -> None:
        """The ledger holds the record's version now: the next snapshot takes the next one, even if
        this one never reaches Kafka (a version's hash never changes on the ledger)."""
        tracked.version = record["version"]

    def snapshot_failed(self, tracked: TrackedModel, backoff_seconds: float) -> None:
        tracked.writing = None
        tracked.retry_at = self.clock() + backoff_seconds

    def committed_offsets(self, model_ids: Iterable[str] | None = None) -> dict[Partition, int]:
        """Per partition, the offset every model's (or every one of `model_ids` held) latest durable
        snapshot reflects (safe to commit)."""
        models = list(self.models.values()) if model_ids is None else \
            [self.models[m] for m in model_ids if m in self.models]
        partitions = {tp for m in models for tp in m.snapshot_offsets}
        committed = {}
        for tp in partitions:
            offsets = [m.snapshot_offsets.get(tp) for m in models]
            if all(o is not None for o in offsets):
                committed[tp] = min(offsets)
        return committed

    def metrics_records(self) -> list[Output]:
        return [self._metrics(m, None) for m in self.models.values()]

    def _metrics(self, tracked: TrackedModel, drift: Drift | None) -> Output:
        record = {
            "model_id": tracked.model_id,
            "version": tracked.version,
            "position": tracked.online.learned,
            "metrics": tracked.online.metric_values(),
            "drift": None if drift is None else {
                "detector": drift.detector, "position": drift.position,
                "metric_before": drift.metric_before, "metric_after": drift.metric_after,
            },
            "ts": _now_ms(),
        }
        return Output("ModelMetrics", tracked.model_id, record)

    @staticmethod
    def _dead_letter(consumed: Consumed, reason: str, error: str, key: str | None = None) -> Output:
        record = dead_letter(consumed, reason, error, _now_ms(), service=SERVICE, key=key)
        return Output("DeadLetter", record["key"], record)


def _now_ms() -> int:
    return int(time.time() * 1000)
