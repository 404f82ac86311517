//! `rnr-agent check`: evaluates a whole check suite inside the machine in one exec.
//!
//! Reads the suite (JSON, [`Suite`]) on stdin and prints one [`Outcome`] per check as a
//! JSON array. Everything is read from /proc, /etc and the filesystem directly, so checks
//! work on images without `ps`, `ss`, `id` or `dpkg-query`, and one exec replaces the dozen
//! a tool-driven checker needs. Checks run in parallel threads: a check waiting out its
//! retry window does not hold up the others.

use crate::accounts::{groups, passwd, GroupEntry, PasswdEntry};
use regex::Regex;
use rnr_agent_proto::check::{Check, Outcome, Status, Suite};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DEFAULT_TIMEOUT: f64 = 10.0;
/// Files larger than this are compared by their first 16 MiB only.
const MAX_READ: u64 = 16 << 20;

type Eval = Result<(bool, String), String>;

pub fn main() -> ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("rnr-agent check: cannot read the suite on stdin: {e}");
        return ExitCode::from(2);
    }
    let suite: Suite = match serde_json::from_str(&input) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rnr-agent check: the suite on stdin is not valid: {e}");
            return ExitCode::from(2);
        }
    };
    let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = suite
            .checks
            .iter()
            .enumerate()
            .map(|(i, c)| scope.spawn(move || run_one(i, c)))
            .collect();
        handles
            .into_iter()
            .zip(&suite.checks)
            .map(|(h, c)| {
                h.join().unwrap_or_else(|_| Outcome {
                    name: c.name.clone(),
                    status: Status::Errored,
                    detail: "the agent crashed evaluating this check".into(),
                    message: None,
                    duration_ms: 0,
                })
            })
            .collect()
    });
    let mut out = std::io::stdout().lock();
    match serde_json::to_writer(&mut out, &outcomes) {
        Ok(()) => {
            let _ = out.write_all(b"\n");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rnr-agent check: cannot write results: {e}");
            ExitCode::from(1)
        }
    }
}

/// Evaluates one check, re-evaluating a failure until its retry window closes.
fn run_one(index: usize, c: &Check) -> Outcome {
    let started = Instant::now();
    let window = Duration::from_secs_f64(c.retry_seconds.unwrap_or(0.0).max(0.0));
    let mut message = None;
    let (status, detail) = loop {
        let res = evaluate(index, c, &mut message);
        let (status, detail) = match res {
            Ok((true, d)) => (Status::Passed, d),
            Ok((false, d)) => (Status::Failed, d),
            Err(d) => (Status::Errored, d),
        };
        if status == Status::Passed || started.elapsed() >= window {
            break (status, detail);
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    Outcome {
        name: c.name.clone(),
        status,
        detail,
        message,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    }
}

fn evaluate(index: usize, c: &Check, message: &mut Option<String>) -> Eval {
    match c.kind.as_str() {
        "file" => file(c),
        "user" => user(c),
        "group" => group(c),
        "package" => package(c),
        "process" => process(c),
        "port" => port(c),
        "command" => command(c),
        "script" => script(index, c, message),
        "service" => service(c),
        other => Err(format!("kind {other:?} cannot be evaluated in the machine")),
    }
}

fn need<'a>(v: &'a Option<String>, field: &str) -> Result<&'a str, String> {
    v.as_deref()
        .ok_or_else(|| format!("the check has no `{field}`"))
}

fn regex(pattern: &str, field: &str) -> Result<Regex, String> {
    Regex::new(&format!("(?m){pattern}")).map_err(|e| format!("bad regex in `{field}`: {e}"))
}

/// Judges a yes/no finding against what the check wants, worded either way.
fn judged(found: bool, want: bool, yes: String, no: String) -> (bool, String) {
    match (found, want) {
        (true, true) => (true, yes),
        (false, false) => (true, no),
        (true, false) => (false, format!("{yes}, but should not")),
        (false, true) => (false, no),
    }
}

