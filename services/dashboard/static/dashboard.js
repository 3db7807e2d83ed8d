// StreamLedger dashboard: draws each frame from /events (server-sent events) as plain DOM and SVG.
// Every value from the server goes in through textContent, never as HTML: dead-letter
// errors carry arbitrary input.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function fmtNumber(x, digits = 1) {
  if (x === null || x === undefined) return "–";
  if (Math.abs(x) >= 1e6) return (x / 1e6).toFixed(1) + "M";
  if (Math.abs(x) >= 1e4) return (x / 1e3).toFixed(1) + "k";
  return Number.isInteger(x) ? String(x) : x.toFixed(digits);
}

function fmtAgo(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 60) return Math.round(seconds) + " s";
  if (seconds < 3600) return Math.round(seconds / 60) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}

function fmtTime(epochSeconds) {
  if (!epochSeconds) return "–";
  return new Date(epochSeconds * 1000).toLocaleTimeString([], { hour12: false });
}

function emptyState(title, text) {
  return el("div", { class: "empty-state" }, el("strong", {}, title), text);
}

// A line chart of [x, y] points: an SVG that stretches with its box (so its text lives in
// HTML beside it, unstretched); `markers` are x positions drawn as dashed vertical lines (drift).
function lineChart(points, opts) {
  const w = 300, h = opts.height || 70, padTop = 6, padBottom = 4;
  const box = el("div", { class: "chartbox" + (opts.tall ? " tall" : ""), "data-testid": opts.testid });
  const svg = svgEl("svg", { class: "chart", viewBox: `0 0 ${w} ${h}`, preserveAspectRatio: "none", role: "img" });
  box.append(svg);
  for (let i = 0; i <= 2; i++) {
    const y = padTop + (h - padTop - padBottom) * i / 2;
    svg.append(svgEl("line", { class: "grid", x1: 0, x2: w, y1: y, y2: y, "vector-effect": "non-scaling-stroke" }));
  }
  if (!points.length) {
    box.append(el("span", { class: "nodata" }, opts.empty || "no data yet"));
    return box;
  }
  const xs = points.map(p => p[0]), ys = points.map(p => p[1]);
  const xmin = opts.xmin ?? Math.min(...xs), xmax = opts.xmax ?? Math.max(...xs);
  let ymin = opts.ymin ?? Math.min(...ys), ymax = Math.max(...ys, opts.ymaxAtLeast ?? -Infinity);
  if (ymax === ymin) { ymax = ymin + 1; }
  const sx = x => (xmax === xmin ? w : (x - xmin) / (xmax - xmin) * w);
  const sy = y => padTop + (1 - (y - ymin) / (ymax - ymin)) * (h - padTop - padBottom);
  const d = points.map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
  const base = sy(ymin).toFixed(1);
  svg.append(svgEl("path", { class: "area", d: `${d} L${sx(xs[xs.length - 1]).toFixed(1)},${base} L${sx(xs[0]).toFixed(1)},${base} Z` }));
  svg.append(svgEl("path", { class: "line", d, "vector-effect": "non-scaling-stroke" }));
  if (opts.dots || points.length === 1) {
    // A lone point draws no line; a short bar marks it (circles would stretch with the box).
    const [x, y] = points[points.length - 1].map((v, i) => (i ? sy(v) : sx(v)));
    svg.append(svgEl("line", { class: "dot", x1: Math.max(0, x - 2), x2: Math.min(w, x + 2), y1: y, y2: y,
                               "vector-effect": "non-scaling-stroke" }));
  }
  for (const m of opts.markers || []) {
    const x = sx(m).toFixed(1);
    svg.append(svgEl("line", { class: "drift", x1: x, x2: x, y1: padTop, y2: h - padBottom, "vector-effect": "non-scaling-stroke" }));
  }
  if (opts.axis) {
    box.append(el("span", { class: "ymax" }, opts.axis(ymax)));
    if (opts.ymin === undefined) box.append(el("span", { class: "ymin" }, opts.axis(ymin)));
  }
  if (opts.xlabel) box.append(el("span", { class: "xlabel" }, opts.xlabel(xmin, xmax)));
  return box;
}

