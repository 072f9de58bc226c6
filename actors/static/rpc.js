// JSON-RPC 2.0 over one websocket to the gateway: the same protocol every Shoal client speaks.
// Authenticates with `auth.login` as its first call (the token never goes into a URL), reconnects
// with backoff, and tells the app when it is ready so the app re-subscribes with `since`.

export const SUBPROTOCOL = "shoal.v1";
export const UNAUTHORIZED = -32001;

export class RpcError extends Error {
  constructor(code, message, data) {
    super(message);
    this.code = code;
    this.data = data;
  }
}

export class Rpc {
  constructor(url, token, { onNotify, onState, onReady } = {}) {
    this.url = url;
    this.token = token;
    this.onNotify = onNotify || (() => {});
    this.onState = onState || (() => {});
    this.onReady = onReady || (() => {});
    this.ws = null;
    this.nextId = 1;
    this.pending = new Map();
    this.state = "idle";
    this.retry = 0;
    this.stopped = false;
    this.ready = false;
  }

  setState(state, detail) {
    this.state = state;
    this.onState(state, detail);
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    if (this.ws) this.ws.close(1000, "bye");
  }

  connect() {
    if (this.stopped) return;
    this.setState("connecting");
    let ws;
    try {
      ws = new WebSocket(this.url, [SUBPROTOCOL]);
    } catch (err) {
      this.setState("closed", String(err));
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.onopen = () => this.login();
    ws.onmessage = (ev) => this.receive(ev.data);
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.ready = false;
      for (const { reject, timer } of this.pending.values()) {
        clearTimeout(timer);
        reject(new RpcError(-32003, "connection to the gateway lost"));
      }
      this.pending.clear();
      if (this.state !== "unauthorized") {
        this.setState("closed", ev.reason || `code ${ev.code}`);
        this.scheduleReconnect();
      }
    };
  }

  scheduleReconnect() {
    if (this.stopped) return;
    const delay = Math.min(10000, 500 * 2 ** this.retry) * (1 + Math.random() * 0.2);
    this.retry = Math.min(this.retry + 1, 6);
    setTimeout(() => this.connect(), delay);
  }

  async login() {
    try {
      await this.send("auth.login", { token: this.token }, 10000);
    } catch (err) {
      if (err.code === UNAUTHORIZED) {
        this.setState("unauthorized", err.message);
        this.stopped = true;
        if (this.ws) this.ws.close(1000, "unauthorized");
        return;
      }
      if (this.ws) this.ws.close(1011, "login failed");
      return;
    }
    this.retry = 0;
    this.ready = true;
    this.setState("open");
    this.onReady();
  }

  receive(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return;
    }
    for (const item of Array.isArray(msg) ? msg : [msg]) {
      if (item && item.id !== undefined && item.id !== null && (("result" in item) || ("error" in item))) {
        const waiter = this.pending.get(item.id);
        if (!waiter) continue;
        this.pending.delete(item.id);
        clearTimeout(waiter.timer);
        if (item.error) waiter.reject(new RpcError(item.error.code, item.error.message, item.error.data));
        else waiter.resolve(item.result);
      } else if (item && item.method === "events.batch") {
        // a batch subscription's events, many to a frame: handed on one at a time, as `event`
        const { subscription, events } = item.params || {};
        for (const ev of events || []) this.notify("event", { subscription, ...ev });
      } else if (item && typeof item.method === "string") {
        this.notify(item.method, item.params);
      }
    }
  }

  notify(method, params) {
    try {
      this.onNotify(method, params);
    } catch (err) {
      console.error("notification handler failed", err);
    }
  }

  send(method, params, timeoutMs) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new RpcError(-32003, "not connected to the gateway"));
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new RpcError(-32003, `${method}: no answer within ${timeoutMs / 1000} s`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      ws.send(JSON.stringify({ jsonrpc: "2.0", method, params: params || {}, id }));
    });
  }

  /** A call once logged in. Rejects with RpcError (its `data.field` names a bad param). */
  /** Every node of the cluster (a one-node swarm lists itself): {node_id, cluster, nodes: [...]}. */
  nodes() {
    return this.call("nodes.list");
  }

  call(method, params = {}, timeoutMs = 30000) {
    if (!this.ready) return Promise.reject(new RpcError(-32003, "not connected to the gateway"));
    return this.send(method, params, timeoutMs);
  }
}
