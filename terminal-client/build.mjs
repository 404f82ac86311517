// Bundles the terminal client (xterm.js + fit addon + src/) into OUTDIR/rnr-terminal.js and
// OUTDIR/rnr-terminal.css. Run by crates/gateway/build.rs; usage: node build.mjs OUTDIR
import * as esbuild from 'esbuild';

const out = process.argv[2] || 'dist';
await esbuild.build({
  entryPoints: ['src/main.js'],
  bundle: true,
  minify: true,
  format: 'iife',
  target: ['chrome100', 'firefox100', 'safari15'],
  outfile: `${out}/rnr-terminal.js`,
  legalComments: 'none',
  logLevel: 'warning',
});