// Ledger states from the board (services/dashboard/ledger_view.py) -> [text, pill class].
const LEDGER_STATES = {
  off: ["ledger watcher off", "none"], connecting: ["connecting to the ledger…", "unknown"],
  unreachable: ["ledger unreachable", "down"], checking: ["checking…", "unknown"],
  refused: ["ledger refused the read", "down"],
  registered: ["registered", "ok"], mismatch: ["registered with a different hash", "down"],
  not_registered: ["not registered", "stale"], no_snapshot: ["no snapshot yet", "none"],
  open: ["open", "info"], settled: ["settled", "ok"], released: ["released", "none"],
  not_found: ["no such hold on the ledger", "stale"],
  confirmed: ["confirmed", "ok"], root_mismatch: ["different root on the ledger", "down"],
  pending: ["not on the ledger yet", "stale"],
};

function ledgerPill(state, testid) {
  const [text, cls] = LEDGER_STATES[state.status] || [state.status, "unknown"];
  const shown = state.last_known ? `${text} (last seen ${state.last_known})` : text;
  return el("span", { class: `pill ${cls}`, "data-testid": testid, "data-status": state.status,
                      title: state.error || state.registered_sha256 || state.ledger_root || state.tx_id || "" }, shown);
}

// Fabric identities read "Org1MSP::CN=User1@org1…,OU=client,…": show the common name, keep the rest as a title.
function who(account) {
  if (!account) return "–";
  const cn = /CN=([^,@]+)/.exec(account), msp = account.split("::")[0];
  return el("span", { class: "who", title: account }, cn ? cn[1] : account,
            cn && msp !== account ? el("span", { class: "muted small" }, ` ${msp}`) : null);
}

function short(id, n = 10) {
  if (!id) return "–";
  return id.length > n + 1 ? id.slice(0, n) + "…" : id;
}

// The empty state of a ledger panel says why it is empty: watcher off, unreachable, or nothing yet.
function ledgerEmpty(ledger, nothingYet, text) {
  if (ledger.status === "off") {
    return emptyState("Ledger watcher off", "Set STREAMLEDGER_DASHBOARD_LEDGER=true to read the Fabric ledger.");
  }
  if (ledger.status === "unreachable") {
    return emptyState("Ledger unreachable", `${ledger.error || "no answer"} — retrying.`);
  }
  if (ledger.status === "connecting") return emptyState("Connecting to the ledger…", text);
  return emptyState(nothingYet, text);
}

function statusText(topic) {
  if (topic.status === "flowing") return "flowing";
  if (topic.status === "quiet") return topic.quiet_for === null ? "no new events" : `quiet ${fmtAgo(topic.quiet_for)}`;
  if (topic.status === "empty") return "no events yet";
  return "topic not created";
}

function drawThroughput(frame) {
  const box = document.getElementById("throughput");
  box.replaceChildren(...frame.throughput.map(t => el("div", { class: "card", "data-testid": `topic-${t.label.replace(" ", "-")}` },
    el("div", { class: "top" }, el("span", { class: "name" }, t.label),
       el("span", { class: `pill ${t.status}`, "data-testid": "status" }, statusText(t))),
    el("div", { class: "topic" }, t.topic),
    el("div", { class: "big", "data-testid": "rate" }, fmtNumber(t.rate), el("small", {}, "ev/s")),
    el("div", { class: "muted small", "data-testid": "total" }, `${fmtNumber(t.total, 0)} record${t.total === 1 ? "" : "s"} in total`),
    lineChart(t.series, { xmin: frame.now - frame.window_s, xmax: frame.now, ymin: 0, ymaxAtLeast: 1,
                          axis: y => `${fmtNumber(y)}/s`, testid: "chart", xlabel: () => `last ${fmtAgo(frame.window_s)}`,
                          empty: t.status === "unknown" ? "topic not created yet" : "waiting for samples" }))));
}

