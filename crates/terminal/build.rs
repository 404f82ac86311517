//! Bundles the browser's terminal client (terminal-client/: xterm.js from npm, esbuild)
//! into OUT_DIR so the `rnr` binary embeds it; a clean clone needs only node and npm
//! (scripts/install-deps.sh). `RNR_TERMINAL_CLIENT_DIST` may point at a prebuilt bundle
//! directory instead.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let client = manifest.join("../../terminal-client");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    for p in ["src", "package.json", "package-lock.json", "build.mjs"] {
        println!("cargo:rerun-if-changed={}", client.join(p).display());
    }
    println!("cargo:rerun-if-env-changed=RNR_TERMINAL_CLIENT_DIST");
    if let Ok(dist) = std::env::var("RNR_TERMINAL_CLIENT_DIST") {
        for f in ["rnr-terminal.js", "rnr-terminal.css"] {
            std::fs::copy(PathBuf::from(&dist).join(f), out.join(f)).unwrap_or_else(|e| {
                panic!("RNR_TERMINAL_CLIENT_DIST={dist}: cannot copy {f}: {e}")
            });
        }
        return;
    }
    // flock: several cargo builds (other target dirs) may bundle at once in one tree.
    // npm ci runs only when node_modules is older than the lock file.
    let script = format!(
        "[ node_modules/.package-lock.json -nt package-lock.json ] || \
         npm ci --no-audit --no-fund --loglevel=error >&2; node build.mjs '{}'",
        out.display()
    );
    let status = Command::new("flock")
        .arg(client.join(".build.lock"))
        .args(["sh", "-c", &script])
        .current_dir(&client)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "bundling the terminal client in {} failed ({s}); it needs node and npm \
             (scripts/install-deps.sh installs them)",
            client.display()
        ),
        Err(e) => panic!("cannot run flock/npm to bundle the terminal client: {e}"),
    }
}
