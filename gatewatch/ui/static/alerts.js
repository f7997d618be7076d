// Alert history (§A7). This build of the gateway has no alert rules yet: the page says so when
// /api/v1/alerts does not exist, and lists the firings once it does.
"use strict";

(() => {
  const { h } = GW;

  function emptyState(title, text) {
    return h("div", { class: "empty", id: "alerts-empty" }, h("h2", { text: title }), h("p", { text }));
  }

  document.addEventListener("DOMContentLoaded", async () => {
    const box = document.getElementById("alerts");
    try {
      const answer = await GW.api("/api/v1/alerts", { limit: 100, org: GW.org() });
      const rows = answer.results || [];
      box.replaceChildren(rows.length
        ? h("table", { class: "data" },
          h("thead", {}, h("tr", {}, ["Time", "Rule", "State", "Subject", "Value", "Threshold"].map((t) => h("th", { text: t })))),
          h("tbody", {}, rows.map((a) => h("tr", {},
            h("td", { text: GW.when(a.started_at || a.created_at) }), h("td", { text: a.rule ?? "–" }),
            h("td", {}, h("span", { class: `badge ${a.state === "firing" ? "error" : "ok"}`, text: a.state ?? "–" })),
            h("td", { text: a.subject ?? "–" }), h("td", { class: "num", text: a.value ?? "–" }),
            h("td", { class: "num", text: a.threshold ?? "–" })))))
        : emptyState("No alerts have fired", "Alert rules are evaluated in the background; firings and resolutions will be listed here."));
    } catch (err) {
      if (err.status !== 404) { GW.showError(err); return; }
      box.replaceChildren(emptyState("Alerts are not configured",
        "This gateway has no alert rules yet: alerting (budget thresholds, error rate, latency, spend rate, silence) is not part of this version. Budget use per key, user and organization is on the Keys & budgets page."));
    }
    GW.loaded(1);
  });
})();