function drawGroups(frame) {
  const box = document.getElementById("groups");
  if (!frame.groups.length) {
    box.replaceChildren(emptyState("No consumer groups yet",
      "Lag appears once a service (cleaning, storage, learning…) commits offsets on a watched topic."));
    return;
  }
  const rows = frame.groups.map(g => el("tr", { "data-testid": `group-${g.group}` },
    el("td", {}, el("div", {}, g.service || g.group), g.service ? el("div", { class: "muted small mono" }, g.group) : null),
    el("td", { class: "num", "data-testid": "lag" }, fmtNumber(g.lag, 0)),
    el("td", {}, lineChart(g.series, { xmin: frame.now - frame.window_s, xmax: frame.now, ymin: 0, ymaxAtLeast: 1 })),
    el("td", {}, el("span", { class: `pill ${g.status}`, "data-testid": "status" },
      g.status === "ok" ? (g.lag ? "catching up" : "caught up")
        : `${g.status}: no commit for ${fmtAgo(g.stalled_for)}`)),
    el("td", { class: "num muted small", "data-testid": "consumers" },
       g.members ? `${g.members} connected`
         : g.connected ? el("span", { title: "assigns its partitions itself (no group members): alive by its commits or metrics" },
                            "connected") : "none connected")));
  box.replaceChildren(el("table", {},
    el("thead", {}, el("tr", {}, el("th", {}, "service / group"), el("th", { class: "num" }, "lag"),
                    el("th", {}, "lag trend"), el("th", {}, "state"), el("th", { class: "num" }, "consumers"))),
    el("tbody", {}, ...rows)));
}

function drawModels(frame) {
  const box = document.getElementById("models");
  if (!frame.models.length) {
    box.replaceChildren(emptyState("No model metrics yet",
      "Each model's online metric is drawn here as the learning service publishes to models.metrics."));
    return;
  }
  box.replaceChildren(...frame.models.map(m => el("div", { class: "model", "data-testid": `model-${m.model_id}` },
    el("div", { class: "top" }, el("span", { class: "name" }, m.model_id),
       m.metric ? el("span", { class: "big mid", "data-testid": "metric-value",
                               title: m.learned ? `after ${m.learned} events` : "no event learned yet" },
                     m.value === null ? "–" : fmtNumber(m.value, 3), el("small", {}, m.metric)) : null),
    el("div", { class: "meta" },
       el("span", {}, "version ", el("strong", {}, m.version ?? "–")),
       el("span", { class: "mono", title: m.sha256 || "" }, "sha256 ", m.sha256 ? m.sha256.slice(0, 16) + "…" : "no snapshot yet"),
       el("span", {}, `ledger${m.snapshot_version ? ` (v${m.snapshot_version})` : ""}: `, ledgerPill(m.ledger, "ledger")),
       m.unvouched ? el("span", { class: "pill down", "data-testid": "unvouched",
                                  title: "snapshots on the topic the ledger does not vouch for: inference and learning refuse them" },
                        `${m.unvouched} refused snapshot${m.unvouched === 1 ? "" : "s"}`) : null,
       el("span", { class: "muted" }, `${m.drifts.length} drift${m.drifts.length === 1 ? "" : "s"}`)),
    m.versions && m.versions.length ? el("div", { class: "versions", "data-testid": "versions" },
       el("span", { class: "muted" }, "versions on the ledger:"),
       ...m.versions.slice(0, 6).map(v => el("span", { "data-testid": "version", "data-version": v.version },
         `v${v.version} `, ledgerPill(v.ledger, "version-ledger")))) : null,
    lineChart(m.series, { tall: true, height: 90, axis: y => fmtNumber(y, 3), testid: "chart",
                          markers: m.drifts.map(d => d.position), empty: "no metric points yet",
                          xlabel: (a, b) => `events ${fmtNumber(a, 0)} → ${fmtNumber(b, 0)}` }))));
}

