//! The Debian image: debootstrap's minbase variant plus the packages a Linux course needs,
//! trimmed of caches and host-specific files, packed into a root filesystem tarball.

use crate::error::IoContext;
use crate::pack::{pack_rootfs, Owners};
use crate::tool::{child_path, find_tool, for_each_line, is_root, spawn_tail_reader, Tail};
use crate::workdir::BuildDir;
use crate::{ImageError, Progress};
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const DEBOOTSTRAP_HINT: &str = "install it with `apt-get install debootstrap` \
     (or point DebianSpec::debootstrap at it)";

/// Packages on top of minbase. minbase already has the Essential set (coreutils, grep,
/// sed, findutils, tar, gzip, util-linux, dpkg, apt); these are what exercises and a
/// learner at a prompt reach for next.
const DEFAULT_PACKAGES: &[&str] = &[
    "bash",
    "coreutils",
    "procps",
    "psmisc",
    "iproute2",
    "iputils-ping",
    "netbase",
    "less",
    "nano",
    "vim-tiny",
    "curl",
    "ca-certificates",
    "python3",
    "sudo",
    "man-db",
    "file",
    "tree",
    "xz-utils",
];

/// A generic /etc/hosts: debootstrap leaves none, and Docker and the native driver replace
/// it anyway when they know the machine's name.
const HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";

/// What to debootstrap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DebianSpec {
    /// The release, e.g. "bookworm".
    pub suite: String,
    /// The archive, e.g. "http://deb.debian.org/debian".
    pub mirror: String,
    /// Packages to add to the minbase variant (`--include`).
    pub packages: Vec<String>,
    /// The debootstrap program: a name looked up in `$PATH` and the sbin directories, or a
    /// path.
    pub debootstrap: PathBuf,
}

impl Default for DebianSpec {
    fn default() -> Self {
        Self {
            suite: "bookworm".into(),
            mirror: "http://deb.debian.org/debian".into(),
            packages: DEFAULT_PACKAGES.iter().map(|&p| p.to_owned()).collect(),
            debootstrap: PathBuf::from("debootstrap"),
        }
    }
}

impl DebianSpec {
    /// Rejects values debootstrap would misread: they reach its command line, and a
    /// package like `-x` or `a,b` would turn into options or extra packages.
    fn validate(&self, image: &Path) -> Result<(), ImageError> {
        let invalid = |reason: String| ImageError::InvalidSpec {
            image: image.to_path_buf(),
            reason,
        };
        let suite_ok = self
            .suite
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            && self
                .suite
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
        if !suite_ok {
            return Err(invalid(format!(
                "suite {:?} is not a Debian suite name (like \"bookworm\")",
                self.suite
            )));
        }
        let scheme_ok = ["http://", "https://", "file:///"]
            .iter()
            .any(|s| self.mirror.starts_with(s));
        if !scheme_ok || self.mirror.chars().any(char::is_whitespace) {
            return Err(invalid(format!(
                "mirror {:?} must be an http://, https:// or file:/// URL",
                self.mirror
            )));
        }
        // Debian policy 5.6.1: lowercase letters, digits, + - . ; two or more characters,
        // starting with an alphanumeric.
        for package in &self.packages {
            let ok = package.len() >= 2
                && package
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                && package
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
            if !ok {
                return Err(invalid(format!(
                    "package {package:?} is not a Debian package name"
                )));
            }
        }
        Ok(())
    }
}

