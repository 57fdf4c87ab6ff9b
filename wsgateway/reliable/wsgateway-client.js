// wsgateway-client.js: the browser client of wsgateway's reliable connections
// (subprotocol "wsgateway.reliable.v1"). One ES module, no dependencies; types in
// wsgateway-client.d.ts. Served by every gateway node at GET /client.js.
//
//   import { WsGatewayClient } from "https://gateway.example.com/client.js";
//   const client = new WsGatewayClient("wss://gateway.example.com/prod", {
//     token: () => fetchToken(), tokenSource: "query:token",
//   });
//   client.on("message", ({ data, seq }) => render(data));
//   client.on("reset", () => reloadState());   // a new connection: what was missed is lost
//
// It connects, acknowledges what it received, and when the socket drops it reconnects with
// capped, jittered exponential backoff, asking to resume: the gateway then replays every
// message after the last one seen, on any node, under the same connection id.

export const SUBPROTOCOL = "wsgateway.reliable.v1";

const DEFAULTS = {
  tokenSource: "query:token",
  minDelayMs: 250,
  maxDelayMs: 15000,
  ackDelayMs: 50,
  ackEvery: 64,
  reconnectAfterNormalClose: false,
};

export class WsGatewayClient {
  constructor(url, options = {}) {
    this.url = url;
    this.options = { ...DEFAULTS, ...options };
    this.connectionId = null;
    this.lastSeq = 0;
    this._token = null; // the reconnection token of the session
    this._listeners = new Map();
    this._ws = null;
    this._attempt = 0;
    this._timer = null;
    this._ackTimer = null;
    this._acked = 0;
    this._closed = false;
    this._connect();
  }

  /** Listen to "open", "message", "resumed", "reset", "close" or "error"; returns an unsubscribe. */
  on(event, listener) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(listener);
    return () => this._listeners.get(event).delete(listener);
  }

  /** Send a frame to the gateway (routed as on any connection); false if not connected now. */
  send(data) {
    const ws = this._ws;
    if (!ws || ws.readyState !== WebSocket.OPEN || this.connectionId === null) return false;
    ws.send(typeof data === "string" || data instanceof ArrayBuffer || ArrayBuffer.isView(data) ? data : JSON.stringify(data));
    return true;
  }

  /** Close for good: the session ends on the gateway ($disconnect runs), no reconnect. */
  close(code = 1000, reason = "") {
    this._closed = true;
    clearTimeout(this._timer);
    this._flushAck();
    if (this._ws) this._ws.close(code, reason);
  }

  async _connect() {
    this._timer = null;
    let token = this.options.token;
    try {
      if (typeof token === "function") token = await token();
    } catch (error) {
      this._emit("error", { error });
      this._retry();
      return;
    }
    if (this._closed) return;
    const [kind, name] = splitSource(this.options.tokenSource);
    const url = new URL(this.url);
    const protocols = [SUBPROTOCOL];
    if (token && kind === "query") url.searchParams.set(name, token);
    if (token && kind === "subprotocol") protocols.push(name, token);
    if (this.connectionId !== null && this._token !== null) {
      url.searchParams.set("resume", this.connectionId);
      url.searchParams.set("reconnectionToken", this._token);
      url.searchParams.set("lastSeq", String(this.lastSeq));
    }
    const ws = new WebSocket(url.toString(), protocols);
    this._ws = ws;
    ws.onmessage = (event) => this._onFrame(event.data);
    ws.onclose = (event) => this._onClose(ws, event);
    ws.onerror = () => {}; // a close event follows, with the code
  }

  _onFrame(raw) {
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch {
      return; // not ours: the gateway only sends JSON envelopes on this subprotocol
    }
    if (frame.type === "connected") {
      this._attempt = 0;
      const before = this.connectionId;
      this.connectionId = frame.connectionId;
      this._token = frame.reconnectionToken;
      if (frame.resumed) {
        this._emit("resumed", { connectionId: frame.connectionId, lastSeq: this.lastSeq });
      } else {
        this.lastSeq = 0;
        this._acked = 0;
        this._emit(before === null ? "open" : "reset", { connectionId: frame.connectionId, previousId: before });
      }
      return;
    }
    if (frame.type !== "message" || typeof frame.seq !== "number") return;
    if (frame.seq <= this.lastSeq) return; // seen already
    this.lastSeq = frame.seq;
    const data = frame.encoding === "base64" ? fromBase64(frame.data) : frame.data;
    this._emit("message", { data, seq: frame.seq });
    this._scheduleAck();
  }

  _scheduleAck() {
    if (this.lastSeq - this._acked >= this.options.ackEvery) {
      this._flushAck();
    } else if (this._ackTimer === null) {
      this._ackTimer = setTimeout(() => this._flushAck(), this.options.ackDelayMs);
    }
  }

  _flushAck() {
    clearTimeout(this._ackTimer);
    this._ackTimer = null;
    const ws = this._ws;
    if (ws && ws.readyState === WebSocket.OPEN && this.lastSeq > this._acked) {
      ws.send(JSON.stringify({ type: "ack", seq: this.lastSeq }));
      this._acked = this.lastSeq;
    }
  }

  _onClose(ws, event) {
    if (ws !== this._ws) return;
    this._ws = null;
    clearTimeout(this._ackTimer);
    this._ackTimer = null;
    this._acked = Math.min(this._acked, this.lastSeq);
    const ended = event.code === 1000 && !this.options.reconnectAfterNormalClose;
    const willReconnect = !this._closed && !ended;
    this._emit("close", { code: event.code, reason: event.reason, willReconnect });
    if (willReconnect) this._retry();
  }

  _retry() {
    if (this._closed) return;
    const { minDelayMs, maxDelayMs } = this.options;
    const cap = Math.min(maxDelayMs, minDelayMs * 2 ** this._attempt);
    this._attempt += 1;
    const delay = cap / 2 + Math.random() * (cap / 2); // jittered: a fleet does not reconnect in step
    this._timer = setTimeout(() => this._connect(), delay);
  }

  _emit(event, detail) {
    for (const listener of this._listeners.get(event) || []) {
      try {
        listener(detail);
      } catch (error) {
        setTimeout(() => { throw error; }); // a listener's bug must not stop the client
      }
    }
  }
}

function splitSource(source) {
  const at = source.indexOf(":");
  return at < 0 ? [source, ""] : [source.slice(0, at), source.slice(at + 1)];
}

function fromBase64(text) {
  const bytes = atob(text);
  const out = new Uint8Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) out[i] = bytes.charCodeAt(i);
  return out;
}