function stat(label, value, testid) {
  return el("div", {}, el("div", { class: "muted small" }, label), el("div", { class: "big", "data-testid": testid }, value));
}

function blocksRead(ledger) {
  if (!ledger.enabled || ledger.first_block === null) return null;
  return el("div", { class: "muted small", "data-testid": "blocks-read" },
    `ledger events read from block ${ledger.first_block} to ${ledger.last_block}`);
}

function drawAnchors(frame) {
  const a = frame.anchors, ledger = frame.ledger, box = document.getElementById("anchors");
  const stats = el("div", { class: "stats" },
    stat("anchors/s", fmtNumber(a.rate)),
    stat("anchor lag (clean records not anchored)", a.lag === null ? "–" : fmtNumber(a.lag, 0)),
    stat("anchored on the ledger", ledger.enabled ? fmtNumber(ledger.counts.anchored, 0) : "–", "anchored-count"));
  const topic = [el("h3", {}, "On ledger.anchors ", el("span", { class: "hint" }, "each checked against the ledger"))];
  if (a.latest.length) {
    topic.push(el("table", { "data-testid": "topic-anchors" },
      el("thead", {}, el("tr", {}, el("th", {}, "time"), el("th", {}, "batch"), el("th", { class: "num" }, "records"),
                      el("th", {}, "merkle root"), el("th", {}, "tx / block"), el("th", {}, "on the ledger"))),
      el("tbody", {}, ...a.latest.slice(0, 8).map(x => el("tr", { "data-testid": "topic-anchor" },
        el("td", {}, fmtTime(x.ts)), el("td", { class: "mono" }, x.batch_id), el("td", { class: "num" }, x.count),
        el("td", { class: "mono", title: x.merkle_root }, short(x.merkle_root, 12)),
        el("td", { class: "mono", title: x.tx_id || "" }, x.tx_id ? `${short(x.tx_id)} / ${x.block ?? "–"}` : "not committed"),
        el("td", {}, ledgerPill(x.ledger, "anchor-ledger")))))));
  } else {
    topic.push(emptyState("No anchors yet",
      "Merkle roots appear here once the ledger service anchors batches of events.clean."));
  }
  const confirmed = [el("h3", {}, "Confirmed on the ledger ", el("span", { class: "hint" }, "BatchAnchored events"))];
  if (ledger.enabled && a.confirmed.length) {
    confirmed.push(el("table", { "data-testid": "confirmed-anchors" },
      el("thead", {}, el("tr", {}, el("th", { class: "num" }, "block"), el("th", {}, "batch"),
                      el("th", { class: "num" }, "records"), el("th", { class: "num" }, "offsets"),
                      el("th", {}, "merkle root"), el("th", {}, "tx"))),
      el("tbody", {}, ...a.confirmed.slice(0, 8).map(x => el("tr", { "data-testid": "confirmed-anchor" },
        el("td", { class: "num" }, x.block), el("td", { class: "mono" }, x.batch_id),
        el("td", { class: "num" }, x.count), el("td", { class: "num" }, `${x.first_offset}–${x.last_offset}`),
        el("td", { class: "mono", title: x.merkle_root }, short(x.merkle_root, 12)),
        el("td", { class: "mono", title: x.tx_id }, short(x.tx_id)))))));
  } else {
    confirmed.push(ledgerEmpty(ledger, "No anchors on the ledger yet",
      "Each AnchorBatch the contract commits appears here with its block."));
  }
  box.replaceChildren(stats, el("div", { class: "split" }, el("div", {}, ...topic), el("div", {}, ...confirmed)));
}

const HOLD_EVENTS = { frozen: ["frozen", "info"], settled: ["settled", "ok"], released: ["released", "none"] };