/// Builds a Debian root filesystem with `debootstrap --variant=minbase` in a scratch
/// directory under `work_dir` and packs it to `out_tar`.
///
/// Needs root and network access to the mirror; takes a minute or more. The scratch
/// directory is removed (mounts detached first) whether or not the build succeeds, and
/// `out_tar` is only replaced by a complete tarball.
pub fn build_debian(
    spec: &DebianSpec,
    work_dir: &Path,
    out_tar: &Path,
    progress: &dyn Progress,
) -> Result<(), ImageError> {
    spec.validate(out_tar)?;
    let debootstrap = find_tool(&spec.debootstrap, DEBOOTSTRAP_HINT)?;
    if !is_root() {
        return Err(ImageError::NeedsRoot {
            image: out_tar.to_path_buf(),
            reason: "debootstrap chroots into the new system and creates files owned by \
                     other users"
                .into(),
        });
    }
    let dir = BuildDir::new(work_dir, "rnr-debian-")?;
    let root = dir.make_rootfs()?;
    tracing::info!(suite = %spec.suite, dir = %dir.path().display(), "debootstrapping");
    run_debootstrap(&debootstrap, spec, &root, out_tar, progress)?;

    progress.stage("cleaning", None);
    tidy(&root)?;
    pack_rootfs(&root, out_tar, Owners::Preserve, progress)?;
    tracing::info!(image = %out_tar.display(), "debian image built");
    Ok(())
}

fn run_debootstrap(
    debootstrap: &Path,
    spec: &DebianSpec,
    root: &Path,
    image: &Path,
    progress: &dyn Progress,
) -> Result<(), ImageError> {
    let mut cmd = Command::new(debootstrap);
    cmd.arg("--variant=minbase");
    if !spec.packages.is_empty() {
        cmd.arg(format!("--include={}", spec.packages.join(",")));
    }
    cmd.arg(&spec.suite)
        .arg(root)
        .arg(&spec.mirror)
        .env("PATH", child_path())
        // Maintainer scripts run in the chroot, where the host's locale does not exist.
        .env("LC_ALL", "C")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());

    progress.stage("resolving", None);
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ImageError::MissingTool {
                tool: debootstrap.display().to_string(),
                hint: DEBOOTSTRAP_HINT.into(),
            }
        } else {
            ImageError::io(debootstrap, e)
        }
    })?;
    let stderr = child.stderr.take().map(|s| spawn_tail_reader(s, 20));
    let mut parser = OutputParser::new();
    let mut tail = Tail::new(25);
    if let Some(stdout) = child.stdout.take() {
        for_each_line(stdout, |line| {
            tracing::debug!(target: "rnr_images::debootstrap", "{line}");
            tail.push(line);
            parser.line(line, progress);
        });
    }
    let status = child.wait().at(debootstrap)?;
    let stderr = stderr.and_then(|h| h.join().ok());
    if status.success() {
        return Ok(());
    }

    // debootstrap keeps its detailed log inside the target only on failure; read it now,
    // before the scratch directory goes.
    let mut log_tail = tail.join();
    let log = root.join("debootstrap/debootstrap.log");
    if let Some(lines) = read_last_lines(&log, 30) {
        log_tail.push_str("\n--- last lines of debootstrap.log ---\n");
        log_tail.push_str(&lines);
    }
    if let Some(stderr) = stderr.filter(|t| !t.is_empty()) {
        log_tail.push_str("\n--- stderr ---\n");
        log_tail.push_str(&stderr.join());
    }
    Err(ImageError::Debootstrap {
        image: image.to_path_buf(),
        status: status.to_string(),
        log_tail,
    })
}

/// Turns debootstrap's `I:` lines into progress stages. Downloads count one unit per
/// validated package; installing counts one per unpacked and one per configured package,
/// against twice the number downloaded (a few core packages are installed without their
/// own lines, so it ends a little short of the total).
struct OutputParser {
    stage: Option<&'static str>,
    packages: u64,
}

impl OutputParser {
    fn new() -> Self {
        Self {
            stage: Some("resolving"),
            packages: 0,
        }
    }

    fn enter(&mut self, stage: &'static str, total: Option<u64>, progress: &dyn Progress) {
        if self.stage != Some(stage) {
            self.stage = Some(stage);
            progress.stage(stage, total);
        }
    }

