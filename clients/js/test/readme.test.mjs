// The top-level README's JavaScript examples as a user pastes them: run against `relay --demo`
// (the README's address swapped for the test relay's), each must print the book of the market it
// names, so the example names a market the demo serves.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { startRelay, waitFor } from "./helpers.mjs";

const pkg = fileURLToPath(new URL("..", import.meta.url));
const readme = readFileSync(new URL("../../../README.md", import.meta.url), "utf8");
const blocks = [...readme.matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1]);
const README_URL = "ws://127.0.0.1:8080/trade-api/ws/v2";
const cleanup = [];
after(async () => {
  for (const fn of cleanup.reverse()) await fn();
});

test("the README's JavaScript example prints the book of the demo market it names", async () => {
  assert.ok(blocks.length > 0, "no js block in README.md");
  const relay = await startRelay();
  cleanup.push(() => relay.stop());
  for (const block of blocks) {
    assert.ok(block.includes(README_URL), `not at the demo's address:\n${block}`);
    const market = /marketTickers: \["([^"]+)"\]/.exec(block)?.[1];
    assert.ok(market, `names no market:\n${block}`);
    // Run from the package directory, where `kalshi-relay-client` and `ws` resolve.
    const code = block.replace(README_URL, relay.ws);
    const child = spawn(process.execPath, ["--input-type=module", "-e", code], {
      cwd: pkg,
      stdio: ["ignore", "pipe", "pipe"],
    });
    cleanup.push(() => child.kill());
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (err += d));
    await waitFor(
      () => /yes: \[\s*\[\s*'0\.\d{4}'/.test(out),
      `the book of ${market} in the example's output:\n${out}\n${err}`,
    );
  }
});
