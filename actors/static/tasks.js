// The task queue: one page of tasks.list at a time (filter by state, cursor paging), refreshed while
// task.* events arrive; a detail panel with the prompt, dependencies (which task waits on which),
// attempts with their reasons, ETA, and the actions submit / cancel / retry / skip / boost / assign.

import { VTable } from "./vtable.js";
import { $, el, errorText, fmtAgo, fmtDuration, fmtTime, stateClass, throttle, toast } from "./util.js";

const PAGE = 100;
const STATES = ["ready", "blocked", "running", "failed", "done", "dead", "cancelled", "skipped"];
const OPEN = new Set(["ready", "blocked", "running", "failed"]);

/** `used/max`, plus the attempts that did not count: `2/3 (+2 rate-limited)`, never `4/3`.
 * As the queue counts: rate-limited, interrupted or cancelled attempts, and those before the last
 * manual retry (`retry_base`), do not use up max_attempts. */
export function attemptsText(t) {
  const base = t.retry_base || 0;
  let used = 0;
  let limited = 0;
  let interrupted = 0;
  let earlier = 0;
  for (const a of t.attempts || []) {
    if ((a.n || 0) <= base) earlier += 1;
    else if (a.outcome === "rate_limited") limited += 1;
    else if (a.outcome === "interrupted" || a.outcome === "cancelled") interrupted += 1;
    else used += 1;
  }
  const extra = [[limited, "rate-limited"], [interrupted, "interrupted"], [earlier, "before retry"]]
    .filter(([n]) => n).map(([n, label]) => `+${n} ${label}`);
  const text = `${used}/${t.max_attempts ?? "?"}`;
  return extra.length ? `${text} (${extra.join(", ")})` : text;
}

function taskPage(result) {
  if (Array.isArray(result)) return { tasks: result, cursor: null };
  return {
    tasks: result?.tasks || result?.items || [],
    cursor: result?.cursor ?? result?.next_cursor ?? result?.next ?? null,
  };
}

