// setpay web wallet: the thin client of the server-managed wallet (no framework).
// The PIN of an OPE account never leaves this page in clear: it is put in an ISO 9564
// format 0 block and sealed here with WebCrypto to the gateway's key-exchange certificate,
// bound to the purchase's XID, exactly as protocol/pin.py seal_pin does.
"use strict";
const $ = (id) => document.getElementById(id);
const te = new TextEncoder();
let csrf = "", cards = [], offer = null;

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

// -- msgpack (the subset the seal needs: nil, small ints, str, bin, short arrays) ----------
function mp(v) {
  if (v === null) return [0xc0];
  if (typeof v === "number") { if (v >= 0 && v < 128) return [v]; throw new Error("int"); }
  if (typeof v === "string") {
    const b = [...te.encode(v)];
    if (b.length < 32) return [0xa0 | b.length, ...b];
    if (b.length < 256) return [0xd9, b.length, ...b];
    throw new Error("str");
  }
  if (v instanceof Uint8Array) {
    const n = v.length, b = [...v];
    if (n < 256) return [0xc4, n, ...b];
    if (n < 65536) return [0xc5, n >> 8, n & 255, ...b];
    return [0xc6, n >>> 24, (n >> 16) & 255, (n >> 8) & 255, n & 255, ...b];
  }
  if (Array.isArray(v) && v.length < 16) return [0x90 | v.length, ...v.flatMap(mp)];
  throw new Error("msgpack");
}
const pack = (v) => new Uint8Array(mp(v));
const hexd = (h) => new Uint8Array(h.match(/../g).map((x) => parseInt(x, 16)));
const b64d = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
const b64e = (u) => btoa(String.fromCharCode(...u));

// -- ISO 9564 format 0 (protocol/pin.py encode_format0) -------------------------------------
function format0(pin, number) {
  if (!/^[0-9]{4,12}$/.test(pin)) throw new Error("a PIN is 4-12 digits");
  if (!/^[0-9]{1,19}$/.test(number)) throw new Error("bad account number");
  const pinField = hexd(("0" + pin.length.toString(16).toUpperCase() + pin).padEnd(16, "F"));
  const panField = hexd("0000" + number.slice(0, -1).slice(-12).padStart(12, "0"));
  return pinField.map((b, i) => b ^ panField[i]);
}

// -- the certificate's SubjectPublicKeyInfo (DER walk) -------------------------------------
function tlv(der, at) {
  let len = der[at + 1], head = 2;
  if (len & 0x80) {
    const n = len & 0x7f; len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + der[at + 2 + i];
    head = 2 + n;
  }
  return {tag: der[at], start: at, body: at + head, end: at + head + len};
}
function spkiOf(der) {
  const tbs = tlv(der, tlv(der, 0).body);
  let f = tlv(der, tbs.body);
  if (f.tag === 0xa0) f = tlv(der, f.end);                  // version
  for (let i = 0; i < 5; i++) f = tlv(der, f.end);         // serial .. subject -> SPKI
  return der.slice(f.start, f.end);
}
const has = (a, b) => a.join(",").includes(b.join(","));
const EC_OID = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];

async function gcm(key, nonce, data, aad) {
  const k = await crypto.subtle.importKey("raw", key, "AES-GCM", false, ["encrypt"]);
  return new Uint8Array(await crypto.subtle.encrypt(
    {name: "AES-GCM", iv: nonce, additionalData: aad}, k, data));
}

// protocol.pin.seal_pin: envelope.seal(suite, gateway key, thumbprint, "PIN", "PINBlock",
// b"", extra=encode(PinBlock(ISO0, block)), context=xid)
async function sealPin(started, pin) {
  const S = crypto.subtle, cert = b64d(started.gateway_cert);
  const recipient = new Uint8Array(await S.digest("SHA-256", cert));
  const ctx = pack(["setpay/v1/PIN", "PINBlock", recipient, hexd(started.xid)]);
  const record = pack([0, format0(pin, started.pin_binding)]);
  const spki = spkiOf(cert);
  let ephemeral = new Uint8Array(0), block, bulk;
  if (has(spki, EC_OID)) {
    const pub = await S.importKey("spki", spki, {name: "ECDH", namedCurve: "P-256"}, false, []);
    const eph = await S.generateKey({name: "ECDH", namedCurve: "P-256"}, true, ["deriveBits"]);
    ephemeral = new Uint8Array(await S.exportKey("raw", eph.publicKey));
    const shared = await S.deriveBits({name: "ECDH", public: pub}, eph.privateKey, 256);
    const hk = await S.importKey("raw", shared, "HKDF", false, ["deriveBits"]);
    const info = pack(["setpay/v1/ECDH-ES", ctx, ephemeral]);
    const keys = new Uint8Array(await S.deriveBits(
      {name: "HKDF", hash: "SHA-256", salt: new Uint8Array(0), info}, hk, 512));
    bulk = keys.slice(0, 32);
    block = await gcm(keys.slice(32), new Uint8Array(12), pack([new Uint8Array(0), null, record]), ctx);
  } else {
    bulk = crypto.getRandomValues(new Uint8Array(32));
    const hash = started.oaep_hash === "sha256" ? "SHA-256" : "SHA-1";
    const pub = await S.importKey("spki", spki, {name: "RSA-OAEP", hash}, false, ["encrypt"]);
    block = new Uint8Array(await S.encrypt({name: "RSA-OAEP"}, pub, pack([bulk, null, record])));
  }
  const nonce = crypto.getRandomValues(new Uint8Array(12));
  const ct = await gcm(bulk, nonce, new Uint8Array(0), ctx);
  return pack(["PINBlock", recipient, ephemeral, block, nonce, ct]);
}

