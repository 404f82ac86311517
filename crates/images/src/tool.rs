//! Finding and running the external programs the builds rely on (debootstrap, GNU tar,
//! busybox), with errors that say what to install.

use crate::ImageError;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Directories searched after `$PATH`: debootstrap lives in /usr/sbin, which a service or a
/// non-login shell often leaves out of `$PATH`.
const SBIN_DIRS: [&str; 3] = ["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// Resolves `program` the way a shell would, plus the sbin directories. A name containing
/// a slash is taken as a path and only checked.
pub(crate) fn find_tool(program: &Path, hint: &str) -> Result<PathBuf, ImageError> {
    let missing = || ImageError::MissingTool {
        tool: program.display().to_string(),
        hint: hint.to_owned(),
    };
    if program.as_os_str().is_empty() {
        return Err(missing());
    }
    if program.components().count() > 1 || program.is_absolute() {
        return if is_executable(program) {
            Ok(program.to_path_buf())
        } else {
            Err(missing())
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(missing)
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `$PATH` for child processes, with the sbin directories appended: debootstrap calls
/// `chroot` and `mount` by name and fails obscurely when they are not found.
pub(crate) fn child_path() -> OsString {
    let current = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&current).collect();
    for extra in ["/usr/local/bin", "/usr/bin", "/bin"]
        .iter()
        .chain(&SBIN_DIRS)
    {
        if !dirs.iter().any(|d| d == Path::new(extra)) {
            dirs.push(PathBuf::from(extra));
        }
    }
    std::env::join_paths(dirs).unwrap_or(current)
}

/// Keeps the last `max` lines of a stream: enough to explain a failure without holding a
/// long log in memory.
pub(crate) struct Tail {
    lines: VecDeque<String>,
    max: usize,
}

impl Tail {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            lines: VecDeque::with_capacity(max),
            max,
        }
    }

    pub(crate) fn push(&mut self, line: &str) {
        if self.lines.len() == self.max {
            self.lines.pop_front();
        }
        self.lines.push_back(line.to_owned());
    }

    pub(crate) fn join(&self) -> String {
        self.lines
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

/// Reads `reader` line by line until EOF, tolerating invalid UTF-8 (package names are
/// ASCII, but a tool's error output may carry anything).
pub(crate) fn for_each_line(reader: impl Read, mut f: impl FnMut(&str)) {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                f(line.trim_end_matches(['\n', '\r']));
            }
        }
    }
}

/// Drains `reader` on a thread into a [`Tail`], so a chatty stderr cannot fill its pipe
/// and stall the child while the caller reads stdout.
pub(crate) fn spawn_tail_reader(
    reader: impl Read + Send + 'static,
    max: usize,
) -> std::thread::JoinHandle<Tail> {
    std::thread::spawn(move || {
        let mut tail = Tail::new(max);
        for_each_line(reader, |line| tail.push(line));
        tail
    })
}

/// Whether the effective user is root.
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Fails a test that needs root unless it runs as root. scripts/test.sh (the README's
/// test command) always does, so such a test is never skipped silently.
#[cfg(test)]
pub(crate) fn require_root(why: &str) {
    assert!(
        is_root(),
        "this test needs root ({why}); run it as root, as scripts/test.sh does"
    );
}