    fn line(&mut self, line: &str, progress: &dyn Progress) {
        let line = line.trim_end();
        let Some(info) = line.strip_prefix("I: ") else {
            // W: and E: lines, and anything else debootstrap lets through.
            if !line.is_empty() {
                progress.message(line);
            }
            return;
        };
        let (verb, rest) = info.split_once(' ').unwrap_or((info, ""));
        let subject = rest.trim_end_matches("...");
        let words: Vec<&str> = rest.split_whitespace().collect();
        match verb {
            // Per-package lines are "Retrieving <package> <version>"; the Release and
            // Packages index downloads have a single word.
            "Retrieving" if words.len() == 2 => {
                self.enter("downloading", None, progress);
                progress.message(&format!("downloading {} {}", words[0], words[1]));
            }
            "Validating" if words.len() == 2 => {
                self.enter("downloading", None, progress);
                self.packages += 1;
                progress.advance(1);
            }
            "Extracting" => {
                self.enter("extracting", None, progress);
                progress.message(&format!("extracting {subject}"));
                progress.advance(1);
            }
            "Installing" | "Unpacking" | "Configuring" => {
                let total = (self.packages > 0).then_some(self.packages * 2);
                self.enter("installing", total, progress);
                let phase = verb == "Installing"
                    || subject == "required packages"
                    || subject == "the base system";
                if phase {
                    progress.message(info);
                } else {
                    progress.message(&format!("{} {subject}", verb.to_lowercase()));
                    progress.advance(1);
                }
            }
            _ => progress.message(info),
        }
    }
}

/// Reads the last `n` lines of a possibly large log, or `None` if it cannot be read.
fn read_last_lines(path: &Path, n: usize) -> Option<String> {
    const WINDOW: u64 = 64 * 1024;
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(WINDOW)))
        .ok()?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    Some(lines[lines.len().saturating_sub(n)..].join("\n"))
}

/// Makes the debootstrapped tree small and host-independent.
fn tidy(root: &Path) -> Result<(), ImageError> {
    // Downloaded .debs, apt's binary caches and package lists are a third of the tree and
    // stale within days; learners run `apt update` first anyway. man-db's index is rebuilt
    // by `mandb`; pages still display without it.
    for dir in ["var/cache/apt", "var/lib/apt/lists", "var/cache/man"] {
        remove_files_below(&root.join(dir))?;
    }
    // debootstrap copies the build host's resolver and hostname in; neither belongs in an
    // image, and the runtime provides both.
    replace_file(&root.join("etc/resolv.conf"), "")?;
    remove_if_present(&root.join("etc/hostname"))?;
    replace_file(&root.join("etc/hosts"), HOSTS)?;
    set_root_shell(root, "/bin/bash")?;
    for dir in ["bin", "sbin", "usr/bin", "usr/sbin"] {
        drop_net_raw_file_caps(&root.join(dir))?;
    }
    Ok(())
}

/// CAP_NET_RAW's bit in a capability mask.
const CAP_NET_RAW: u32 = 13;

/// Takes CAP_NET_RAW out of the file capabilities of the programs directly in `dir`
/// (iputils' ping has `cap_net_raw+ep`). Machines never hold CAP_NET_RAW, and the kernel
/// refuses to execute a program marked effective whose file capabilities exceed the
/// caller's bounding set, even for root; without it, ping uses an ICMP datagram socket,
/// which the machines' `net.ipv4.ping_group_range` allows.
fn drop_net_raw_file_caps(dir: &Path) -> Result<(), ImageError> {
    for path in paths_below(dir)? {
        // A symlinked file is seen (or not) where it lives; a symlinked dir (merged /usr)
        // is walked as its target.
        if !std::fs::symlink_metadata(&path).at(&path)?.is_file() {
            continue;
        }
        let Some(caps) = file_caps(&path).at(&path)? else {
            continue;
        };
        if let Some(rest) = without_net_raw(&caps) {
            set_file_caps(&path, rest.as_deref()).at(&path)?;
            tracing::info!(file = %path.display(), "dropped cap_net_raw from its file capabilities");
        }
    }
    Ok(())
}

const CAPS_XATTR: &std::ffi::CStr = c"security.capability";

fn cpath(path: &Path) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))
}

