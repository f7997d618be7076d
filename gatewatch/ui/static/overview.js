// The overview: headline numbers against the previous period, charts over time, leaderboards.
// Every number comes from /api/v1/usage and /api/v1/usage/top with the page's filters.
"use strict";

(() => {
  const { h } = GW;
  let stackBy = "model";
  let generation = 0;

  const KPIS = {
    cost: { value: (t) => t.cost, fmt: (v) => GW.money(v) },
    requests: { value: (t) => t.requests, fmt: GW.count },
    tokens: { value: (t) => t.input_tokens + t.output_tokens, fmt: GW.tokens },
    error_rate: { value: (t) => (t.requests ? t.errors / t.requests : null), fmt: GW.pct, ratio: true },
    latency_p50_ms: { value: (t) => t.latency_p50_ms, fmt: GW.ms },
    latency_p95_ms: { value: (t) => t.latency_p95_ms, fmt: GW.ms },
    ttft_p50_ms: { value: (t) => t.ttft_p50_ms, fmt: GW.ms },
  };

  function headline(cur, prev, r) {
    for (const [id, k] of Object.entries(KPIS)) {
      const card = document.querySelector(`[data-kpi="${id}"]`);
      const v = k.value(cur);
      const p = k.value(prev);
      card.querySelector(".kpi-value").textContent = k.fmt(v);
      card.dataset.value = v ?? "";
      const delta = card.querySelector(".kpi-delta");
      let text = "none in the previous period";
      let cls = "delta-flat";
      if (v !== null && p !== null && p !== undefined && (p !== 0 || v === 0)) {
        if (k.ratio) {
          const d = (v - p) * 100;
          text = `${d >= 0 ? "▲" : "▼"} ${Math.abs(d).toFixed(2)} pts`;
          cls = d > 0 ? "delta-up" : d < 0 ? "delta-down" : "delta-flat";
        } else if (p === 0) {
          text = "none in either period";
        } else {
          const d = (v - p) / p;
          text = `${d >= 0 ? "▲" : "▼"} ${Math.abs(d * 100).toFixed(1)} %`;
          cls = Math.abs(d) < 0.005 ? "delta-flat" : d > 0 ? "delta-up" : "delta-down";
        }
        if (k.ratio || p !== 0) text += " vs previous";
      }
      delta.textContent = text;
      delta.className = `kpi-delta ${cls}`;
      delta.title = `previous ${r.label}: ${k.fmt(p)}`;
    }
  }

  function pointsOf(answer) { // the ungrouped series, or zeros when there was no traffic
    return answer.series[0]?.points
      || answer.buckets.map((b) => ({ bucket: b, requests: 0, errors: 0, input_tokens: 0,
        output_tokens: 0, cache_read_tokens: 0, cache_write_tokens: 0, reasoning_tokens: 0,
        cost: 0, latency_p50_ms: null, latency_p95_ms: null, ttft_p50_ms: null, ttft_p95_ms: null }));
  }

  function openLog(answer, i, extra) {
    const start = answer.buckets[i];
    const end = answer.buckets[i + 1] || answer.end;
    const p = new URLSearchParams(GW.filters());
    p.set("range", "custom");
    const local = (iso) => { const d = new Date(iso); return new Date(d - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16); };
    p.set("start", local(start));
    p.set("end", local(end));
    for (const [k, v] of Object.entries(extra || {})) p.set(k, v);
    location.href = `/ui/requests?${p}`;
  }

  function charts(cur, spend, r) {
    const pts = pointsOf(cur);
    const labels = cur.buckets;
    const per = { hour: "hour", day: "day", week: "week", month: "month" }[r.bucket];
    document.getElementById("spend-title").textContent = `Spend per ${per}`;
    Charts.draw(document.getElementById("chart-spend"), {
      title: "spend", kind: "bar", unit: "money", labels, bucket: r.bucket,
      series: spend.series.map((x) => ({
        name: x.other ? "other" : (x.group[stackBy] ?? "(none)"),
        values: x.points.map((p) => p.cost),
      })),
      empty: "No spend in this range",
      onClick: (i) => openLog(cur, i),
    });
    Charts.draw(document.getElementById("chart-tokens"), {
      title: "tokens", kind: "bar", unit: "tokens", labels, bucket: r.bucket,
      series: [
        { name: "input", values: pts.map((p) => p.input_tokens - p.cache_read_tokens - p.cache_write_tokens) },
        { name: "cache read", values: pts.map((p) => p.cache_read_tokens) },
        { name: "cache write", values: pts.map((p) => p.cache_write_tokens) },
        { name: "output", values: pts.map((p) => p.output_tokens) },
      ],
      onClick: (i) => openLog(cur, i),
    });
    Charts.draw(document.getElementById("chart-requests"), {
      title: "requests", kind: "bar", unit: "requests", labels, bucket: r.bucket,
      series: [
        { name: "ok", values: pts.map((p) => p.requests - p.errors), color: "#4e79a7" },
        { name: "errors", values: pts.map((p) => p.errors), color: "#e15759" },
      ],
      onClick: (i, name) => openLog(cur, i, name === "errors" ? { status: "error" } : {}),
    });
    Charts.draw(document.getElementById("chart-latency"), {
      title: "latency", kind: "line", unit: "ms", labels, bucket: r.bucket,
      series: [
        { name: "p50", values: pts.map((p) => p.latency_p50_ms), color: "#4e79a7" },
        { name: "p95", values: pts.map((p) => p.latency_p95_ms), color: "#f28e2b" },
      ],
    });
    Charts.draw(document.getElementById("chart-ttft"), {
      title: "ttft", kind: "line", unit: "ms", labels, bucket: r.bucket,
      series: [
        { name: "TTFT p50", values: pts.map((p) => p.ttft_p50_ms), color: "#59a14f" },
        { name: "TTFT p95", values: pts.map((p) => p.ttft_p95_ms), color: "#b07aa1" },
      ],
      empty: "No streamed requests in this range",
    });
  }

  function shareBar(share) {
    return h("div", { class: "share", title: GW.pct(share) }, h("i", { style: { width: `${(share * 100).toFixed(1)}%` } }));
  }

  function logLink(text, filter) {
    const p = new URLSearchParams({ ...GW.filters(), ...filter });
    const r = GW.params();
    for (const k of ["range", "start", "end"]) if (r.get(k)) p.set(k, r.get(k));
    return h("a", { href: `/ui/requests?${p}`, text });
  }

  function table(id, rows, cells, empty) {
    const body = document.querySelector(`#${id} tbody`);
    const cols = document.querySelectorAll(`#${id} thead th`).length;
    body.replaceChildren(...(rows.length ? rows.map((row) => h("tr", {}, cells(row).map((c) => c))) :
      [h("tr", {}, h("td", { colspan: cols, class: "muted", text: empty }))]));
  }

  // each leaderboard: its /api/v1/usage/top dimension and how a row is drawn
  const BOARDS = {
    leaderboard: { dimension: "user", limit: 10, empty: "No users with traffic in this range",
      row: (u) => [
        h("td", { class: "num muted", text: u.rank }),
        h("td", {}, logLink(u.user ?? "(no user)", u.user_id ? { initiator: u.user_id } : {}),
          GW.me.role === "owner" && !GW.org() && u.org ? h("span", { class: "muted small" }, ` · ${u.org}`) : null),
        h("td", { class: "num", text: GW.money(u.cost) }),
        h("td", { class: "num", text: GW.compact(u.tokens), title: GW.tokens(u.tokens) }),
        h("td", { class: "num", text: GW.count(u.requests) }),
        h("td", {}, shareBar(u.share)),
      ] },
    "top-models": { dimension: "model", limit: 8, percentiles: true, empty: "No models used in this range",
      row: (m) => [
        h("td", {}, logLink(m.model ?? "(none)", m.model ? { model: m.model } : {})),
        h("td", { class: "num", text: GW.money(m.cost) }),
        h("td", { class: "num", text: GW.count(m.requests) }),
        h("td", { class: "num", text: GW.ms(m.latency_p95_ms) }),
        h("td", {}, shareBar(m.share)),
      ] },
    "top-clients": { dimension: "client", limit: 8, empty: "No clients in this range",
      row: (c) => [
        h("td", {}, c.client ? logLink(c.client, { client: c.client }) : h("span", { class: "muted", text: "(not detected)" })),
        h("td", { class: "num", text: GW.money(c.cost) }),
        h("td", { class: "num", text: GW.count(c.requests) }),
        h("td", { class: "num", text: GW.count(c.errors) }),
        h("td", {}, shareBar(c.share)),
      ] },
  };

  // The leaderboards sit below the charts: they are asked for when they come near the screen
  // (at once on a tall screen), so the headline numbers and charts never wait for them.
  let boardsSpan = null;
  let boardsFor = 0;

  function boardsNear() {
    const box = document.querySelector(".grid.tables").getBoundingClientRect();
    return box.top < innerHeight + 400;
  }

  async function loadBoards() {
    const mine = generation;
    if (!boardsSpan || boardsFor === mine) return;
    boardsFor = mine;
    const span = boardsSpan;
    // each table is drawn as soon as its own answer arrives
    await Promise.all(Object.entries(BOARDS).map(async ([id, b]) => {
      const top = await GW.api("/api/v1/usage/top",
        { ...span, dimension: b.dimension, limit: b.limit, percentiles: Boolean(b.percentiles) });
      if (mine === generation) table(id, top.results, b.row, b.empty);
    }));
    if (mine !== generation) return;
    performance.mark("gw-loaded-all");
    document.body.dataset.boards = String(mine);
  }

  async function load() {
    const mine = ++generation;
    const r = GW.range();
    const f = GW.filters();
    delete f.status;
    delete f.q;
    const span = { ...f, start: r.start, end: r.end };
    boardsSpan = null;
    for (const body of document.querySelectorAll(".grid.tables tbody")) {
      body.replaceChildren(h("tr", {}, h("td", { colspan: 6, class: "muted", text: "Loading …" })));
    }
    const [cur, prev, spend] = await Promise.all([
      GW.api("/api/v1/usage", { ...span, bucket: r.bucket, tz: GW.tz }),
      GW.api("/api/v1/usage", { ...f, start: r.prevStart, end: r.start, bucket: "month", tz: GW.tz }),
      GW.api("/api/v1/usage", { ...span, bucket: r.bucket, tz: GW.tz, group_by: stackBy, top: 8 }),
    ]);
    if (mine !== generation) return; // a newer load started meanwhile
    document.getElementById("overview-empty").hidden = cur.totals.requests > 0;
    headline(cur.totals, prev.totals, r);
    charts(cur, spend, r);
    GW.loaded(mine);
    boardsSpan = span;
    if (boardsNear()) loadBoards().catch(GW.showError);
  }

  const reload = () => load().catch(GW.showError);

  document.addEventListener("DOMContentLoaded", () => {
    for (const b of document.querySelectorAll("[data-stack]")) {
      b.addEventListener("click", () => {
        stackBy = b.dataset.stack;
        for (const o of document.querySelectorAll("[data-stack]")) o.setAttribute("aria-pressed", String(o === b));
        reload();
      });
    }
    GW.filterBar(reload);
    reload();
    new IntersectionObserver((seen) => {
      if (seen.some((e) => e.isIntersecting)) loadBoards().catch(GW.showError);
    }, { rootMargin: "400px" }).observe(document.querySelector(".grid.tables"));
  });
})();
