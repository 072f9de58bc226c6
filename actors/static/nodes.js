// Nodes: the nodes of a cluster (several `shoal serve` on one PostgreSQL queue), from nodes.list.
// The tab and the header chip show only in a cluster (swarm.status has `cluster`); a one-node
// swarm has nothing to show here. Refreshed with the status (events and every 3 s).

import { $, el, errorText, fmtAgo, fmtDuration } from "./util.js";

export class NodesView {
  constructor(app) {
    this.app = app;
    this.nodes = [];
    this.loading = false;
  }

  /** Each status: show or hide the tab and the chip; re-read the nodes when they are on screen. */
  onStatus(status) {
    const cluster = status.cluster || null;
    $("#tab-nodes").hidden = !cluster;
    this.renderChip(cluster);
    if (cluster && this.app.isVisible("nodes")) this.refresh();
  }

  show() {
    this.refresh();
  }

  async refresh() {
    if (this.loading || !this.app.rpc?.ready) return;
    this.loading = true;
    try {
      const reply = await this.app.rpc.nodes();
      this.nodes = reply.nodes || [];
      this.render();
    } catch (err) {
      $("#nodes-note").textContent = `nodes.list: ${errorText(err)}`;
    } finally {
      this.loading = false;
    }
  }

  renderChip(cluster) {
    const chip = $("#cluster");
    chip.hidden = !cluster;
    if (!cluster) return;
    const text = `node ${cluster.node_id} · ${cluster.alive}/${cluster.nodes} alive`;
    chip.textContent = text;
    chip.dataset.alive = String(cluster.alive);
    chip.classList.toggle("degraded", cluster.alive < cluster.nodes);
    chip.title = `cluster of ${cluster.nodes} node${cluster.nodes === 1 ? "" : "s"}, ${cluster.alive} alive\nstore ${cluster.store || "?"}`;
    $("#tab-count-nodes").textContent = cluster.nodes ? String(cluster.nodes) : "";
  }

  render() {
    const now = Date.now() / 1000;
    const rows = this.nodes.map((n) => el("tr", { dataset: { node: n.id, state: n.state }, class: `node-${n.state}` },
      el("td", {}, n.id, n.this ? el("span", { class: "muted", title: "this dashboard's node" }, " (this)") : null),
      el("td", { class: "state" }, n.state),
      el("td", { class: "workers" }, String(n.workers)),
      el("td", { class: "heartbeat", title: `lease left ${fmtDuration(n.lease_left_s)}` }, `${fmtDuration(n.heartbeat_age_s)} ago`),
      el("td", {}, n.lease_left_s === null ? "–" : fmtDuration(n.lease_left_s)),
      el("td", {}, `${n.host} (pid ${n.pid})`),
      el("td", {}, n.alive ? fmtAgo(n.started, now) : "–"),
      el("td", {}, n.version || "–"),
      el("td", {}, n.url ? el("code", {}, n.url) : "–"),
    ));
    const head = el("tr", {}, ...["Node", "State", "Workers", "Last heartbeat", "Lease left", "Host", "Up", "Version", "Gateway"].map((h) => el("th", {}, h)));
    $("#nodes-table").replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
    $("#nodes-note").textContent = this.nodes.length ? "" : "no node has sent a heartbeat yet";
  }
}
