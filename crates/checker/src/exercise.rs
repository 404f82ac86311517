//! The exercise format: a folder with `exercise.toml` (manifest and `[[check]]` tables),
//! instructions in Markdown, optional `setup.sh` and `files/`, check scripts and a
//! reference solution. [`Exercise::load`] reads and validates it, reporting every problem
//! it finds at once, each at `file:line:col`.

mod checks;

use crate::wire::Check;
use serde::de::IntoDeserializer;
use serde::Deserialize;
use std::collections::BTreeMap;
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
    /// `container` (the default) or `vm`, for exercises that need a kernel of their own
    /// (disks, modules, Docker inside).
    pub kind: Option<rnr_core::MachineKind>,
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
    /// The `[[check]]` tables. Not read with the rest: [`Exercise::load`] reads each table on
    /// its own, so that every check's problems are reported, not the first one's.
    #[serde(skip)]
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
    /// The text of each script a `script` check names, by its path in the folder.
    pub scripts: BTreeMap<String, String>,
}

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
        Self::parse(dir, &text)
    }

    /// Validates `text` as the manifest of the exercise in `dir`, reading the files it names
    /// from there; on failure, every problem found, at its line and column in `text`.
    pub fn parse(dir: &Path, text: &str) -> Result<Self, Vec<Diagnostic>> {
        let mut r = Report {
            file: dir.join(MANIFEST),
            text,
            out: Vec::new(),
        };
        let doc = match toml_edit::ImDocument::parse(text) {
            Ok(d) => d,
            Err(e) => {
                r.at(e.span(), format!("invalid TOML: {}", e.message()));
                return Err(r.out);
            }
        };
        let spans = Spans(&doc);
        // The checks are read table by table (`checks::validate`), so that a wrong one does
        // not hide the problems of the others.
        let mut root = doc.as_table().clone();
        let check_tables = root.remove("check");
        let header = toml_edit::Value::InlineTable(root.into_inline_table());
        let manifest = match Manifest::deserialize(header.into_deserializer()) {
            Ok(m) => m,
            Err(e) => {
                r.at(e.span(), e.message().to_string());
                return Err(r.out);
            }
        };
        let tables: Vec<toml_edit::Table> =
            match check_tables.map(toml_edit::Item::into_array_of_tables) {
                None => Vec::new(),
                Some(Ok(a)) => a.into_iter().collect(),
                Some(Err(item)) => {
                    r.at(item.span(), "`check` must be [[check]] tables");
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
        let (checks, scripts) = checks::validate(dir, &tables, &mut r);
        manifest.checks = checks;
        if !r.out.is_empty() {
            // Found check by check, reported in the order an author reads the file.
            r.out.sort_by_key(|d| (d.line, d.col));
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
            scripts,
        })
    }

    pub fn checks(&self) -> &[Check] {
        &self.manifest.checks
    }
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

    /// An exercise folder with everything but the manifest.
    fn folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "README.md", "x");
        write(dir.path(), "solution.sh", "true");
        dir
    }

    /// Exactly the problems `expect` begins, in any order.
    fn assert_reported(got: &[String], expect: &[&str]) {
        for e in expect {
            assert!(
                got.iter().any(|g| g.starts_with(e)),
                "expected {e:?} among {got:#?}"
            );
        }
        assert_eq!(got.len(), expect.len(), "{got:#?}");
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
            "8:8: check \"a\": field \"mode\" of kind \"file\": \"999\" is not an octal mode",
            "12:8: a check named \"a\" is already defined",
            "15:1: check \"a\": field \"shell\" does not apply to kind \"port\", which takes \
             port, protocol, listening",
            "18:1: check \"c\" has no \"message\"",
            "22:10: check \"c\": field \"stdout\" of kind \"command\": not a valid regex",
            "23:9: check \"c\" needs \"nope\", which is not defined",
            "27:8: check \"d\": unknown kind \"teleport\"; the kinds are file, user, group,",
        ];
        assert_reported(&got, &expect);
    }

    #[test]
    fn syntax_and_type_errors_point_at_the_spot() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            MANIFEST,
            "title = \"t\"\n[[check]]\nname = \"a\"\nkind = \"port\"\nport = \"eighty\"\n",
        );
        let got = messages(dir.path());
        assert!(
            got.iter().any(|g| {
                g.starts_with(
                "5:8: check \"a\": field \"port\" of kind \"port\": invalid type: string \"eighty\""
            )
            }),
            "{got:?}"
        );
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

    /// Each problem a check's type finds, named by check, field and kind, where it is.
    #[test]
    fn checks_are_held_to_their_kinds_type() {
        let dir = folder();
        write(
            dir.path(),
            MANIFEST,
            r#"title = "t"

[[check]]
name = "web"
kind = "http"
port = 80
mode = "0644"
message = "m"

[[check]]
name = "typo"
kind = "file"
pth = "/x"
message = "m"

[[check]]
name = "slow"
kind = "user"
user = "ann"
timeout_seconds = "long"
message = "m"

[[check]]
kind = "port"
port = 80
message = "m"

[[check]]
name = "kindless"
message = "m"

[[check]]
name = "how"
kind = "http"
port = 80
method = "get"
header = "no colon"
message = "m"

[[check]]
name = "ps"
kind = "process"
message = "m"
"#,
        );
        let got = messages(dir.path());
        let expect = [
            "7:1: check \"web\": field \"mode\" does not apply to kind \"http\", which takes \
             port, path, method, status, body, header",
            "13:1: check \"typo\": unknown field \"pth\"; kind \"file\" takes path, exists, \
             type, mode,",
            "10:1: check \"typo\": kind \"file\" needs field \"path\"",
            "20:19: check \"slow\": field \"timeout_seconds\": invalid type: string \"long\"",
            "23:1: check #4 has no \"name\"",
            "28:1: check \"kindless\" has no \"kind\" (one of file, user,",
            "36:10: check \"how\": field \"method\" of kind \"http\": unknown value `get`, \
             expected one of `GET`,",
            "40:1: check \"ps\": kind \"process\" needs field \"process\" or \"cmdline\"",
        ];
        assert_reported(&got, &expect);
    }

    #[test]
    fn a_header_and_a_script_are_read_with_their_check() {
        let dir = folder();
        write(dir.path(), "checks/ok.sh", "exit 0\n");
        let manifest = |header: &str| {
            format!(
                "title = \"t\"\n[[check]]\nname = \"s\"\nkind = \"script\"\nscript = \"checks/ok.sh\"\n\
                 message = \"m\"\n[[check]]\nname = \"h\"\nkind = \"http\"\nport = 80\n\
                 header = {header:?}\nmessage = \"m\"\n"
            )
        };
        write(dir.path(), MANIFEST, &manifest("no colon"));
        let got = messages(dir.path());
        assert_eq!(
            got,
            ["11:10: check \"h\": field \"header\" of kind \"http\": \"no colon\" does not look \
              like \"Name: regex\""],
        );
        write(dir.path(), MANIFEST, &manifest("X-A: [b"));
        let got = messages(dir.path());
        assert!(
            got[0].starts_with(
                "11:10: check \"h\": field \"header\" of kind \"http\": not a valid regex"
            ),
            "{got:?}"
        );
        write(dir.path(), MANIFEST, &manifest("X-A: b+"));
        let ex = Exercise::load(dir.path()).unwrap();
        assert_eq!(ex.scripts["checks/ok.sh"], "exit 0\n");
        assert_eq!(
            ex.checks()
                .iter()
                .map(|c| c.kind.name())
                .collect::<Vec<_>>(),
            ["script", "http"]
        );
    }

    #[test]
    fn cycles_are_refused() {
        let dir = folder();
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
