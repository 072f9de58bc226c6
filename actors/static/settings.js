// The scaling and model policy as an editable form: checked as you type, applied live with
// swarm.config.patch (only the fields you changed), and the server's own validation shown beside
// the field it names when it refuses.

import { $, el, errorText, toast } from "./util.js";

// [path, label, type, {min, max, gt, hint, options}]; types: int, float, bool, select, optfloat
const SECTIONS = [
  {
    title: "Scale up",
    fields: [
      ["scaling.max_workers", "Max workers", "int", { min: 0, hint: "cap on live workers" }],
      ["scaling.tasks_per_worker", "Tasks per worker", "int", { gt: 0, hint: "target = ready ÷ this" }],
      ["scaling.max_spawn_per_tick", "Max spawns per tick", "int", { gt: 0 }],
      ["scaling.utilisation_threshold", "Utilisation threshold", "float", { min: 0, max: 1, hint: "0–1: busy share that adds workers" }],
      ["scaling.predictive", "Predictive (arrival rate)", "bool", {}],
      ["scaling.arrival_window_s", "Arrival window (s)", "float", { gt: 0 }],
      ["scaling.tick_s", "Tick (s)", "float", { gt: 0 }],
    ],
  },
  {
    title: "Scale down",
    fields: [
      ["scaling.min_workers", "Min workers", "int", { min: 0, hint: "floor, kept even when idle" }],
      ["scaling.idle_s", "Idle before retiring (s)", "float", { min: 0 }],
      ["scaling.stabilisation_s", "Stabilisation window (s)", "float", { min: 0, hint: "down only after demand stayed low this long" }],
      ["scaling.max_retire_per_tick", "Max retirements per tick", "int", { gt: 0 }],
    ],
  },
  {
    title: "Models",
    fields: [
      ["models.default", "Default model", "select", { options: (c) => c.models?.known || [] }],
      ["models.escalate", "Escalate failing tasks to a stronger model", "bool", {}],
    ],
    custom: "models",
  },
  {
    title: "Circuit breaker",
    fields: [
      ["supervision.breaker.crash_rate_max", "Crashes to halt", "int", { gt: 0 }],
      ["supervision.breaker.crash_window_s", "…within (s)", "float", { gt: 0 }],
      ["supervision.breaker.consecutive_spawn_failures", "Spawn failures in a row", "int", { gt: 0 }],
      ["supervision.breaker.on_halt", "Live workers on halt", "select", { options: () => ["finish", "stop"] }],
      ["supervision.breaker.canary_after_s", "Canary after (s)", "optfloat", { gt: 0, hint: "empty: wait for a manual resume" }],
    ],
  },
];

const DEFAULTS = {
  "scaling.min_workers": 0, "scaling.max_workers": 8, "scaling.tasks_per_worker": 1, "scaling.max_spawn_per_tick": 8,
  "scaling.tick_s": 1.0, "scaling.utilisation_threshold": 0.8, "scaling.predictive": true, "scaling.arrival_window_s": 60.0,
  "scaling.idle_s": 60.0, "scaling.stabilisation_s": 300.0, "scaling.max_retire_per_tick": 1,
};

export function getPath(obj, path) {
  return path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), obj);
}

export function setPath(obj, path, value) {
  const keys = path.split(".");
  let o = obj;
  for (const k of keys.slice(0, -1)) o = o[k] ??= {};
  o[keys[keys.length - 1]] = value;
}

/** Parse and check one input; returns {value} or {error}. Mirrors the server's checks (it re-checks). */
export function parseField(type, raw, opts) {
  if (type === "bool") return { value: Boolean(raw) };
  if (type === "select") return raw ? { value: raw } : { error: "choose one" };
  const text = String(raw).trim();
  if (type === "optfloat" && text === "") return { value: null };
  if (text === "") return { error: "required" };
  const n = Number(text);
  if (!Number.isFinite(n)) return { error: "must be a number" };
  if (type === "int" && !Number.isInteger(n)) return { error: "must be a whole number" };
  if (opts.min !== undefined && n < opts.min) return { error: `must be ≥ ${opts.min}` };
  if (opts.max !== undefined && n > opts.max) return { error: `must be ≤ ${opts.max}` };
  if (opts.gt !== undefined && n <= opts.gt) return { error: `must be > ${opts.gt}` };
  return { value: n };
}