function drawUsage(frame) {
  const u = frame.usage, ledger = frame.ledger, box = document.getElementById("usage");
  const c = ledger.counts, on = ledger.enabled;
  const stats = el("div", { class: "stats" },
    stat("frozen", on ? fmtNumber(c.frozen, 0) : "–"), stat("settled", on ? fmtNumber(c.settled, 0) : "–"),
    stat("released", on ? fmtNumber(c.released, 0) : "–"),
    stat("charged", on ? fmtNumber(ledger.charged_total, 0) : "–", "charged-total"),
    stat("usage records", fmtNumber(u.records.length, 0)));
  const feed = [el("h3", {}, "On the ledger ", el("span", { class: "hint" }, "HoldFrozen, HoldSettled, HoldReleased"))];
  if (on && u.feed.length) {
    feed.push(el("table", { "data-testid": "hold-feed" },
      el("thead", {}, el("tr", {}, el("th", { class: "num" }, "block"), el("th", {}, "event"), el("th", {}, "hold"),
                      el("th", {}, "client → provider"), el("th", { class: "num" }, "amount"),
                      el("th", { class: "num" }, "charged / refunded"), el("th", {}, "tx"))),
      el("tbody", {}, ...u.feed.slice(0, 8).map(e => el("tr", { "data-testid": "hold-event", "data-hold": e.hold_id },
        el("td", { class: "num" }, e.block),
        el("td", {}, el("span", { class: `pill ${HOLD_EVENTS[e.event][1]}` }, HOLD_EVENTS[e.event][0])),
        el("td", { class: "mono" }, e.hold_id),
        el("td", {}, who(e.client), " → ", who(e.provider)),
        el("td", { class: "num" }, fmtNumber(e.amount, 0)),
        el("td", { class: "num" }, e.event === "frozen" ? "–" : `${fmtNumber(e.charged, 0)} / ${fmtNumber(e.refunded, 0)}`),
        el("td", { class: "mono", title: e.tx_id }, short(e.tx_id)))))));
    feed.push(blocksRead(ledger));
  } else {
    feed.push(ledgerEmpty(ledger, "No freezes or settlements on the ledger yet",
      "Holds appear here as the contract freezes, settles or releases them."));
  }
  const records = [el("h3", {}, "Usage ", el("span", { class: "hint" }, "usage topic, with its hold's settlement"))];
  if (u.records.length) {
    records.push(el("table", { "data-testid": "usage-records" },
      el("thead", {}, el("tr", {}, el("th", {}, "time"), el("th", {}, "hold"), el("th", {}, "client"),
                      el("th", {}, "model"), el("th", { class: "num" }, "units × price"), el("th", {}, "settlement"))),
      el("tbody", {}, ...u.records.slice(0, 8).map(r => el("tr", { "data-testid": "usage-record" },
        el("td", {}, fmtTime(r.ts)), el("td", { class: "mono" }, r.hold_id), el("td", {}, who(r.client)),
        el("td", {}, r.model_id), el("td", { class: "num" }, `${r.units} × ${r.price}`),
        el("td", {}, ledgerPill(r.settlement, "settlement")))))));
  } else {
    records.push(emptyState("No usage records yet",
      "Paid inference calls appear here from the usage topic, each with its hold's settlement on the ledger."));
  }
  box.replaceChildren(stats, el("div", { class: "split" }, el("div", {}, ...feed), el("div", {}, ...records)));
}

function drawDeadLetters(frame) {
  const box = document.getElementById("deadletters");
  if (!frame.dead_letters.length) {
    box.replaceChildren(emptyState("No dead letters", "Every record so far was accepted."));
    return;
  }
  box.replaceChildren(el("table", {},
    el("thead", {}, el("tr", {}, el("th", {}, "time"), el("th", {}, "service"), el("th", {}, "from"),
                    el("th", {}, "key"), el("th", {}, "reason"), el("th", {}, "error"))),
    el("tbody", {}, ...frame.dead_letters.slice(0, 10).map(d => el("tr", { "data-testid": "deadletter" },
      el("td", {}, fmtTime(d.ts)), el("td", {}, d.service), el("td", { class: "mono" }, d.source_topic),
      el("td", { class: "mono" }, d.key ?? "–"), el("td", {}, el("span", { class: "pill stale" }, d.reason)),
      el("td", {}, el("div", { class: "error", title: d.error }, d.error)))))));
}