/// Passes when `want` says the thing should exist and it does (or should not and does not).
fn presence(found: bool, want: bool, what: &str) -> (bool, String) {
    judged(
        found,
        want,
        format!("{what} exists"),
        format!("{what} does not exist"),
    )
}

// ---------------------------------------------------------------- /etc/passwd, /etc/group

fn user_name(uid: u32) -> String {
    passwd()
        .into_iter()
        .find(|p| p.uid == uid)
        .map_or_else(|| uid.to_string(), |p| p.name)
}

fn group_name(gid: u32) -> String {
    groups()
        .into_iter()
        .find(|g| g.gid == gid)
        .map_or_else(|| gid.to_string(), |g| g.name)
}

/// Names of every group `u` belongs to: its primary group and supplementary ones.
fn groups_of(u: &PasswdEntry, all: &[GroupEntry]) -> BTreeSet<String> {
    all.iter()
        .filter(|g| g.gid == u.gid || g.members.contains(&u.name))
        .map(|g| g.name.clone())
        .collect()
}

// ---------------------------------------------------------------- file

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("mode {s:?} is not an octal mode such as \"0644\""))
}

fn same_id(want: &str, id: u32, name: &str) -> bool {
    want == name || want.parse::<u32>().ok() == Some(id)
}

fn file(c: &Check) -> Eval {
    let path = need(&c.path, "path")?;
    let want = c.exists.unwrap_or(true);
    let lmeta = std::fs::symlink_metadata(path);
    let found = lmeta.is_ok();
    if !want || !found {
        return Ok(presence(found, want, path));
    }
    let lmeta = lmeta.map_err(|e| e.to_string())?;
    // Everything but the link itself is judged on what a symlink points to, as tools do.
    let meta = if lmeta.file_type().is_symlink() && c.file_type.as_deref() != Some("symlink") {
        std::fs::metadata(path).map_err(|_| format!("{path} is a dangling symlink"))
    } else {
        Ok(lmeta.clone())
    };
    let meta = match meta {
        Ok(m) => m,
        Err(d) => return Ok((false, d)),
    };
    if let Some(t) = &c.file_type {
        let ft = meta.file_type();
        let actual = if ft.is_symlink() {
            "symlink"
        } else if ft.is_dir() {
            "directory"
        } else if ft.is_file() {
            "file"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_socket() {
            "socket"
        } else {
            "special file"
        };
        if actual != t {
            return Ok((false, format!("{path} is a {actual}, not a {t}")));
        }
    }
    if let Some(m) = &c.mode {
        let want = parse_mode(m)?;
        let have = meta.permissions().mode() & 0o7777;
        if have != want {
            return Ok((
                false,
                format!("mode of {path} is {have:04o}, expected {want:04o}"),
            ));
        }
    }
    if let Some(o) = &c.owner {
        let name = user_name(meta.uid());
        if !same_id(o, meta.uid(), &name) {
            return Ok((false, format!("{path} is owned by {name}, not {o}")));
        }
    }
    if let Some(g) = &c.group {
        let name = group_name(meta.gid());
        if !same_id(g, meta.gid(), &name) {
            return Ok((false, format!("{path} belongs to group {name}, not {g}")));
        }
    }
    if let Some(t) = &c.target {
        return Ok(match std::fs::read_link(path) {
            Ok(p) if p == Path::new(t) => (true, format!("{path} points to {t}")),
            Ok(p) => (false, format!("{path} points to {}, not {t}", p.display())),
            Err(_) => (false, format!("{path} is not a symlink")),
        });
    }
    if c.contains.is_some() || c.matches.is_some() {
        let mut text = Vec::new();
        // Without blocking: a FIFO nobody writes must fail the check, not hang it.
        let read = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .and_then(|f| f.take(MAX_READ).read_to_end(&mut text))
            .map_err(|e| format!("cannot read {path}: {e}"));
        if let Err(d) = read {
            return Ok((false, d));
        }
        let text = String::from_utf8_lossy(&text);
        if let Some(s) = &c.contains {
            if !text.contains(s.as_str()) {
                return Ok((false, format!("{path} does not contain {s:?}")));
            }
        }
        if let Some(p) = &c.matches {
            if !regex(p, "matches")?.is_match(&text) {
                return Ok((false, format!("{path} does not match /{p}/")));
            }
        }
    }
    Ok((true, format!("{path} is as expected")))
}

// ---------------------------------------------------------------- user, group

fn user(c: &Check) -> Eval {
    let name = need(&c.user, "user")?;
    let all = passwd();
    let Some(u) = all.iter().find(|p| p.name == name) else {
        return Ok(presence(
            false,
            c.exists.unwrap_or(true),
            &format!("user {name}"),
        ));
    };
    if !c.exists.unwrap_or(true) {
        return Ok(presence(true, false, &format!("user {name}")));
    }
    if let Some(uid) = c.uid {
        if u.uid != uid {
            return Ok((false, format!("user {name} has uid {}, not {uid}", u.uid)));
        }
    }
    if let Some(s) = &c.shell {
        if &u.shell != s {
            return Ok((false, format!("user {name} has shell {}, not {s}", u.shell)));
        }
    }
    if let Some(h) = &c.home {
        if &u.home != h {
            return Ok((false, format!("user {name} has home {}, not {h}", u.home)));
        }
    }
    if let Some(want) = &c.member_of {
        let have = groups_of(u, &groups());
        if let Some(missing) = want.iter().find(|g| !have.contains(*g)) {
            return Ok((false, format!("user {name} is not a member of {missing}")));
        }
    }
    Ok((true, format!("user {name} is as expected")))
}

fn group(c: &Check) -> Eval {
    let name = need(&c.group, "group")?;
    let all = groups();
    let Some(g) = all.iter().find(|g| g.name == name) else {
        return Ok(presence(
            false,
            c.exists.unwrap_or(true),
            &format!("group {name}"),
        ));
    };
    if !c.exists.unwrap_or(true) {
        return Ok(presence(true, false, &format!("group {name}")));
    }
    if let Some(gid) = c.gid {
        if g.gid != gid {
            return Ok((false, format!("group {name} has gid {}, not {gid}", g.gid)));
        }
    }
    if let Some(want) = &c.members {
        let users = passwd();
        for m in want {
            let primary = users.iter().any(|u| u.name == *m && u.gid == g.gid);
            if !primary && !g.members.contains(m) {
                return Ok((false, format!("{m} is not a member of group {name}")));
            }
        }
    }
    Ok((true, format!("group {name} is as expected")))
}

// ---------------------------------------------------------------- package

fn package(c: &Check) -> Eval {
    let name = need(&c.package, "package")?;
    let want = c.installed.unwrap_or(true);
    let status = match crate::accounts::read_regular("/var/lib/dpkg/status", MAX_READ * 4) {
        Some(s) => s,
        None if !want => return Ok((true, format!("package {name} is not installed"))),
        None => return Ok((false, "this machine has no dpkg database".into())),
    };
    let installed = status.split("\n\n").any(|para| {
        let mut pkg = false;
        let mut ok = false;
        for l in para.lines() {
            if let Some(p) = l.strip_prefix("Package: ") {
                pkg = p.trim() == name;
            } else if let Some(s) = l.strip_prefix("Status: ") {
                ok = s.trim() == "install ok installed";
            }
        }
        pkg && ok
    });
    Ok(judged(
        installed,
        want,
        format!("package {name} is installed"),
        format!("package {name} is not installed"),
    ))
}

// ---------------------------------------------------------------- process

struct Proc {
    comm: String,
    argv0: String,
    cmdline: String,
}

/// Processes in the machine, leaving out the agent and what it started for other checks.
fn processes() -> Vec<Proc> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        if pid == me {
            return None;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The ppid follows the parenthesised comm, which may itself hold spaces or ')'.
        let ppid: u32 = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        if ppid == me {
            return None;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let argv0 = args
            .first()
            .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
            .unwrap_or_default();
        Some(Proc {
            comm: comm.trim_end().to_string(),
            argv0,
            cmdline: args.join(" "),
        })
    })
    .collect()
}

