// Bundle the npm front-end packages into pyxen/web/static/vendor, which xend
// serves: the page never fetches anything from the network at run time.
// Run by `make web` (npm ci && node build.mjs).
import * as esbuild from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";

const out = new URL("../pyxen/web/static/vendor/", import.meta.url).pathname;
mkdirSync(out, { recursive: true });

// xterm.js and its fit addon as one IIFE exposing window.PyxenTerm.
await esbuild.build({
  stdin: {
    contents: `import { Terminal } from "@xterm/xterm"; import { FitAddon } from "@xterm/addon-fit";
               window.PyxenTerm = { Terminal, FitAddon };`,
    resolveDir: new URL(".", import.meta.url).pathname,
  },
  bundle: true, minify: true, format: "iife", target: "es2020", outfile: out + "xterm.js",
  logLevel: "warning",
});
copyFileSync(new URL("node_modules/@xterm/xterm/css/xterm.css", import.meta.url), out + "xterm.css");

// noVNC's RFB client as window.PyxenRFB.
await esbuild.build({
  stdin: {
    contents: `import RFB from "@novnc/novnc/lib/rfb.js"; window.PyxenRFB = RFB;`,
    resolveDir: new URL(".", import.meta.url).pathname,
  },
  bundle: true, minify: true, format: "iife", target: "es2020", outfile: out + "novnc.js",
  logLevel: "warning",
});
