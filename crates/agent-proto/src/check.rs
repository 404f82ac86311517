//! Checks and the check suite's wire format, shared by the host (`rnr-checker`, whose
//! validator reads the author's `[[check]]` tables into these types and which evaluates the
//! host-side kinds) and the agent (which evaluates the rest inside the machine).
//!
//! A [`Check`] is the fields every check has plus one [`CheckKind`]; each kind is a struct
//! of exactly the fields it takes, typed, refusing any other. The TOML an author writes,
//! the JSON on the wire and the validator's notion of which field belongs to which kind are
//! all this one definition: the validator asks [`CheckKind::NAMES`] and
//! [`CheckKind::fields`], which read the derives, instead of keeping a table of its own.

use crate::fields::fields_of;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Seconds a check may take unless it says otherwise.
pub const DEFAULT_TIMEOUT: f64 = 10.0;
/// Seconds a pytest file may take unless it says otherwise: a whole test module.
pub const PYTEST_TIMEOUT: f64 = 120.0;

/// One check as the author wrote it (`[[check]]` in `exercise.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    /// Shown to the learner when the check fails (pytest files bring their own).
    pub message: Option<String>,
    pub hint: Option<String>,
    /// Checks that must pass first; otherwise this one is skipped.
    #[serde(default)]
    pub needs: Vec<String>,
    /// Unset: [`DEFAULT_TIMEOUT`], or [`PYTEST_TIMEOUT`] for a pytest file.
    pub timeout_seconds: Option<f64>,
    /// Keep re-evaluating a failing check for this long (slow services).
    #[serde(default)]
    pub retry_seconds: f64,
    /// Its weight in the score.
    #[serde(default = "one")]
    pub points: u32,
    /// What is checked, with the fields of that kind; `kind = "…"` in the table.
    #[serde(flatten)]
    pub kind: CheckKind,
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

fn seconds(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::ZERO)
}

impl Check {
    /// The fields every kind takes besides its own. Written out because a struct with a
    /// flattened field has no field list serde would give; `common_fields_are_the_structs`
    /// holds it to the struct.
    pub const COMMON_FIELDS: &'static [&'static str] = &[
        "name",
        "message",
        "hint",
        "needs",
        "timeout_seconds",
        "retry_seconds",
        "points",
    ];
    /// The field that names the kind.
    pub const TAG: &'static str = "kind";

    /// A check of `kind` with what an author's table leaves unset: no message, needs or
    /// timeout of its own, one point.
    pub fn new(name: impl Into<String>, kind: CheckKind) -> Self {
        Self {
            name: name.into(),
            message: None,
            hint: None,
            needs: Vec::new(),
            timeout_seconds: None,
            retry_seconds: 0.0,
            points: 1,
            kind,
        }
    }

    /// How long one evaluation may take.
    pub fn timeout(&self) -> Duration {
        let default = match self.kind {
            CheckKind::Pytest(_) => PYTEST_TIMEOUT,
            _ => DEFAULT_TIMEOUT,
        };
        seconds(self.timeout_seconds.unwrap_or(default))
    }

    /// How long a failing check is re-evaluated before it counts as failed.
    pub fn retry_window(&self) -> Duration {
        seconds(self.retry_seconds)
    }
}

/// Where a kind is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunsOn {
    /// Inside the machine, by the agent, with the suite's other agent checks in one exec.
    Agent,
    /// On the host: it looks at the machine from outside, or is the author's code driving it.
    Host,
}