// -- pages -------------------------------------------------------------------------------
function readOffer(link) {
  const i = link.indexOf("#pay=");
  if (i < 0) return null;
  let s = link.slice(i + 5).replace(/-/g, "+").replace(/_/g, "/");
  s += "=".repeat((4 - s.length % 4) % 4);
  return JSON.parse(new TextDecoder().decode(b64d(s)));
}

function showOffer() {
  $("pay").hidden = !offer;
  if (!offer) return;
  const dl = $("order");
  dl.replaceChildren();
  for (const [k, v] of [["Merchant", offer.merchant_id], ["Order", offer.description],
                        ["Amount", offer.amount + " " + offer.currency]]) {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = k; dd.textContent = v; dl.append(dt, dd);
  }
  $("outcome").textContent = "";
  pinRow();
}

function pinRow() {
  const card = cards.find((c) => c.card_id === $("pay-card").value);
  $("pin-row").hidden = !(card && card.pin);
}

async function loadCards() {
  cards = (await api("GET", "/api/cards")).cards;
  const ul = $("cards"), sel = $("pay-card");
  ul.replaceChildren(); sel.replaceChildren();
  for (const c of cards) {
    const li = document.createElement("li");
    li.textContent = `${c.brand} …${c.hint}${c.pin ? " (PIN account)" : ""}`;
    li.dataset.card = c.card_id;
    ul.append(li);
    sel.append(new Option(`${c.brand} …${c.hint}`, c.card_id));
  }
  pinRow();
}

async function enter(session) {
  csrf = session.csrf;
  $("who").textContent = session.user;
  $("login").hidden = true; $("app").hidden = false; $("logout").hidden = false;
  await loadCards();
  showOffer();
}

async function login(register) {
  const f = $("login-form");
  const body = {user: f.user.value, passphrase: f.passphrase.value};
  try {
    if (register) await api("POST", "/api/register", body);
    await enter(await api("POST", "/api/login", body));
    f.passphrase.value = "";
    say("");
  } catch (e) { say(e.message); }
}

async function pay(ev) {
  ev.preventDefault();
  const f = $("pay-form"), out = $("outcome");
  const pinInput = f.pin;
  out.textContent = "paying…";
  try {
    const started = await api("POST", "/api/purchases", {card_id: f.card.value,
      merchant: offer.merchant, merchant_id: offer.merchant_id, order: offer.order,
      description: offer.description, currency: offer.currency, amount: offer.amount});
    let seal = null;
    if (started.pin_binding) seal = b64e(await sealPin(started, pinInput.value));
    pinInput.value = "";
    const r = await api("POST", `/api/purchases/${started.purchase_id}/finish`, {pin_seal: seal});
    out.textContent = r.outcome;
    out.dataset.xid = r.xid;
  } catch (e) { pinInput.value = ""; out.textContent = "refused: " + e.message; }
}

async function enrol(ev) {
  ev.preventDefault();
  const f = $("enrol-form");
  const form = {};
  if (f.name.value) form.name = f.name.value;
  if (f.postal_code.value) form.postal_code = f.postal_code.value;
  say("enrolling…");
  try {
    await api("POST", "/api/cards", {brand: f.brand.value, number: f.number.value,
      expiry: f.expiry.value, form, pin_account: f.pin_account.checked,
      bank_code: f.bank_code.value, branch: f.branch.value});
    f.number.value = "";
    say("enrolled");
    await loadCards();
  } catch (e) { say(e.message); }
}

document.addEventListener("DOMContentLoaded", async () => {
  offer = readOffer(location.hash);
  $("login-form").addEventListener("submit", (e) => { e.preventDefault(); login(false); });
  $("register").addEventListener("click", () => login(true));
  $("enrol-form").addEventListener("submit", enrol);
  $("pay-form").addEventListener("submit", pay);
  $("pay-card").addEventListener("change", pinRow);
  $("link-form").addEventListener("submit", (e) => {
    e.preventDefault();
    try { offer = readOffer($("link-form").link.value); showOffer(); say(offer ? "" : "not a pay link"); }
    catch (err) { say("not a pay link"); }
  });
  $("logout").addEventListener("click", async () => {
    try { await api("POST", "/api/logout"); } catch (e) { /* ended already */ }
    location.reload();
  });
  try { await enter(await api("GET", "/api/session")); } catch (e) { /* log in first */ }
});
