//! `rnr exercise …`: authoring tools. `validate` reports every problem of an exercise at
//! file:line:col; `test` proves an exercise works on a real machine: its checks fail on a
//! fresh machine and all pass after the reference solution.

use crate::config::Config;
use anyhow::Context;
use clap::Subcommand;
use rnr_checker::engine;
use rnr_checker::exercise::discover;
use rnr_checker::wire::CheckKind;
use rnr_checker::{Checker, CheckerConfig, Exercise, RunReport, Status};
use rnr_core::{CreateMachine, Platform};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Subcommand)]
pub enum ExerciseCommand {
    /// Check exercise folders (or a folder of exercises) and report every error.
    Validate {
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
    /// Start a machine, expect the checks to fail, run the solution, expect them all to
    /// pass. Exits non-zero on any surprise.
    Test {
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Keep the machine afterwards (its id is printed).
        #[arg(long)]
        keep: bool,
    },
    /// Run an exercise's checks against an existing machine of this data dir and print the
    /// results (with --repeat, the timings as JSON, for benchmarks).
    Check {
        dir: PathBuf,
        #[arg(long)]
        machine: String,
        #[arg(long, default_value_t = 1)]
        repeat: usize,
    },
}

/// The exercise folders named: a folder with `exercise.toml`, or a folder of them.
fn expand(dirs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for d in dirs {
        if d.join(rnr_checker::exercise::MANIFEST).is_file() {
            out.push(d.clone());
        } else {
            let found = discover(d).with_context(|| format!("cannot read {}", d.display()))?;
            anyhow::ensure!(
                !found.is_empty(),
                "{}: no exercise.toml here or in its subfolders",
                d.display()
            );
            out.extend(found);
        }
    }
    Ok(out)
}

pub async fn run(cfg: &Config, cmd: ExerciseCommand) -> anyhow::Result<()> {
    match cmd {
        ExerciseCommand::Validate { dirs } => {
            let mut bad = 0;
            for dir in expand(&dirs)? {
                match Exercise::load(&dir) {
                    Ok(ex) => println!("{}: ok ({} checks)", dir.display(), ex.checks().len()),
                    Err(diags) => {
                        bad += 1;
                        for d in diags {
                            println!("{d}");
                        }
                    }
                }
            }
            anyhow::ensure!(bad == 0, "{bad} exercise(s) have errors");
            Ok(())
        }
        ExerciseCommand::Check {
            dir,
            machine,
            repeat,
        } => {
            let ex = load(&dir)?;
            let sandbox = crate::serve::checker_config(cfg)?.sandbox;
            let (store, platform) = open_platform(cfg).await?;
            let mut durations = Vec::new();
            let mut last = None;
            for _ in 0..repeat.max(1) {
                let started = std::time::Instant::now();
                last = Some(engine::run(&platform, &sandbox, &machine, &ex).await?);
                durations.push(started.elapsed().as_secs_f64() * 1000.0);
            }
            store.close().await;
            let report = last.unwrap_or_default();
            if repeat > 1 {
                println!("{}", serde_json::json!({ "durations_ms": durations }));
            } else {
                for r in &report.results {
                    println!(
                        "{:<8} {:<24} {}",
                        r.status.as_str(),
                        r.name,
                        r.message.as_deref().unwrap_or(&r.detail)
                    );
                }
                println!("score {:.2} in {:.1} ms", report.score, durations[0]);
            }
            Ok(())
        }
        ExerciseCommand::Test { dirs, keep } => {
            let sandbox = crate::serve::checker_config(cfg)?.sandbox;
            let (store, platform) = open_platform(cfg).await?;
            let mut failed = Vec::new();
            for dir in expand(&dirs)? {
                match test_one(&platform, &sandbox, &store, &dir, keep).await {
                    Ok(true) => {}
                    Ok(false) => failed.push(dir.display().to_string()),
                    Err(e) => {
                        println!("{}: {e:#}", dir.display());
                        failed.push(dir.display().to_string());
                    }
                }
            }
            store.close().await;
            anyhow::ensure!(
                failed.is_empty(),
                "exercise test failed: {}",
                failed.join(", ")
            );
            Ok(())
        }
    }
}

async fn open_platform(cfg: &Config) -> anyhow::Result<(rnr_store::Store, Platform)> {
    let store = crate::serve::open_store(cfg).await?;
    let driver = crate::serve::connect_driver(cfg, &store).await?;
    let platform = Platform::new(store.clone(), driver, crate::serve::policy(cfg));
    Ok((store, platform))
}

fn load(dir: &Path) -> anyhow::Result<Exercise> {
    Exercise::load(dir).map_err(|diags| {
        anyhow::anyhow!(
            "invalid exercise:\n{}",
            diags
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

fn cell(r: Option<&rnr_checker::CheckResult>) -> String {
    r.map_or("-".into(), |r| r.status.as_str().to_string())
}

/// Tests one exercise; `Ok(false)` when it misbehaved (the table says how).
async fn test_one(
    platform: &Platform,
    sandbox: &rnr_checker::sandbox::SandboxConfig,
    store: &rnr_store::Store,
    dir: &Path,
    keep: bool,
) -> anyhow::Result<bool> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot find {}", dir.display()))?;
    let ex = load(&dir)?;
    let checker = Checker::new(
        platform.clone(),
        store.check_runs(),
        CheckerConfig {
            exercises_dir: dir.parent().map(Path::to_path_buf),
            sandbox: sandbox.clone(),
            ..Default::default()
        },
    );
    let started = std::time::Instant::now();
    let machine = checker
        .create_machine(
            CreateMachine {
                owner: Some("rnr exercise test".into()),
                ..Default::default()
            },
            &ex.name,
        )
        .await?;
    let id = machine.id.clone();
    let res = async {
        let fresh = engine::run(platform, sandbox, &id, &ex).await?;
        let solution =
            engine::run_script(platform, &id, &ex.solution, Duration::from_secs(300)).await?;
        let solved = engine::run(platform, sandbox, &id, &ex).await?;
        Ok::<_, anyhow::Error>((fresh, solution, solved))
    }
    .await;
    if keep {
        println!("kept machine {id}");
    } else if let Err(e) = platform.delete(&id).await {
        eprintln!("warning: cannot delete machine {id}: {e}");
    }
    let (fresh, solution, solved) = res?;
    Ok(print_table(
        &ex,
        &fresh,
        &solution,
        &solved,
        started.elapsed(),
    ))
}

/// Prints the table and says whether everything was as expected.
fn print_table(
    ex: &Exercise,
    fresh: &RunReport,
    solution: &rnr_driver::ExecOutcome,
    solved: &RunReport,
    took: Duration,
) -> bool {
    let mut ok = true;
    println!("\n{} ({})", ex.manifest.title, ex.dir.display());
    let width = solved
        .results
        .iter()
        .chain(&fresh.results)
        .map(|r| r.name.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    println!(
        "  {:<width$}  {:<8}  {:<8}  NOTE",
        "CHECK", "FRESH", "SOLVED"
    );
    let mut names: Vec<&str> = fresh.results.iter().map(|r| r.name.as_str()).collect();
    for r in &solved.results {
        if !names.contains(&r.name.as_str()) {
            names.push(&r.name);
        }
    }
    for name in names {
        let f = fresh.results.iter().find(|r| r.name == name);
        let s = solved.results.iter().find(|r| r.name == name);
        let mut notes = Vec::new();
        // A pytest file is one check of several tests: it must fail as a whole, and a
        // test such as the seed's connection test may well pass on a fresh machine.
        let group = ex.checks().iter().find(|c| {
            matches!(c.kind, CheckKind::Pytest(_)) && name.starts_with(&format!("{}/", c.name))
        });
        let group_passed = group.is_some_and(|c| {
            fresh
                .results
                .iter()
                .filter(|r| r.name.starts_with(&format!("{}/", c.name)))
                .all(|r| r.status == Status::Passed)
        });
        match f.map(|r| r.status) {
            Some(Status::Failed) | Some(Status::Skipped) => {}
            Some(Status::Passed) if group.is_some() && !group_passed => {}
            Some(Status::Passed) => notes.push("passes before the solution".to_string()),
            Some(Status::Errored) => notes.push(format!(
                "errored on a fresh machine: {}",
                f.map_or("", |r| r.detail.as_str())
            )),
            None => {}
        }
        match s {
            Some(r) if r.status == Status::Passed => {}
            Some(r) => notes.push(format!(
                "{} after the solution: {} — {}",
                r.status.as_str(),
                r.message.as_deref().unwrap_or(""),
                r.detail
            )),
            None => notes.push("missing after the solution".into()),
        }
        if !notes.is_empty() {
            ok = false;
        }
        println!(
            "  {:<width$}  {:<8}  {:<8}  {}",
            name,
            cell(f),
            cell(s),
            if notes.is_empty() {
                "ok".to_string()
            } else {
                notes.join("; ")
            }
        );
    }
    if solution.exit_code != Some(0) {
        ok = false;
        println!(
            "  solution.sh exited with {:?}: {}",
            solution.exit_code,
            String::from_utf8_lossy(&solution.stderr).trim()
        );
    }
    println!(
        "  {} in {:.1}s: fresh score {:.2}, solved score {:.2}",
        if ok { "PASS" } else { "FAIL" },
        took.as_secs_f64(),
        fresh.score,
        solved.score
    );
    ok
}