/// Declares [`CheckKind`] and everything that has to list every kind, from one list: the
/// variant, its struct, the name authors write and where it runs.
macro_rules! check_kinds {
    ($($(#[$doc:meta])* $variant:ident($ty:ident) = $name:literal on $runs:ident,)+) => {
        /// What a check looks at, with the fields that kind takes.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "kind")]
        pub enum CheckKind {
            $($(#[$doc])* #[serde(rename = $name)] $variant($ty),)+
        }

        impl CheckKind {
            /// Every kind's name, as authors write it.
            pub const NAMES: &'static [&'static str] = &[$($name),+];

            pub fn name(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => $name,)+
                }
            }

            pub fn runs_on(&self) -> RunsOn {
                match self {
                    $(Self::$variant(_) => RunsOn::$runs,)+
                }
            }

            /// The fields kind `name` takes besides [`Check::COMMON_FIELDS`], as its struct's
            /// derive accepts them; `None` for a name that is no kind.
            pub fn fields(name: &str) -> Option<&'static [&'static str]> {
                match name {
                    $($name => Some(fields_of::<$ty>()),)+
                    _ => None,
                }
            }

            /// Reads kind `name`'s own fields straight from `de` (the table without the
            /// common fields and the tag). Through the tagged enum serde buffers the fields
            /// first and its errors lose where each field was; here they keep it.
            pub fn deserialize_named<'de, D: Deserializer<'de>>(
                name: &str,
                de: D,
            ) -> Result<Self, D::Error> {
                match name {
                    $($name => $ty::deserialize(de).map(Self::$variant),)+
                    other => Err(de::Error::unknown_variant(other, Self::NAMES)),
                }
            }
        }
    };
}

check_kinds! {
    File(FileCheck) = "file" on Agent,
    User(UserCheck) = "user" on Agent,
    Group(GroupCheck) = "group" on Agent,
    Package(PackageCheck) = "package" on Agent,
    Process(ProcessCheck) = "process" on Agent,
    Port(PortCheck) = "port" on Agent,
    Command(CommandCheck) = "command" on Agent,
    Script(ScriptCheck) = "script" on Agent,
    Service(ServiceCheck) = "service" on Agent,
    /// A request from the host to the machine's address, as a browser would make it.
    Http(HttpCheck) = "http" on Host,
    /// The author's pytest file, run on the host with the `s` fixture.
    Pytest(PytestCheck) = "pytest" on Host,
}

impl CheckKind {
    /// The fields holding regexes, with their patterns, for validators to compile.
    pub fn patterns(&self) -> Vec<(&'static str, &str)> {
        let found = match self {
            Self::File(f) => vec![("matches", f.matches.as_deref())],
            Self::Process(p) => vec![("cmdline", p.cmdline.as_deref())],
            Self::Command(c) => vec![
                ("stdout", c.stdout.as_deref()),
                ("stderr", c.stderr.as_deref()),
            ],
            Self::Http(h) => vec![
                ("body", h.body.as_deref()),
                ("header", h.header.as_ref().map(|h| h.pattern.as_str())),
            ],
            Self::User(_)
            | Self::Group(_)
            | Self::Package(_)
            | Self::Port(_)
            | Self::Script(_)
            | Self::Service(_)
            | Self::Pytest(_) => Vec::new(),
        };
        found
            .into_iter()
            .filter_map(|(field, p)| p.map(|p| (field, p)))
            .collect()
    }
}

/// `file`: everything given holds; with `exists = false`, the path is absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCheck {
    /// Absolute, in the machine.
    pub path: String,
    #[serde(default = "yes")]
    pub exists: bool,
    #[serde(rename = "type")]
    pub file_type: Option<FileType>,
    pub mode: Option<Mode>,
    /// A user name or uid.
    pub owner: Option<String>,
    /// A group name or gid.
    pub group: Option<String>,
    /// A substring of the contents.
    pub contains: Option<String>,
    /// A regex on the contents; `^` and `$` match at lines.
    pub matches: Option<String>,
    /// What the symlink points to.
    pub target: Option<String>,
}

impl FileCheck {
    /// Just that `path` exists.
    pub fn exists(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            exists: true,
            file_type: None,
            mode: None,
            owner: None,
            group: None,
            contains: None,
            matches: None,
            target: None,
        }
    }
}

/// `user`: an account in /etc/passwd, as told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserCheck {
    pub user: String,
    #[serde(default = "yes")]
    pub exists: bool,
    pub uid: Option<u32>,
    pub shell: Option<String>,
    pub home: Option<String>,
    /// Groups it belongs to, as its primary group or a supplementary one.
    #[serde(default)]
    pub member_of: Vec<String>,
}

/// `group`: a group in /etc/group, as told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupCheck {
    pub group: String,
    #[serde(default = "yes")]
    pub exists: bool,
    pub gid: Option<u32>,
    /// Users listed in it or having it as their primary group.
    #[serde(default)]
    pub members: Vec<String>,
}

