/**
 * The SharedWorker entry: every tab of an origin that opens this worker (same URL and name)
 * shares the one connection the worker's hub holds. Started by `SharedRelayClient`; load it as a
 * module worker: `new SharedWorker(url, { type: "module", name })`.
 */

import { Hub, TabMessage } from "./hub.js";

const hub = new Hub();
let nextPeer = 1;

(globalThis as unknown as { onconnect: (e: MessageEvent) => void }).onconnect = (e: MessageEvent) => {
  const port = e.ports[0];
  const id = `port-${nextPeer++}`;
  hub.attach(id, (m) => port.postMessage(m));
  port.onmessage = (ev: MessageEvent) => hub.receive(id, ev.data as TabMessage);
  port.start();
};
