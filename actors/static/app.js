// The Shoal dashboard: boot, connection, swarm state and the tab views.
// Everything goes through the gateway's public JSON-RPC methods; this page has no private API.

import { Rpc } from "./rpc.js";
import { $, el, errorText, fmtAgo, fmtBytes, fmtTime, frameThrottle, throttle, toast } from "./util.js";
import { WorkersView } from "./workers.js";
import { TasksView } from "./tasks.js";
import { ChartsView } from "./charts.js";
import { SettingsView } from "./settings.js";
import { AlertsView } from "./alertsview.js";
import { NodesView } from "./nodes.js";

const TOKEN_KEY = "shoal.token";
const TAB_KEY = "shoal.tab";
const TOPICS = ["swarm.*", "worker.*", "task.*", "scale.*", "config.*", "model.*"]; // alert.* has its own (replayed)

/** Move a token from the URL fragment into sessionStorage, then clear the fragment (as Jupyter). */
function takeToken() {
  const hash = new URLSearchParams(location.hash.replace(/^#/, ""));
  const fromUrl = hash.get("token");
  if (fromUrl) {
    sessionStorage.setItem(TOKEN_KEY, fromUrl);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

class App {
  constructor() {
    this.rpc = null;
    this.status = null;
    this.config = null;
    this.lastSeq = 0;
    this.subscribed = false;
    this.tab = sessionStorage.getItem(TAB_KEY) || "workers";
    this.views = {};
    this.listeners = [];
    this.refreshStatusSoon = throttle(() => this.refreshStatus(), 500);
    this.summarySoon = frameThrottle(() => this.renderSummary());
  }

  async boot() {
    this.bindChrome();
    let cfg;
    try {
      const res = await fetch("/config.json", { cache: "no-store" });
      cfg = await res.json();
    } catch (err) {
      toast(`cannot read /config.json: ${err}`, "error", 10000);
      return;
    }
    if (!cfg.gateway_url) {
      this.setConn("closed", "the gateway is disabled; the dashboard needs it");
      return;
    }
    this.gatewayUrl = cfg.gateway_url;
    this.version = cfg.version;
    this.views = {
      workers: new WorkersView(this),
      tasks: new TasksView(this),
      charts: new ChartsView(this),
      settings: new SettingsView(this),
      alerts: new AlertsView(this),
      nodes: new NodesView(this),
    };
    this.showTab(this.tab);
    const token = takeToken();
    if (!token) {
      this.showLogin("");
      return;
    }
    this.connect(token);
  }

  connect(token) {
    if (this.rpc) this.rpc.stop();
    $("#login").hidden = true;
    this.rpc = new Rpc(this.gatewayUrl, token, {
      onNotify: (method, params) => this.onNotify(method, params),
      onState: (state, detail) => this.setConn(state, detail),
      onReady: () => this.onReady(),
    });
    this.rpc.start();
  }

  showLogin(message) {
    $("#login").hidden = false;
    $("#login-error").textContent = message || "";
    $("#login-token").focus();
  }

  setConn(state, detail) {
    const node = $("#conn");
    node.dataset.state = state;
    node.textContent = { open: "live", connecting: "connecting", closed: "disconnected", unauthorized: "not signed in" }[state] || state;
    node.title = detail || "";
    if (state === "unauthorized") {
      sessionStorage.removeItem(TOKEN_KEY);
      this.showLogin(`The gateway refused the token${detail ? `: ${detail}` : ""}.`);
    }
  }

  bindChrome() {
    for (const btn of document.querySelectorAll("#tabs [data-tab]")) {
      btn.addEventListener("click", () => this.showTab(btn.dataset.tab));
    }
    $("#login-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const token = $("#login-token").value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      $("#login-token").value = "";
      this.connect(token);
    });
    $("#btn-resume").addEventListener("click", () => this.act("swarm.resume", {}, "swarm resumed"));
    $("#btn-stop").addEventListener("click", () => {
      if (confirm("Stop taking tasks? Running tasks finish first (drain).")) this.act("swarm.stop", { drain: true }, "swarm stopping");
    });
    $("#btn-start").addEventListener("click", () => this.act("swarm.start", {}, "swarm started"));
    $("#btn-halt").addEventListener("click", () => {
      const reason = prompt("Halt the swarm (trip the breaker). Reason:", "halted by an operator");
      if (reason) this.act("swarm.halt", { reason }, "swarm halted");
    });
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) this.views[this.tab]?.show?.();
    });
  }

  showTab(name) {
    if (!this.views[name]) name = "workers";
    this.tab = name;
    sessionStorage.setItem(TAB_KEY, name);
    for (const btn of document.querySelectorAll("#tabs [data-tab]")) {
      btn.setAttribute("aria-selected", String(btn.dataset.tab === name));
    }
    for (const view of document.querySelectorAll("main > .view")) view.hidden = view.dataset.view !== name;
    for (const [key, view] of Object.entries(this.views)) {
      if (key === name) view.show?.();
      else view.hide?.();
    }
  }

  isVisible(name) {
    return this.tab === name && !document.hidden;
  }

  /** Call a method and report the outcome to the operator. Returns the result or undefined. */
  async act(method, params, okText) {
    try {
      const result = await this.rpc.call(method, params);
      if (okText) toast(okText);
      this.refreshStatusSoon();
      return result;
    } catch (err) {
      toast(`${method}: ${errorText(err)}`, "error", 8000);
      return undefined;
    }
  }

  async onReady() {
    try {
      const params = { topics: TOPICS, batch: true };
      if (this.lastSeq > 0) params.since = this.lastSeq;
      await this.rpc.call("events.subscribe", params);
    } catch (err) {
      toast(`events.subscribe: ${errorText(err)}`, "error");
    }
    await Promise.all([this.refreshStatus(), this.refreshConfig()]);
    for (const view of Object.values(this.views)) view.onReady?.();
    if (!this.statusTimer) this.statusTimer = setInterval(() => this.rpc?.ready && this.refreshStatus(), 3000);
  }

  async refreshStatus() {
    try {
      this.status = await this.rpc.call("swarm.status");
    } catch {
      return;
    }
    this.renderStatus();
  }

  async refreshConfig() {
    try {
      this.config = await this.rpc.call("swarm.config.get");
    } catch (err) {
      toast(`swarm.config.get: ${errorText(err)}`, "error");
      return;
    }
    for (const view of Object.values(this.views)) view.onConfig?.(this.config);
  }

  renderStatus() {
    const s = this.status || {};
    const pill = $("#swarm-state");
    pill.dataset.state = s.state || "unknown";
    pill.textContent = s.state || "unknown";
    const queue = s.queue || {};
    this.renderSummary();
    const open = (queue.ready || 0) + (queue.running || 0) + (queue.blocked || 0) + (queue.failed || 0);
    $("#tab-count-tasks").textContent = open ? open.toLocaleString() : "";
    const halted = s.state === "halted";
    $("#halt-banner").hidden = !halted;
    if (halted) {
      $("#halt-reason").textContent = s.reason || "no reason given";
      $("#halt-since").textContent = s.halted_at ? ` (since ${fmtAgo(s.halted_at)})` : "";
      $("#halt-evidence").textContent = JSON.stringify(s.evidence ?? s.breaker ?? {}, null, 2);
    }
    this.renderModels(s.models || []);
    this.renderCapacity(s.capacity);
    const stopped = s.state === "stopped" || s.state === "stopping";
    $("#btn-stop").hidden = stopped;
    $("#btn-start").hidden = !stopped;
    $("#btn-halt").hidden = halted || stopped;
    for (const view of Object.values(this.views)) view.onStatus?.(s);
  }

  /** Header chips, one per model: available, parked until when or until resumed (hover: why),
   * failing; with the highest quota use reported (hover: each window) and its workers retrying. */
  renderModels(models) {
    const key = JSON.stringify(models.map((m) => [m.name, m.state, m.until, m.reason, m.quota, m.prefer_fallback, m.retrying]));
    const box = $("#model-states");
    if (box._v === key) return;
    box._v = key;
    box.replaceChildren(...models.map((m) => {
      let text = `${m.name} ${m.state}`;
      if (m.state === "parked") text += m.until ? ` until ${fmtTime(m.until)}` : " until resumed";
      const windows = Object.entries(m.quota || {});
      const used = windows.map(([, q]) => q.utilization).filter((u) => typeof u === "number");
      if (used.length) text += ` · ${Math.round(Math.max(...used) * 100)}%`;
      if (m.retrying) text += ` · ${m.retrying} retrying`;
      const warn = windows.some(([, q]) => q.status === "allowed_warning" || q.status === "rejected");
      const chip = el("span", {
        class: `chip model model-${m.state}${warn ? " quota-warning" : ""}`,
        dataset: { model: m.name, state: m.state, quota: warn ? "warning" : used.length ? "ok" : "none" },
      }, text);
      const lines = [m.reason || `${m.name} takes work`];
      for (const [w, q] of windows) {
        const pct = typeof q.utilization === "number" ? ` ${Math.round(q.utilization * 100)}%` : "";
        const reset = q.resets_at ? `, resets ${fmtTime(q.resets_at)}` : "";
        lines.push(`quota ${w}:${pct} ${q.status}${reset}`);
      }
      if (m.prefer_fallback) lines.push("quota nearly used: its fallback model takes its movable work");
      if (m.state === "parked" && !m.until) lines.push(`resume: shoal models resume ${m.name}`);
      chip.title = lines.join("\n");
      return chip;
    }));
  }

  /** Header chip: the limit that holds the swarm back now (max_workers, memory, a parked model, the
   *  breaker), or how many more workers fit; hover: free memory, the floor, what a worker costs. */
  renderCapacity(cap) {
    const chip = $("#capacity");
    if (!cap) { chip.hidden = true; return; }
    const held = cap.held_back_by || "";
    const mib = (v) => (v === null || v === undefined ? "?" : fmtBytes(v * 1024 * 1024));
    const text = held ? `held back by ${held === "parked" ? "a parked model" : held}` : `${cap.can_start} more fit`;
    const free = cap.free_memory_mb === null || cap.free_memory_mb === undefined
      ? `free memory unknown (${cap.memory_error || "not read"})`
      : `${mib(cap.free_memory_mb)} free, floor ${mib(cap.min_free_memory_mb)}`;
    const title = [
      held ? `${cap.unmet} more worker${cap.unmet === 1 ? "" : "s"} wanted; limits: ${(cap.limited_by || []).join(", ")}` : "nothing holds the swarm back",
      `workers ${cap.workers}/${cap.max_workers}`,
      `memory: ${free}`,
      `a ${cap.profile} worker: ${mib(cap.worker_memory_mb)} (${cap.worker_memory_source})`,
      `${cap.memory_fit ?? "any number"} more fit in memory`,
      ...Object.entries(cap.stranded_categories || {}).map(([model, cats]) => `waiting for a ${model} worker that takes ${cats.join(", ")}`),
    ].join("\n");
    const key = `${held}|${text}|${title}`;
    chip.hidden = false;
    if (chip._v === key) return;
    chip._v = key;
    chip.dataset.held = held || "none";
    chip.className = `chip capacity${held ? " held" : ""}`;
    chip.textContent = text;
    chip.title = title;
  }

  /** Header counts: workers from the live worker map (updated per event), tasks from swarm.status. */
  renderSummary() {
    const s = this.status || {};
    const queue = s.queue || {};
    let alive;
    let busy;
    let asking;
    const live = this.views.workers;
    if (live && live.loaded) {
      alive = live.workers.size;
      busy = 0;
      asking = 0;
      for (const w of live.workers.values()) {
        if (w.needs_input) asking += 1;
        else if (w.state === "busy") busy += 1;
      }
    } else {
      const workers = s.workers || {};
      alive = Object.entries(workers).reduce((a, [k, v]) => a + (k === "stopped" || k === "crashed" ? 0 : Number(v) || 0), 0);
      asking = (s.needs_input || []).length;
      busy = Math.max(0, (workers.busy || 0) - asking);
    }
    const parts = [
      ["workers", alive],
      ["busy", busy],
      ...(asking ? [["needs input", asking]] : []),
      ["ready", queue.ready || 0],
      ["running", queue.running || 0],
      ["blocked", queue.blocked || 0],
      ["done", queue.done || 0],
      ["dead", queue.dead || 0],
      ["cancelled", queue.cancelled || 0],
    ];
    const key = parts.map(([label, n]) => `${label}${n}`).join(",");
    if (key === this.summaryKey) return;
    this.summaryKey = key;
    $("#summary").replaceChildren(...parts.map(([label, n]) => {
      const span = document.createElement("span");
      const b = document.createElement("b");
      b.textContent = n.toLocaleString();
      span.append(`${label} `, b);
      return span;
    }));
    $("#tab-count-workers").textContent = alive ? alive.toLocaleString() : "";
  }

  onNotify(method, params) {
    if (method === "event") {
      if (params.seq > this.lastSeq) this.lastSeq = params.seq;
      const topic = params.topic || "";
      if (topic.startsWith("swarm.") || topic.startsWith("scale.") || topic.startsWith("model.")) this.refreshStatusSoon();
      if (topic === "config.changed") this.refreshConfig();
      if (topic.startsWith("worker.")) this.views.workers.onEvent(params);
      if (topic.startsWith("task.")) {
        this.views.tasks.onEvent(params);
        this.views.workers.onTaskEvent(params);
        this.refreshStatusSoon();
      }
      if (topic.startsWith("alert.")) this.views.alerts.onEvent(params);
      if (topic.startsWith("scale.") || topic === "swarm.halted" || topic === "swarm.resumed") this.views.charts.onEvent(params);
      return;
    }
    if (method === "events.overflow" || method === "events.gap") {
      // some events were lost to this page: re-read the state instead of trusting the deltas
      this.refreshStatusSoon();
      this.views.workers.reload();
      this.views.tasks.reload();
      return;
    }
    for (const fn of this.listeners) fn(method, params);
  }

  /** Views that care about other notifications (the terminal's attach output) register here. */
  addNotifyListener(fn) {
    this.listeners.push(fn);
  }
}

const app = new App();
window.shoal = app; // for the browser tests and for poking around from the console
app.boot();