function drawHeader(frame) {
  const kafka = document.getElementById("kafka");
  if (frame.kafka.connected) {
    kafka.className = "badge ok"; kafka.textContent = "Kafka: connected";
  } else {
    kafka.className = "badge bad";
    kafka.textContent = frame.kafka.error ? "Kafka: unreachable" : "Kafka: waiting";
    kafka.title = frame.kafka.error || "";
  }
  const ledger = document.getElementById("ledger"), l = frame.ledger;
  if (l.status === "connected") {
    ledger.className = "badge ok";
    ledger.textContent = l.height ? `Ledger: connected · block ${l.height - 1}` : "Ledger: connected";
    ledger.title = l.identity || "";
  } else {
    ledger.className = `badge ${l.status === "unreachable" ? "bad" : l.status === "off" ? "off" : "wait"}`;
    ledger.textContent = { off: "Ledger: watcher off", connecting: "Ledger: connecting…",
                           unreachable: "Ledger: unreachable" }[l.status] || `Ledger: ${l.status}`;
    ledger.title = l.error || "";
  }
  document.getElementById("updated").textContent = `updated ${fmtTime(frame.now)}`;
}

// Bills: each hold the usage names, against its settlement on the ledger; "audit" asks for its full bill.
const BILL_VERDICTS = { paid: ["paid on the receipt", "ok"], charge_differs: ["charge ≠ receipt", "down"],
                        open: ["open", "info"], released: ["released", "none"], unknown: ["not read yet", "unknown"] };

function drawBills(frame) {
  const box = document.getElementById("bills");
  if (!frame.bills.length) {
    box.replaceChildren(emptyState("No bills yet", "Holds appear here as paid inference calls are served on them."));
    return;
  }
  box.replaceChildren(el("table", { "data-testid": "bill-rows" },
    el("thead", {}, el("tr", {}, el("th", {}, "hold"), el("th", {}, "client"), el("th", {}, "models"),
                    el("th", { class: "num" }, "requests / units"), el("th", { class: "num" }, "receipt (units #seq)"),
                    el("th", { class: "num" }, "charged / expected"), el("th", {}, "verdict"), el("th", {}, ""))),
    el("tbody", {}, ...frame.bills.slice(0, 10).map(b => {
      const [text, cls] = BILL_VERDICTS[b.verdict] || [b.verdict, "unknown"];
      const button = el("button", { class: "link", type: "button", "data-testid": "bill-audit" }, "audit");
      button.addEventListener("click", () => showBill(b.hold_id));
      return el("tr", { "data-testid": "bill-row", "data-hold": b.hold_id },
        el("td", { class: "mono", title: b.hold_id }, short(b.hold_id, 12)), el("td", {}, who(b.client)),
        el("td", { class: "small" }, b.models.join(", ")),
        el("td", { class: "num" }, `${b.requests} / ${b.units}`),
        el("td", { class: "num" }, b.receipt_sequence ? `${b.receipt_units} #${b.receipt_sequence}` : "none yet"),
        el("td", { class: "num" }, b.settlement.charged === undefined || b.settlement.charged === null
          ? `– / ${b.expected_charge}` : `${b.settlement.charged} / ${b.expected_charge}`),
        el("td", {}, el("span", { class: `pill ${cls}`, "data-testid": "bill-verdict", "data-verdict": b.verdict,
                                  title: b.settlement.error || b.settlement.tx_id || "" }, text)),
        el("td", {}, button));
    }))));
}

