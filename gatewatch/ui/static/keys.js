// Keys and budgets (admins and owners): keys, users and organizations with spend against
// budget, create a key (its secret shown once), revoke, change budgets and rate limits.
"use strict";

(() => {
  const { h } = GW;
  let spend = { keys: {}, users: {}, orgs: {} };
  let generation = 0;

  async function listAll(kind) {
    const rows = [];
    let after = null;
    do {
      const page = await GW.api(`/api/v1/${kind}`, { limit: 1000, after_id: after });
      rows.push(...page.results);
      after = page.next_after_id;
    } while (after);
    const org = GW.org();
    return org ? rows.filter((r) => (kind === "orgs" ? r.id : r.org_id) === org) : rows;
  }

  function budgetBar(row, kind) {
    if (row.budget_usd === null || row.budget_usd === undefined) return h("span", { class: "muted", text: "no budget" });
    const s = spend[kind][row.id];
    const spent = s ? s.spent_usd : 0;
    const share = row.budget_usd > 0 ? spent / row.budget_usd : spent > 0 ? 1 : 0;
    const cls = share >= 1 ? "bar over" : share >= 0.8 ? "bar warn" : "bar";
    const resets = s?.period_end ? ` · resets ${new Date(s.period_end * 1000).toLocaleDateString("en-GB", { day: "numeric", month: "short" })}` : "";
    const per = row.budget_period === "total" ? "total" : `per ${row.budget_period}`;
    return h("div", { class: "budget", title: `${GW.pct(share)} of the budget${resets}` },
      h("div", { class: cls }, h("i", { style: { width: `${Math.min(100, share * 100).toFixed(1)}%` } })),
      h("span", { text: `${GW.money(spent, { usd: true })} / ${GW.money(row.budget_usd, { usd: true })} ${per}` }));
  }

  const limit = (v) => (v === null || v === undefined ? "–" : GW.count(v));

  function actions(kind, row) {
    if (row.revoked) return h("td", { class: "muted", text: "revoked" });
    const canChange = kind !== "orgs" || GW.me.role === "owner";
    if (!canChange) return h("td", {});
    return h("td", { class: "num" },
      h("button", { class: "btn", type: "button", text: "Limits…", onclick: () => editLimits(kind, row) }), " ",
      h("button", { class: "btn danger", type: "button", text: "Revoke", onclick: () => revoke(kind, row) }));
  }

  async function revoke(kind, row) {
    const what = { keys: "key", users: "user (and every key of theirs)", orgs: "organization (and everything in it)" }[kind];
    if (!confirm(`Revoke ${what} "${row.name}"? Requests with it are refused at once. This cannot be undone.`)) return;
    try {
      await GW.api(`/api/v1/${kind}/${encodeURIComponent(row.id)}`, { }, { method: "DELETE" });
      await load();
    } catch (err) { GW.showError(err); }
  }

  function editLimits(kind, row) {
    const dialog = document.getElementById("limits-dialog");
    const form = document.getElementById("limits-form");
    const err = document.getElementById("limits-error");
    err.hidden = true;
    document.getElementById("limits-title").textContent = `Limits of ${kind.slice(0, -1)} "${row.name}"`;
    form.querySelector(".role-field").hidden = kind !== "keys";
    form.role.value = row.role || "member";
    form.budget_usd.value = row.budget_usd ?? "";
    form.budget_period.value = row.budget_period || "month";
    form.rpm.value = row.rpm ?? "";
    form.tpm.value = row.tpm ?? "";
    form.onsubmit = async (e) => {
      if (e.submitter?.value !== "save") return;
      e.preventDefault();
      const num = (v) => (v === "" ? null : Number(v));
      const body = { budget_usd: num(form.budget_usd.value), budget_period: form.budget_period.value,
        rpm: num(form.rpm.value), tpm: num(form.tpm.value) };
      if (kind === "keys") body.role = form.role.value;
      try {
        await GW.api(`/api/v1/${kind}/${encodeURIComponent(row.id)}`, {}, { method: "PATCH", body });
        dialog.close();
        await load();
      } catch (ex) { err.textContent = ex.message; err.hidden = false; }
    };
    dialog.showModal();
  }

  const FIRST = 200; // rows drawn at once; the rest on demand

  function fill(id, rows, cells, all = false) {
    const body = document.querySelector(`#${id} tbody`);
    const cols = document.querySelectorAll(`#${id} thead th`).length;
    const shown = all ? rows : rows.slice(0, FIRST);
    body.replaceChildren(...(rows.length
      ? shown.map((r) => h("tr", { class: r.revoked ? "revoked" : "", "data-id": r.id }, cells(r)))
      : [h("tr", {}, h("td", { colspan: cols, class: "muted", text: "Nothing here yet." }))]));
    if (shown.length < rows.length) {
      body.append(h("tr", {}, h("td", { colspan: cols },
        h("button", { class: "btn", type: "button", text: `Show all ${GW.count(rows.length)}`,
          onclick: () => fill(id, rows, cells, true) }))));
    }
  }

  async function load() {
    const mine = ++generation;
    const [keys, users, orgs, budgets] = await Promise.all([
      listAll("keys"), listAll("users"), listAll("orgs"), fetch("/ui/data/budgets", { credentials: "same-origin" }).then((r) => r.json()),
    ]);
    if (mine !== generation) return;
    spend = budgets;
    const showRevoked = document.getElementById("show-revoked").checked;
    const visible = (rows) => rows.filter((r) => showRevoked || !r.revoked);
    fill("keys-table", visible(keys), (k) => [
      h("td", {}, h("strong", { text: k.name }), h("div", { class: "muted mono small", text: k.key_prefix })),
      h("td", { text: k.user }), h("td", { text: k.org }), h("td", { text: k.role }),
      h("td", {}, budgetBar(k, "keys")), h("td", { class: "num", text: limit(k.rpm) }), h("td", { class: "num", text: limit(k.tpm) }),
      h("td", { class: "muted", text: new Date(k.created_at).toLocaleDateString("en-GB") }), actions("keys", k),
    ]);
    fill("users-table", visible(users), (u) => [
      h("td", { text: u.name }), h("td", { text: u.org }), h("td", {}, budgetBar(u, "users")),
      h("td", { class: "num", text: limit(u.rpm) }), h("td", { class: "num", text: limit(u.tpm) }), actions("users", u),
    ]);
    fill("orgs-table", visible(orgs), (o) => [
      h("td", { text: o.name }), h("td", {}, budgetBar(o, "orgs")),
      h("td", { class: "num", text: limit(o.rpm) }), h("td", { class: "num", text: limit(o.tpm) }), actions("orgs", o),
    ]);
    GW.loaded(mine);
  }

  async function create(e) {
    e.preventDefault();
    const form = e.target;
    const err = document.getElementById("form-error");
    err.hidden = true;
    const body = {};
    for (const [k, v] of new FormData(form)) {
      if (v === "") continue;
      body[k] = ["budget_usd", "rpm", "tpm"].includes(k) ? Number(v) : v;
    }
    if (!body.org && GW.me.role === "owner" && GW.org()) {
      const sel = document.getElementById("org-switch");
      body.org = sel?.selectedOptions[0]?.textContent;
    }
    try {
      const key = await GW.api("/api/v1/keys", {}, { method: "POST", body });
      document.getElementById("new-secret-value").textContent = key.key;
      document.getElementById("new-secret").hidden = false;
      form.reset();
      await load();
    } catch (ex) { err.textContent = ex.message; err.hidden = false; }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const orgField = document.querySelector("#create-key [name=org]");
    const sel = document.getElementById("org-switch");
    sel?.addEventListener("gw-orgs", () => { // the owner's org choice is the default org
      if (orgField && sel.value) orgField.placeholder = sel.selectedOptions[0].textContent;
    });
    document.getElementById("create-key").addEventListener("submit", create);
    document.getElementById("show-revoked").addEventListener("change", () => load().catch(GW.showError));
    document.getElementById("copy-secret").addEventListener("click", () =>
      navigator.clipboard?.writeText(document.getElementById("new-secret-value").textContent));
    load().catch(GW.showError);
  });
})();
