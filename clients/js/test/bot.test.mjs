// examples/bot.mjs as a user runs it: books and fills logged, and still logging after the relay
// restarts under it.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { startRelay, waitFor } from "./helpers.mjs";

const bot = fileURLToPath(new URL("../examples/bot.mjs", import.meta.url));
const cleanup = [];
after(async () => {
  for (const fn of cleanup.reverse()) await fn();
});

test("the example bot logs books and fills, and keeps doing so across a relay restart", async () => {
  let relay = await startRelay();
  cleanup.push(() => relay.stop());
  const child = spawn(process.execPath, [bot, relay.ws], {
    env: { ...process.env, BOT_SUMMARY_MS: "300" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  cleanup.push(() => child.kill("SIGINT"));
  const lines = [];
  createInterface({ input: child.stdout }).on("line", (l) => lines.push(l));
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  const after = (from, re) => lines.slice(from).some((l) => re.test(l));
  const what = (s) => `${s} in the bot's output:\n${lines.slice(-20).join("\n")}\n${stderr}`;

  await waitFor(() => after(0, /book \S+ yes_bid=\d\.\d{4} yes_ask=\d\.\d{4}/), what("a book summary"));
  await waitFor(() => after(0, / fill \S+ (yes|no) /), what("a fill"), 20_000);

  const mark = lines.length;
  await relay.stop("SIGTERM");
  await waitFor(() => after(mark, /closed 1012 service restart/), what("the 1012 close"));
  relay = await startRelay({ listen: relay.listen });
  cleanup.push(() => relay.stop());
  await waitFor(() => after(mark, /state open/), what("the reconnect"), 15_000);
  const reopened = lines.length;
  await waitFor(() => after(reopened, /book \S+ yes_bid=\d\.\d{4}/), what("a book after the restart"));
  await waitFor(() => after(reopened, / fill \S+ (yes|no) /), what("a fill after the restart"), 20_000);
  assert.equal(child.exitCode, null, "the bot is still running");
});
