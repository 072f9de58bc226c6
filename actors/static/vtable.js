// A virtualised table: only the rows in view exist in the DOM (plus a small overscan), and a cell is
// written only when its text changed, so 1,000 live-updating rows cost the same as 30.

import { el } from "./util.js";

const OVERSCAN = 8;

export class VTable {
  /**
   * columns: [{key, title, width, cls, text(row) -> string, cellClass(row) -> string, html(row) -> string,
   *            sort(row) -> comparable}]
   */
  constructor(container, { columns, rowKey, onSelect, emptyText = "nothing to show", sortable = true, rowHeight = 28 }) {
    this.columns = columns;
    this.rowKey = rowKey;
    this.onSelect = onSelect || (() => {});
    this.emptyText = emptyText;
    this.sortable = sortable;
    this.rowHeight = rowHeight;
    this.rows = [];
    this.selected = null;
    this.sortKey = null;
    this.sortDir = 1;
    this.pool = [];
    this.template = columns.map((c) => c.width || "1fr").join(" ");

    this.head = el("div", { class: "vhead", role: "row" });
    this.head.style.gridTemplateColumns = this.template;
    for (const col of columns) {
      const cell = el("div", { class: col.cls || "", role: "columnheader", title: col.tip || col.title }, col.title);
      if (sortable && col.sort) cell.addEventListener("click", () => this.sortBy(col.key));
      col.headEl = cell;
      this.head.append(cell);
    }
    this.body = el("div", { class: "vbody", role: "rowgroup" });
    this.spacer = el("div", { class: "vspacer" });
    this.empty = el("div", { class: "vempty" }, emptyText);
    this.body.append(this.spacer, this.empty);
    container.classList.add("vtable");
    container.replaceChildren(this.head, this.body);
    this.body.addEventListener("scroll", () => this.render(), { passive: true });
    new ResizeObserver(() => this.render()).observe(this.body);
    this.body.addEventListener("click", (ev) => {
      const row = ev.target.closest(".vrow");
      if (!row || row._index === undefined) return;
      const data = this.rows[row._index];
      if (data) this.select(this.rowKey(data), data);
    });
  }

  sortBy(key) {
    if (this.sortKey === key) this.sortDir = -this.sortDir;
    else { this.sortKey = key; this.sortDir = 1; }
    for (const col of this.columns) {
      col.headEl.classList.toggle("sorted", col.key === this.sortKey);
      col.headEl.classList.toggle("asc", col.key === this.sortKey && this.sortDir === 1);
    }
    this.setRows(this.rows);
  }

  setRows(rows) {
    const col = this.sortKey && this.columns.find((c) => c.key === this.sortKey);
    if (col && col.sort) {
      const dir = this.sortDir;
      const f = col.sort;
      rows = rows.slice().sort((a, b) => {
        const x = f(a);
        const y = f(b);
        if (x === y) return 0;
        if (x === null || x === undefined) return 1;
        if (y === null || y === undefined) return -1;
        return x < y ? -dir : dir;
      });
    }
    this.rows = rows;
    this.spacer.style.height = `${rows.length * this.rowHeight}px`;
    this.empty.hidden = rows.length > 0;
    this.render();
  }

  select(key, data) {
    this.selected = key;
    this.render();
    this.onSelect(data || this.rows.find((r) => this.rowKey(r) === key));
  }

  setSelected(key) {
    this.selected = key;
    this.render();
  }

  scrollToKey(key) {
    const i = this.rows.findIndex((r) => this.rowKey(r) === key);
    if (i >= 0) this.body.scrollTop = Math.max(0, i * this.rowHeight - this.body.clientHeight / 2);
  }

  makeRow() {
    const row = el("div", { class: "vrow", role: "row" });
    row.style.gridTemplateColumns = this.template;
    row._cells = this.columns.map((col) => {
      const cell = el("div", { class: col.cls || "", role: "cell" });
      row.append(cell);
      return cell;
    });
    this.body.append(row);
    return row;
  }

  render() {
    const h = this.rowHeight;
    const top = this.body.scrollTop;
    const height = this.body.clientHeight || 600;
    const first = Math.max(0, Math.floor(top / h) - OVERSCAN);
    const last = Math.min(this.rows.length, Math.ceil((top + height) / h) + OVERSCAN);
    const needed = Math.max(0, last - first);
    while (this.pool.length < needed) this.pool.push(this.makeRow());
    for (let p = 0; p < this.pool.length; p += 1) {
      const row = this.pool[p];
      const index = first + p;
      if (p >= needed) {
        if (!row.hidden) row.hidden = true;
        row._index = undefined;
        continue;
      }
      if (row.hidden) row.hidden = false;
      const data = this.rows[index];
      if (row._index !== index) {
        row._index = index;
        row.style.transform = `translateY(${index * h}px)`;
      }
      const key = this.rowKey(data);
      row.dataset.key = key;
      const isSel = key === this.selected;
      if (row._sel !== isSel) { row._sel = isSel; row.classList.toggle("selected", isSel); }
      for (let c = 0; c < this.columns.length; c += 1) {
        const col = this.columns[c];
        const cell = row._cells[c];
        if (col.html) {
          const html = col.html(data);
          if (cell._v !== html) { cell._v = html; cell.innerHTML = html; }
        } else {
          const text = col.text ? col.text(data) : String(data[col.key] ?? "");
          if (cell._v !== text) { cell._v = text; cell.textContent = text; cell.title = text; }
        }
        if (col.cellClass) {
          const cls = `${col.cls || ""} ${col.cellClass(data)}`;
          if (cell._c !== cls) { cell._c = cls; cell.className = cls; }
        }
      }
    }
  }
}

export function escapeHtml(s) {
  return String(s ?? "").replace(/[&<>"']/g, (ch) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[ch]);
}
