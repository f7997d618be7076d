// Alert history (§A7): firings and resolutions from /api/v1/alerts with their deliveries, and
// the rules that produce them (/api/v1/alerts/rules), scoped like everything else.
"use strict";

(() => {
  const { h } = GW;

  function amount(type, v) {
    if (v === null || v === undefined) return "–";
    if (type === "budget" || type === "error_rate") return GW.pct(v);
    if (type === "latency_p95") return GW.ms(v);
    if (type === "spend_rate") return GW.money(v, { usd: true });
    return GW.count(v);
  }

  function duration(seconds) {
    if (!seconds) return "–";
    if (seconds % 3600 === 0) return `${seconds / 3600} h`;
    if (seconds % 60 === 0) return `${seconds / 60} min`;
    return `${seconds} s`;
  }

  function threshold(rule) {
    const v = rule.threshold ?? rule.threshold_ms ?? rule.threshold_usd;
    return rule.type === "no_traffic" ? "no requests" : amount(rule.type, v);
  }

  function emptyState(title, text) {
    return h("div", { class: "empty", id: "alerts-empty" }, h("h2", { text: title }), h("p", { text }));
  }

  function deliveries(a) {
    if (!a.deliveries?.length) return h("span", { class: "muted", text: "no webhook" });
    return a.deliveries.map((d) => h("div", { class: "small", title: d.last_error || "" },
      h("span", { class: `badge ${d.status === "delivered" ? "ok" : d.status === "failed" ? "error" : ""}`, text: d.status }),
      ` ${d.webhook} · ${d.attempts} attempt${d.attempts === 1 ? "" : "s"}`));
  }

  function history(alerts) {
    return h("table", { class: "data", id: "alerts-table" },
      h("thead", {}, h("tr", {}, ["Started", "Rule", "State", "Subject", "Value", "Threshold", "What happened", "Delivered"]
        .map((t) => h("th", { text: t })))),
      h("tbody", {}, alerts.map((a) => {
        const firing = a.state === "firing" && !a.resolved_at;
        return h("tr", { class: firing ? "row-error" : "" },
          h("td", { class: "mono nowrap", text: GW.when(a.started_at) }),
          h("td", { class: "nowrap" }, h("strong", { text: a.rule }), h("div", { class: "muted small", text: a.type })),
          h("td", {}, h("span", { class: `badge ${firing ? "error" : "ok"}`,
            text: a.state === "resolved" ? `resolved ${GW.when(a.resolved_at)}` : firing ? "firing" : "fired" })),
          h("td", { text: a.subject ?? "–" }),
          h("td", { class: "num", text: amount(a.type, a.value) }),
          h("td", { class: "num", text: amount(a.type, a.threshold) }),
          h("td", { class: "wrap", text: a.message ?? "" }),
          h("td", {}, deliveries(a)));
      })));
  }

  function rulesTable(rules) {
    return h("table", { class: "data", id: "rules-table" },
      h("thead", {}, h("tr", {}, ["Rule", "Type", "Threshold", "Window", "Scope", "Source"].map((t) => h("th", { text: t })))),
      h("tbody", {}, rules.map((r) => h("tr", {},
        h("td", {}, h("strong", { text: r.name })), h("td", { text: r.type }),
        h("td", { text: threshold(r) }),
        h("td", { text: duration(r.window) }),
        h("td", { text: r.scope || r.org || (r.per?.length ? `per ${r.per.join(", ")}` : "every organization") }),
        h("td", { class: "muted", text: r.source || "config" })))));
  }

  async function load() {
    const alertsBox = document.getElementById("alerts");
    const rulesBox = document.getElementById("rules");
    const active = document.getElementById("active-only").checked;
    let alerts;
    let rules;
    try {
      [alerts, rules] = await Promise.all([
        GW.api("/api/v1/alerts", { limit: 100, org: GW.org(), active: active ? "true" : null }),
        GW.api("/api/v1/alerts/rules", {}),
      ]);
    } catch (err) {
      if (err.status !== 404) throw err;
      alertsBox.replaceChildren(emptyState("Alerts are not configured",
        "This gateway has no alerting. Budget use per key, user and organization is on the Keys & budgets page."));
      rulesBox.replaceChildren();
      GW.loaded(1);
      return;
    }
    const ruleList = (rules.results || rules.rules || []).filter((r) => !GW.org() || !r.org_id || r.org_id === GW.org());
    if (alerts.results.length) {
      alertsBox.replaceChildren(history(alerts.results));
      if (alerts.next_after_id) {
        alertsBox.append(h("p", { class: "muted small", text: `The newest 100 of ${GW.count(alerts.count)}.` }));
      }
    } else if (ruleList.length) {
      alertsBox.replaceChildren(emptyState(active ? "Nothing is firing" : "No alerts have fired",
        "The rules below are evaluated in the background; each firing and resolution will be listed here with its webhook deliveries."));
    } else {
      alertsBox.replaceChildren(emptyState("Alerts are not configured",
        "There are no alert rules. Add them under alerts.rules in the configuration, or with POST /api/v1/alerts/rules (see docs/alerts.md): budget thresholds, error rate, p95 latency, spend per hour, no traffic."));
    }
    rulesBox.replaceChildren(ruleList.length ? rulesTable(ruleList) : h("p", { class: "muted", text: "No rules." }));
    GW.loaded(1);
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("active-only").addEventListener("change", () => load().catch(GW.showError));
    load().catch(GW.showError);
  });
})();
