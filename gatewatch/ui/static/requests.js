// The request log: /api/v1/requests with the page's filters, keyset pages ("older" follows
// next_after_id; "newer" walks back the cursors kept in the URL), CSV of exactly that filter.
"use strict";

(() => {
  const { h } = GW;
  const PAGE = 50;
  let generation = 0;

  function query() {
    const r = GW.range();
    return { ...GW.filters(), started_after: r.start, started_before: r.end };
  }

  function detailHref(id) {
    return `/ui/requests/${encodeURIComponent(id)}${GW.org() ? `?org=${encodeURIComponent(GW.org())}` : ""}`;
  }

  function row(rec) {
    const failed = rec.status !== "ok";
    const href = detailHref(rec.id);
    const tokens = rec.input_tokens === null && rec.output_tokens === null ? "–"
      : `${GW.compact(rec.input_tokens ?? 0)} → ${GW.compact(rec.output_tokens ?? 0)}`;
    const tr = h("tr", { class: failed ? "row-error" : "", "data-id": rec.id,
      onclick: (e) => { if (!e.target.closest("a")) location.href = href; } },
      h("td", { class: "mono" }, h("a", { href, text: GW.when(rec.started_at), title: rec.started_at })),
      h("td", { text: rec.user ?? rec.end_user ?? "–", title: rec.end_user ? `end user: ${rec.end_user}` : null }),
      h("td", { text: rec.model ?? rec.model_requested ?? "–", title: rec.model_requested ? `asked for ${rec.model_requested}` : null }),
      h("td", { text: rec.provider ?? "–" }),
      h("td", {}, h("span", { class: `badge ${rec.status}`, title: rec.error_message || null },
        rec.status === "ok" ? String(rec.status_code) : `${rec.status_code} ${rec.status.replace("_", " ")}`)),
      h("td", { class: "num", text: tokens }),
      h("td", { class: "num", text: GW.money(rec.cost_usd, { usd: true }) }),
      h("td", { class: "num", text: GW.ms(rec.duration_ms) }),
      h("td", { class: "num", text: GW.ms(rec.ttft_ms) }),
      h("td", { class: "muted", text: [rec.workflow, rec.client].filter(Boolean).join(" · ") || "–" }),
    );
    return tr;
  }

  async function load() {
    const mine = ++generation;
    const p = GW.params();
    const q = query();
    const page = await GW.api("/api/v1/requests", { ...q, limit: PAGE, after_id: p.get("after_id") });
    if (mine !== generation) return;
    const body = document.querySelector("#log tbody");
    body.replaceChildren(...page.results.map(row));
    document.getElementById("log-empty").hidden = page.results.length > 0;
    document.getElementById("log-count").textContent =
      `${GW.count(page.count)} request${page.count === 1 ? "" : "s"} · ${GW.range().label}`;
    document.getElementById("csv-link").href =
      `/api/v1/requests/export?${new URLSearchParams({ format: "csv", ...q })}`;
    // "prev" holds the cursors of the pages before this one ("0": the first page)
    const stack = p.get("prev") ? p.get("prev").split(",") : [];
    const older = document.getElementById("page-older");
    older.disabled = !page.next_after_id;
    older.onclick = () => {
      const prev = [...stack, p.get("after_id") || "0"].join(",");
      GW.setParams({ after_id: page.next_after_id, prev }, { push: true });
      reload();
    };
    const newer = document.getElementById("page-newer");
    newer.disabled = !p.get("after_id");
    newer.onclick = () => {
      const rest = stack.slice(0, -1);
      const back = stack[stack.length - 1];
      GW.setParams({ after_id: back === "0" ? null : back, prev: rest.join(",") || null },
        { push: true });
      reload();
    };
    const newest = document.getElementById("page-newest");
    newest.disabled = !p.get("after_id");
    newest.onclick = () => {
      GW.setParams({ after_id: null, prev: null }, { push: true });
      reload();
    };
    GW.loaded(mine);
  }

  function reload() { load().catch(GW.showError); }

  document.addEventListener("DOMContentLoaded", () => {
    GW.filterBar(() => { GW.setParams({ after_id: null, prev: null }); reload(); });
    addEventListener("popstate", reload);
    reload();
  });
})();