/// `package`: what dpkg's database says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageCheck {
    pub package: String,
    #[serde(default = "yes")]
    pub installed: bool,
}

/// `process`: a process matching `process` and/or `cmdline` runs (the validator requires
/// one of them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessCheck {
    /// Its comm or argv[0]'s basename.
    pub process: Option<String>,
    /// A regex on the whole command line.
    pub cmdline: Option<String>,
    #[serde(default = "yes")]
    pub running: bool,
}

/// `port`: a socket listens on the port, IPv4 or IPv6.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortCheck {
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default = "yes")]
    pub listening: bool,
}

/// `command`: run with `/bin/sh -c`, its exit code and output as told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandCheck {
    pub command: String,
    /// Run as this user; root when unset.
    pub user: Option<String>,
    #[serde(default)]
    pub exit_code: i32,
    /// Regexes on the outputs.
    pub stdout: Option<String>,
    pub stderr: Option<String>,
}

/// `script`: the author's script, run as root in the machine, exits 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptCheck {
    /// Its path in the exercise folder; the text travels in [`Suite::scripts`].
    pub script: String,
}

/// `service`: systemd (when it is the init) or the SysV init script says it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceCheck {
    pub service: String,
    #[serde(default = "yes")]
    pub running: bool,
}

/// `http`: the machine answers a request from the host as told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    pub port: u16,
    #[serde(default = "root_path")]
    pub path: String,
    #[serde(default)]
    pub method: Method,
    #[serde(default = "ok_status")]
    pub status: u16,
    /// A regex on the body; `^` and `$` match at lines.
    pub body: Option<String>,
    pub header: Option<HeaderMatch>,
}

fn root_path() -> String {
    "/".into()
}

fn ok_status() -> u16 {
    200
}

/// `pytest`: a pytest file in the original checker's format; one result per test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PytestCheck {
    /// Its path in the exercise folder.
    pub file: String,
}

/// What a `file` check's `type` may say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileType {
    File,
    Directory,
    Symlink,
    Fifo,
    Socket,
}

impl FileType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Directory => "directory",
            Self::Symlink => "symlink",
            Self::Fifo => "fifo",
            Self::Socket => "socket",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    /// As in `/proc/net/<name>`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// The HTTP methods an `http` check may use, written in capitals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    #[default]
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Options => "OPTIONS",
        }
    }
}

/// Permission bits, written as an octal string (`"0640"`, `"1777"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl Serialize for Mode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{:04o}", self.0))
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(Parse("an octal mode as a string, such as \"0644\"", |s| {
            u32::from_str_radix(s, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .map(Mode)
                .ok_or_else(|| format!("{s:?} is not an octal mode such as \"0644\""))
        }))
    }
}

/// An `http` check's `header`: `"Name: regex"`, the named header's value matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    pub name: String,
    pub pattern: String,
}

impl Serialize for HeaderMatch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}: {}", self.name, self.pattern))
    }
}

impl<'de> Deserialize<'de> for HeaderMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(Parse("a string \"Name: regex\"", |s| {
            match s.split_once(':') {
                Some((name, pattern)) if !name.trim().is_empty() => Ok(HeaderMatch {
                    name: name.trim().to_string(),
                    pattern: pattern.trim().to_string(),
                }),
                _ => Err(format!("{s:?} does not look like \"Name: regex\"")),
            }
        }))
    }
}

/// A visitor for a value written as a string with a syntax of its own.
struct Parse<T>(&'static str, fn(&str) -> Result<T, String>);

impl<T> Visitor<'_> for Parse<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.1)(v).map_err(E::custom)
    }
}

/// What the agent reads on stdin: the checks it evaluates ([`RunsOn::Agent`] kinds).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Suite {
    pub checks: Vec<Check>,
    /// The text of each script the checks name, by its path in the exercise folder: the
    /// host has the folder, the machine does not.
    #[serde(default)]
    pub scripts: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Passed,
    Failed,
    /// The check itself broke (timed out, could not run): not the learner's fault.
    Errored,
    /// A check it needs did not pass.
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::Errored => "errored",
            Self::Skipped => "skipped",
        }
    }
}

