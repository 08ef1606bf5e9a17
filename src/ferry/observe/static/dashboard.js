// ferry's live dashboard: polls GET /api/v1/stats with the admin key of this tab's
// sessionStorage, derives rates from two snapshots (as ferry.observe.snapshot.rates
// does) and draws them. No data is in the page itself; nothing comes from another origin.
"use strict";

(function () {
  const KEY_NAME = "ferry-admin-key";
  const STATS = "/api/v1/stats";
  const POLL_MS = 1000;
  const HISTORY_POINTS = 300; // 5 minutes at one a second
  const P95_WINDOW_SCRAPES = 15; // scrapes every 2 s: the p95 of the last 30 s
  const STALE_HEARTBEAT_SECONDS = 30;
  const WORKER_WINDOW_SECONDS = 30;
  // The page's own requests are left out of the proxy's p95.
  const OWN_ROUTES = new Set(["/api/v1/stats", "/metrics", "/dashboard", "/dashboard/static/{name}"]);

  const metricsPath = document.body.dataset.metricsPath || "";
  const $ = (id) => document.getElementById(id);
  const history = [[], [], [], []]; // time, size, in/s, out/s
  let previous = null;
  let timer = null;
  let chart = null;
  let ticks = 0;
  const scrapes = [];
  const heartbeats = new Map(); // worker id -> its start and [heartbeat_at, processed] samples

  function showForm(message) {
    $("board").hidden = true;
    $("forget").hidden = true;
    $("key-form").hidden = false;
    $("key-error").textContent = message || "";
    setStatus("not connected");
    $("key").focus();
  }

  function setStatus(text, isError) {
    $("status").textContent = text;
    $("status").classList.toggle("error", Boolean(isError));
  }

  function start() {
    $("key-form").hidden = true;
    $("board").hidden = false;
    $("forget").hidden = false;
    previous = null;
    history.forEach((series) => (series.length = 0));
    scrapes.length = 0;
    heartbeats.clear();
    if (chart === null) chart = makeChart();
    poll();
  }

  function stop(message) {
    clearTimeout(timer);
    timer = null;
    sessionStorage.removeItem(KEY_NAME);
    showForm(message);
  }

  async function poll() {
    const key = sessionStorage.getItem(KEY_NAME);
    if (!key) return showForm();
    try {
      const response = await fetch(STATS, { headers: { Authorization: "Bearer " + key }, cache: "no-store" });
      const answer = await response.json().catch(() => null);
      if (response.status === 401 || response.status === 403) {
        return stop((answer && answer.detail) || "the key was refused");
      }
      if (!response.ok) throw new Error((answer && (answer.error + ": " + answer.detail)) || "HTTP " + response.status);
      show(answer);
      setStatus("updated " + new Date(answer.taken_at * 1000).toLocaleTimeString());
    } catch (error) {
      setStatus("cannot read " + STATS + ": " + error.message, true);
    }
    if (metricsPath && ticks++ % 2 === 0) scrapeP95(key);
    timer = setTimeout(poll, POLL_MS);
  }

  function show(snapshot) {
    const queue = snapshot.queue;
    let rates = null;
    if (previous !== null && snapshot.taken_at > previous.taken_at) {
      const seconds = snapshot.taken_at - previous.taken_at;
      const perSecond = (before, after) => Math.max(0, after - before) / seconds;
      rates = {
        in: perSecond(previous.queue.enqueued_total, queue.enqueued_total),
        out: perSecond(previous.queue.delivered_total, queue.delivered_total),
      };
    }
    previous = snapshot;

    $("queue-size").textContent = queue.size;
    const band = queue.size < 100 ? ["healthy", ""] : queue.size <= 1000 ? ["monitor", "monitor"] : ["add workers", "add-workers"];
    $("queue-band").textContent = band[0];
    $("queue-band").className = band[1];
    $("rate-in").textContent = rates ? rates.in.toFixed(1) : "-";
    $("rate-out").textContent = rates ? rates.out.toFixed(1) : "-";
    $("oldest-age").textContent = duration(queue.oldest_age_seconds);
    $("in-flight").textContent = queue.in_flight;
    $("retry-scheduled").textContent = queue.retry_scheduled;
    $("dead-letters").textContent = queue.dead_letters;
    $("delivered-total").textContent = queue.delivered_total;

    if (rates) {
      history[0].push(snapshot.taken_at);
      history[1].push(queue.size);
      history[2].push(rates.in);
      history[3].push(rates.out);
      if (history[0].length > HISTORY_POINTS) history.forEach((series) => series.shift());
      chart.setData(history);
    }
    showWorkers(snapshot.workers, workerRates(snapshot.workers));
    showDecisions(snapshot.autoscaler);
  }

  // A worker's figures change with its heartbeat (a third of its lease), not every
  // second: its rate is taken between heartbeats over the last WORKER_WINDOW_SECONDS.
  function workerRates(workers) {
    const throughput = new Map();
    for (const worker of workers) {
      let seen = heartbeats.get(worker.id);
      if (!seen || seen.startedAt !== worker.started_at) {
        seen = { startedAt: worker.started_at, samples: [] };
        heartbeats.set(worker.id, seen);
      }
      const last = seen.samples[seen.samples.length - 1];
      if (!last || last[0] !== worker.heartbeat_at) seen.samples.push([worker.heartbeat_at, worker.processed]);
      while (seen.samples.length > 2 && worker.heartbeat_at - seen.samples[1][0] >= WORKER_WINDOW_SECONDS) seen.samples.shift();
      const first = seen.samples[0];
      const newest = seen.samples[seen.samples.length - 1];
      if (newest[0] > first[0]) throughput.set(worker.id, Math.max(0, newest[1] - first[1]) / (newest[0] - first[0]));
    }
    for (const id of heartbeats.keys()) if (!workers.some((worker) => worker.id === id)) heartbeats.delete(id);
    return throughput;
  }

  function showWorkers(workers, throughput) {
    const body = $("workers").tBodies[0];
    const fastest = Math.max(1e-9, ...throughput.values());
    const rows = workers
      .slice()
      .sort((a, b) => a.id.localeCompare(b.id))
      .map((worker) => {
        const rate = throughput.get(worker.id);
        const cells = [
          text(worker.id),
          text(worker.host),
          text(worker.pid),
          bar(rate === undefined ? 0 : rate / fastest, rate === undefined ? "-" : rate.toFixed(1), false),
          bar(worker.concurrency ? worker.active / worker.concurrency : 0, worker.active + " / " + worker.concurrency, worker.active >= worker.concurrency),
          text(worker.processed),
          text(worker.failed),
          text(worker.retries),
          text(worker.dead),
          text(duration(worker.heartbeat_age_seconds) + " ago"),
        ];
        cells[9].classList.toggle("stale", worker.heartbeat_age_seconds > STALE_HEARTBEAT_SECONDS);
        const row = document.createElement("tr");
        row.dataset.workerId = worker.id;
        row.append(...cells);
        return row;
      });
    body.replaceChildren(...rows);
    $("worker-count").textContent = workers.length + " registered";
  }

  function showDecisions(decisions) {
    const items = (decisions || []).map((decision) => {
      const item = document.createElement("li");
      const when = new Date(decision.at * 1000).toLocaleTimeString();
      item.textContent = `${when} ${decision.host || ""} ${decision.direction} ${decision.from}→${decision.to} (${decision.rule}): ${decision.reason || ""}`;
      return item;
    });
    if (items.length === 0) {
      const none = document.createElement("li");
      none.textContent = "none recorded";
      items.push(none);
    }
    $("decisions").replaceChildren(...items);
  }

  function text(value) {
    const cell = document.createElement("td");
    cell.textContent = String(value);
    return cell;
  }

  function bar(share, label, busy) {
    const cell = document.createElement("td");
    const fill = document.createElement("span");
    fill.className = busy ? "bar busy" : "bar";
    fill.style.width = Math.round(Math.min(1, Math.max(0, share)) * 80) + "px";
    cell.append(fill, document.createTextNode(label));
    return cell;
  }

  function duration(seconds) {
    if (seconds < 10) return seconds.toFixed(1) + "s";
    const whole = Math.floor(seconds);
    if (whole < 60) return whole + "s";
    if (whole < 3600) return Math.floor(whole / 60) + "m" + String(whole % 60).padStart(2, "0") + "s";
    if (whole < 86400) return Math.floor(whole / 3600) + "h" + String(Math.floor((whole % 3600) / 60)).padStart(2, "0") + "m";
    return Math.floor(whole / 86400) + "d" + Math.floor((whole % 86400) / 3600) + "h";
  }

  function makeChart() {
    const element = $("chart");
    const options = {
      width: Math.max(320, element.clientWidth - 16),
      height: 260,
      scales: { x: { time: true }, size: {}, rate: {} },
      series: [
        {},
        { label: "queue size", scale: "size", stroke: "#1d2430", width: 2 },
        { label: "in / s", scale: "rate", stroke: "#3b82f6", width: 1.5 },
        { label: "out / s", scale: "rate", stroke: "#16a34a", width: 1.5 },
      ],
      axes: [{}, { scale: "size", label: "messages" }, { scale: "rate", side: 1, label: "per second", grid: { show: false } }],
    };
    const made = new uPlot(options, history, element);
    window.addEventListener("resize", () => made.setSize({ width: Math.max(320, element.clientWidth - 16), height: 260 }));
    return made;
  }

  // The proxy's p95 from its Prometheus histogram, as histogram_quantile would read the
  // difference of two scrapes: linear within the bucket that holds the 95th percentile.
  async function scrapeP95(key) {
    try {
      const response = await fetch(metricsPath, { cache: "no-store" });
      if (!response.ok) return;
      scrapes.push(buckets(await response.text()));
      if (scrapes.length > P95_WINDOW_SCRAPES) scrapes.shift();
      $("proxy-p95").textContent = scrapes.length < 2 ? "-" : p95Text(scrapes[0], scrapes[scrapes.length - 1]);
    } catch (error) {
      $("proxy-p95").textContent = "n/a";
    }
  }

  function buckets(text) {
    const counts = new Map();
    const line = /^proxy_requests_duration_seconds_bucket\{([^}]*)\} (\S+)/;
    for (const row of text.split("\n")) {
      const found = line.exec(row);
      if (!found) continue;
      const labels = Object.fromEntries([...found[1].matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
      if (OWN_ROUTES.has(labels.route)) continue;
      const bound = labels.le === "+Inf" ? Infinity : Number(labels.le);
      counts.set(bound, (counts.get(bound) || 0) + Number(found[2]));
    }
    return [...counts.entries()].sort((a, b) => a[0] - b[0]);
  }

  function p95Text(older, newer) {
    const before = new Map(older);
    const delta = newer.map(([bound, count]) => [bound, count - (before.get(bound) || 0)]);
    const total = delta.length ? delta[delta.length - 1][1] : 0;
    if (total <= 0) return "no requests";
    const rank = 0.95 * total;
    let lower = 0;
    let below = 0;
    for (const [bound, count] of delta) {
      if (count >= rank) {
        if (bound === Infinity) return "> " + seconds(lower);
        return seconds(lower + ((bound - lower) * (rank - below)) / Math.max(1e-9, count - below));
      }
      lower = bound;
      below = count;
    }
    return "-";
  }

  function seconds(value) {
    return value < 1 ? (value * 1000).toFixed(0) + " ms" : value.toFixed(2) + " s";
  }

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_NAME, key);
    $("key").value = "";
    start();
  });
  $("forget").addEventListener("click", () => stop(""));
  if (!metricsPath) $("proxy-p95").textContent = "n/a";
  if (sessionStorage.getItem(KEY_NAME)) start();
  else showForm();
})();