fn process(c: &Check) -> Eval {
    let pattern = c
        .cmdline
        .as_deref()
        .map(|p| regex(p, "cmdline"))
        .transpose()?;
    let what = match (&c.process, &c.cmdline) {
        (Some(n), _) => format!("process {n}"),
        (None, Some(p)) => format!("a process matching /{p}/"),
        (None, None) => return Err("the check needs `process` or `cmdline`".into()),
    };
    let found = processes().iter().any(|p| {
        c.process
            .as_ref()
            .is_none_or(|n| p.comm == *n || p.argv0 == *n)
            && pattern.as_ref().is_none_or(|r| r.is_match(&p.cmdline))
    });
    let want = c.running.unwrap_or(true);
    Ok(judged(
        found,
        want,
        format!("{what} is running"),
        format!("{what} is not running"),
    ))
}

// ---------------------------------------------------------------- port

/// Whether something listens on `port` over `proto`, IPv4 or IPv6.
fn listening(port: u16, proto: &str) -> bool {
    // TCP sockets in LISTEN are state 0A; bound UDP sockets are 07.
    let state = if proto == "udp" { "07" } else { "0A" };
    [proto.to_string(), format!("{proto}6")].iter().any(|f| {
        let text = std::fs::read_to_string(format!("/proc/net/{f}")).unwrap_or_default();
        text.lines().skip(1).any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 3
                && cols[3] == state
                && cols[1]
                    .rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                    == Some(port)
        })
    })
}

