// Types of wsgateway-client.js (wsgateway's reliable connections in the browser).

export declare const SUBPROTOCOL: "wsgateway.reliable.v1";

export interface WsGatewayClientOptions {
  /** The token, or a function returning it (called at each (re)connect, so it may refresh). */
  token?: string | null | (() => string | null | Promise<string | null>);
  /** Where the gateway reads it ([auth] sources): "query:NAME" or "subprotocol:NAME". Default "query:token". */
  tokenSource?: string;
  /** Reconnect backoff: first delay and cap, in ms (each delay is jittered). Defaults 250 and 15000. */
  minDelayMs?: number;
  maxDelayMs?: number;
  /** Acknowledge at most this late (ms), or at once after this many messages. Defaults 50 and 64. */
  ackDelayMs?: number;
  ackEvery?: number;
  /** Reconnect after the gateway closed with 1000 (delete_connection). Default false. */
  reconnectAfterNormalClose?: boolean;
}

export interface MessageEvent {
  /** A string, or the bytes of a binary post. */
  data: string | Uint8Array;
  seq: number;
}

export interface WsGatewayClientEvents {
  /** The first connection is up. */
  open: { connectionId: string; previousId: null };
  message: MessageEvent;
  /** Resumed under the same id: every message after lastSeq follows. */
  resumed: { connectionId: string; lastSeq: number };
  /** Could not resume: a new connection with a new id; what was sent meanwhile is lost. */
  reset: { connectionId: string; previousId: string };
  close: { code: number; reason: string; willReconnect: boolean };
  error: { error: unknown };
}

export declare class WsGatewayClient {
  constructor(url: string, options?: WsGatewayClientOptions);
  readonly url: string;
  /** The connection id (what backends post to); null until connected. */
  connectionId: string | null;
  /** The seq of the last message received. */
  lastSeq: number;
  on<K extends keyof WsGatewayClientEvents>(event: K, listener: (detail: WsGatewayClientEvents[K]) => void): () => void;
  send(data: string | ArrayBuffer | ArrayBufferView | object): boolean;
  close(code?: number, reason?: string): void;
}
