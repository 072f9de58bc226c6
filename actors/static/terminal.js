// A live terminal view of one worker (xterm.js): workers.attach streams its output (a ring-buffer
// snapshot first, then live bytes as `attach.output` notifications); keystrokes go back with
// workers.input, the size with workers.resize; workers.detach leaves the worker running.

import { Terminal } from "./vendor/xterm/xterm.mjs";
import { FitAddon } from "./vendor/xterm-addon-fit/addon-fit.mjs";
import { b64ToBytes, errorText, textToB64, toast } from "./util.js";

const CONFLICT = -32009;

export class TerminalPanel {
  constructor(app) {
    this.app = app;
    this.term = null;
    this.fit = null;
    this.workerId = null;
    this.box = null;
    this.onDetached = () => {};
    this.resizeObserver = null;
    this.inputChain = Promise.resolve();
    app.addNotifyListener((method, params) => this.onNotify(method, params));
  }

  get attached() {
    return this.workerId !== null;
  }

  async attach(id, box, forceGetter) {
    this.detach();
    box.replaceChildren();
    let result;
    try {
      result = await this.app.rpc.call("workers.attach", { id });
    } catch (err) {
      toast(`attach ${id}: ${errorText(err)}`, "error");
      return false;
    }
    this.workerId = id;
    this.box = box;
    box.classList.remove("detached");
    const term = new Terminal({
      convertEol: false,
      cursorBlink: true,
      fontSize: 12,
      scrollback: 5000,
      fontFamily: 'ui-monospace, SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", monospace',
      theme: { background: "#000000" },
    });
    const fit = new FitAddon();
    term.loadAddon(fit);
    term.open(box);
    this.term = term;
    this.fit = fit;
    const snapshot = typeof result === "string" ? result : result?.snapshot ?? result?.data ?? "";
    if (snapshot) term.write(b64ToBytes(snapshot));
    term.onData((data) => this.type(data, forceGetter()));
    term.onBinary((data) => this.type(data, forceGetter()));
    this.resizeObserver = new ResizeObserver(() => this.refit());
    this.resizeObserver.observe(box);
    this.refit();
    term.focus();
    return true;
  }

  /** After a reconnect the gateway has forgotten this attachment: attach again and redraw. */
  async reattach() {
    const id = this.workerId;
    if (!id || !this.term) return;
    try {
      const result = await this.app.rpc.call("workers.attach", { id });
      this.term.reset();
      if (result?.snapshot) this.term.write(b64ToBytes(result.snapshot));
      this.lastRows = this.lastCols = undefined;
      this.refit();
    } catch (err) {
      this.term.write(`\r\n\x1b[2m[detached: ${errorText(err)}]\x1b[0m\r\n`);
      this.cleanup(false);
    }
  }

  refit() {
    if (!this.term || !this.fit) return;
    try {
      this.fit.fit();
    } catch {
      return;
    }
    const { rows, cols } = this.term;
    if (rows === this.lastRows && cols === this.lastCols) return;
    this.lastRows = rows;
    this.lastCols = cols;
    const id = this.workerId;
    this.app.rpc.call("workers.resize", { id, rows, cols }).catch(() => {});
  }

  type(data, force) {
    const id = this.workerId;
    if (!id) return;
    // keep keystrokes in order: each input waits for the previous one to be accepted
    this.inputChain = this.inputChain.then(() =>
      this.app.rpc.call("workers.input", { id, data: textToB64(data), force }).catch((err) => {
        if (err.code === CONFLICT) toast(`${id} is busy with a task: tick “type into a busy worker” to type anyway`, "error");
        else toast(`input to ${id}: ${errorText(err)}`, "error");
      }));
  }

  onNotify(method, params) {
    if (!this.term || !params || params.id !== this.workerId) return;
    if (method === "attach.output" && params.data) this.term.write(b64ToBytes(params.data));
    else if (method === "attach.closed" || method === "attach.ended") {
      this.term.write(`\r\n\x1b[2m[detached: ${params.reason || "worker ended"}]\x1b[0m\r\n`);
      this.cleanup(false);
    }
  }

  detach() {
    if (!this.workerId) {
      if (this.term) {  // an attachment that ended on its own left its terminal on screen
        this.term.dispose();
        this.term = null;
      }
      return;
    }
    const id = this.workerId;
    this.app.rpc?.call("workers.detach", { id }).catch(() => {});
    this.cleanup(true);
  }

  cleanup(dispose) {
    this.workerId = null;
    this.lastRows = this.lastCols = undefined;
    if (this.resizeObserver) this.resizeObserver.disconnect();
    this.resizeObserver = null;
    if (dispose) {
      if (this.term) this.term.dispose();
      if (this.box) {
        this.box.classList.add("detached");
        this.box.replaceChildren();
      }
    }
    this.term = dispose ? null : this.term;
    this.onDetached();
  }
}