fn port(c: &Check) -> Eval {
    let port = c.port.ok_or("the check has no `port`")?;
    let proto = c.protocol.as_deref().unwrap_or("tcp");
    let found = listening(port, proto);
    let want = c.listening.unwrap_or(true);
    let what = format!("{proto} port {port}");
    Ok(judged(
        found,
        want,
        format!("something listens on {what}"),
        format!("nothing listens on {what}"),
    ))
}

// ---------------------------------------------------------------- command, script, service

struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` with a deadline; kills its whole process group when time is up.
fn run(mut cmd: Command, timeout: f64, user: Option<&str>) -> Result<Ran, String> {
    if let Some(name) = user {
        let all = passwd();
        let u = all
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| format!("user {name} does not exist"))?;
        cmd.uid(u.uid)
            .gid(u.gid)
            .env("HOME", &u.home)
            .env("USER", name);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .current_dir("/");
    let mut child = cmd.spawn().map_err(|e| format!("cannot start: {e}"))?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let mut readers = Vec::new();
    for (i, pipe) in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .enumerate()
    {
        let tx = tx.clone();
        let mut pipe = pipe.ok_or("no pipe")?;
        readers.push(std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = (&mut pipe).take(1 << 20).read_to_end(&mut buf);
            // Drain the rest so the process never blocks on a full pipe.
            let _ = std::io::copy(&mut pipe, &mut std::io::sink());
            let _ = tx.send((i, buf));
        }));
    }
    drop(tx);
    let deadline = Instant::now() + Duration::from_secs_f64(timeout.max(0.001));
    let mut outs = [Vec::new(), Vec::new()];
    for _ in 0..2 {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((i, buf)) => outs[i] = buf,
            Err(_) => {
                // SAFETY: kill(2) on the process group we created for this child; it has
                // no memory-safety preconditions.
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
                let _ = child.wait();
                return Err(format!("timed out after {timeout}s"));
            }
        }
    }
    let status = child.wait().map_err(|e| format!("cannot wait: {e}"))?;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    let [out, err] = outs;
    Ok(Ran {
        code,
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
    })
}

fn shorten(s: &str) -> String {
    let s = s.trim();
    if s.chars().count() > 200 {
        format!("{}…", s.chars().take(200).collect::<String>())
    } else {
        s.to_string()
    }
}

fn command(c: &Check) -> Eval {
    let line = need(&c.command, "command")?;
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(line);
    let ran = run(
        cmd,
        c.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT),
        c.user.as_deref(),
    )?;
    if ran.code == 127 && ran.stderr.contains("not found") && c.exit_code != Some(127) {
        return Ok((false, format!("`{line}`: {}", shorten(&ran.stderr))));
    }
    let want = c.exit_code.unwrap_or(0);
    if ran.code != want {
        return Ok((
            false,
            format!(
                "`{line}` exited with {}, expected {want}{}",
                ran.code,
                if ran.stderr.trim().is_empty() {
                    String::new()
                } else {
                    format!(": {}", shorten(&ran.stderr))
                }
            ),
        ));
    }
    for (field, pattern, text) in [
        ("stdout", &c.stdout, &ran.stdout),
        ("stderr", &c.stderr, &ran.stderr),
    ] {
        if let Some(p) = pattern {
            if !regex(p, field)?.is_match(text) {
                return Ok((
                    false,
                    format!(
                        "{field} of `{line}` does not match /{p}/: {:?}",
                        shorten(text)
                    ),
                ));
            }
        }
    }
    Ok((true, format!("`{line}` behaved as expected")))
}

/// The last `FAIL: message` line a script printed, if any.
fn fail_line(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("FAIL:"))
        .map(|m| m.trim().to_string())
        .next_back()
}

fn script(index: usize, c: &Check, message: &mut Option<String>) -> Eval {
    let body = need(&c.script_body, "script_body")?;
    let name = c.script.as_deref().unwrap_or("script");
    // Written to a private file and started through its interpreter rather than exec'd:
    // exec of a file just written races with other threads' forks (ETXTBSY).
    let path = format!("/tmp/.rnr-check-{}-{index}", std::process::id());
    std::fs::write(&path, body).map_err(|e| format!("cannot write {path}: {e}"))?;
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700));
    let mut argv: Vec<String> = match body.lines().next().and_then(|l| l.strip_prefix("#!")) {
        Some(interp) => interp.split_whitespace().map(String::from).collect(),
        None => vec!["/bin/sh".into()],
    };
    if argv.is_empty() {
        argv.push("/bin/sh".into());
    }
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).arg(&path).env("RNR_CHECK", &c.name);
    let res = run(cmd, c.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT), None);
    let _ = std::fs::remove_file(&path);
    let ran = res.map_err(|e| format!("{name}: {e}"))?;
    if ran.code == 0 {
        return Ok((true, format!("{name} exited with 0")));
    }
    if ran.code == 126 || ran.code == 127 {
        return Err(format!(
            "{name} could not run (exit {}): {}",
            ran.code,
            shorten(&ran.stderr)
        ));
    }
    *message = fail_line(&ran.stdout).or_else(|| fail_line(&ran.stderr));
    Ok((
        false,
        format!(
            "{name} exited with {}{}",
            ran.code,
            if ran.stderr.trim().is_empty() {
                String::new()
            } else {
                format!(": {}", shorten(&ran.stderr))
            }
        ),
    ))
}

fn service(c: &Check) -> Eval {
    let name = need(&c.service, "service")?;
    let timeout = c.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT);
    let want = c.running.unwrap_or(true);
    // systemd only counts when it is the running init; images without it fall back to
    // the SysV init script, which is how services run in containers.
    let (running, how) = if Path::new("/run/systemd/system").is_dir() {
        let mut cmd = Command::new("systemctl");
        cmd.args(["is-active", "--quiet", name]);
        (run(cmd, timeout, None)?.code == 0, "systemd")
    } else if Path::new(&format!("/etc/init.d/{name}")).exists() {
        let mut cmd = Command::new(format!("/etc/init.d/{name}"));
        cmd.arg("status");
        (run(cmd, timeout, None)?.code == 0, "its init script")
    } else {
        return Ok((
            !want,
            format!("service {name} is not installed (no systemd, no /etc/init.d/{name})"),
        ));
    };
    Ok(judged(
        running,
        want,
        format!("service {name} is running ({how})"),
        format!("service {name} is not running ({how})"),
    ))
}