export class SettingsView {
  constructor(app) {
    this.app = app;
    this.form = $("#settings-form");
    this.inputs = new Map(); // path -> {input, type, opts, errorEl}
    this.config = null;
    this.form.addEventListener("submit", (ev) => { ev.preventDefault(); this.apply(); });
    this.form.addEventListener("input", () => this.check());
  }

  onConfig(config) {
    const editing = this.form.querySelector(".dirty");
    this.config = config;
    if (!editing || !this.inputs.size) this.build();
    else this.markDirty();
  }

  show() {
    if (!this.inputs.size && this.config) this.build();
  }

  build() {
    const c = this.config;
    if (!c) return;
    this.inputs.clear();
    const sections = SECTIONS.map((sec) => {
      const grid = el("div", { class: "grid" });
      for (const [path, label, type, opts] of sec.fields) grid.append(this.fieldEl(path, label, type, opts, getPath(c, path)));
      const fs = el("fieldset", {}, el("legend", {}, sec.title), grid);
      if (sec.custom === "models") fs.append(this.modelsEl(c));
      return fs;
    });
    this.formError = el("p", { class: "error", id: "settings-error" });
    this.form.replaceChildren(
      ...sections,
      this.formError,
      el("div", { class: "actions" },
        el("button", { class: "btn", type: "button", onclick: () => this.fillDefaults() }, "Scaling defaults"),
        el("button", { class: "btn", type: "button", onclick: () => this.build() }, "Discard changes"),
        el("button", { class: "btn primary", type: "submit", id: "settings-apply" }, "Apply live")),
    );
    this.check();
  }

  fieldEl(path, label, type, opts, value) {
    let input;
    if (type === "bool") {
      input = el("input", { type: "checkbox", name: path });
      input.checked = Boolean(value);
    } else if (type === "select") {
      input = el("select", { name: path }, ...opts.options(this.config).map((o) => el("option", { value: o, selected: o === value }, o)));
    } else {
      input = el("input", { name: path, inputmode: type === "int" ? "numeric" : "decimal", value: value === null || value === undefined ? "" : String(value) });
    }
    input.dataset.original = type === "bool" ? String(Boolean(value)) : value === null || value === undefined ? "" : String(value);
    const errorEl = el("div", { class: "field-error" });
    this.inputs.set(path, { input, type, opts, errorEl });
    const wrap = el("label", { class: type === "bool" ? "check" : "" },
      type === "bool" ? input : null, label, type === "bool" ? null : input,
      opts.hint ? el("span", { class: "hint" }, opts.hint) : null, errorEl);
    return wrap;
  }

  modelsEl(c) {
    const known = c.models?.known || [];
    const weights = c.models?.weights || {};
    const fallback = c.models?.fallback || {};
    const cats = c.models?.category_models || {};
    const grid = el("div", { class: "grid" });
    for (const m of known) {
      grid.append(this.fieldEl(`models.weights.${m}`, `Share of unpinned work: ${m}`, "optfloat", { min: 0, hint: "relative weight; empty = not used" }, weights[m] ?? ""));
    }
    for (const m of known) {
      const input = el("input", { name: `models.fallback.${m}`, value: (fallback[m] || []).join(", "), placeholder: "none" });
      input.dataset.original = input.value;
      const errorEl = el("div", { class: "field-error" });
      this.inputs.set(`models.fallback.${m}`, { input, type: "list", opts: { known }, errorEl });
      grid.append(el("label", {}, `Fallback when ${m} is rate-limited`, input, errorEl));
    }
    const catInput = el("input", { name: "models.category_models", value: Object.entries(cats).map(([k, v]) => `${k}=${v}`).join(", "), placeholder: "e.g. review=opus" });
    catInput.dataset.original = catInput.value;
    const catErr = el("div", { class: "field-error" });
    this.inputs.set("models.category_models", { input: catInput, type: "pairs", opts: { known }, errorEl: catErr });
    grid.append(el("label", {}, "Model per category", catInput, el("span", { class: "hint" }, "category=model, comma separated"), catErr));
    return grid;
  }

