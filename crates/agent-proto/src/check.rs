//! The check suite's wire format, shared by the host (`rnr-checker`) and the agent (which
//! evaluates it inside the machine). One flat record per check keeps the author's TOML, the
//! JSON the agent reads and the validator's field table the same shape, so a field means
//! the same thing everywhere.

use serde::{Deserialize, Serialize};

/// One check as the author wrote it (`[[check]]` in `exercise.toml`). Which fields apply
/// depends on `kind`; the validator rejects the others.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Check {
    pub name: String,
    pub kind: String,
    /// Shown to the learner when the check fails.
    pub message: Option<String>,
    pub hint: Option<String>,
    /// Checks that must pass first; otherwise this one is skipped.
    pub needs: Vec<String>,
    pub timeout_seconds: Option<f64>,
    /// Keep re-evaluating a failing check for this long (slow services).
    pub retry_seconds: Option<f64>,
    pub points: Option<u32>,
    // file
    pub path: Option<String>,
    pub exists: Option<bool>,
    #[serde(rename = "type")]
    pub file_type: Option<String>,
    pub mode: Option<String>,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub contains: Option<String>,
    pub matches: Option<String>,
    pub target: Option<String>,
    // user, group
    pub user: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub shell: Option<String>,
    pub home: Option<String>,
    pub member_of: Option<Vec<String>>,
    pub members: Option<Vec<String>>,
    // package
    pub package: Option<String>,
    pub installed: Option<bool>,
    // process, service
    pub process: Option<String>,
    pub cmdline: Option<String>,
    pub service: Option<String>,
    pub running: Option<bool>,
    // port, http
    pub port: Option<u16>,
    pub protocol: Option<String>,
    pub listening: Option<bool>,
    pub method: Option<String>,
    pub status: Option<u16>,
    pub body: Option<String>,
    pub header: Option<String>,
    // command
    pub command: Option<String>,
    pub exit_code: Option<i32>,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    // script, pytest: paths relative to the exercise folder
    pub script: Option<String>,
    pub file: Option<String>,
    /// The script's text, filled in by the host; authors never write it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub script_body: Option<String>,
}

/// Kinds the agent evaluates inside the machine.
pub const AGENT_KINDS: &[&str] = &[
    "file", "user", "group", "package", "process", "port", "command", "script", "service",
];

/// What the agent reads on stdin.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Suite {
    pub checks: Vec<Check>,
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
