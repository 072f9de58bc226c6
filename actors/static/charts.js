// Live charts over a selectable window, fed by the swarm's own time series (swarm.series): the page
// never re-reads tasks or workers to draw them. Scale events and breaker trips (the series'
// annotations) are drawn as vertical marks on every chart's time axis.

import uPlot from "./vendor/uplot/uPlot.esm.js";
import { $, el, errorText, fmtDuration, fmtMoney } from "./util.js";

const PALETTE = ["#4aa3ff", "#3fb950", "#d29922", "#f85149", "#a371f7", "#39c5cf", "#ff7b72", "#e3b341", "#8b949e"];
const MARK = { "scale.up": "#a371f7", "scale.down": "#a371f7", "swarm.halted": "#f85149", "swarm.resumed": "#3fb950", "swarm.half_open": "#d29922", "swarm.canary": "#d29922" };
const ESTIMATE_EVERY_MS = 5000;
// tick steps for charts of counts: whole numbers only (uPlot's default steps include 0.2 and 0.5, which
// rounded to integers read 0, 1, 1, 1, 2)
const INTEGER_STEPS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1e3, 2e3, 2500, 5e3, 1e4, 2e4, 25e3, 5e4, 1e5, 2e5, 25e4, 5e5, 1e6, 2e6, 5e6, 1e7];

function annotationsPlugin(getAnnotations) {
  return {
    hooks: {
      draw: [
        (u) => {
          const notes = getAnnotations() || [];
          if (!notes.length) return;
          const { ctx } = u;
          const { top, height, left, width } = u.bbox;
          const [min, max] = [u.scales.x.min, u.scales.x.max];
          ctx.save();
          ctx.lineWidth = Math.max(1, devicePixelRatio);
          for (const a of notes) {
            if (a.t < min || a.t > max) continue;
            const x = Math.round(u.valToPos(a.t, "x", true));
            if (x < left || x > left + width) continue;
            ctx.strokeStyle = MARK[a.kind] || "#8b949e";
            ctx.setLineDash(a.kind.startsWith("scale.") ? [4, 3] : []);
            ctx.beginPath();
            ctx.moveTo(x, top);
            ctx.lineTo(x, top + height);
            ctx.stroke();
          }
          ctx.restore();
        },
      ],
    },
  };
}

/** Chart definitions: each turns a series reply into uPlot series + data columns. */
const CHARTS = [
  {
    id: "throughput", title: "Throughput (tasks/s)",
    build: (s) => [["done/s", s.completed_per_s], ["failed/s", s.failed_per_s]],
    fmt: (v) => (v == null ? "–" : v.toFixed(2)),
  },
  {
    id: "queue", title: "Queue depth by state", integer: true,
    build: (s) => Object.entries(s.queue || {}).filter(([k]) => !["done", "dead", "cancelled", "skipped"].includes(k)),
    fmt: (v) => (v == null ? "–" : Math.round(v).toLocaleString()),
  },
  {
    id: "utilisation", title: "Utilisation (busy ÷ live workers, %)",
    build: (s) => [["utilisation %", (s.utilisation || []).map((v) => (v == null ? null : v * 100))]],
    fmt: (v) => (v == null ? "–" : `${v.toFixed(0)}%`),
  },
  {
    id: "workers", title: "Workers by model",
    build: (s) => [["all", s.workers], ...Object.entries(s.workers_by_model || {})],
    fmt: (v) => (v == null ? "–" : v.toFixed(1)),
  },
  {
    id: "wait", title: "Queue wait p50 / p95 / p99",
    build: (s) => Object.entries(s.queue_wait_s || {}),
    fmt: (v) => (v == null ? "–" : fmtDuration(v)),
  },
  {
    id: "run", title: "Run time p50 / p95 / p99",
    build: (s) => Object.entries(s.run_s || {}),
    fmt: (v) => (v == null ? "–" : fmtDuration(v)),
  },
  {
    id: "cost", title: "Cost per model (per step)",
    build: (s) => Object.entries(s.cost_usd_by_model || {}),
    fmt: (v) => (v == null ? "–" : fmtMoney(v)),
  },
];

export class ChartsView {
  constructor(app) {
    this.app = app;
    this.plots = new Map();
    this.ticks = {}; // chart id -> the y-axis labels last drawn (the browser tests read them)
    this.series = null;
    this.estimates = {};
    this.timer = null;
    this.windowS = Number(sessionStorage.getItem("shoal.chartWindow") || 900);
    $("#chart-window").value = String(this.windowS);
    $("#chart-window").addEventListener("change", (ev) => {
      this.windowS = Number(ev.target.value);
      sessionStorage.setItem("shoal.chartWindow", String(this.windowS));
      this.load();
    });
    const grid = $("#charts");
    for (const def of CHARTS) {
      const box = el("div", { class: "chart", id: `chart-${def.id}` }, el("h4", {}, def.title), el("div", { class: "nodata" }, "waiting for data…"));
      grid.append(box);
      def.box = box;
    }
    new ResizeObserver(() => this.resize()).observe(grid);
    setInterval(() => this.estimate(), ESTIMATE_EVERY_MS);
  }

