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

const ACTIONS = [["Capture", "capture"], ["Refund", "refund"],
  ["Reverse authorization", "reverse-authorization"], ["Reverse capture", "reverse-capture"],
  ["Reverse credit", "reverse-credit"], ["Next shipment", "next"]];

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.append(td);
}

function actionsCell(tx) {
  const td = document.createElement("td");
  td.className = "actions";
  const amount = document.createElement("input");
  amount.type = "number"; amount.min = "0"; amount.placeholder = "amount"; amount.className = "amount";
  td.append(amount);
  for (const [label, act] of ACTIONS) {
    if (act === "next" && tx.shipment) continue;
    const b = document.createElement("button");
    b.type = "button"; b.textContent = label; b.dataset.act = act; b.dataset.tx = tx.id;
    td.append(b);
  }
  return td;
}

async function loadAll() {
  const [data, txs] = await Promise.all([api("GET", "/api/orders"), api("GET", "/api/transactions")]);
  const byId = new Map(txs.transactions.map((t) => [t.id, t]));
  const body = $("orders");
  body.replaceChildren();
  for (const o of data.orders) {
    const tr = document.createElement("tr");
    tr.dataset.order = o.order;
    cell(tr, o.order.slice(0, 16) + "…", "order");
    cell(tr, `${o.amount} ${o.currency}`);
    cell(tr, o.state, "state");
    cell(tr, o.description);
    const t = byId.get(o.order);
    cell(tr, t ? `${t.state}: authorized ${t.authorized}, captured ${t.captured}, credited ${t.credited}` : "", "money");
    if (t) tr.append(actionsCell(t)); else cell(tr, "");
    body.append(tr);
  }
  const tbody = $("transactions");
  tbody.replaceChildren();
  for (const t of txs.transactions) {
    const tr = document.createElement("tr");
    tr.dataset.tx = t.id;
    cell(tr, t.id.slice(0, 16) + "…", "order");
    cell(tr, t.shipment ? `shipment of ${t.order.slice(0, 8)}…` : "order");
    cell(tr, t.state + (t.pending ? " (pending)" : ""), "state");
    cell(tr, String(t.authorized), "authorized");
    cell(tr, String(t.captured), "captured");
    cell(tr, String(t.credited), "credited");
    cell(tr, t.batch === null ? "" : String(t.batch), "batch");
    tr.append(actionsCell(t));
    tbody.append(tr);
  }
}

async function act(button) {
  const tx = button.dataset.tx, what = button.dataset.act;
  const text = button.closest("td").querySelector("input.amount").value;
  const amount = text === "" ? undefined : parseInt(text, 10);
  const path = `/api/transactions/${tx}/`;
  let r;
  if (what === "capture") r = await api("POST", path + "capture", amount === undefined ? {} : {amount});
  else if (what === "refund") r = await api("POST", path + "refund", {amount});
  else if (what === "next") r = await api("POST", path + "next", {amount});
  else {
    const body = {what: what.slice("reverse-".length)};
    if (amount !== undefined) body.amount = amount;
    r = await api("POST", path + "reverse", body);
  }
  say(`${button.textContent}: ${r.code} ${r.amount}` + (r.batch ? ` (batch ${r.batch})` : ""));
  await loadAll();
}

function showBatch(b) {
  const lines = [`batch ${b.batch}: ${b.status}` + (b.transmission ? `, transmission ${b.transmission}` : "")];
  if (b.debit_count !== undefined) {
    lines.push(`debits  ${b.debit_count}  ${b.debit_amount} ${b.currency}`);
    lines.push(`credits ${b.credit_count}  ${b.credit_amount} ${b.currency}`);
  }
  if (b.settlement) lines.push(`settled ${b.settlement.type} ${b.settlement.amount} ${b.settlement.currency}`);
  for (const i of b.items || []) lines.push(`#${i.seq} ${i.kind} ${i.amount}`);
  $("batch-out").textContent = lines.join("\n");
  if (b.batch) $("batch-form").batch.value = b.batch;
}

async function loadOrders() { await loadAll(); }

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
      const order = {description: f.description.value,
        amount: parseInt(f.amount.value, 10), currency: f.currency.value, sale: f.sale.checked};
      if (f.first_shipment.value !== "") order.first_shipment = parseInt(f.first_shipment.value, 10);
      const o = await api("POST", "/api/orders", order);
      const a = $("pay-link");
      a.href = o.pay_link; a.textContent = o.pay_link; a.dataset.order = o.order;
      say("");
      await loadOrders();
    } catch (err) { say(err.message); }
  });
  $("refresh").addEventListener("click", () => loadOrders().catch((err) => say(err.message)));
  for (const id of ["orders", "transactions"]) {
    $(id).addEventListener("click", (e) => {
      const b = e.target.closest("button[data-act]");
      if (b) act(b).catch((err) => say(err.message));
    });
  }
  $("batch-form").addEventListener("click", (e) => {
    const b = e.target.closest("button[data-op]");
    if (!b) return;
    const text = $("batch-form").batch.value;
    const body = {operation: b.dataset.op};
    if (text !== "") body.batch = parseInt(text, 10);
    api("POST", "/api/batches", body).then((r) => { showBatch(r); say(""); return loadAll(); })
      .catch((err) => say(err.message));
  });
  $("logout").addEventListener("click", async () => {
    try { await api("POST", "/api/logout"); } catch (err) { /* ended already */ }
    location.reload();
  });
  try { await enter(await api("GET", "/api/session")); } catch (err) { /* log in first */ }
});