export class TasksView {
  constructor(app) {
    this.app = app;
    this.state = sessionStorage.getItem("shoal.taskState") || "";
    this.cursors = [null]; // cursor of each page seen; the last one is the current page's
    this.nextCursor = null;
    this.tasks = [];
    this.selectedId = null;
    this.loading = false;
    this.again = false; // a reload was asked while one was in flight
    this.reloadSoon = throttle(() => this.reload(), 1000);
    this.table = new VTable($("#tasks-table"), {
      rowKey: (t) => t.id,
      onSelect: (t) => this.select(t.id),
      sortable: false,
      emptyText: "No tasks here.",
      columns: [
        { key: "id", title: "Task", width: "minmax(110px,1.3fr)", text: (t) => t.id },
        { key: "state", title: "State", width: "78px", text: (t) => t.state, cellClass: (t) => stateClass(t.state) },
        { key: "priority", title: "Pri", width: "40px", cls: "num", text: (t) => String(t.priority ?? 0) },
        { key: "category", title: "Category", width: "80px", text: (t) => t.category || "–" },
        { key: "model", title: "Model", width: "64px", text: (t) => t.model || "any" },
        { key: "deps", title: "Waits on", width: "minmax(80px,1fr)", text: (t) => this.waitsOn(t), tip: "dependencies not yet done" },
        { key: "attempts", title: "Attempts", width: "minmax(44px,130px)", cls: "num", text: attemptsText, tip: "attempts used / max, and those that did not count (rate-limited, interrupted)" },
        { key: "worker", title: "Worker", width: "minmax(70px,.8fr)", text: (t) => t.worker || "" },
        { key: "eta", title: "ETA", width: "64px", cls: "num", text: (t) => this.eta(t) },
        { key: "updated", title: "Updated", width: "84px", text: (t) => fmtTime(t.updated || t.created) },
        { key: "reason", title: "Reason", width: "minmax(80px,1.2fr)", text: (t) => t.reason || "" },
      ],
    });
    this.buildChips();
    $("#tasks-prev").addEventListener("click", () => this.page(-1));
    $("#tasks-next").addEventListener("click", () => this.page(1));
    $("#task-find").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const id = $("#task-find-id").value.trim();
      if (id) this.select(id);
    });
    $("#btn-new-task").addEventListener("click", () => this.openSubmit());
    $("#submit-form").addEventListener("submit", (ev) => this.submit(ev));
    $("#tasks-live").addEventListener("change", () => this.reload());
  }

  buildChips() {
    const box = $("#task-states");
    const mk = (value, label) => el("button", {
      class: "chip", type: "button", "aria-pressed": String(this.state === value), dataset: { state: value },
      onclick: () => this.setState(value),
    }, label);
    box.replaceChildren(mk("", "all"), ...STATES.map((s) => mk(s, s)));
  }

  onStatus(status) {
    const queue = status?.queue || {};
    for (const chip of document.querySelectorAll("#task-states .chip")) {
      const s = chip.dataset.state;
      const n = s ? queue[s] || 0 : Object.values(queue).reduce((a, b) => a + (Number(b) || 0), 0);
      const text = `${s || "all"} ${n.toLocaleString()}`;
      if (chip.textContent !== text) chip.textContent = text;
    }
    this.status = status;
  }

  setState(state) {
    this.state = state;
    sessionStorage.setItem("shoal.taskState", state);
    for (const chip of document.querySelectorAll("#task-states .chip")) {
      chip.setAttribute("aria-pressed", String(chip.dataset.state === state));
    }
    this.cursors = [null];
    this.reload();
  }

  onReady() {
    this.reload();
  }

  show() {
    this.reload();
  }

  onEvent({ topic, data }) {
    const id = data?.task_id ?? data?.id;
    if (this.selectedId && id === this.selectedId) this.loadDetailSoon();
    if (this.app.isVisible("tasks") && $("#tasks-live").checked) this.reloadSoon();
    return topic;
  }

  page(delta) {
    if (delta > 0 && this.nextCursor) this.cursors.push(this.nextCursor);
    else if (delta < 0 && this.cursors.length > 1) this.cursors.pop();
    else return;
    this.reload();
  }

  async reload() {
    if (!this.app.rpc?.ready) return;
    if (this.loading) {
      // one is in flight, asked before this change (another state chip, a task started): its
      // answer may be stale, so load again once it is back rather than drop this reload
      this.again = true;
      return;
    }
    this.loading = true;
    this.again = false;
    const params = { limit: PAGE };
    if (this.state) params.state = this.state;
    const cursor = this.cursors[this.cursors.length - 1];
    if (cursor) params.cursor = cursor;
    try {
      const { tasks, cursor: next } = taskPage(await this.app.rpc.call("tasks.list", params));
      this.tasks = tasks;
      this.nextCursor = next;
      this.table.setRows(tasks);
      if (!this.marked) {
        this.marked = true;
        requestAnimationFrame(() => setTimeout(() => performance.mark("shoal:tasks-rendered"), 0));
      }
      const n = this.cursors.length;
      $("#tasks-page").textContent = tasks.length
        ? `page ${n} · ${(n - 1) * PAGE + 1}–${(n - 1) * PAGE + tasks.length}`
        : `page ${n}`;
      $("#tasks-prev").disabled = n <= 1;
      $("#tasks-next").disabled = !next;
    } catch (err) {
      toast(`tasks.list: ${errorText(err)}`, "error");
    } finally {
      this.loading = false;
      if (this.again) this.reload();
    }
  }

  waitsOn(t) {
    if (!t.deps || !t.deps.length) return "";
    if (t.state !== "blocked") return `${t.deps.length} dep${t.deps.length > 1 ? "s" : ""} met`;
    return t.deps.join(", ");
  }

  /** Rough ETA from recent run times: p50 run time, and the queue ahead shared by live workers. */
  eta(t) {
    const est = this.app.views.charts?.estimates || {};
    const p50 = est.run_p50;
    if (t.state === "running" && this.waitingWorker(t)) return "needs input";
    if (!p50 || !OPEN.has(t.state)) return "";
    const now = Date.now() / 1000;
    if (t.state === "running") {
      const open = (t.attempts || [])[t.attempts.length - 1];
      const started = open?.started || t.updated || now;
      return `~${fmtDuration(Math.max(0, started + p50 - now))}`;
    }
    if (t.state === "ready" || t.state === "failed") {
      const workers = Math.max(1, est.busy_workers || 1);
      const ahead = this.state === "ready" ? this.tasks.indexOf(t) + (this.cursors.length - 1) * PAGE : (this.status?.queue?.ready || 0);
      return `~${fmtDuration((Math.floor(Math.max(0, ahead) / workers) + 1) * p50)}`;
    }
    return "after deps";
  }

  /** The worker running `t` when its agent waits on a question (a permission prompt), else null. */
  waitingWorker(t) {
    const w = t.worker ? this.app.views.workers?.workers.get(t.worker) : null;
    return w && w.state === "busy" && w.needs_input && w.task_id === t.id ? w : null;
  }

  // ---- detail --------------------------------------------------------------------------------

  select(id) {
    this.selectedId = id;
    this.table.setSelected(id);
    this.loadDetail();
  }

  loadDetailSoon() {
    if (!this._detailSoon) this._detailSoon = throttle(() => this.loadDetail(), 500);
    this._detailSoon();
  }

  async loadDetail() {
    const id = this.selectedId;
    const pane = $("#task-detail");
    if (!id) return;
    let t;
    try {
      t = await this.app.rpc.call("tasks.get", { id });
    } catch (err) {
      pane.replaceChildren(el("p", { class: "error" }, errorText(err)));
      return;
    }
    if (this.selectedId !== id) return;
    const deps = await Promise.all((t.deps || []).slice(0, 30).map(async (d) => {
      try {
        const dep = await this.app.rpc.call("tasks.get", { id: d });
        return { id: d, state: dep.state };
      } catch {
        return { id: d, state: "unknown" };
      }
    }));
    if (this.selectedId !== id) return;
    this.renderDetail(t, deps);
  }

  renderDetail(t, deps) {
    const id = t.id;
    const act = async (method, params, ok) => {
      if (await this.app.act(method, { id, ...params }, ok) !== undefined) {
        this.loadDetail();
        this.reloadSoon();
      }
    };
    const boost = el("input", { type: "number", value: String((t.priority ?? 0) + 10), step: 1, "aria-label": "new priority" });
    const assign = el("select", { "aria-label": "worker" },
      ...[...this.app.views.workers.workers.values()]
        .filter((w) => w.state === "idle" || w.state === "busy" || w.state === "paused")
        .sort((a, b) => a.id.localeCompare(b.id))
        .slice(0, 500)
        .map((w) => el("option", { value: w.id }, `${w.id} (${w.state}, ${w.model || "?"})`)));
    const terminal = ["done", "dead", "cancelled", "skipped"].includes(t.state);
    const kv = [
      ["state", t.state, stateClass(t.state)],
      ["priority", t.priority ?? 0],
      ["category", t.category || "–"],
      ["model", t.model || "any"],
      ["worker", t.worker || "–"],
      ["attempts", attemptsText(t)],
      ...(this.waitingWorker(t) ? [["needs input", this.waitingWorker(t).needs_input, "needs-input"]] : []),
      ["timeout", t.timeout_s ? fmtDuration(t.timeout_s) : "none"],
      ["created", t.created ? `${fmtTime(t.created)} (${fmtAgo(t.created)})` : "–"],
      ["updated", t.updated ? fmtTime(t.updated) : "–"],
      ["not before", t.not_before ? fmtTime(t.not_before) : "–"],
      ["ETA", this.eta(t) || "–"],
      ["reason", t.reason || "–"],
    ];
    const attempts = (t.attempts || []).slice().reverse();
    $("#task-detail").replaceChildren(el("div", { class: "detail" },
      el("h3", {}, id),
      el("dl", { class: "kv" }, ...kv.flatMap(([k, v, cls]) => [el("dt", {}, k), el("dd", { class: cls || "" }, String(v))])),
      el("div", { class: "controls" },
        el("button", { class: "btn", id: "btn-task-cancel", disabled: terminal, onclick: () => act("tasks.cancel", {}, `${id} cancelled`) }, "Cancel"),
        el("button", { class: "btn", id: "btn-task-retry", disabled: !["failed", "dead", "cancelled", "skipped"].includes(t.state), onclick: () => act("tasks.retry", {}, `${id} retried`) }, "Retry"),
        el("button", { class: "btn", id: "btn-task-skip", disabled: terminal, onclick: () => act("tasks.skip", {}, `${id} skipped`) }, "Skip"),
      ),
      el("div", { class: "controls" },
        el("span", { class: "muted" }, "Priority"), boost,
        el("button", { class: "btn small", id: "btn-task-boost", disabled: terminal, onclick: () => act("tasks.boost", { priority: Number(boost.value) }, `${id} priority ${boost.value}`) }, "Boost"),
      ),
      el("div", { class: "controls" },
        el("span", { class: "muted" }, "Run on"), assign,
        el("button", { class: "btn small", id: "btn-task-assign", disabled: terminal || !assign.options.length, onclick: () => act("tasks.assign", { worker: assign.value }, `${id} assigned to ${assign.value}`) }, "Assign"),
      ),
      el("div", { class: "section-title" }, `Depends on (${(t.deps || []).length})`),
      deps.length
        ? el("ul", { class: "deps" }, ...deps.map((d) => el("li", {},
          el("span", { class: "link", onclick: () => this.select(d.id) }, d.id), " ",
          el("span", { class: stateClass(d.state) }, d.state),
          d.state === "done" ? " ✓" : " – waiting")))
        : el("p", { class: "muted" }, "none"),
      el("div", { class: "section-title" }, "Prompt"),
      el("pre", { class: "prompt-text" }, t.prompt || ""),
      el("div", { class: "section-title" }, `Attempts (${attempts.length})`),
      attempts.length
        ? el("table", { class: "attempts" },
          el("tr", {}, el("th", {}, "#"), el("th", {}, "worker"), el("th", {}, "model"), el("th", {}, "outcome"), el("th", {}, "took"), el("th", {}, "cost"), el("th", {}, "reason")),
          ...attempts.map((a) => el("tr", {},
            el("td", {}, a.n), el("td", {}, a.worker), el("td", {}, a.model || "–"),
            el("td", { class: stateClass(a.outcome || "running") }, a.outcome || "running"),
            el("td", {}, a.ended ? fmtDuration(a.ended - a.started) : fmtDuration(Date.now() / 1000 - a.started)),
            // what the attempt cost as the agent reported it: failed attempts cost too
            el("td", { class: "num" }, typeof a.usage?.cost_usd === "number" ? `$${a.usage.cost_usd.toFixed(4)}` : "–"),
            el("td", {}, a.reason || (a.exit_code !== null && a.exit_code !== undefined ? `exit ${a.exit_code}` : "")))))
        : el("p", { class: "muted" }, "not run yet"),
      ...this.changeSection(t),
      t.result ? el("div", { class: "section-title" }, "Result") : null,
      t.result ? el("pre", { class: "prompt-text" }, t.result) : null,
    ));
  }

  /** The files the attempt kept (workspace.artifacts), each a download through tasks.artifacts. */
  artifactList(id, a) {
    const ws = a.workspace || {};
    const kept = ws.artifacts || [];
    if (!kept.length && !(ws.artifacts_missing || []).length && !(ws.artifacts_skipped || []).length) return [];
    const download = async (name) => {
      const got = await this.app.act("tasks.artifacts", { id, attempt: a.n, name });
      if (!got) return;
      const bytes = Uint8Array.from(atob(got.data), (c) => c.charCodeAt(0));
      const link = el("a", { href: URL.createObjectURL(new Blob([bytes])), download: name.split("/").pop() });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    };
    return [
      el("div", { class: "section-title" }, `Artifacts (${kept.length})`),
      el("ul", { class: "files", id: "task-artifacts" },
        ...kept.map((f) => el("li", {}, el("span", { class: "link mono", onclick: () => download(f.name) }, f.name), ` ${f.size} bytes`)),
        ...(ws.artifacts_missing || []).map((p) => el("li", { class: "muted" }, `missing: nothing matched ${p}`)),
        ...(ws.artifacts_skipped || []).map((s) => el("li", { class: "muted" }, `skipped: ${s.name}: ${s.reason}`))),
    ];
  }

  /** A worktree task's change (docs/workspaces.md): its branch, files and lines, its check, the diff
   * on demand (tasks.diff), and Merge (tasks.merge). Nothing for tasks that ran in no worktree. */
  changeSection(t) {
    const kept = (t.attempts || []).filter((a) => a.workspace && a.workspace.branch);
    if (!kept.length) return [];
    const a = kept[kept.length - 1];
    const ws = a.workspace;
    const check = ws.verify;
    const diffBox = el("pre", { class: "diff", id: "task-diff", hidden: true });
    const showDiff = async () => {
      try {
        const d = await this.app.rpc.call("tasks.diff", { id: t.id, attempt: a.n });
        diffBox.replaceChildren(...diffLines(d.diff), ...(d.truncated ? [el("span", { class: "muted" }, "\n(cut at 4 MiB)")] : []));
        diffBox.hidden = false;
      } catch (err) {
        diffBox.replaceChildren(el("span", { class: "error" }, errorText(err)));
        diffBox.hidden = false;
      }
    };
    const into = el("input", { type: "text", placeholder: "into (default: checked-out branch)", "aria-label": "merge into" });
    const merge = () => this.app.act("tasks.merge", { id: t.id, attempt: a.n, ...(into.value.trim() ? { into: into.value.trim() } : {}) },
      `${ws.branch} merged`);
    return [
      el("div", { class: "section-title" }, "Change"),
      el("dl", { class: "kv", id: "task-change" },
        el("dt", {}, "branch"), el("dd", { class: "mono" }, ws.branch),
        el("dt", {}, "commits"), el("dd", { class: "mono" }, `${(ws.base || "").slice(0, 12)}..${(ws.head || "").slice(0, 12)}`),
        el("dt", {}, "files"), el("dd", {}, `${ws.files_changed ?? (ws.files || []).length} (+${ws.insertions ?? 0} −${ws.deletions ?? 0})`),
        ...(check ? [el("dt", {}, "check"), el("dd", { class: check.passed ? "state-done" : "state-failed" },
          `${check.command}: ${check.passed ? "passed" : check.timed_out ? "timed out" : `failed (exit ${check.exit_code})`}`)] : []),
      ),
      ...(check && !check.passed && check.output_tail ? [el("pre", { class: "output" }, check.output_tail)] : []),
      el("ul", { class: "files" }, ...(ws.files || []).slice(0, 200).map((f) => el("li", { class: "mono" }, f))),
      ...this.artifactList(t.id, a),
      el("div", { class: "controls" },
        el("button", { class: "btn small", id: "btn-task-diff", onclick: showDiff }, "Show diff"),
        into,
        el("button", { class: "btn small", id: "btn-task-merge", disabled: t.state !== "done", onclick: merge }, "Merge"),
      ),
      diffBox,
    ];
  }

  // ---- submit --------------------------------------------------------------------------------

  openSubmit() {
    const form = $("#submit-form");
    const sel = form.elements.model;
    const known = this.app.config?.models?.known || [];
    sel.replaceChildren(el("option", { value: "" }, "any"), ...known.map((m) => el("option", { value: m }, m)));
    $("#submit-error").textContent = "";
    $("#submit-dialog").showModal();
    form.elements.prompt.focus();
  }

  async submit(ev) {
    if (ev.submitter && ev.submitter.value === "cancel") return;
    ev.preventDefault();
    const f = ev.target.elements;
    for (const input of ev.target.querySelectorAll(".invalid")) input.classList.remove("invalid");
    const task = { prompt: f.prompt.value };
    if (!task.prompt.trim()) {
      f.prompt.classList.add("invalid");
      $("#submit-error").textContent = "prompt: must not be empty";
      return;
    }
    if (f.id.value.trim()) task.id = f.id.value.trim();
    if (f.category.value.trim()) task.category = f.category.value.trim();
    if (f.model.value) task.model = f.model.value;
    const priority = Number(f.priority.value || 0);
    const attempts = Number(f.max_attempts.value || 3);
    if (!Number.isInteger(priority)) { f.priority.classList.add("invalid"); $("#submit-error").textContent = "priority: must be an integer"; return; }
    if (!Number.isInteger(attempts) || attempts < 1) { f.max_attempts.classList.add("invalid"); $("#submit-error").textContent = "max attempts: must be a whole number ≥ 1"; return; }
    task.priority = priority;
    task.max_attempts = attempts;
    const deps = f.deps.value.split(",").map((s) => s.trim()).filter(Boolean);
    if (deps.length) task.deps = deps;
    try {
      const result = await this.app.rpc.call("tasks.submit", { task });
      const created = Array.isArray(result) ? result[0] : result?.tasks?.[0] ?? result?.task ?? result;
      $("#submit-dialog").close();
      ev.target.reset();
      toast(`submitted ${created?.id || ""}`);
      this.reloadSoon();
      if (created?.id) this.select(created.id);
    } catch (err) {
      const field = err.data?.field || "";
      const name = field.replace(/^params\.(task|tasks\[\d+\])\./, "").split(".")[0];
      if (f[name]) f[name].classList.add("invalid");
      $("#submit-error").textContent = errorText(err);
    }
  }

  hide() {}
}


/** A unified diff as coloured lines (text nodes only: nothing in a diff is ever taken as HTML). */
export function diffLines(text) {
  return (text || "").split("\n").map((line) => {
    const cls = line.startsWith("+++") || line.startsWith("---") || line.startsWith("diff ") ? "diff-file"
      : line.startsWith("+") ? "diff-add"
        : line.startsWith("-") ? "diff-del"
          : line.startsWith("@@") ? "diff-hunk" : "";
    return el("span", { class: cls }, line + "\n");
  });
}