/// The raw `security.capability` attribute of `path`, if it has one.
fn file_caps(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let p = cpath(path)?;
    let mut buf = [0u8; 64];
    // SAFETY: lgetxattr writes at most `buf.len()` bytes into `buf`.
    let n = unsafe {
        libc::lgetxattr(
            p.as_ptr(),
            CAPS_XATTR.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(buf[..n as usize].to_vec()))
}

/// Writes (`Some`) or removes (`None`) the `security.capability` attribute of `path`.
fn set_file_caps(path: &Path, caps: Option<&[u8]>) -> std::io::Result<()> {
    let p = cpath(path)?;
    // SAFETY: plain calls on a C string and a buffer that outlive them.
    let r = unsafe {
        match caps {
            Some(c) => libc::lsetxattr(
                p.as_ptr(),
                CAPS_XATTR.as_ptr(),
                c.as_ptr().cast(),
                c.len(),
                0,
            ),
            None => libc::lremovexattr(p.as_ptr(), CAPS_XATTR.as_ptr()),
        }
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `caps` (a `vfs_cap_data`: a magic and revision word, then permitted and inheritable
/// masks) without CAP_NET_RAW: `None` when it has no CAP_NET_RAW; `Some(None)` when
/// nothing is left, so the attribute goes.
fn without_net_raw(caps: &[u8]) -> Option<Option<Vec<u8>>> {
    // permitted and inheritable of the low 32 capabilities, after the magic word.
    if caps.len() < 12 {
        return None;
    }
    let word = |c: &[u8], at: usize| u32::from_le_bytes([c[at], c[at + 1], c[at + 2], c[at + 3]]);
    let bit = 1u32 << CAP_NET_RAW;
    if (word(caps, 4) | word(caps, 8)) & bit == 0 {
        return None;
    }
    let mut out = caps.to_vec();
    for at in [4, 8] {
        let w = word(&out, at) & !bit;
        out[at..at + 4].copy_from_slice(&w.to_le_bytes());
    }
    // Masks of higher capabilities (revisions 2 and 3) follow in pairs; a root id may end it.
    let masks_end = if out.len() >= 20 { 20 } else { 12 };
    let empty = (4..masks_end).step_by(4).all(|at| word(&out, at) == 0);
    Some((!empty).then_some(out))
}

/// Deletes every non-directory below `dir`, keeping the directories: apt expects
/// `lists/partial` and `archives/partial` to exist.
fn remove_files_below(dir: &Path) -> Result<(), ImageError> {
    for path in paths_below(dir)? {
        // symlink_metadata, so a symlinked directory is removed as a link, never followed.
        if std::fs::symlink_metadata(&path).at(&path)?.is_dir() {
            remove_files_below(&path)?;
        } else {
            std::fs::remove_file(&path).at(&path)?;
        }
    }
    Ok(())
}

/// The entries directly in `dir`; none when it does not exist.
fn paths_below(dir: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ImageError::io(dir, e)),
    };
    entries.map(|e| e.map(|e| e.path()).at(dir)).collect()
}

fn remove_if_present(path: &Path) -> Result<(), ImageError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ImageError::io(path, e)),
        _ => Ok(()),
    }
}

/// Writes a fresh root-owned 0644 file. The old one is removed first and the new one
/// created exclusively: the image's /etc/resolv.conf may be a symlink, and writing
/// through it would change a file on the build host.
fn replace_file(path: &Path, contents: &str) -> Result<(), ImageError> {
    use std::os::unix::fs::OpenOptionsExt;
    remove_if_present(path)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .at(path)?;
    file.write_all(contents.as_bytes()).at(path)?;
    // The umask may have trimmed the mode at creation.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).at(path)?;
    Ok(())
}

/// Sets root's login shell in /etc/passwd, rewriting the file in place so its owner and
/// mode stay as the package left them.
fn set_root_shell(root: &Path, shell: &str) -> Result<(), ImageError> {
    let passwd = root.join("etc/passwd");
    if !std::fs::symlink_metadata(&passwd).at(&passwd)?.is_file() {
        return Err(ImageError::io(
            &passwd,
            std::io::Error::other("not a regular file"),
        ));
    }
    let text = std::fs::read_to_string(&passwd).at(&passwd)?;
    let updated = with_root_shell(&text, shell);
    if updated != text {
        std::fs::write(&passwd, updated).at(&passwd)?;
    }
    Ok(())
}

