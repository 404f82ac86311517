//! The exercise format: a folder with `exercise.toml` (manifest and `[[check]]` tables),
//! instructions in Markdown, optional `setup.sh` and `files/`, check scripts and a
//! reference solution. [`Exercise::load`] reads and validates it, reporting every problem
//! it finds at once, each at `file:line:col`.

use crate::wire::Check;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

pub const MANIFEST: &str = "exercise.toml";

/// One problem in an exercise, where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// Resource caps an exercise asks for; unset fields take the platform's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestLimits {
    pub memory_mib: Option<u64>,
    pub cpu_millis: Option<u64>,
    pub pids: Option<u64>,
}

fn default_instructions() -> String {
    "README.md".into()
}

fn default_solution() -> String {
    "solution.sh".into()
}

/// `exercise.toml` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub title: String,
    #[serde(default = "default_instructions")]
    pub instructions: String,
    pub image: Option<String>,
    #[serde(default)]
    pub limits: ManifestLimits,
    /// How long the learner has; the machine's lifetime.
    pub time_limit_minutes: Option<u64>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Script run as root in the machine before the learner gets it.
    pub setup: Option<String>,
    /// Folder whose tree is copied into the machine's `/` before setup runs.
    pub files: Option<String>,
    #[serde(default = "default_solution")]
    pub solution: String,
    /// Live checking: a task once passed stays passed for that machine.
    #[serde(default)]
    pub sticky: bool,
    #[serde(default, rename = "check")]
    pub checks: Vec<Check>,
}

/// A validated exercise, with every file it refers to read in.
#[derive(Debug, Clone)]
pub struct Exercise {
    /// The folder's name; how the API refers to it.
    pub name: String,
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub instructions: String,
    pub setup: Option<String>,
    /// Files for the machine: absolute path inside it → content and mode.
    pub files: Vec<(String, Vec<u8>, u32)>,
    pub solution: String,
}

const COMMON: &[&str] = &[
    "name",
    "kind",
    "message",
    "hint",
    "needs",
    "timeout_seconds",
    "retry_seconds",
    "points",
];

/// Fields each kind takes besides the common ones; the first is required.
fn kind_fields(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "file" => &[
            "path", "exists", "type", "mode", "owner", "group", "contains", "matches", "target",
        ],
        "user" => &["user", "exists", "uid", "shell", "home", "member_of"],
        "group" => &["group", "exists", "gid", "members"],
        "package" => &["package", "installed"],
        // `process` or `cmdline`: checked separately.
        "process" => &["", "process", "cmdline", "running"],
        "port" => &["port", "protocol", "listening"],
        "command" => &["command", "user", "exit_code", "stdout", "stderr"],
        "script" => &["script"],
        "service" => &["service", "running"],
        "http" => &["port", "path", "method", "status", "body", "header"],
        "pytest" => &["file"],
        _ => return None,
    })
}

pub const KINDS: &[&str] = &[
    "file", "user", "group", "package", "process", "port", "command", "script", "service", "http",
    "pytest",
];

/// Collects diagnostics for one file, turning byte spans into line and column.
struct Report<'a> {
    file: PathBuf,
    text: &'a str,
    out: Vec<Diagnostic>,
}

impl Report<'_> {
    fn at(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        let offset = span.map_or(0, |s| s.start).min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        self.out.push(Diagnostic {
            file: self.file.clone(),
            line,
            col,
            message: message.into(),
        });
    }
}

/// Where things are in the manifest, for pointing at them.
struct Spans<'a>(&'a toml_edit::ImDocument<&'a str>);