/// One check's result as the agent reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub name: String,
    pub status: Status,
    /// What was observed, e.g. "mode of /etc/x is 0644, expected 0600".
    pub detail: String,
    /// A `FAIL: message` line a script printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub duration_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::collections::BTreeSet;

    fn check(kind: CheckKind) -> Check {
        Check {
            name: kind.name().into(),
            message: Some("m".into()),
            hint: Some("h".into()),
            needs: vec!["other".into()],
            timeout_seconds: Some(3.5),
            retry_seconds: 2.0,
            points: 4,
            kind,
        }
    }

    /// One check of every kind with every field set.
    fn every_kind() -> Vec<Check> {
        let s = |v: &str| Some(v.to_string());
        [
            CheckKind::File(FileCheck {
                path: "/srv/x".into(),
                exists: false,
                file_type: Some(FileType::Symlink),
                mode: Some(Mode(0o1777)),
                owner: s("root"),
                group: s("0"),
                contains: s("text"),
                matches: s("^a$"),
                target: s("/srv/y"),
            }),
            CheckKind::User(UserCheck {
                user: "ann".into(),
                exists: true,
                uid: Some(1001),
                shell: s("/bin/sh"),
                home: s("/home/ann"),
                member_of: vec!["staff".into()],
            }),
            CheckKind::Group(GroupCheck {
                group: "staff".into(),
                exists: true,
                gid: Some(50),
                members: vec!["ann".into()],
            }),
            CheckKind::Package(PackageCheck {
                package: "curl".into(),
                installed: false,
            }),
            CheckKind::Process(ProcessCheck {
                process: s("nginx"),
                cmdline: s("nginx: master"),
                running: true,
            }),
            CheckKind::Port(PortCheck {
                port: 53,
                protocol: Protocol::Udp,
                listening: false,
            }),
            CheckKind::Command(CommandCheck {
                command: "id -u".into(),
                user: s("ann"),
                exit_code: 3,
                stdout: s("^1001$"),
                stderr: s("^$"),
            }),
            CheckKind::Script(ScriptCheck {
                script: "checks/a.sh".into(),
            }),
            CheckKind::Service(ServiceCheck {
                service: "webapp".into(),
                running: false,
            }),
            CheckKind::Http(HttpCheck {
                port: 8000,
                path: "/x".into(),
                method: Method::Head,
                status: 404,
                body: s("Not found"),
                header: Some(HeaderMatch {
                    name: "Content-Type".into(),
                    pattern: "text/.*".into(),
                }),
            }),
            CheckKind::Pytest(PytestCheck {
                file: "checks/test_x.py".into(),
            }),
        ]
        .into_iter()
        .map(check)
        .collect()
    }

    #[test]
    fn the_samples_cover_every_kind() {
        let names: Vec<_> = every_kind().iter().map(|c| c.kind.name()).collect();
        assert_eq!(names, CheckKind::NAMES);
    }

    #[test]
    fn every_kind_round_trips() {
        for c in every_kind() {
            let text = serde_json::to_string(&c).unwrap();
            let back: Check = serde_json::from_str(&text).unwrap();
            assert_eq!(back, c, "{text}");
            let fresh: Check = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
            assert_eq!(fresh, c);
        }
        let suite = Suite {
            checks: every_kind(),
            scripts: [("checks/a.sh".to_string(), "exit 0".to_string())].into(),
        };
        let text = serde_json::to_vec(&suite).unwrap();
        assert_eq!(serde_json::from_slice::<Suite>(&text).unwrap(), suite);
    }

    #[test]
    fn unset_fields_take_their_defaults() {
        let c: Check = serde_json::from_value(
            json!({"name": "w", "kind": "http", "port": 8000, "message": "m"}),
        )
        .unwrap();
        assert_eq!((c.points, c.retry_window()), (1, Duration::ZERO));
        assert_eq!(c.timeout(), Duration::from_secs(10));
        let CheckKind::Http(h) = &c.kind else {
            panic!("{c:?}")
        };
        assert_eq!(
            (h.path.as_str(), h.method, h.status, &h.header),
            ("/", Method::Get, 200, &None)
        );
        let p: Check =
            serde_json::from_value(json!({"name": "p", "kind": "pytest", "file": "t.py"})).unwrap();
        assert_eq!(p.timeout(), Duration::from_secs(120));
    }

    fn keys(v: &Value) -> BTreeSet<String> {
        v.as_object().unwrap().keys().cloned().collect()
    }

    /// What each kind serializes is the common fields, the tag and exactly the fields its
    /// derive accepts: `COMMON_FIELDS` and `fields` cannot drift from the structs.
    #[test]
    fn common_fields_are_the_structs() {
        for c in every_kind() {
            let mut want: BTreeSet<String> = Check::COMMON_FIELDS
                .iter()
                .chain(CheckKind::fields(c.kind.name()).unwrap())
                .map(|s| s.to_string())
                .collect();
            want.insert(Check::TAG.into());
            assert_eq!(keys(&serde_json::to_value(&c).unwrap()), want, "{c:?}");
        }
        assert!(CheckKind::fields("file").unwrap().contains(&"type"));
        assert_eq!(CheckKind::fields("teleport"), None);
    }

    #[test]
    fn a_field_of_another_kind_is_refused() {
        let samples = every_kind();
        for c in &samples {
            let own = CheckKind::fields(c.kind.name()).unwrap();
            for other in &samples {
                let value = serde_json::to_value(other).unwrap();
                for (field, v) in value.as_object().unwrap() {
                    if own.contains(&field.as_str())
                        || Check::COMMON_FIELDS.contains(&field.as_str())
                        || field == Check::TAG
                    {
                        continue;
                    }
                    let mut bad = serde_json::to_value(c).unwrap();
                    bad[field] = v.clone();
                    let err = serde_json::from_value::<Check>(bad).unwrap_err();
                    assert!(
                        err.to_string()
                            .contains(&format!("unknown field `{field}`")),
                        "{field} on {}: {err}",
                        c.kind.name()
                    );
                }
            }
        }
    }

    #[test]
    fn an_unknown_kind_is_refused() {
        let err =
            serde_json::from_value::<Check>(json!({"name": "x", "kind": "teleport"})).unwrap_err();
        assert!(
            err.to_string().contains("unknown variant `teleport`"),
            "{err}"
        );
        let err = CheckKind::deserialize_named("teleport", json!({})).unwrap_err();
        assert!(err.to_string().contains("`file`, `user`"), "{err}");
    }

    #[test]
    fn a_kind_reads_its_own_fields_by_name() {
        let k = CheckKind::deserialize_named("port", json!({"port": 80})).unwrap();
        assert_eq!(
            k,
            CheckKind::Port(PortCheck {
                port: 80,
                protocol: Protocol::Tcp,
                listening: true
            })
        );
        let err =
            CheckKind::deserialize_named("port", json!({"port": 80, "mode": "0644"})).unwrap_err();
        assert!(err.to_string().contains("unknown field `mode`"), "{err}");
    }

    #[test]
    fn http_and_pytest_run_on_the_host() {
        for c in every_kind() {
            let host = matches!(c.kind, CheckKind::Http(_) | CheckKind::Pytest(_));
            assert_eq!(
                c.kind.runs_on(),
                if host { RunsOn::Host } else { RunsOn::Agent }
            );
        }
    }

    #[test]
    fn patterns_name_fields_of_their_kind() {
        let mut seen = 0;
        for c in every_kind() {
            let fields = CheckKind::fields(c.kind.name()).unwrap();
            for (field, _) in c.kind.patterns() {
                assert!(fields.contains(&field), "{field} of {}", c.kind.name());
                seen += 1;
            }
        }
        assert_eq!(seen, 6);
    }

    #[test]
    fn modes_and_headers_have_their_syntax() {
        let mode = |s: &str| serde_json::from_value::<Mode>(json!(s));
        assert_eq!(mode("0640").unwrap(), Mode(0o640));
        assert_eq!(serde_json::to_value(Mode(0o755)).unwrap(), json!("0755"));
        let err = mode("999").unwrap_err().to_string();
        assert!(err.contains("\"999\" is not an octal mode"), "{err}");
        assert!(mode("17777").is_err());
        let header = |s: &str| serde_json::from_value::<HeaderMatch>(json!(s));
        let h = header("Content-Type:  text/html ").unwrap();
        assert_eq!(
            (h.name.as_str(), h.pattern.as_str()),
            ("Content-Type", "text/html")
        );
        assert!(header("no colon").is_err());
        assert!(header(": x").is_err());
    }
}
