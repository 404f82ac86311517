//! The exercise parser (`exercise.toml`, as an author or an uploaded folder writes it):
//! any text is either a valid exercise or a list of problems, never a panic. Each problem
//! has a message and a place inside the text (line and column from 1, the manifest's
//! path). A valid exercise holds what the validator promises: a title, at least one check,
//! check names unique and non-empty, `needs` naming other defined checks without a cycle,
//! timeouts and retries in range, regexes that compile, absolute paths for file checks,
//! every script's text read in; and its checks survive the trip to the agent (JSON) as
//! they are.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rnr_agent_proto::check::{CheckKind, Suite};
use rnr_checker::Exercise;
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::OnceLock;

/// An exercise folder with the files a manifest usually names; in fuzz/target, made once
/// and reused by every run (nothing left behind in /tmp).
fn folder() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/exercise/fuzzed");
        for (name, text) in [
            ("README.md", "# Do it\n"),
            ("solution.sh", "true\n"),
            ("setup.sh", "true\n"),
            ("checks/ok.sh", "exit 0\n"),
            ("checks/test_x.py", "def test_x(s):\n    pass\n"),
            ("files/etc/motd", "hello\n"),
        ] {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        dir
    })
}

fn has_cycle(needs: &BTreeMap<&str, &[String]>) -> bool {
    fn visit<'a>(
        n: &'a str,
        needs: &BTreeMap<&'a str, &'a [String]>,
        on_path: &mut HashSet<&'a str>,
        done: &mut HashSet<&'a str>,
    ) -> bool {
        if on_path.contains(n) {
            return true;
        }
        if !done.insert(n) {
            return false;
        }
        on_path.insert(n);
        let cyclic = needs
            .get(n)
            .is_some_and(|m| m.iter().any(|m| visit(m, needs, on_path, done)));
        on_path.remove(n);
        cyclic
    }
    let mut done = HashSet::new();
    needs
        .keys()
        .any(|n| visit(n, needs, &mut HashSet::new(), &mut done))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = folder();
    let ex = match Exercise::parse(dir, text) {
        Ok(ex) => ex,
        Err(diags) => {
            assert!(!diags.is_empty(), "refused without a reason");
            let lines = text.split('\n').count();
            for d in &diags {
                assert_eq!(d.file, dir.join("exercise.toml"));
                assert!(!d.message.trim().is_empty(), "{d}");
                assert!(d.line >= 1 && d.line <= lines, "{d} ({lines} lines)");
                let line = text.split('\n').nth(d.line - 1).unwrap_or("");
                assert!(
                    d.col >= 1 && d.col <= line.chars().count() + 1,
                    "{d}: {line:?}"
                );
            }
            return;
        }
    };
    assert!(!ex.manifest.title.trim().is_empty());
    assert_eq!(ex.instructions, "# Do it\n");
    assert_ne!(ex.manifest.time_limit_minutes, Some(0));
    let checks = ex.checks();
    assert!(!checks.is_empty());
    let mut names = HashSet::new();
    for c in checks {
        assert!(!c.name.trim().is_empty());
        assert!(names.insert(c.name.as_str()), "{} twice", c.name);
    }
    for c in checks {
        for n in &c.needs {
            assert!(
                n != &c.name && names.contains(n.as_str()),
                "{} needs {n}",
                c.name
            );
        }
        if let Some(t) = c.timeout_seconds {
            assert!(t > 0.0 && t <= 600.0, "{t}");
        }
        assert!((0.0..=600.0).contains(&c.retry_seconds));
        // The checker's own engine: what it accepted compiles again.
        for (field, p) in c.kind.patterns() {
            assert!(regex::Regex::new(p).is_ok(), "{field}: {p:?}");
        }
        match &c.kind {
            CheckKind::File(f) => assert!(f.path.starts_with('/')),
            CheckKind::Http(h) => assert!(h.path.starts_with('/')),
            CheckKind::Process(p) => assert!(p.process.is_some() || p.cmdline.is_some()),
            CheckKind::Script(s) => assert!(ex.scripts.contains_key(&s.script)),
            _ => {}
        }
        if !matches!(c.kind, CheckKind::Pytest(_)) {
            assert!(c.message.as_deref().is_some_and(|m| !m.trim().is_empty()));
        }
    }
    let needs = checks
        .iter()
        .map(|c| (c.name.as_str(), c.needs.as_slice()))
        .collect();
    assert!(!has_cycle(&needs), "a cycle passed");
    // Host → agent: the suite as JSON is the suite.
    let suite = Suite {
        checks: checks.to_vec(),
        scripts: ex.scripts.clone(),
    };
    let wire = serde_json::to_vec(&suite).unwrap();
    let back: Suite = serde_json::from_slice(&wire).expect("the agent reads the suite");
    assert_eq!(back, suite);
});
