// setpay POS console: the operator's thin client of the server-managed POS (no framework).
"use strict";
const $ = (id) => document.getElementById(id);
let csrf = "";

function say(text) { $("msg").textContent = text || ""; }

async function api(method, path, body) {
  const headers = {"X-CSRF-Token": csrf};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, {method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body)});
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}

async function loadOrders() {
  const data = await api("GET", "/api/orders");
  const body = $("orders");
  body.replaceChildren();
  for (const o of data.orders) {
    const tr = document.createElement("tr");
    tr.dataset.order = o.order;
    for (const [text, cls] of [[o.order.slice(0, 16) + "…", "order"],
        [`${o.amount} ${o.currency}`, ""], [o.state, "state"], [o.description, ""]]) {
      const td = document.createElement("td");
      td.textContent = text;
      if (cls) td.className = cls;
      tr.append(td);
    }
    body.append(tr);
  }
}

async function enter(session) {
  csrf = session.csrf;
  $("who").textContent = `${session.user} (${session.scope})`;
  $("login").hidden = true; $("app").hidden = false; $("logout").hidden = false;
  await loadOrders();
}

document.addEventListener("DOMContentLoaded", async () => {
  $("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = $("login-form");
    try {
      await enter(await api("POST", "/api/login", {user: f.user.value, passphrase: f.passphrase.value}));
      f.passphrase.value = "";
      say("");
    } catch (err) { say(err.message); }
  });
  $("order-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = $("order-form");
    try {
      const o = await api("POST", "/api/orders", {description: f.description.value,
        amount: parseInt(f.amount.value, 10), currency: f.currency.value, sale: f.sale.checked});
      const a = $("pay-link");
      a.href = o.pay_link; a.textContent = o.pay_link; a.dataset.order = o.order;
      say("");
      await loadOrders();
    } catch (err) { say(err.message); }
  });
  $("refresh").addEventListener("click", () => loadOrders().catch((err) => say(err.message)));
  $("logout").addEventListener("click", async () => {
    try { await api("POST", "/api/logout"); } catch (err) { /* ended already */ }
    location.reload();
  });
  try { await enter(await api("GET", "/api/session")); } catch (err) { /* log in first */ }
});
