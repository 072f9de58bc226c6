// Alerts: the recent alert.* events (replayed from the swarm's event buffer on connect), and the
// rules and webhooks as a form applied live with swarm.config.patch, plus "send test".

import { $, el, errorText, fmtTime, toast } from "./util.js";
import { parseField } from "./settings.js";

const KINDS = [
  ["at_max_workers", "Swarm at max workers"],
  ["all_idle", "All workers idle"],
  ["task_dead", "Task dead-lettered"],
  ["crash_rate", "Worker crashes"],
  ["breaker_tripped", "Breaker tripped (halted)"],
  ["model_rate_limited", "Model rate-limited"],
];
const MAX_SHOWN = 200;

export class AlertsView {
  constructor(app) {
    this.app = app;
    this.items = [];
    this.seen = new Set();
    this.firing = new Map();
    this.form = $("#alerts-form");
    this.form.addEventListener("submit", (ev) => { ev.preventDefault(); this.save(); });
  }

  async onReady() {
    try {
      const params = { topics: ["alert.*"], batch: true };
      params.since = this.maxSeq || 0;
      await this.app.rpc.call("events.subscribe", params);
    } catch (err) {
      toast(`alerts: ${errorText(err)}`, "error");
    }
  }

  onEvent(ev) {
    if (this.seen.has(ev.seq)) return;
    this.seen.add(ev.seq);
    this.maxSeq = Math.max(this.maxSeq || 0, ev.seq);
    this.items.unshift(ev);
    if (this.items.length > MAX_SHOWN) {
      const dropped = this.items.pop();
      this.seen.delete(dropped.seq);
    }
    const d = ev.data || {};
    if (ev.topic === "alert.fired") this.firing.set(d.id, d);
    if (ev.topic === "alert.resolved") this.firing.delete(d.id);
    $("#tab-count-alerts").textContent = this.firing.size ? String(this.firing.size) : "";
    this.renderList();
  }

  renderList() {
    const list = $("#alert-list");
    if (!this.items.length) {
      list.replaceChildren(el("li", { class: "muted" }, "No alerts yet."));
      return;
    }
    list.replaceChildren(...this.items.slice(0, MAX_SHOWN).map((ev) => {
      const d = ev.data || {};
      const kind = ev.topic.replace("alert.", "");
      let text = d.summary || "";
      if (kind === "delivery_failed") text = `webhook ${d.webhook} (${d.url}) failed after ${d.attempts} attempt(s): ${d.error}`;
      return el("li", {},
        el("span", { class: "t" }, fmtTime(ev.ts)),
        el("span", { class: kind }, kind.replace("_", " ")), " ",
        d.rule && kind !== "delivery_failed" ? el("b", {}, `${d.rule}${d.key ? ` (${d.key})` : ""}: `) : null,
        text);
    }));
  }

  onConfig(config) {
    if (this.form.querySelector(".dirty")) return;
    this.build(config.alerts || { rules: [], webhooks: [] });
  }

  show() {
    this.renderList();
  }

  build(alerts) {
    this.rulesBox = el("div", { id: "alert-rules" });
    this.hooksBox = el("div", { id: "alert-hooks" });
    for (const r of alerts.rules || []) this.addRule(r);
    for (const h of alerts.webhooks || []) this.addHook(h);
    this.error = el("p", { class: "error", id: "alerts-error" });
    this.form.replaceChildren(
      el("fieldset", {}, el("legend", {}, "Rules"),
        el("p", { class: "hint" }, "Each rule fires once its condition has held for “for”, then stays quiet for its cool-down. Threshold and window count crashes or dead tasks."),
        this.rulesBox,
        el("button", { class: "btn small", type: "button", id: "btn-add-rule", onclick: () => { this.addRule({ kind: "crash_rate" }); this.dirty(); } }, "+ rule")),
      el("fieldset", {}, el("legend", {}, "Webhooks"),
        el("p", { class: "hint" }, "POSTed as JSON with an X-Shoal-Signature: sha256=… HMAC header when a secret is set; retried with backoff."),
        this.hooksBox,
        el("button", { class: "btn small", type: "button", id: "btn-add-hook", onclick: () => { this.addHook({ url: "" }); this.dirty(); } }, "+ webhook")),
      this.error,
      el("div", { class: "actions" },
        el("button", { class: "btn", type: "button", id: "btn-send-test", onclick: () => this.sendTest() }, "Send test"),
        el("button", { class: "btn", type: "button", onclick: () => this.build(this.app.config?.alerts || {}) }, "Discard changes"),
        el("button", { class: "btn primary", type: "submit", id: "alerts-apply" }, "Apply live")),
    );
    this.form.addEventListener("input", () => this.dirty());
  }

