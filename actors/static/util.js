// Small helpers shared by the dashboard's views. No dependencies.

/** Build an element: el("div", {class: "x", onclick: fn}, child, "text"). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "text") node.textContent = value;
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const $ = (sel, root = document) => root.querySelector(sel);

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  const s = Math.max(0, seconds);
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${Math.floor(s % 60)}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

export function fmtBytes(n) {
  if (n === null || n === undefined || !Number.isFinite(n)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${v < 10 && i > 0 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

export function fmtPercent(v) {
  return v === null || v === undefined || !Number.isFinite(v) ? "–" : `${Math.round(v)}%`;
}

export function fmtTime(epoch) {
  if (!epoch) return "–";
  return new Date(epoch * 1000).toLocaleTimeString();
}

export function fmtAgo(epoch, now = Date.now() / 1000) {
  if (!epoch) return "–";
  return `${fmtDuration(now - epoch)} ago`;
}

export function fmtMoney(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  return v < 1 ? `$${v.toFixed(4)}` : `$${v.toFixed(2)}`;
}

const ANSI = /\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]/g;

/** Terminal output as plain text for the "recent output" box: escapes dropped, and a carriage
 * return lets the rest of its line overwrite what came before, as on a terminal. */
export function stripAnsi(text) {
  return text.replace(ANSI, "").split("\n").map((line) => {
    const parts = line.split("\r").filter((part) => part.length);
    return parts.length ? parts[parts.length - 1] : "";
  }).join("\n");
}

export function b64ToBytes(b64) {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i += 1) out[i] = bin.charCodeAt(i);
  return out;
}

export function bytesToB64(bytes) {
  let bin = "";
  const chunk = 0x8000;
  for (let i = 0; i < bytes.length; i += chunk) bin += String.fromCharCode(...bytes.subarray(i, i + chunk));
  return btoa(bin);
}

export function textToB64(text) {
  return bytesToB64(new TextEncoder().encode(text));
}

/** Run `fn` at most once per animation frame, however often it is asked for. */
export function frameThrottle(fn) {
  let queued = false;
  return () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => { queued = false; fn(); });
  };
}

/** Run `fn` at most every `ms`, trailing call guaranteed. */
export function throttle(fn, ms) {
  let last = 0;
  let timer = null;
  return () => {
    const now = performance.now();
    const wait = last + ms - now;
    if (wait <= 0) {
      last = now;
      fn();
    } else if (!timer) {
      timer = setTimeout(() => { timer = null; last = performance.now(); fn(); }, wait);
    }
  };
}

export function toast(message, kind = "info", ms = 4000) {
  const box = document.getElementById("toasts");
  const node = el("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status" }, message);
  box.append(node);
  setTimeout(() => node.remove(), ms);
  while (box.children.length > 5) box.firstChild.remove();
}

/** Show an RPC failure to the operator: the server's message names the field when it can. */
export function errorText(err) {
  if (!err) return "unknown error";
  if (err.data && err.data.field) return `${err.data.field}: ${err.message.replace(/^[\w.\[\]]+: /, "")}`;
  return err.message || String(err);
}

export function stateClass(state) {
  return `state state-${String(state || "").replace(/[^a-z_]/g, "")}`;
}
