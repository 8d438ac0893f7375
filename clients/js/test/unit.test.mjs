// Pure functions: backoff bounds, fixed-point text, close-code classes, book arithmetic.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  backoffDelay,
  DEFAULT_BACKOFF,
  parseFixed,
  formatFixed,
  isPermanentClose,
  classifyClose,
  OrderBook,
} from "../dist/index.js";

test("backoff doubles from 1 s, caps at 30 s, and jitters by a factor in [0.5, 1.5)", () => {
  const at = (attempt, r) => backoffDelay(attempt, DEFAULT_BACKOFF, () => r);
  assert.deepEqual([1, 2, 3, 4, 5, 6, 7, 20].map((a) => at(a, 0.5)), [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
  assert.equal(at(1, 0), 500);
  assert.equal(at(6, 0), 15000);
  assert.ok(at(6, 0.999999) < 45000 && at(6, 0.999999) > 44990);
});

test("fixed-point text round-trips in integer units and refuses junk", () => {
  assert.equal(parseFixed("0.0800", 4), 800);
  assert.equal(parseFixed("0.08", 4), 800);
  assert.equal(parseFixed(0.96, 4), 9600);
  assert.equal(parseFixed("-54.00", 2), -5400);
  assert.equal(parseFixed("1.23456", 4), undefined);
  assert.equal(parseFixed("abc", 2), undefined);
  assert.equal(parseFixed(null, 2), undefined);
  assert.equal(formatFixed(800, 4), "0.0800");
  assert.equal(formatFixed(30000, 2), "300.00");
});

test("close codes: permanent ones stop, the rest reconnect", () => {
  for (const code of [4001, 1002, 1007, 1008, 1009]) assert.equal(isPermanentClose(code), true, `${code}`);
  for (const code of [1000, 1001, 1006, 1011, 1012, 1013, 1014, 4008, 4029]) assert.equal(isPermanentClose(code), false, `${code}`);
  // Refused handshakes, as Node's `ws` reports them.
  assert.deepEqual(classifyClose(1006, "Unexpected server response: 401"), { kind: "refused" });
  assert.deepEqual(classifyClose(1006, "Unexpected server response: 403"), { kind: "permanent", code: 1008 });
  assert.deepEqual(classifyClose(1006, "Unexpected server response: 503"), { kind: "retry" });
  assert.deepEqual(classifyClose(4001, undefined), { kind: "refused" });
  assert.deepEqual(classifyClose(1009, ""), { kind: "permanent", code: 1009 });
  assert.deepEqual(classifyClose(1012, ""), { kind: "retry" });
});

test("a book applies deltas, drops empty levels, and distrusts one that would go negative", () => {
  const b = new OrderBook("M");
  assert.equal(b.applySnapshot({ yes_dollars_fp: [["0.4200", "10.00"], ["0.0800", "5.00"]] }), true);
  assert.deepEqual(b.view(), { yes: [["0.0800", "5.00"], ["0.4200", "10.00"]], no: [] });
  assert.equal(b.applyDelta({ side: "no", price_dollars: "0.5000", delta_fp: "3.00" }), true);
  assert.equal(b.applyDelta({ side: "yes", price_dollars: "0.0800", delta_fp: "-5.00" }), true);
  assert.deepEqual(b.view(), { yes: [["0.4200", "10.00"]], no: [["0.5000", "3.00"]] });
  assert.equal(b.applyDelta({ side: "no", price_dollars: "0.5000", delta_fp: "-4.00" }), false);
  assert.equal(b.trusted, false);
});
