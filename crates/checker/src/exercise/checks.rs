//! The `[[check]]` tables of a manifest, read into typed [`Check`]s and validated, every
//! problem reported where it is.
//!
//! What a kind takes comes from the types in `rnr_agent_proto::check` ([`CheckKind::NAMES`],
//! [`CheckKind::fields`], [`Check::COMMON_FIELDS`]); this module keeps no table of its own.
//! It asks them before deserializing because serde, reading an internally tagged enum,
//! says neither which kinds exist nor which kind a stray field belongs to, and loses where a
//! kind's fields were: each kind's struct is then read from the table directly
//! ([`CheckKind::deserialize_named`]), so a type error points at its value.

use super::{read_in, Report};
use crate::wire::{Check, CheckKind};
use serde::de::IntoDeserializer;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::path::Path;
use toml_edit::{Item, Key, Table};

/// Where things are in one check's table, for pointing at them.
struct At<'a>(&'a Table);

impl At<'_> {
    fn table(&self) -> Option<Range<usize>> {
        self.0.span()
    }

    /// The key, for "this field should not be here".
    fn key(&self, k: &str) -> Option<Range<usize>> {
        self.0.key(k).and_then(Key::span).or_else(|| self.value(k))
    }

    /// The value, for "this value is wrong".
    fn value(&self, k: &str) -> Option<Range<usize>> {
        self.0
            .get(k)
            .and_then(Item::span)
            .or_else(|| self.0.key(k).and_then(Key::span))
            .or_else(|| self.table())
    }

    /// The key whose key or value covers `offset`: what a serde error is about.
    fn field_at(&self, offset: usize) -> Option<&str> {
        self.0.iter().map(|(k, _)| k).find(|k| {
            [
                self.0.key(k).and_then(Key::span),
                self.0.get(k).and_then(Item::span),
            ]
            .into_iter()
            .flatten()
            .any(|s| s.contains(&offset))
        })
    }
}

/// How the messages about one check start.
fn who(table: &Table, index: usize) -> String {
    match table.get("name").and_then(Item::as_str) {
        Some(n) => format!("check {n:?}"),
        None => format!("check #{}", index + 1),
    }
}

/// A field every check takes, whatever its kind.
fn is_common(field: &str) -> bool {
    Check::COMMON_FIELDS.contains(&field) || field == Check::TAG
}

/// `check "x": field "f" of kind "k"`, or without the kind for the common fields.
fn field(who: &str, field: &str, kind: &str) -> String {
    if is_common(field) {
        format!("{who}: field {field:?}")
    } else {
        format!("{who}: field {field:?} of kind {kind:?}")
    }
}

/// `table` with only the keys `keep` says yes to, as something serde reads, positions kept.
fn deserializer(table: &Table, keep: impl Fn(&str) -> bool) -> toml_edit::de::ValueDeserializer {
    let mut t = table.clone();
    t.retain(|k, _| keep(k));
    toml_edit::Value::InlineTable(t.into_inline_table()).into_deserializer()
}

/// Reports a serde error at the field it is about.
fn report_serde(r: &mut Report<'_>, at: &At<'_>, who: &str, kind: &str, e: &toml_edit::de::Error) {
    // serde's word for a value outside an enum means nothing to an exercise's author.
    let msg = match e.message().strip_prefix("unknown variant ") {
        Some(rest) => format!("unknown value {rest}"),
        None => e.message().to_string(),
    };
    let about = e.span().and_then(|s| at.field_at(s.start));
    match about {
        Some(f) => r.at(e.span(), format!("{}: {msg}", field(who, f, kind))),
        None => {
            let text = match msg
                .strip_prefix("missing field `")
                .and_then(|m| m.strip_suffix('`'))
            {
                Some("name") => format!("{who} has no \"name\""),
                Some(f) => format!("{who}: kind {kind:?} needs field {f:?}"),
                None => format!("{who}: {msg}"),
            };
            r.at(at.table(), text);
        }
    }
}

/// Reads one check table into a [`Check`], reporting what does not fit its kind's type.
fn read(table: &Table, index: usize, r: &mut Report<'_>) -> Option<Check> {
    let at = At(table);
    let who = who(table, index);
    let kinds = CheckKind::NAMES.join(", ");
    let kind = match table.get(Check::TAG) {
        None => {
            r.at(
                at.table(),
                format!("{who} has no \"kind\" (one of {kinds})"),
            );
            return None;
        }
        Some(item) => match item.as_str() {
            Some(k) if CheckKind::fields(k).is_some() => k,
            Some(k) => {
                r.at(
                    at.value(Check::TAG),
                    format!("{who}: unknown kind {k:?}; the kinds are {kinds}"),
                );
                return None;
            }
            None => {
                r.at(
                    at.value(Check::TAG),
                    format!("{who}: field \"kind\" must be a string, one of {kinds}"),
                );
                return None;
            }
        },
    };
    let own = CheckKind::fields(kind).unwrap_or_default();
    let mut stray = HashSet::new();
    for (k, _) in table.iter() {
        if is_common(k) || own.contains(&k) {
            continue;
        }
        let elsewhere = CheckKind::NAMES
            .iter()
            .any(|n| CheckKind::fields(n).is_some_and(|f| f.contains(&k)));
        let text = if elsewhere {
            format!(
                "{who}: field {k:?} does not apply to kind {kind:?}, which takes {}",
                own.join(", ")
            )
        } else {
            format!(
                "{who}: unknown field {k:?}; kind {kind:?} takes {} (and {})",
                own.join(", "),
                Check::COMMON_FIELDS.join(", ")
            )
        };
        r.at(at.key(k), text);
        stray.insert(k.to_string());
    }
    // The kind's own fields first, read from where they are written; then the whole check,
    // whose errors can only be in the common fields by now.
    if let Err(e) = CheckKind::deserialize_named(kind, deserializer(table, |k| own.contains(&k))) {
        report_serde(r, &at, &who, kind, &e);
        return None;
    }
    match Check::deserialize(deserializer(table, |k| !stray.contains(k))) {
        Ok(c) => Some(c),
        Err(e) => {
            report_serde(r, &at, &who, kind, &e);
            None
        }
    }
}