  fillDefaults() {
    for (const [path, value] of Object.entries(DEFAULTS)) {
      const f = this.inputs.get(path);
      if (!f) continue;
      if (f.type === "bool") f.input.checked = value;
      else f.input.value = String(value);
    }
    this.check();
  }

  parse(path, f) {
    const { input, type, opts } = f;
    if (type === "list") {
      const items = input.value.split(",").map((s) => s.trim()).filter(Boolean);
      const bad = items.find((m) => !opts.known.includes(m));
      return bad ? { error: `unknown model ${bad}` } : { value: items };
    }
    if (type === "pairs") {
      const out = {};
      for (const part of input.value.split(",").map((s) => s.trim()).filter(Boolean)) {
        const [k, v] = part.split("=").map((s) => (s || "").trim());
        if (!k || !v) return { error: `“${part}” is not category=model` };
        if (!opts.known.includes(v)) return { error: `unknown model ${v}` };
        out[k] = v;
      }
      return { value: out };
    }
    return parseField(type, type === "bool" ? input.checked : input.value, opts);
  }

  /** Validate every field; returns {partial, ok}. Cross-field rules are checked here too. */
  check() {
    let ok = true;
    const values = {};
    for (const [path, f] of this.inputs) {
      const r = this.parse(path, f);
      f.errorEl.textContent = r.error || "";
      f.input.classList.toggle("invalid", Boolean(r.error));
      if (r.error) ok = false;
      else values[path] = r.value;
    }
    const min = values["scaling.min_workers"];
    const max = values["scaling.max_workers"];
    if (min !== undefined && max !== undefined && min > max) {
      const f = this.inputs.get("scaling.min_workers");
      f.errorEl.textContent = "must not exceed max workers";
      f.input.classList.add("invalid");
      ok = false;
    }
    this.markDirty();
    const apply = $("#settings-apply");
    if (apply) apply.disabled = !ok;
    return { ok, values };
  }

  markDirty() {
    for (const [, f] of this.inputs) {
      const now = f.type === "bool" ? String(f.input.checked) : f.input.value;
      f.input.classList.toggle("dirty", now !== f.input.dataset.original);
    }
  }

  async apply() {
    const { ok, values } = this.check();
    if (!ok) return;
    const partial = {};
    let weightsChanged = false;
    let fallbackChanged = false;
    for (const [path, f] of this.inputs) {
      if (!f.input.classList.contains("dirty")) continue;
      if (path.startsWith("models.weights.")) weightsChanged = true;
      else if (path.startsWith("models.fallback.")) fallbackChanged = true;
      else setPath(partial, path, values[path]);
    }
    // free-form maps are replaced whole by a patch: send the complete map when any entry changed
    if (weightsChanged) {
      const w = {};
      for (const [path, value] of Object.entries(values)) {
        if (path.startsWith("models.weights.") && value !== null && value !== undefined) w[path.slice(15)] = value;
      }
      setPath(partial, "models.weights", w);
    }
    if (fallbackChanged) {
      const fb = {};
      for (const [path, value] of Object.entries(values)) {
        if (path.startsWith("models.fallback.") && value.length) fb[path.slice(16)] = value;
      }
      setPath(partial, "models.fallback", fb);
    }
    if (!Object.keys(partial).length) {
      toast("nothing changed");
      return;
    }
    this.formError.textContent = "";
    try {
      this.config = await this.app.rpc.call("swarm.config.patch", { partial });
      toast("configuration applied");
      this.app.config = this.config;
      this.build();
      this.app.refreshStatusSoon();
    } catch (err) {
      const field = (err.data?.field || "").replace(/^params\.partial\./, "");
      const target = this.inputs.get(field) || [...this.inputs.entries()].find(([p]) => field.startsWith(p) || p.startsWith(`${field}.`))?.[1];
      if (target) {
        target.errorEl.textContent = err.message.replace(/^[\w.[\]']+: /, "");
        target.input.classList.add("invalid");
        target.input.focus();
      }
      this.formError.textContent = errorText(err);
    }
  }
}