fn with_root_shell(passwd: &str, shell: &str) -> String {
    let mut out = String::with_capacity(passwd.len() + shell.len());
    for line in passwd.lines() {
        let mut fields: Vec<&str> = line.split(':').collect();
        if fields.len() == 7 && fields[0] == "root" {
            fields[6] = shell;
            out.push_str(&fields.join(":"));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl Progress for Recorder {
        fn stage(&self, name: &str, total: Option<u64>) {
            self.push(format!("stage {name} {total:?}"));
        }
        fn advance(&self, n: u64) {
            self.push(format!("advance {n}"));
        }
        fn message(&self, msg: &str) {
            self.push(format!("message {msg}"));
        }
    }

    impl Recorder {
        fn push(&self, event: String) {
            if let Ok(mut events) = self.0.lock() {
                events.push(event);
            }
        }
        fn events(&self) -> Vec<String> {
            self.0.lock().map(|e| e.clone()).unwrap_or_default()
        }
    }

    /// Lines as debootstrap 1.0.128 prints them (trailing spaces included).
    const SAMPLE: &str = "\
I: Target architecture can be executed
I: Retrieving InRelease 
I: Checking Release signature
I: Retrieving Packages 
I: Validating Packages 
I: Resolving dependencies of required packages...
I: Retrieving libacl1 2.3.1-3
I: Validating libacl1 2.3.1-3
I: Retrieving bash 5.2.15-2+b7
I: Validating bash 5.2.15-2+b7
I: Chosen extractor for .deb packages: dpkg-deb
I: Extracting bash...
I: Installing core packages...
I: Unpacking required packages...
I: Unpacking bash...
I: Configuring required packages...
I: Configuring libacl1:amd64...
W: Failure trying to run: chroot x
I: Base system installed successfully.
";

    #[test]
    fn parses_debootstrap_output_into_stages() {
        let recorder = Recorder::default();
        let mut parser = OutputParser::new();
        for line in SAMPLE.lines() {
            parser.line(line, &recorder);
        }
        let events = recorder.events();
        let stages: Vec<&String> = events.iter().filter(|e| e.starts_with("stage")).collect();
        assert_eq!(
            stages,
            [
                "stage downloading None",
                "stage extracting None",
                "stage installing Some(4)"
            ]
        );
        let advances = events.iter().filter(|e| *e == "advance 1").count();
        assert_eq!(advances, 2 + 1 + 2, "{events:#?}");
        for want in [
            "message Retrieving InRelease",
            "message downloading bash 5.2.15-2+b7",
            "message extracting bash",
            "message unpacking bash",
            "message configuring libacl1:amd64",
            "message W: Failure trying to run: chroot x",
            "message Base system installed successfully.",
        ] {
            assert!(
                events.iter().any(|e| e == want),
                "missing {want:?} in {events:#?}"
            );
        }
    }

    #[test]
    fn sets_only_roots_shell() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nrootless:x:1:1::/:/bin/sh\nbroken\n";
        assert_eq!(
            with_root_shell(passwd, "/bin/bash"),
            "root:x:0:0:root:/root:/bin/bash\nrootless:x:1:1::/:/bin/sh\nbroken\n"
        );
    }

    #[test]
    fn default_spec_is_valid() {
        let spec = DebianSpec::default();
        assert_eq!(spec.suite, "bookworm");
        assert!(spec.packages.iter().any(|p| p == "sudo"));
        spec.validate(Path::new("x.tar")).expect("default spec");
    }

    #[test]
    fn rejects_unsafe_spec_values() {
        let cases = [
            DebianSpec {
                suite: "--foreign".into(),
                ..DebianSpec::default()
            },
            DebianSpec {
                mirror: "ftp://example.org".into(),
                ..DebianSpec::default()
            },
            DebianSpec {
                packages: vec!["curl,wget".into()],
                ..DebianSpec::default()
            },
            DebianSpec {
                packages: vec!["-x".into()],
                ..DebianSpec::default()
            },
        ];
        for spec in cases {
            let err = spec.validate(Path::new("/out/x.tar")).expect_err("invalid");
            assert!(matches!(err, ImageError::InvalidSpec { .. }), "{err}");
            assert!(err.to_string().contains("/out/x.tar"), "{err}");
        }
    }

    #[test]
    fn net_raw_leaves_file_capabilities() {
        // Revision 2, effective: cap_net_raw+ep (iputils' ping).
        let mut ping = vec![0x01, 0, 0, 0x02];
        ping.extend_from_slice(&(1u32 << 13).to_le_bytes());
        ping.extend_from_slice(&[0; 12]);
        assert_eq!(without_net_raw(&ping), Some(None), "nothing left: removed");
        // cap_net_raw,cap_net_admin+ep keeps cap_net_admin.
        let mut both = ping.clone();
        both[4..8].copy_from_slice(&(1u32 << 13 | 1 << 12).to_le_bytes());
        let rest = without_net_raw(&both).expect("changed").expect("kept");
        assert_eq!(rest[4..8], (1u32 << 12).to_le_bytes());
        // No cap_net_raw: untouched.
        let mut other = ping.clone();
        other[4..8].copy_from_slice(&(1u32 << 12).to_le_bytes());
        assert_eq!(without_net_raw(&other), None);

        if !crate::tool::is_root() {
            eprintln!("skipped the file part: setting security.capability needs root");
            return;
        }
        let scratch = tempfile::tempdir().expect("tempdir");
        let bin = scratch.path().join("bin");
        std::fs::create_dir(&bin).expect("mkdir");
        let (p, plain) = (bin.join("ping"), bin.join("ls"));
        std::fs::write(&p, "elf").expect("write");
        std::fs::write(&plain, "elf").expect("write");
        set_file_caps(&p, Some(&ping)).expect("setcap");
        drop_net_raw_file_caps(&bin).expect("drop");
        assert_eq!(
            file_caps(&p).expect("getcap"),
            None,
            "ping's cap_net_raw gone"
        );
        assert_eq!(file_caps(&plain).expect("getcap"), None);
    }

    #[test]
    fn tidies_host_files_without_following_symlinks() {
        let scratch = tempfile::tempdir().expect("tempdir");
        let root = scratch.path().join("root");
        let host_file = scratch.path().join("host-resolv.conf");
        std::fs::write(&host_file, "nameserver 10.0.0.1\n").expect("write");
        for dir in [
            "etc",
            "var/cache/apt/archives/partial",
            "var/lib/apt/lists/partial",
        ] {
            std::fs::create_dir_all(root.join(dir)).expect("mkdir");
        }
        std::fs::write(root.join("var/cache/apt/archives/bash.deb"), "deb").expect("write");
        std::fs::write(root.join("var/cache/apt/pkgcache.bin"), "bin").expect("write");
        std::fs::write(root.join("var/lib/apt/lists/x_Packages"), "p").expect("write");
        std::fs::write(root.join("etc/hostname"), "buildhost\n").expect("write");
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("write");
        std::os::unix::fs::symlink(&host_file, root.join("etc/resolv.conf")).expect("symlink");

        tidy(&root).expect("tidy");

        assert_eq!(
            std::fs::read_to_string(&host_file).expect("read"),
            "nameserver 10.0.0.1\n",
            "wrote through the image's symlink onto the host"
        );
        let resolv = std::fs::symlink_metadata(root.join("etc/resolv.conf")).expect("stat");
        assert!(resolv.is_file() && resolv.len() == 0);
        assert!(!root.join("etc/hostname").exists());
        assert!(std::fs::read_to_string(root.join("etc/hosts"))
            .expect("hosts")
            .contains("localhost"));
        assert!(std::fs::read_to_string(root.join("etc/passwd"))
            .expect("passwd")
            .ends_with(":/bin/bash\n"));
        assert!(!root.join("var/cache/apt/archives/bash.deb").exists());
        assert!(!root.join("var/cache/apt/pkgcache.bin").exists());
        assert!(!root.join("var/lib/apt/lists/x_Packages").exists());
        assert!(root.join("var/lib/apt/lists/partial").is_dir());
        assert!(root.join("var/cache/apt/archives/partial").is_dir());
    }
}