impl Spans<'_> {
    fn key(&self, key: &str) -> Option<Range<usize>> {
        let t = self.0.as_table();
        t.get(key)
            .and_then(toml_edit::Item::span)
            .or_else(|| t.key(key).and_then(toml_edit::Key::span))
    }

    fn check(&self, i: usize, key: Option<&str>) -> Option<Range<usize>> {
        let table = self
            .0
            .as_table()
            .get("check")
            .and_then(toml_edit::Item::as_array_of_tables)
            .and_then(|a| a.get(i))?;
        match key {
            Some(k) => table
                .key(k)
                .and_then(toml_edit::Key::span)
                .or_else(|| table.get(k).and_then(toml_edit::Item::span))
                .or_else(|| table.span()),
            None => table.span(),
        }
    }

    fn check_value(&self, i: usize, key: &str) -> Option<Range<usize>> {
        let table = self
            .0
            .as_table()
            .get("check")
            .and_then(toml_edit::Item::as_array_of_tables)
            .and_then(|a| a.get(i))?;
        table
            .get(key)
            .and_then(toml_edit::Item::span)
            .or_else(|| self.check(i, Some(key)))
    }
}

/// The TOML keys a check table sets, from the document itself (serde has already filled
/// in defaults by the time the struct exists).
fn keys_of(doc: &toml_edit::ImDocument<&str>, i: usize) -> Vec<String> {
    doc.as_table()
        .get("check")
        .and_then(toml_edit::Item::as_array_of_tables)
        .and_then(|a| a.get(i))
        .map(|t| t.iter().map(|(k, _)| k.to_string()).collect())
        .unwrap_or_default()
}

/// A path inside the exercise folder, refusing ones that climb out of it.
fn inside(dir: &Path, rel: &str) -> Result<PathBuf, String> {
    let p = Path::new(rel);
    if p.is_absolute()
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!("{rel:?} must be a path inside the exercise folder"));
    }
    Ok(dir.join(p))
}

fn read_in(dir: &Path, rel: &str) -> Result<String, String> {
    let path = inside(dir, rel)?;
    std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn check_regex(r: &mut Report<'_>, span: Option<Range<usize>>, field: &str, p: &str) {
    if let Err(e) = regex::Regex::new(p) {
        r.at(span, format!("`{field}` is not a valid regex: {e}"));
    }
}

fn walk_files(
    root: &Path,
    dir: &Path,
    out: &mut Vec<(String, Vec<u8>, u32)>,
) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for e in entries {
        let path = e.path();
        let meta = std::fs::metadata(&path)?;
        if meta.is_dir() {
            walk_files(root, &path, out)?;
        } else {
            use std::os::unix::fs::PermissionsExt;
            let rel = path.strip_prefix(root).unwrap_or(&path);
            out.push((
                format!("/{}", rel.display()),
                std::fs::read(&path)?,
                meta.permissions().mode() & 0o7777,
            ));
        }
    }
    Ok(())
}

impl Exercise {
    /// Reads and validates the exercise in `dir`; on failure, every problem found.
    pub fn load(dir: &Path) -> Result<Self, Vec<Diagnostic>> {
        let file = dir.join(MANIFEST);
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                return Err(vec![Diagnostic {
                    file,
                    line: 1,
                    col: 1,
                    message: format!("cannot read the manifest: {e}"),
                }])
            }
        };
        let mut r = Report {
            file: file.clone(),
            text: &text,
            out: Vec::new(),
        };
        let doc = match toml_edit::ImDocument::parse(text.as_str()) {
            Ok(d) => d,
            Err(e) => {
                r.at(e.span(), format!("invalid TOML: {}", e.message()));
                return Err(r.out);
            }
        };
        let spans = Spans(&doc);
        let manifest: Manifest = match toml::from_str(&text) {
            Ok(m) => m,
            Err(e) => {
                r.at(e.span(), e.message().to_string());
                return Err(r.out);
            }
        };
        let name = dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default();
        if manifest.title.trim().is_empty() {
            r.at(spans.key("title"), "`title` must not be empty");
        }
        let read = |key: &str, rel: &str, r: &mut Report<'_>| match read_in(dir, rel) {
            Ok(t) => Some(t),
            Err(e) => {
                r.at(spans.key(key), e);
                None
            }
        };
        let instructions = read("instructions", &manifest.instructions, &mut r);
        let solution = read("solution", &manifest.solution, &mut r);
        let setup = match &manifest.setup {
            Some(s) => read("setup", s, &mut r),
            None => None,
        };
        let mut files = Vec::new();
        let files_dir = manifest
            .files
            .clone()
            .or_else(|| dir.join("files").is_dir().then(|| "files".to_string()));
        if let Some(f) = &files_dir {
            match inside(dir, f) {
                Ok(root) => {
                    if let Err(e) = walk_files(&root, &root, &mut files) {
                        r.at(
                            spans.key("files"),
                            format!("cannot read {}: {e}", root.display()),
                        );
                    }
                }
                Err(e) => r.at(spans.key("files"), e),
            }
        }
        if manifest.time_limit_minutes == Some(0) {
            r.at(spans.key("time_limit_minutes"), "must be greater than 0");
        }
        let mut manifest = manifest;
        validate_checks(dir, &doc, &spans, &mut manifest.checks, &mut r);
        if !r.out.is_empty() {
            return Err(r.out);
        }
        Ok(Self {
            name,
            dir: dir.to_path_buf(),
            manifest,
            instructions: instructions.unwrap_or_default(),
            setup,
            files,
            solution: solution.unwrap_or_default(),
        })
    }

    pub fn checks(&self) -> &[Check] {
        &self.manifest.checks
    }
}

