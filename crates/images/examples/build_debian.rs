//! Builds the default Debian image by hand, printing progress, then checks the tarball.
//! A manual proof that `build_debian` works end to end (it needs root, network and a few
//! minutes, so it is not a test):
//!
//!     cargo run -p rnr-images --example build_debian -- [OUT_TAR] [WORK_DIR]

use rnr_images::{build_debian, check_rootfs_tarball, DebianSpec, Progress};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

struct Printer {
    started: Instant,
    state: Mutex<(String, Option<u64>, u64)>,
}

impl Printer {
    fn log(&self, line: &str) {
        eprintln!("[{:7.1}s] {line}", self.started.elapsed().as_secs_f64());
    }
}

impl Progress for Printer {
    fn stage(&self, name: &str, total: Option<u64>) {
        if let Ok(mut s) = self.state.lock() {
            if !s.0.is_empty() {
                self.log(&format!("stage {} done: {} units", s.0, s.2));
            }
            *s = (name.to_owned(), total, 0);
        }
        match total {
            Some(t) => self.log(&format!("== {name} ({t} units)")),
            None => self.log(&format!("== {name}")),
        }
    }

    fn advance(&self, n: u64) {
        if let Ok(mut s) = self.state.lock() {
            let before = s.2;
            s.2 += n;
            // Every 25 units (or 2048 while packing), to keep the output readable.
            let step = if s.0 == "packing" { 2048 } else { 25 };
            if before / step != s.2 / step {
                let total = s.1.map(|t| format!("/{t}")).unwrap_or_default();
                self.log(&format!("   {} {}{total}", s.0, s.2));
            }
        }
    }

    fn message(&self, msg: &str) {
        // Per-package lines are many; show the ones that are not.
        let per_package = ["downloading ", "extracting ", "unpacking ", "configuring "]
            .iter()
            .any(|p| msg.starts_with(p));
        if !per_package {
            self.log(&format!("   {msg}"));
        }
    }
}

fn main() {
    let mut args = std::env::args_os().skip(1);
    let out = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/rnr-debian.tar"));
    let work = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);

    let printer = Printer {
        started: Instant::now(),
        state: Mutex::new((String::new(), None, 0)),
    };
    let spec = DebianSpec::default();
    printer.log(&format!(
        "building {} ({} from {}, +{} packages) in {}",
        out.display(),
        spec.suite,
        spec.mirror,
        spec.packages.len(),
        work.display()
    ));
    if let Err(err) = build_debian(&spec, &work, &out, &printer) {
        eprintln!("error: {err}");
        std::process::exit(1);
    }
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    printer.log(&format!(
        "built {} in {:.1}s: {} bytes ({:.1} MiB)",
        out.display(),
        printer.started.elapsed().as_secs_f64(),
        size,
        size as f64 / (1024.0 * 1024.0)
    ));
    match check_rootfs_tarball(&out) {
        Ok(()) => printer.log("check_rootfs_tarball: ok"),
        Err(err) => {
            eprintln!("error: {err}");
            std::process::exit(1);
        }
    }
}