  onReady() {
    this.estimate();
    if (this.app.isVisible("charts")) this.load();
  }

  show() {
    this.load();
    clearInterval(this.timer);
    this.timer = setInterval(() => this.app.isVisible("charts") && this.load(), 2000);
  }

  hide() {
    clearInterval(this.timer);
    this.timer = null;
  }

  onEvent() {
    // annotations come with the next series read; a scale event or a trip asks for one now
    if (this.app.isVisible("charts")) this.load();
  }

  /** Numbers the task list's ETA needs, from the swarm's metrics snapshot. */
  async estimate() {
    if (!this.app.rpc?.ready) return;
    try {
      const m = await this.app.rpc.call("swarm.metrics");
      this.estimates = {
        run_p50: m.run_s?.p50 ?? null,
        busy_workers: m.workers?.by_state?.busy ?? 0,
        live_workers: m.workers?.total ?? 0,
        throughput: m.throughput_per_s ?? 0,
      };
    } catch {
      // keep the last estimate
    }
  }

  async load() {
    if (!this.app.rpc?.ready || this.loading) return;
    this.loading = true;
    const started = performance.now();
    try {
      const step = Math.max(1, Math.round(this.windowS / 300));
      this.series = await this.app.rpc.call("swarm.series", { window_s: this.windowS, step_s: step });
      this.draw();
      $("#chart-status").textContent = `${this.series.t.length} points · step ${this.series.step_s}s · ${Math.round(performance.now() - started)} ms`;
    } catch (err) {
      $("#chart-status").textContent = `swarm.series: ${errorText(err)}`;
    } finally {
      this.loading = false;
    }
  }

  draw() {
    const s = this.series;
    if (!s || !s.t) return;
    for (const def of CHARTS) {
      const cols = def.build(s).filter(([, v]) => Array.isArray(v));
      const key = cols.map(([name]) => name).join("|");
      const data = [s.t, ...cols.map(([, v]) => v)];
      let entry = this.plots.get(def.id);
      if (!cols.length) {
        if (entry) { entry.plot.destroy(); this.plots.delete(def.id); }
        def.box.replaceChildren(el("h4", {}, def.title), el("div", { class: "nodata" }, "no data in this window"));
        continue;
      }
      if (!entry || entry.key !== key) {
        if (entry) entry.plot.destroy();
        def.box.replaceChildren(el("h4", {}, def.title));
        const plot = new uPlot(this.options(def, cols), data, def.box);
        entry = { plot, key };
        this.plots.set(def.id, entry);
      } else {
        entry.plot.setData(data);
      }
    }
  }

  options(def, cols) {
    const width = Math.max(300, def.box.clientWidth - 16);
    const yAxis = {
      stroke: "#8793a0", grid: { stroke: "#222b35" }, ticks: { stroke: "#2a333e" }, size: 60,
      values: (u, vals) => (this.ticks[def.id] = vals.map((v) => def.fmt(v))),
    };
    const scales = { x: { time: true } };
    if (def.integer) {
      yAxis.incrs = INTEGER_STEPS;
      // counts start at 0 and reach at least 1, so an empty queue still gets the ticks 0 and 1
      scales.y = { range: (u, min, max) => [0, Math.max(1, Math.ceil(max ?? 0))] };
    }
    return {
      width,
      height: 190,
      cursor: { drag: { x: false, y: false } },
      legend: { live: true },
      scales,
      axes: [
        { stroke: "#8793a0", grid: { stroke: "#222b35" }, ticks: { stroke: "#2a333e" } },
        yAxis,
      ],
      series: [
        {},
        ...cols.map(([name], i) => ({
          label: name,
          stroke: PALETTE[i % PALETTE.length],
          width: 1.5,
          spanGaps: false,
          points: { size: 4 }, // uPlot shows them only where the data is sparse enough
          value: (u, v) => def.fmt(v),
        })),
      ],
      plugins: [annotationsPlugin(() => this.series?.annotations)],
    };
  }

  resize() {
    for (const def of CHARTS) {
      const entry = this.plots.get(def.id);
      if (entry) entry.plot.setSize({ width: Math.max(300, def.box.clientWidth - 16), height: 190 });
    }
  }
}