fn validate_checks(
    dir: &Path,
    doc: &toml_edit::ImDocument<&str>,
    spans: &Spans<'_>,
    checks: &mut [Check],
    r: &mut Report<'_>,
) {
    if checks.is_empty() {
        r.at(
            None,
            "the exercise has no checks: add at least one [[check]] table",
        );
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, c) in checks.iter().enumerate() {
        if c.name.trim().is_empty() {
            r.at(spans.check(i, None), "the check has no `name`");
        } else if seen.insert(c.name.clone(), i).is_some() {
            r.at(
                spans.check_value(i, "name"),
                format!("a check named {:?} is already defined", c.name),
            );
        }
    }
    for (i, c) in checks.iter_mut().enumerate() {
        let keys = keys_of(doc, i);
        let Some(fields) = kind_fields(&c.kind) else {
            let at = spans.check_value(i, "kind");
            if c.kind.is_empty() {
                r.at(
                    spans.check(i, None),
                    format!(
                        "check {:?} has no `kind` (one of {})",
                        c.name,
                        KINDS.join(", ")
                    ),
                );
            } else {
                r.at(
                    at,
                    format!("unknown kind {:?}; use one of {}", c.kind, KINDS.join(", ")),
                );
            }
            continue;
        };
        for k in &keys {
            if !COMMON.contains(&k.as_str()) && !fields.contains(&k.as_str()) {
                r.at(
                    spans.check(i, Some(k)),
                    format!("`{k}` does not apply to a {} check", c.kind),
                );
            }
        }
        let required = fields[0];
        if required.is_empty() {
            if c.process.is_none() && c.cmdline.is_none() {
                r.at(
                    spans.check(i, None),
                    format!("process check {:?} needs `process` or `cmdline`", c.name),
                );
            }
        } else if !keys.iter().any(|k| k == required) {
            r.at(
                spans.check(i, None),
                format!("{} check {:?} needs `{required}`", c.kind, c.name),
            );
        }
        if c.kind != "pytest" && c.message.as_deref().is_none_or(|m| m.trim().is_empty()) {
            r.at(
                spans.check(i, None),
                format!(
                    "check {:?} needs a `message` for the learner when it fails",
                    c.name
                ),
            );
        }
        for (field, value) in [
            ("matches", &c.matches),
            ("cmdline", &c.cmdline),
            ("stdout", &c.stdout),
            ("stderr", &c.stderr),
            ("body", &c.body),
        ] {
            if let Some(p) = value {
                check_regex(r, spans.check_value(i, field), field, p);
            }
        }
        if let Some(h) = &c.header {
            match h.split_once(':') {
                Some((name, p)) if !name.trim().is_empty() => {
                    check_regex(r, spans.check_value(i, "header"), "header", p.trim())
                }
                _ => r.at(
                    spans.check_value(i, "header"),
                    "`header` must look like \"Name: regex\"",
                ),
            }
        }
        if let Some(m) = &c.mode {
            if u32::from_str_radix(m, 8)
                .ok()
                .filter(|v| *v <= 0o7777)
                .is_none()
            {
                r.at(
                    spans.check_value(i, "mode"),
                    format!("mode {m:?} is not an octal mode such as \"0644\""),
                );
            }
        }
        if let Some(t) = &c.file_type {
            if !["file", "directory", "symlink", "fifo", "socket"].contains(&t.as_str()) {
                r.at(
                    spans.check_value(i, "type"),
                    format!("type {t:?} is not one of file, directory, symlink, fifo, socket"),
                );
            }
        }
        if let Some(p) = &c.protocol {
            if p != "tcp" && p != "udp" {
                r.at(
                    spans.check_value(i, "protocol"),
                    format!("protocol {p:?} is not tcp or udp"),
                );
            }
        }
        if let Some(m) = &c.method {
            if !["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"].contains(&m.as_str()) {
                r.at(
                    spans.check_value(i, "method"),
                    format!("method {m:?} is not an HTTP method in capitals"),
                );
            }
        }
        if let Some(p) = &c.path {
            if c.kind == "http" && !p.starts_with('/') {
                r.at(spans.check_value(i, "path"), "an HTTP path starts with /");
            }
            if c.kind == "file" && !p.starts_with('/') {
                r.at(
                    spans.check_value(i, "path"),
                    "a file path in the machine must be absolute",
                );
            }
        }
        for (field, v) in [
            ("timeout_seconds", c.timeout_seconds),
            ("retry_seconds", c.retry_seconds),
        ] {
            if let Some(v) = v {
                if !(0.0..=600.0).contains(&v) || (field == "timeout_seconds" && v == 0.0) {
                    r.at(
                        spans.check_value(i, field),
                        format!("`{field}` must be between 0 and 600"),
                    );
                }
            }
        }
        for (field, rel) in [("script", &c.script), ("file", &c.file)] {
            if let Some(rel) = rel {
                match read_in(dir, rel) {
                    Ok(body) => {
                        if field == "script" {
                            c.script_body = Some(body);
                        }
                    }
                    Err(e) => r.at(spans.check_value(i, field), e),
                }
            }
        }
        for n in &c.needs {
            if n == &c.name {
                r.at(
                    spans.check_value(i, "needs"),
                    format!("check {:?} needs itself", c.name),
                );
            } else if !seen.contains_key(n) {
                r.at(
                    spans.check_value(i, "needs"),
                    format!("check {:?} needs {n:?}, which is not defined", c.name),
                );
            }
        }
    }
    if let Some(cycle) = find_cycle(checks) {
        let i = seen.get(&cycle[0]).copied().unwrap_or(0);
        r.at(
            spans.check_value(i, "needs"),
            format!("checks need each other in a cycle: {}", cycle.join(" → ")),
        );
    }
}