const AUDIT_STYLE = { VERIFIED: "ok", MATCH: "ok", PRESENT: "ok", VALID: "ok", COVERED: "ok", PAID: "ok", SETTLED: "ok",
                      TAMPERED: "down", DELETED: "down", MISMATCH: "down", DISPUTED: "down", NOT_FOUND: "down",
                      NOT_REGISTERED: "down", INVALID_ARGUMENT: "down", LEDGER_UNREACHABLE: "down",
                      STORE_UNREACHABLE: "down", API_UNREACHABLE: "down", UNAUTHENTICATED: "down" };

function verdictPill(verdict, testid) {
  return el("span", { class: `pill ${AUDIT_STYLE[verdict] || "stale"}`, "data-testid": testid, "data-verdict": verdict },
            verdict);
}

// An answer of the audit (trace or bill) the audit could not give: its error, never a verdict.
function auditError(answer) {
  return el("div", { class: "empty-state", "data-testid": "audit-error" },
    el("strong", {}, answer.status), answer.error || answer.detail || "");
}

async function askAudit(path) {
  try {
    const response = await fetch(path, { headers: { Accept: "application/json" } });
    return await response.json();
  } catch (err) {
    return { status: "API_UNREACHABLE", error: `the dashboard did not answer: ${err}` };
  }
}

async function showBill(holdId) {
  const box = document.getElementById("bill");
  box.replaceChildren(el("div", { class: "muted small" }, `asking the audit for the bill of ${holdId}…`));
  const b = await askAudit(`/api/bills/${encodeURIComponent(holdId)}`);
  if (b.error) { box.replaceChildren(auditError(b)); return; }
  const receipts = (b.receipts || []).map(r => el("tr", { "data-testid": "bill-receipt" },
    el("td", { class: "num" }, r.sequence), el("td", { class: "num" }, r.units), el("td", {}, (r.sources || []).join(", ")),
    el("td", {}, el("span", { class: `pill ${r.verified ? "ok" : "down"}` }, r.verified ? "signature verifies" : r.problem))));
  box.replaceChildren(el("h3", {}, "audit bill ", el("span", { class: "mono" }, b.hold_id), " ", verdictPill(b.status, "bill-status")),
    el("div", { class: "small" }, b.detail || ""),
    receipts.length ? el("table", { "data-testid": "bill-receipts" },
      el("thead", {}, el("tr", {}, el("th", { class: "num" }, "receipt #"), el("th", { class: "num" }, "units"),
                      el("th", {}, "seen on"), el("th", {}, "signature"))), el("tbody", {}, ...receipts))
      : el("div", { class: "muted small" }, "no signed receipt"),
    ...(b.problems || []).map(p => el("div", { class: "error" }, `${p.reason}: ${p.detail}`)));
}