/// Reads and validates every check; the checks, with the text of each script they name.
pub(super) fn validate(
    dir: &Path,
    tables: &[Table],
    r: &mut Report<'_>,
) -> (Vec<Check>, BTreeMap<String, String>) {
    if tables.is_empty() {
        r.at(
            None,
            "the exercise has no checks: add at least one [[check]] table",
        );
    }
    // Names come from the tables, so that a check whose table is wrong still counts as
    // defined for the others' `needs`.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, t) in tables.iter().enumerate() {
        let Some(n) = t.get("name").and_then(Item::as_str) else {
            continue;
        };
        if n.trim().is_empty() {
            r.at(
                At(t).value("name"),
                format!("check #{} has an empty \"name\"", i + 1),
            );
        } else if seen.insert(n.to_string(), i).is_some() {
            r.at(
                At(t).value("name"),
                format!("a check named {n:?} is already defined"),
            );
        }
    }
    let mut scripts = BTreeMap::new();
    let mut checks = Vec::new();
    for (i, t) in tables.iter().enumerate() {
        let Some(c) = read(t, i, r) else { continue };
        semantics(dir, &c, &At(t), &seen, &mut scripts, r);
        checks.push(c);
    }
    if let Some(cycle) = find_cycle(&checks) {
        let at = seen
            .get(&cycle[0])
            .and_then(|i| tables.get(*i))
            .and_then(|t| At(t).value("needs"));
        r.at(
            at,
            format!("checks need each other in a cycle: {}", cycle.join(" → ")),
        );
    }
    (checks, scripts)
}

/// What a well-typed check may still get wrong: regexes, paths, ranges, files, needs.
fn semantics(
    dir: &Path,
    c: &Check,
    at: &At<'_>,
    seen: &HashMap<String, usize>,
    scripts: &mut BTreeMap<String, String>,
    r: &mut Report<'_>,
) {
    let who = format!("check {:?}", c.name);
    let kind = c.kind.name();
    let bad = |r: &mut Report<'_>, f: &str, text: String| {
        r.at(at.value(f), format!("{}: {text}", field(&who, f, kind)));
    };
    let brings_messages = matches!(c.kind, CheckKind::Pytest(_));
    if !brings_messages && c.message.as_deref().is_none_or(|m| m.trim().is_empty()) {
        r.at(
            at.table(),
            format!("{who} has no \"message\", which the learner reads when it fails"),
        );
    }
    for (f, p) in c.kind.patterns() {
        if let Err(e) = regex::Regex::new(p) {
            bad(r, f, format!("not a valid regex: {e}"));
        }
    }
    match &c.kind {
        CheckKind::File(f) if !f.path.starts_with('/') => bad(
            r,
            "path",
            "must be absolute: it is a path in the machine".into(),
        ),
        CheckKind::Http(h) if !h.path.starts_with('/') => {
            bad(r, "path", "an HTTP path starts with /".into())
        }
        CheckKind::Process(p) if p.process.is_none() && p.cmdline.is_none() => r.at(
            at.table(),
            format!("{who}: kind \"process\" needs field \"process\" or \"cmdline\""),
        ),
        CheckKind::Script(s) => match read_in(dir, &s.script) {
            Ok(body) => {
                scripts.insert(s.script.clone(), body);
            }
            Err(e) => bad(r, "script", e),
        },
        CheckKind::Pytest(p) => {
            if let Err(e) = read_in(dir, &p.file) {
                bad(r, "file", e);
            }
        }
        _ => {}
    }
    if let Some(t) = c.timeout_seconds {
        if !(t > 0.0 && t <= 600.0) {
            bad(
                r,
                "timeout_seconds",
                "must be more than 0 and at most 600".into(),
            );
        }
    }
    if !(0.0..=600.0).contains(&c.retry_seconds) {
        bad(r, "retry_seconds", "must be between 0 and 600".into());
    }
    for n in &c.needs {
        if n == &c.name {
            r.at(at.value("needs"), format!("{who} needs itself"));
        } else if !seen.contains_key(n) {
            r.at(
                at.value("needs"),
                format!("{who} needs {n:?}, which is not defined"),
            );
        }
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