/// A dependency cycle among checks, as names, if there is one.
fn find_cycle(checks: &[Check]) -> Option<Vec<String>> {
    let needs: BTreeMap<&str, &[String]> = checks
        .iter()
        .map(|c| (c.name.as_str(), c.needs.as_slice()))
        .collect();
    fn visit<'a>(
        n: &'a str,
        needs: &BTreeMap<&'a str, &'a [String]>,
        path: &mut Vec<&'a str>,
        done: &mut HashSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(pos) = path.iter().position(|p| *p == n) {
            let mut cycle: Vec<String> = path[pos..].iter().map(|s| s.to_string()).collect();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if !done.insert(n) {
            return None;
        }
        path.push(n);
        for m in needs.get(n).copied().unwrap_or_default() {
            if m != n {
                if let Some(c) = visit(m, needs, path, done) {
                    return Some(c);
                }
            }
        }
        path.pop();
        None
    }
    let mut done = HashSet::new();
    needs
        .keys()
        .find_map(|n| visit(n, &needs, &mut Vec::new(), &mut done))
}

/// Every exercise folder under `root` (those holding an `exercise.toml`), by name.
pub fn discover(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(root)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join(MANIFEST).is_file())
        .collect();
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::create_dir_all(dir.join(name).parent().unwrap()).unwrap();
        std::fs::write(dir.join(name), text).unwrap();
    }

    fn messages(dir: &Path) -> Vec<String> {
        Exercise::load(dir)
            .unwrap_err()
            .iter()
            .map(|d| format!("{}:{}: {}", d.line, d.col, d.message))
            .collect()
    }

    #[test]
    fn every_error_is_reported_at_its_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "README.md", "# x");
        write(
            dir.path(),
            MANIFEST,
            r#"title = "t"
solution = "missing.sh"

[[check]]
name = "a"
kind = "file"
path = "/x"
mode = "999"
message = "m"

[[check]]
name = "a"
kind = "port"
port = 80
shell = "/bin/sh"
message = "m"

[[check]]
name = "c"
kind = "command"
command = "true"
stdout = "(unclosed"
needs = ["nope"]

[[check]]
name = "d"
kind = "teleport"
message = "m"
"#,
        );
        let got = messages(dir.path());
        let expect = [
            "2:12: cannot read",
            "8:8: mode \"999\" is not an octal mode",
            "12:8: a check named \"a\" is already defined",
            "15:1: `shell` does not apply to a port check",
            "18:1: check \"c\" needs a `message`",
            "22:10: `stdout` is not a valid regex",
            "23:9: check \"c\" needs \"nope\", which is not defined",
            "27:8: unknown kind \"teleport\"",
        ];
        for e in expect {
            assert!(
                got.iter().any(|g| g.starts_with(e)),
                "expected {e:?} among {got:#?}"
            );
        }
        assert_eq!(got.len(), expect.len(), "{got:#?}");
    }

    #[test]
    fn syntax_and_type_errors_point_at_the_spot() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            MANIFEST,
            "title = \"t\"\n[[check]]\nname = \"a\"\nport = \"eighty\"\n",
        );
        let got = messages(dir.path());
        assert!(got[0].starts_with("4:8: invalid type"), "{got:?}");
        write(dir.path(), MANIFEST, "title = \"t\"\ntags = [\"a\",\n");
        let got = messages(dir.path());
        assert!(got[0].starts_with("3:1: invalid TOML"), "{got:?}");
        write(dir.path(), MANIFEST, "title = \"t\"\nflavour = 1\n");
        let got = messages(dir.path());
        assert!(
            got[0].starts_with("2:1: unknown field `flavour`"),
            "{got:?}"
        );
    }

    #[test]
    fn cycles_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "README.md", "x");
        write(dir.path(), "solution.sh", "true");
        write(
            dir.path(),
            MANIFEST,
            "title = \"t\"\n[[check]]\nname = \"a\"\nkind = \"user\"\nuser = \"x\"\nmessage = \"m\"\nneeds = [\"b\"]\n\
             [[check]]\nname = \"b\"\nkind = \"user\"\nuser = \"x\"\nmessage = \"m\"\nneeds = [\"a\"]\n",
        );
        let got = messages(dir.path());
        assert!(
            got.iter().any(|g| g.contains("cycle: a → b → a")),
            "{got:?}"
        );
    }

    #[test]
    fn the_starter_library_is_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../exercises");
        let dirs = discover(&root).unwrap();
        assert!(dirs.len() >= 10, "{} exercises", dirs.len());
        for d in dirs {
            if let Err(diags) = Exercise::load(&d) {
                panic!("{}: {diags:#?}", d.display());
            }
        }
    }
}