// `turn(page)` asks for another page of the trace's model versions (the usage counted is the page's).
function drawTrace(t, turn) {
  const box = document.getElementById("lineage");
  if (t.error) { box.replaceChildren(auditError(t)); return; }
  const links = el("table", { "data-testid": "trace-links" },
    el("thead", {}, el("tr", {}, el("th", {}, "link"), el("th", {}, "verdict"), el("th", {}, "evidence"))),
    el("tbody", {}, ...(t.links || []).map(l => el("tr", { "data-testid": "trace-link", "data-link": l.link },
      el("td", {}, l.link), el("td", {}, verdictPill(l.verdict, "link-verdict")), el("td", { class: "small" }, l.detail)))));
  const parts = [el("h3", {}, `${t.tenant} / ${t.event_id} `, verdictPill(t.status, "trace-status")),
                 el("div", { class: "small", "data-testid": "trace-detail" }, t.detail || ""), links];
  if ((t.models || []).length) {
    const page = t.page || {};
    parts.push(el("h3", {}, "model versions that learned from it ",
      el("span", { class: "hint" }, `page ${page.page} of ${page.pages}, ${page.versions} in all`)),
      el("table", { "data-testid": "trace-models" },
        el("thead", {}, el("tr", {}, el("th", {}, "model"), el("th", {}, "registration"), el("th", { class: "num" }, "predictions"),
                        el("th", { class: "num" }, "units"), el("th", {}, "holds"))),
        el("tbody", {}, ...t.models.map(m => el("tr", { "data-testid": "trace-model" },
          el("td", {}, `${m.model_id} v${m.version}`), el("td", {}, verdictPill(m.status, "model-registration")),
          el("td", { class: "num" }, m.predictions), el("td", { class: "num" }, m.units),
          el("td", { class: "mono small" }, (m.holds || []).map(h => short(h, 12)).join(", ") || "–"))))));
    const pager = [];
    if (page.page > 1) pager.push(pageButton("trace-previous", `← page ${page.page - 1}`, () => turn(page.page - 1)));
    if (page.page < page.pages) pager.push(pageButton("trace-next", `page ${page.page + 1} →`, () => turn(page.page + 1)));
    if (pager.length) parts.push(el("div", { class: "small" }, ...pager));
  }
  if ((t.holds || []).length) {
    parts.push(el("h3", {}, "holds that paid for its predictions"),
      el("table", { "data-testid": "trace-holds" },
        el("thead", {}, el("tr", {}, el("th", {}, "hold"), el("th", { class: "num" }, "requests"), el("th", {}, "status"),
                        el("th", { class: "num" }, "charged"))),
        el("tbody", {}, ...t.holds.map(h => el("tr", { "data-testid": "trace-hold", "data-hold": h.hold_id },
          el("td", { class: "mono" }, h.hold_id), el("td", { class: "num" }, h.requests),
          el("td", {}, verdictPill(h.status, "hold-status")), el("td", { class: "num" }, h.charged ?? "–"))))));
  }
  for (const p of t.problems || []) parts.push(el("div", { class: "error" }, `${p.reason}: ${p.detail}`));
  for (const n of t.notes || []) parts.push(el("div", { class: "muted small" }, `note: ${n}`));
  box.replaceChildren(...parts);
}

function pageButton(testid, text, onClick) {
  const button = el("button", { class: "link", type: "button", "data-testid": testid }, text);
  button.addEventListener("click", onClick);
  return button;
}

async function showTrace(tenant, eventId, page) {
  const box = document.getElementById("lineage");
  box.replaceChildren(el("div", { class: "muted small", "data-testid": "trace-waiting" }, `tracing ${tenant} / ${eventId}…`));
  const query = new URLSearchParams({ tenant, event_id: eventId, page: String(page) });
  drawTrace(await askAudit(`/api/trace?${query}`), next => showTrace(tenant, eventId, next));
}

document.getElementById("lineage-form").addEventListener("submit", event => {
  event.preventDefault();
  showTrace(document.getElementById("lineage-tenant").value, document.getElementById("lineage-event").value, 1);
});

const panels = [drawHeader, drawThroughput, drawGroups, drawModels, drawBills, drawAnchors, drawUsage, drawDeadLetters];

function draw(frame) {
  for (const panel of panels) {
    try { panel(frame); } catch (err) { console.warn(`panel ${panel.name} failed`, err); }
  }
}

function setConnection(state, text) {
  const badge = document.getElementById("conn");
  badge.className = `badge ${state}`;
  badge.textContent = text;
  document.body.dataset.connection = state;
}

function connect() {
  // EventSource reconnects by itself after a drop (the server asks for 2 s); the badge
  // says whether the page is live or showing the last frame it got.
  const source = new EventSource("/events");
  source.onopen = () => setConnection("ok", "live");
  source.onerror = () => setConnection("bad", source.readyState === EventSource.CLOSED
    ? "disconnected" : "connection lost: reconnecting…");
  source.addEventListener("frame", event => {
    setConnection("ok", "live");
    draw(JSON.parse(event.data));
  });
}

connect();
