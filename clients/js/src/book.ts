/**
 * Order books from the exchange's snapshot and delta messages, kept in integer units so no float
 * rounding ever creeps in: prices in 1/10000 dollar, sizes in 1/100 contract.
 */

/** One level as the exchange writes it: `["0.0800", "300.00"]` (price in dollars, size in contracts). */
export type Level = [price: string, size: string];

/** A book as `orderbook_snapshot` carries it: bids on each side, lowest price first. */
export interface BookView {
  yes: Level[];
  no: Level[];
}

const PRICE_DIGITS = 4;
const SIZE_DIGITS = 2;

/** `"0.08"`, `"0.0800"`, `0.08` or `"-54.00"` as an integer of 10^-digits units; undefined if malformed. */
export function parseFixed(value: unknown, digits: number): number | undefined {
  const text = typeof value === "number" ? String(value) : value;
  if (typeof text !== "string") return undefined;
  const m = /^(-?)(\d+)(?:\.(\d*))?$/.exec(text.trim());
  if (!m) return undefined;
  const frac = (m[3] ?? "").padEnd(digits, "0");
  if (frac.length > digits && /[1-9]/.test(frac.slice(digits))) return undefined;
  const units = Number(m[2]) * 10 ** digits + Number(frac.slice(0, digits) || "0");
  if (!Number.isSafeInteger(units)) return undefined;
  return m[1] === "-" ? -units : units;
}

/** Integer units back to the exchange's text: `formatFixed(800, 4)` is `"0.0800"`. */
export function formatFixed(units: number, digits: number): string {
  const sign = units < 0 ? "-" : "";
  const abs = Math.abs(units);
  const scale = 10 ** digits;
  return `${sign}${Math.floor(abs / scale)}.${String(abs % scale).padStart(digits, "0")}`;
}

type Side = "yes" | "no";

/** One market's book. `trusted` is false until a snapshot arrives and again after any doubt. */
export class OrderBook {
  readonly ticker: string;
  marketId: string | undefined;
  trusted = false;
  #sides: Record<Side, Map<number, number>> = { yes: new Map(), no: new Map() };

  constructor(ticker: string) {
    this.ticker = ticker;
  }

  /** Replaces the book with an `orderbook_snapshot` body; false (and untrusted) if it is malformed. */
  applySnapshot(msg: Record<string, unknown>): boolean {
    const sides: Record<Side, Map<number, number>> = { yes: new Map(), no: new Map() };
    for (const side of ["yes", "no"] as const) {
      const levels = msg[`${side}_dollars_fp`] ?? [];
      if (!Array.isArray(levels)) return this.#distrust();
      for (const level of levels) {
        if (!Array.isArray(level)) return this.#distrust();
        const price = parseFixed(level[0], PRICE_DIGITS);
        const size = parseFixed(level[1], SIZE_DIGITS);
        if (price === undefined || size === undefined || size < 0) return this.#distrust();
        if (size > 0) sides[side].set(price, size);
      }
    }
    this.#sides = sides;
    if (typeof msg.market_id === "string") this.marketId = msg.market_id;
    this.trusted = true;
    return true;
  }

  /** Applies an `orderbook_delta` body; false (and untrusted) if it is malformed or would go negative. */
  applyDelta(msg: Record<string, unknown>): boolean {
    const side = msg.side;
    const price = parseFixed(msg.price_dollars, PRICE_DIGITS);
    const delta = parseFixed(msg.delta_fp, SIZE_DIGITS);
    if ((side !== "yes" && side !== "no") || price === undefined || delta === undefined) {
      return this.#distrust();
    }
    const levels = this.#sides[side];
    const size = (levels.get(price) ?? 0) + delta;
    if (size < 0) return this.#distrust();
    if (size === 0) levels.delete(price);
    else levels.set(price, size);
    return true;
  }

  /** The book in snapshot form: `{yes: [["0.0800","300.00"], ...], no: [...]}`, lowest price first. */
  view(): BookView {
    const side = (levels: Map<number, number>): Level[] =>
      [...levels.entries()]
        .sort((a, b) => a[0] - b[0])
        .map(([p, s]) => [formatFixed(p, PRICE_DIGITS), formatFixed(s, SIZE_DIGITS)]);
    return { yes: side(this.#sides.yes), no: side(this.#sides.no) };
  }

  /** The book as an `orderbook_snapshot` body (empty sides left out, as the exchange does). */
  snapshotBody(): Record<string, unknown> {
    const v = this.view();
    const body: Record<string, unknown> = { market_ticker: this.ticker };
    if (this.marketId !== undefined) body.market_id = this.marketId;
    if (v.yes.length) body.yes_dollars_fp = v.yes;
    if (v.no.length) body.no_dollars_fp = v.no;
    return body;
  }

  #distrust(): false {
    this.trusted = false;
    return false;
  }
}

/** Every market's book by ticker, with the trust rules the client and the tabs share. */
export class Books {
  readonly #books = new Map<string, OrderBook>();

  /** The book of `ticker` if it is trusted. */
  view(ticker: string): BookView | undefined {
    const b = this.#books.get(ticker);
    return b?.trusted ? b.view() : undefined;
  }

  get(ticker: string): OrderBook | undefined {
    return this.#books.get(ticker);
  }

  tickers(): string[] {
    return [...this.#books.keys()];
  }

  trustedTickers(): string[] {
    return [...this.#books.values()].filter((b) => b.trusted).map((b) => b.ticker);
  }

  /** Marks these books (default: all) untrusted; returns the tickers that were trusted. */
  distrust(tickers: Iterable<string> = this.#books.keys()): string[] {
    const marked: string[] = [];
    for (const t of [...tickers]) {
      const b = this.#books.get(t);
      if (b?.trusted) {
        b.trusted = false;
        marked.push(t);
      }
    }
    return marked;
  }

  /**
   * Applies an `orderbook_snapshot` or `orderbook_delta` body: `applied`; `skipped` (a delta for
   * a book not trusted, never applied); or `bad` (malformed, or a level would go negative: the
   * book is untrusted now and needs a fresh snapshot).
   */
  apply(type: string, msg: Record<string, unknown>, ticker: string): "applied" | "skipped" | "bad" {
    let b = this.#books.get(ticker);
    if (!b) this.#books.set(ticker, (b = new OrderBook(ticker)));
    if (type === "orderbook_snapshot") return b.applySnapshot(msg) ? "applied" : "bad";
    if (!b.trusted) return "skipped";
    return b.applyDelta(msg) ? "applied" : "bad";
  }

  /** Drops the books `keep` says nobody wants. */
  retain(keep: (ticker: string) => boolean): void {
    for (const t of [...this.#books.keys()]) if (!keep(t)) this.#books.delete(t);
  }
}
