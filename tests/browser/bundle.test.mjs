// The dashboard embeds a bundle of kalshi-relay-client that is committed (cargo build needs no
// node); it must equal a fresh build of clients/js/src, or the page runs an old client.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { bundle, EMBEDDED } from "./bundle.mjs";

test("the embedded relay-client.js equals a fresh bundle of clients/js/src", async () => {
  const fresh = await bundle();
  const embedded = readFileSync(EMBEDDED, "utf8");
  assert.ok(
    embedded === fresh,
    "crates/relay/dashboard/relay-client.js is stale: run `npm run bundle` in tests/browser and commit it",
  );
});
