//! The isolation suite's probe (`probe.c`): compiled for the host with `gcc -static` once
//! per test process, copied into a machine through an exec's stdin, and run there as root
//! to do what a shell cannot (raw system calls on each entry point, thousands of ptys, a
//! crash that may dump core). Also the host's system call tables the probe's calls are
//! numbered from.

use crate::conformance::Harness;
use crate::{collect, ExecRequest, ExecSpec};
use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

/// Where the probe is put in a machine.
pub const PATH: &str = "/tmp/rnr-probe";

const SOURCE: &str = include_str!("probe.c");

/// The probe, compiled once per test process (a static binary: it runs on any image).
fn binary() -> &'static [u8] {
    static BIN: OnceLock<Vec<u8>> = OnceLock::new();
    BIN.get_or_init(|| {
        if cfg!(not(target_arch = "x86_64")) {
            panic!("the probe issues x86-64's system call instructions");
        }
        let dir = std::env::temp_dir().join(format!(
            "rnr-probe-{}-{}",
            std::process::id(),
            crate::conformance::unique_id("c")
        ));
        std::fs::create_dir_all(&dir).expect("probe build dir");
        let (src, bin) = (dir.join("probe.c"), dir.join("probe"));
        std::fs::write(&src, SOURCE).expect("write probe.c");
        let out = std::process::Command::new("gcc")
            .args(["-static", "-O1", "-Wall", "-o"])
            .arg(&bin)
            .arg(&src)
            .output();
        let bytes = out.map_err(|e| e.to_string()).and_then(|o| {
            if o.status.success() {
                std::fs::read(&bin).map_err(|e| e.to_string())
            } else {
                Err(String::from_utf8_lossy(&o.stderr).into_owned())
            }
        });
        let _ = std::fs::remove_dir_all(&dir);
        bytes.unwrap_or_else(|e| {
            panic!("gcc -static probe.c (gcc and libc6-dev: scripts/install-deps.sh): {e}")
        })
    })
}

/// Copies the probe into machine `id` at [`PATH`].
pub async fn install(h: &Harness, id: &str) {
    let mut req = ExecRequest::new(
        ExecSpec::new([
            "/bin/sh",
            "-c",
            &format!("cat > {PATH} && chmod 755 {PATH}"),
        ]),
        Duration::from_secs(30),
    );
    req.stdin = Some(binary().to_vec().into());
    let out = collect(h.driver.as_ref(), id, req)
        .await
        .unwrap_or_else(|e| panic!("copying the probe into {id}: {e}"));
    assert_eq!(
        out.exit_code,
        Some(0),
        "copying the probe into {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The three system call ABIs of an x86-64 kernel, as the probe names them.
pub const ABIS: [&str; 3] = ["64", "32", "x32"];

/// One ABI's call numbers by name, from the kernel headers gcc compiles against
/// (`linux-libc-dev`, which libc6-dev brings).
fn table(abi: &str) -> &'static HashMap<String, u64> {
    static TABLES: OnceLock<[HashMap<String, u64>; 3]> = OnceLock::new();
    let tables = TABLES.get_or_init(|| {
        ABIS.map(|abi| {
            let path =
                Path::new("/usr/include/x86_64-linux-gnu/asm").join(format!("unistd_{abi}.h"));
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{} (linux-libc-dev): {e}", path.display()));
            // `#define __NR_name 12` or, for x32, `#define __NR_name (__X32_SYSCALL_BIT + 12)`.
            text.lines()
                .filter_map(|l| {
                    let rest = l.strip_prefix("#define __NR_")?;
                    let (name, value) = rest.split_once(char::is_whitespace)?;
                    let digits = value
                        .trim()
                        .trim_start_matches("(__X32_SYSCALL_BIT + ")
                        .trim_end_matches(')');
                    Some((name.to_string(), digits.parse().ok()?))
                })
                .collect()
        })
    });
    let i = ABIS.iter().position(|a| *a == abi).expect("a known ABI");
    &tables[i]
}

/// A system call for the probe, with arguments that leave no trace should a filter let it
/// through (and that make the kernel answer something other than EPERM then, where it
/// can): a bad fd, a null pointer, flags that only ask.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    pub name: &'static str,
    /// Decimal or 0x-hex numbers, or `pid` for the probe's own pid.
    pub args: &'static [&'static str],
}

/// What one call returned on one ABI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Succeeded, with this value.
    Ok(i64),
    Errno(i32),
    /// The process was killed by this signal (a filter that kills, e.g. SIGSYS).
    Signal(i32),
}

/// Issues every call on every ABI whose table has it, in one run of the probe in machine
/// `id`: `(name, abi) → answer`.
pub async fn syscalls(h: &Harness, id: &str, calls: &[Call]) -> HashMap<(String, String), Answer> {
    let mut specs = Vec::new();
    for c in calls {
        let mut found = false;
        for abi in ABIS {
            if let Some(nr) = table(abi).get(c.name) {
                found = true;
                let mut spec = format!("{}:{abi}:{nr}", c.name);
                for a in c.args {
                    spec.push(':');
                    spec.push_str(a);
                }
                specs.push(spec);
            }
        }
        assert!(found, "{} is in no system call table", c.name);
    }
    let mut argv = vec![PATH.to_string(), "sys".to_string()];
    argv.extend(specs.iter().cloned());
    let out = collect(
        h.driver.as_ref(),
        id,
        ExecRequest::new(ExecSpec::new(argv), Duration::from_secs(60)),
    )
    .await
    .unwrap_or_else(|e| panic!("probe sys in {id}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.exit_code,
        Some(0),
        "probe sys in {id}: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut answers = HashMap::new();
    for line in stdout.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let value = |key: &str| {
            f.iter()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|v| v.parse::<i64>().ok())
        };
        let answer = match (value("ret="), value("errno="), value("signal=")) {
            (_, _, Some(s)) => Answer::Signal(s as i32),
            (_, Some(e), _) if e != 0 => Answer::Errno(e as i32),
            (Some(r), _, _) => Answer::Ok(r),
            _ => panic!("probe line {line:?}"),
        };
        answers.insert((f[0].to_string(), f[1].to_string()), answer);
    }
    assert_eq!(answers.len(), specs.len(), "an answer per call: {stdout}");
    answers
}
