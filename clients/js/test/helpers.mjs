// Test helpers: the real relay binary (`relay --demo`, the simulator embedded) on random ports,
// its simulator's admin API, and waits that poll with a deadline.
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const here = fileURLToPath(new URL(".", import.meta.url));
export const RELAY_BIN = process.env.RELAY_BIN ?? resolve(here, "../../../target/debug/relay");

/** Fast upstream timeouts so upstream faults resolve in seconds, not the production 30 s. */
export const FAST_UPSTREAM = `
[upstream]
liveness_window_seconds = 2.0
ping_interval_seconds = 1.0
pong_timeout_seconds = 1.0
backoff_base_seconds = 0.1
backoff_cap_seconds = 0.5
`;

/**
 * Starts `relay --demo` on `listen` (default a random port) with `config` (TOML text) and waits
 * for its ready line and the demo line naming the simulator's admin address.
 */
export async function startRelay({ config = FAST_UPSTREAM, listen = "127.0.0.1:0" } = {}) {
  const dir = mkdtempSync(join(tmpdir(), "relay-js-"));
  const configPath = join(dir, "relay.toml");
  writeFileSync(configPath, config);
  // The relay's cwd is the temp dir so no configs/relay.toml of the checkout is picked up.
  const child = spawn(RELAY_BIN, ["--demo", "--listen", listen, "--config", configPath], {
    cwd: dir,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (d) => {
    stderr = (stderr + d).slice(-20_000);
  });
  const exited = new Promise((res) => child.once("exit", (code, signal) => res({ code, signal })));
  const lines = createInterface({ input: child.stdout });
  const found = {};
  await withDeadline(
    new Promise((res, rej) => {
      lines.on("line", (line) => {
        const ws = /relay ready ws=(\S+) http=(\S+)/.exec(line);
        if (ws) [found.ws, found.http] = [ws[1], ws[2]];
        const admin = /simulator at (\S+),.* fault injection at (http:\/\/[^/]+)\/admin/.exec(line);
        if (admin) [found.sim, found.admin] = [admin[1], admin[2]];
        if (found.ws && found.admin) res();
      });
      exited.then(({ code }) => rej(new Error(`relay exited (${code}) before ready:\n${stderr}`)));
    }),
    15_000,
    "the relay's ready line",
  );
  const relay = {
    ...found,
    proc: child,
    exited,
    get stderr() {
      return stderr;
    },
    listen: new URL(found.http).host,
    /** Sends `signal` and waits for the exit. */
    async stop(signal = "SIGTERM") {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      if (signal === "SIGSTOP") return;
      const res = await withDeadline(exited, 15_000, "the relay's exit");
      rmSync(dir, { recursive: true, force: true });
      return res;
    },
    async admin(path, body) {
      const res = await fetch(`${found.admin}/admin/${path}`, {
        method: body === undefined ? "GET" : "POST",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      if (!res.ok) throw new Error(`admin ${path}: ${res.status} ${await res.text()}`);
      return res.json();
    },
    async status() {
      return (await fetch(`${found.http}/status`)).json();
    },
    /** The simulator's true book in `book()` form. */
    async truth(ticker) {
      const b = await relay.admin(`books/${ticker}`);
      return { yes: b.yes_dollars_fp ?? [], no: b.no_dollars_fp ?? [] };
    },
  };
  return relay;
}

/** Resolves with `promise`, or rejects naming `what` after `ms`. */
export function withDeadline(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, rej) => {
      timer = setTimeout(() => rej(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** Polls `fn` (sync or async) every 25 ms until it returns a truthy value; fails after `ms`. */
export async function waitFor(fn, what, ms = 10_000) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${fmt(last)})`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** The first `event` payload from `client` for which `pred` holds. */
export function nextEvent(client, event, pred = () => true, ms = 10_000) {
  return withDeadline(
    new Promise((res) => {
      const off = client.on(event, (p) => {
        if (pred(p)) {
          off();
          res(p);
        }
      });
    }),
    ms,
    `event '${event}'`,
  );
}

/** Pauses the simulator and waits until the client's book of every ticker equals the truth. */
export async function converge(relay, client, tickers, ms = 10_000) {
  await relay.admin("pause", {});
  try {
    for (const t of tickers) {
      const truth = await relay.truth(t);
      await waitFor(() => same(client.book(t), truth), `the book of ${t} to equal the simulator's`, ms);
    }
  } finally {
    await relay.admin("resume", {});
  }
}

export function same(a, b) {
  return a !== undefined && JSON.stringify(a) === JSON.stringify(b);
}

function fmt(v) {
  if (v instanceof Error) return v.message;
  try {
    return JSON.stringify(v)?.slice(0, 300);
  } catch {
    return String(v);
  }
}

/** Collects every `event` payload of `client` into an array. */
export function record(client, event) {
  const seen = [];
  client.on(event, (p) => seen.push(p));
  return seen;
}
