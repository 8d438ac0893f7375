// Bundles kalshi-relay-client (clients/js/src) into the one browser module the dashboard embeds:
// crates/relay/dashboard/relay-client.js. The file is committed so that `cargo build` never needs
// node; `npm run bundle` rebuilds it, and bundle.test.mjs fails when it differs from a fresh build.
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const root = join(dirname(fileURLToPath(import.meta.url)), "../..");
export const EMBEDDED = join(root, "crates/relay/dashboard/relay-client.js");

const BANNER =
  "// kalshi-relay-client (clients/js/src) bundled for the relay's dashboard by tests/browser/bundle.mjs.\n" +
  "// Generated: do not edit. Rebuild with `npm run bundle` in tests/browser.";

/** The bundle's text, built fresh from the client's sources. */
export async function bundle() {
  const result = await build({
    stdin: {
      contents: 'export { RelayClient, PermanentCloseError } from "./src/index.ts";',
      resolveDir: join(root, "clients/js"),
      sourcefile: "dashboard-entry.ts",
      loader: "ts",
    },
    bundle: true,
    format: "esm",
    target: "es2022",
    platform: "browser",
    write: false,
    legalComments: "none",
    charset: "utf8",
    banner: { js: BANNER },
    logLevel: "silent",
  });
  return result.outputFiles[0].text;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const text = await bundle();
  const before = readFileSync(EMBEDDED, "utf8");
  writeFileSync(EMBEDDED, text);
  console.log(before === text ? "relay-client.js is up to date" : `wrote ${EMBEDDED} (${text.length} bytes)`);
}
