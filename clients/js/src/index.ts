/**
 * `kalshi-relay-client`: a WebSocket client for the Kalshi relay (and the exchange itself) that
 * gets the reconnection rules right: backoff with jitter, subscriptions replayed, books checked by
 * seq and repaired, application pings, a bounded send queue with backpressure, and in browsers one
 * connection shared by every tab.
 *
 * ```js
 * import { RelayClient } from "kalshi-relay-client";
 * const client = new RelayClient({ url: "ws://127.0.0.1:8080/trade-api/ws/v2" });
 * client.subscribe({ channels: ["orderbook_delta"], marketTickers: ["SOME-MARKET"] }, (m) => {
 *   console.log(client.book("SOME-MARKET"));
 * });
 * ```
 */
export { RelayClient, PermanentCloseError } from "./client.js";
export type {
  RelayClientOptions,
  RelayClientEvents,
  RelayStatus,
  ServerMessage,
  SubscriptionHandle,
  SubscriptionInfo,
  MessageCallback,
  ConnectionState,
  TokenSource,
  WebSocketLike,
  WebSocketConstructor,
} from "./client.js";
export type { SubscribeSpec } from "./subscriptions.js";
export { SharedRelayClient } from "./tabs.js";
export type { SharedRelayClientOptions } from "./tabs.js";
export { Hub } from "./hub.js";
export type { HubMessage, TabMessage, PortableOptions } from "./hub.js";
export type { BookView, Level } from "./book.js";
export { OrderBook, parseFixed, formatFixed } from "./book.js";
export { backoffDelay, DEFAULT_BACKOFF } from "./backoff.js";
export type { BackoffOptions } from "./backoff.js";
export { isPermanentClose, describeClose, classifyClose } from "./close-codes.js";
