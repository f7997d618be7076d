// gatewatch dashboard: what every page shares. The API is called with the session cookie
// (HttpOnly: this script never sees it); changes carry the page's CSRF token in a header.
"use strict";

const GW = (() => {
  const meta = (name) => document.querySelector(`meta[name="${name}"]`)?.content ?? "";
  const me = JSON.parse(meta("gw-me") || "{}");
  const currency = meta("gw-currency") || "USD";
  const usdRate = Number(meta("gw-usd-rate") || 1);
  const tz = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  const FILTERS = ["provider", "model", "initiator", "api_key", "client", "workflow", "tag",
    "status", "q"];

  // ---- DOM -----------------------------------------------------------------------------------
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "style") Object.assign(el.style, v);
      else el.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  // ---- numbers -------------------------------------------------------------------------------
  const moneyFmt = new Intl.NumberFormat("en-US", { style: "currency", currency });
  function money(v, { usd = false } = {}) {
    if (v === null || v === undefined) return "–";
    const x = usd ? v * usdRate : v;
    if (x !== 0 && Math.abs(x) < 0.01) {
      return new Intl.NumberFormat("en-US", { style: "currency", currency,
        maximumSignificantDigits: 2 }).format(x);
    }
    return moneyFmt.format(x);
  }
  function compact(n) {
    if (n === null || n === undefined) return "–";
    const a = Math.abs(n);
    const unit = a >= 1e9 ? [1e9, "B"] : a >= 1e6 ? [1e6, "M"] : a >= 1e4 ? [1e3, "K"] : null;
    if (!unit) return Math.round(n).toLocaleString("en-US");
    const v = n / unit[0];
    return (Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(1).replace(/\.0$/, "")) + unit[1];
  }
  const count = (n) => (n === null || n === undefined ? "–" : Math.round(n).toLocaleString("en-US"));
  const tokens = (n) => `${compact(n)} tokens`;
  function ms(v) {
    if (v === null || v === undefined) return "–";
    if (v >= 10000) return `${(v / 1000).toFixed(1)} s`;
    if (v >= 1000) return `${(v / 1000).toFixed(2)} s`;
    return `${Math.round(v)} ms`;
  }
  function pct(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    return `${(v * 100).toFixed(v < 0.1 ? 2 : 1)} %`;
  }
  function when(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    return d.toLocaleString("en-GB", { day: "2-digit", month: "short", hour: "2-digit",
      minute: "2-digit", second: "2-digit" });
  }

  // ---- the URL holds the state: range, filters, org ------------------------------------------
  const params = () => new URLSearchParams(location.search);
  const org = () => params().get("org") || "";

  function setParams(changes, { push = false } = {}) {
    const p = params();
    for (const [k, v] of Object.entries(changes)) {
      if (v === null || v === undefined || v === "") p.delete(k);
      else p.set(k, v);
    }
    const url = `${location.pathname}${p.toString() ? `?${p}` : ""}`;
    history[push ? "pushState" : "replaceState"](null, "", url);
    keepOrgLinks();
  }

  function localInput(date) { // Date → value of <input type=datetime-local>
    const off = date.getTimezoneOffset() * 60000;
    return new Date(date.getTime() - off).toISOString().slice(0, 16);
  }

  // The time range of the page: [start, end), its bucket, and the period before it.
  function range() {
    const p = params();
    const kind = p.get("range") || "7d";
    let end = new Date();
    let start;
    if (kind === "custom" && p.get("start")) {
      start = new Date(p.get("start"));
      if (p.get("end")) end = new Date(p.get("end"));
    } else {
      const hours = { "24h": 24, "7d": 168, "30d": 720 }[kind] || 168;
      start = new Date(end.getTime() - hours * 3600e3);
    }
    const span = end - start;
    const bucket = span <= 2 * 86400e3 ? "hour" : span <= 120 * 86400e3 ? "day" : "week";
    const label = { "24h": "last 24 h", "7d": "last 7 days", "30d": "last 30 days" }[kind]
      || `${start.toLocaleDateString("en-GB")} – ${end.toLocaleDateString("en-GB")}`;
    return {
      kind, bucket, label, start: start.toISOString(), end: end.toISOString(),
      prevStart: new Date(start.getTime() - span).toISOString(),
    };
  }

  // The filters of the page (and the org chosen by an owner) as API parameters.
  function filters() {
    const p = params();
    const out = {};
    for (const name of FILTERS) if (p.get(name)) out[name] = p.get(name);
    if (org()) out.org = org();
    return out;
  }

  // ---- the API -------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(path, query, { method = "GET", body } = {}) {
    const qs = new URLSearchParams();
    for (const [k, v] of Object.entries(query || {})) {
      if (v !== null && v !== undefined && v !== "") qs.append(k, v);
    }
    const headers = { Accept: "application/json" };
    if (method !== "GET") headers[meta("gw-csrf-header")] = meta("gw-csrf");
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const resp = await fetch(`${path}${qs.toString() ? `?${qs}` : ""}`, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (resp.status === 401) {
      location.href = `/ui/login?next=${encodeURIComponent(location.pathname + location.search)}`;
      throw new ApiError(401, "signed out");
    }
    const data = await resp.json().catch(() => null);
    if (!resp.ok) throw new ApiError(resp.status, data?.error?.message || `HTTP ${resp.status}`);
    return data;
  }

  function showError(err) {
    let box = document.getElementById("page-error");
    if (!box) {
      box = h("p", { id: "page-error", class: "error-box banner", role: "alert" });
      document.querySelector(".main").prepend(box);
    }
    box.textContent = `Could not load: ${err.message}`;
  }

  // ---- shared page furniture -----------------------------------------------------------------
  function keepOrgLinks() { // navigation keeps the owner's organization choice
    for (const a of document.querySelectorAll("a[data-keep-org]")) {
      const url = new URL(a.getAttribute("href"), location.origin);
      if (org()) url.searchParams.set("org", org()); else url.searchParams.delete("org");
      a.setAttribute("href", url.pathname + url.search);
    }
  }

  async function orgSwitcher() {
    const select = document.getElementById("org-switch");
    if (!select) return;
    const orgs = await api("/api/v1/orgs", { limit: 1000 });
    for (const o of orgs.results.filter((o) => !o.revoked)) {
      select.append(h("option", { value: o.id, text: o.name }));
    }
    select.value = org();
    select.dispatchEvent(new Event("gw-orgs"));
    select.addEventListener("change", () => {
      const p = params();
      if (select.value) p.set("org", select.value); else p.delete("org");
      for (const k of ["after_id", "prev", "initiator", "api_key"]) p.delete(k);
      location.search = p.toString();
    });
  }

  function themeToggle() {
    const btn = document.getElementById("theme-toggle");
    btn?.addEventListener("click", () => {
      const dark = document.documentElement.dataset.theme
        ? document.documentElement.dataset.theme === "dark"
        : matchMedia("(prefers-color-scheme: dark)").matches;
      const next = dark ? "light" : "dark";
      document.documentElement.dataset.theme = next;
      localStorage.setItem("gw-theme", next);
      window.dispatchEvent(new Event("gw-theme"));
    });
  }

  // The filter bar: fills the drop-downs from /api/v1/requests/facets, mirrors the URL, and
  // calls onChange when a filter changes.
  function filterBar(onChange) {
    const form = document.getElementById("filters");
    if (!form) return;
    const p = params();
    const custom = form.querySelector(".custom-range");
    const r = range();
    form.range.value = r.kind;
    custom.hidden = r.kind !== "custom";
    form.start.value = localInput(new Date(r.start));
    form.end.value = localInput(new Date(r.end));
    for (const el of form.querySelectorAll("select[name]:not([name=range]), input[name=q]")) {
      if (p.get(el.name) && el.tagName === "SELECT") {
        el.append(h("option", { value: p.get(el.name), text: p.get(el.name) }));
      }
      el.value = p.get(el.name) || "";
    }
    form.addEventListener("submit", (e) => e.preventDefault());
    form.addEventListener("change", (e) => {
      const t = e.target;
      if (t.name === "range") {
        custom.hidden = t.value !== "custom";
        if (t.value === "custom") {
          setParams({ range: "custom", start: form.start.value, end: form.end.value });
        } else {
          setParams({ range: t.value, start: null, end: null });
        }
      } else if (t.name === "start" || t.name === "end") {
        setParams({ range: "custom", [t.name]: t.value });
      } else {
        setParams({ [t.name]: t.value });
      }
      onChange();
    });
    document.getElementById("clear-filters").addEventListener("click", () => {
      const keep = org() ? { org: org() } : {};
      history.replaceState(null, "", `${location.pathname}?${new URLSearchParams(keep)}`);
      location.reload();
    });
    // Drop-down values: what was seen in the range, most used first. Fetched when the pointer
    // or the focus comes to the filter bar, or a second after the page's data is drawn, so
    // that these seven queries never hold up the page itself.
    let facetsFor = "";
    const loadFacets = () => {
      const now = range();
      const key = `${now.start.slice(0, 13)}/${now.end.slice(0, 13)}`; // to the hour
      if (key === facetsFor) return;
      facetsFor = key;
      fillFacets(form, now).catch(showError);
    };
    form.addEventListener("pointerenter", loadFacets);
    form.addEventListener("focusin", loadFacets);
    form.addEventListener("change", loadFacets); // after the range changed
    addEventListener("gw-loaded", () => setTimeout(loadFacets, 1000), { once: true });
  }

  async function fillFacets(form, r) {
    const selects = [...form.querySelectorAll("select[data-facet]")];
    await Promise.all(selects.map(async (sel) => {
      const answer = await api("/api/v1/requests/facets",
        { field: sel.dataset.facet, start: r.start, end: r.end, limit: 200 });
      const current = sel.value;
      sel.replaceChildren(h("option", { value: "", text: "All" }));
      for (const v of answer.values) {
        sel.append(h("option", { value: v.value, text: v.name || v.value }));
      }
      if (current && ![...sel.options].some((o) => o.value === current)) {
        sel.append(h("option", { value: current, text: current }));
      }
      sel.value = current;
    }));
  }

  // Every page calls this once its data is drawn: tests wait for it, and bench/ui_bench.py
  // reads the "gw-loaded" mark (milliseconds since the navigation started).
  function loaded(generation) {
    performance.mark("gw-loaded");
    document.body.dataset.loaded = String(generation);
    dispatchEvent(new Event("gw-loaded"));
  }

  document.addEventListener("DOMContentLoaded", () => {
    keepOrgLinks();
    themeToggle();
    orgSwitcher().catch(showError);
  });

  return { h, money, compact, count, tokens, ms, pct, when, params, setParams, range, filters,
    api, ApiError, showError, filterBar, org, me, currency, usdRate, tz, keepOrgLinks, loaded };
})();
