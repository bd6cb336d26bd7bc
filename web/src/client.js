// The node's WebSocket API as the README describes it: requests answered by id, streams
// by name, and requests signed here exactly as Backpack signs them.
import * as ed from "@noble/ed25519";

const b64 = (bytes) => btoa(String.fromCharCode(...bytes));
const unb64 = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));

export class Keys {
  // the secret seed lives in this origin's localStorage under this name, nowhere else
  static STORE = "satchel.secret";

  constructor() { this.secret = null; this.apiKey = null; }

  async load() {
    const saved = localStorage.getItem(Keys.STORE);
    if (saved) await this.use(unb64(saved));
    return this.apiKey;
  }

  async create() { await this.use(ed.utils.randomSecretKey()); }

  async import(text) {
    const seed = unb64(text.trim());
    if (seed.length !== 32) throw new Error("a secret is 32 bytes, base64");
    await this.use(seed);
  }

  async use(seed) {
    this.secret = seed;
    this.apiKey = b64(await ed.getPublicKeyAsync(seed));
    localStorage.setItem(Keys.STORE, b64(seed));
  }

  forget() { localStorage.removeItem(Keys.STORE); this.secret = null; this.apiKey = null; }

  // instruction=<name>&<params sorted, k=v joined by &>&timestamp=<ms>&window=<ms>
  async sign(instruction, params, window = 5000) {
    const timestamp = Date.now();
    const body = Object.keys(params).sort().map((k) => `${k}=${params[k]}`);
    const text = [`instruction=${instruction}`, ...body, `timestamp=${timestamp}`, `window=${window}`].join("&");
    const signature = await ed.signAsync(new TextEncoder().encode(text), this.secret);
    return [this.apiKey, b64(signature), String(timestamp), String(window)];
  }
}

export class Client {
  constructor(url) {
    this.url = url;
    this.next = 1;
    this.waiting = new Map();
    this.handlers = new Map();  // stream -> callback(data)
    this.open = this.connect();
  }

  connect() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url);
      ws.onopen = () => resolve(ws);
      ws.onerror = () => reject(new Error(`cannot reach ${this.url}`));
      ws.onmessage = (msg) => this.dispatch(JSON.parse(msg.data));
      ws.onclose = () => { for (const [, w] of this.waiting) w.reject(new Error("connection closed")); this.waiting.clear(); };
      this.ws = ws;
    });
  }

  dispatch(frame) {
    if (frame.stream !== undefined) {
      const handler = this.handlers.get(frame.stream);
      if (handler) handler(frame.data);
      return;
    }
    const w = this.waiting.get(frame.id);
    if (!w) return;
    this.waiting.delete(frame.id);
    if (frame.error) w.reject(Object.assign(new Error(frame.error.message), { code: frame.error.code }));
    else w.resolve(frame.result);
  }

  async request(method, params = {}, keys = null) {
    await this.open;
    const id = this.next++;
    const frame = { id, method, params };
    if (keys) frame.signature = await keys.sign(method, params);
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.ws.send(JSON.stringify(frame));
    });
  }

  async subscribe(stream, handler, keys = null) {
    await this.open;
    this.handlers.set(stream, handler);
    const frame = { method: "SUBSCRIBE", params: [stream] };
    if (keys) frame.signature = await keys.sign("subscribe", {});
    this.ws.send(JSON.stringify(frame));
  }

  async unsubscribe(stream) {
    await this.open;
    this.handlers.delete(stream);
    this.ws.send(JSON.stringify({ method: "UNSUBSCRIBE", params: [stream] }));
  }
}

export async function config() {
  return (await fetch("/ui/config")).json();
}

export function rows(table, head, items) {
  table.replaceChildren();
  if (head) {
    const tr = table.insertRow();
    for (const h of head) { const th = document.createElement("th"); th.textContent = h; tr.append(th); }
  }
  for (const item of items) {
    const tr = table.insertRow();
    for (const cell of item) {
      const td = tr.insertCell();
      if (cell instanceof Node) td.append(cell); else td.textContent = cell ?? "-";
    }
  }
}