  dirty() {
    this.form.querySelector("fieldset")?.classList.add("dirty");
  }

  addRule(r) {
    const num = (name, value, title) => el("label", {}, title, el("input", { name, value: value ?? "", inputmode: "decimal" }));
    const row = el("div", { class: "rule-row" },
      el("label", {}, "Kind", el("select", { name: "kind" }, ...KINDS.map(([k, label]) => el("option", { value: k, selected: k === r.kind }, label)))),
      el("label", {}, "Name", el("input", { name: "name", value: r.name || "", placeholder: "(kind)" })),
      num("for_s", r.for_s ?? 0, "For (s)"),
      num("threshold", r.threshold ?? 1, "Threshold"),
      num("window_s", r.window_s ?? 300, "Window (s)"),
      num("cooldown_s", r.cooldown_s ?? 300, "Cool-down (s)"),
      el("button", { class: "btn small danger", type: "button", title: "remove", onclick: () => { row.remove(); this.dirty(); } }, "✕"),
    );
    this.rulesBox.append(row);
  }

  addHook(h) {
    const row = el("div", { class: "hook-row" },
      el("label", {}, "URL", el("input", { name: "url", value: h.url || "", placeholder: "https://…" })),
      el("label", {}, "Secret", el("input", { name: "secret", type: "password", value: h.secret || "", autocomplete: "off", placeholder: "none" })),
      el("label", {}, "Retries", el("input", { name: "max_retries", value: h.max_retries ?? 5, inputmode: "numeric" })),
      el("label", {}, "Timeout (s)", el("input", { name: "timeout_s", value: h.timeout_s ?? 5, inputmode: "decimal" })),
      el("button", { class: "btn small danger", type: "button", title: "remove", onclick: () => { row.remove(); this.dirty(); } }, "✕"),
    );
    this.hooksBox.append(row);
  }

  collect() {
    let ok = true;
    const check = (input, type, opts) => {
      const r = parseField(type, input.value, opts);
      input.classList.toggle("invalid", Boolean(r.error));
      input.title = r.error || "";
      if (r.error) ok = false;
      return r.value;
    };
    const rules = [...this.rulesBox.children].map((row) => {
      const q = (n) => row.querySelector(`[name="${n}"]`);
      const rule = {
        kind: q("kind").value,
        for_s: check(q("for_s"), "float", { min: 0 }),
        threshold: check(q("threshold"), "int", { gt: 0 }),
        window_s: check(q("window_s"), "float", { gt: 0 }),
        cooldown_s: check(q("cooldown_s"), "float", { min: 0 }),
      };
      if (q("name").value.trim()) rule.name = q("name").value.trim();
      return rule;
    });
    const webhooks = [...this.hooksBox.children].map((row) => {
      const q = (n) => row.querySelector(`[name="${n}"]`);
      const url = q("url").value.trim();
      const good = /^https?:\/\/[^\s/]+/i.test(url);
      q("url").classList.toggle("invalid", !good);
      q("url").title = good ? "" : "must be an http(s) URL";
      if (!good) ok = false;
      const hook = {
        url,
        max_retries: check(q("max_retries"), "int", { min: 0 }),
        timeout_s: check(q("timeout_s"), "float", { gt: 0 }),
      };
      hook.secret = q("secret").value || null;
      return hook;
    });
    return { ok, rules, webhooks };
  }

  async save() {
    const { ok, rules, webhooks } = this.collect();
    if (!ok) {
      this.error.textContent = "fix the fields marked in red";
      return;
    }
    this.error.textContent = "";
    try {
      const config = await this.app.rpc.call("swarm.config.patch", { partial: { alerts: { rules, webhooks } } });
      this.app.config = config;
      this.build(config.alerts);
      toast("alert rules applied");
    } catch (err) {
      this.error.textContent = errorText(err);
    }
  }

  async sendTest() {
    try {
      const report = await this.app.rpc.call("alerts.test", {}, 60000);
      const lines = (report.webhooks || []).map((w) => `${w.url}: ${w.ok ? `ok (${w.status})` : w.error}`);
      toast(`test alert: ${report.delivered} delivered, ${report.failed} failed${lines.length ? ` — ${lines.join("; ")}` : " (no webhooks configured)"}`, report.failed ? "error" : "info", 8000);
    } catch (err) {
      toast(`alerts.test: ${errorText(err)}`, "error", 8000);
    }
  }
}
