//! The operator's view: machines with owner, exercise, age, state, CPU and memory, any
//! terminal read-only, check history, capacity. Who the operator is (an API key, then a
//! signed session cookie) is checked by the HTTP layer before any of this is asked.

use crate::{Result, Ui, UiError};
use rnr_checker::CheckRunRow;
use rnr_core::{Machine, MachineState, MachineStats};
use rnr_terminal::TerminalCreated;

/// A machine and what it uses.
#[derive(Debug)]
pub struct MachineUse {
    pub machine: Machine,
    /// The exercise it was made for.
    pub exercise: Option<String>,
    /// Its driver's measurements, when it runs and the driver measures.
    pub stats: Option<MachineStats>,
    /// Share of one core used since the previous look (None on the first).
    pub cpu_percent: Option<f64>,
}

/// The platform at a glance.
#[derive(Debug)]
pub struct Overview {
    pub capacity: u64,
    /// Machines creating or running.
    pub active: u64,
    pub open_terminals: usize,
    /// Live and failed machines.
    pub machines: Vec<MachineUse>,
}

impl Ui {
    /// Live and failed machines with their resource use, and the platform's capacity.
    pub async fn overview(&self) -> Result<Overview> {
        let p = &self.inner.platform;
        let machines = p
            .list(&[
                MachineState::Creating,
                MachineState::Running,
                MachineState::Failed,
            ])
            .await?;
        let mut rows = Vec::with_capacity(machines.len());
        for m in machines {
            let stats = if m.state == MachineState::Running {
                p.stats(&m.id).await.ok().flatten()
            } else {
                None
            };
            let cpu_percent = stats.and_then(|s| self.cpu_percent(&m.id, s.cpu_ns));
            let exercise = p.exercise_of(&m.id).await.ok().flatten();
            rows.push(MachineUse {
                machine: m,
                exercise,
                stats,
                cpu_percent,
            });
        }
        Ok(Overview {
            capacity: p.policy().capacity,
            active: p.active_machines().await?,
            open_terminals: self.inner.terminals.open_terminals(),
            machines: rows,
        })
    }

    /// CPU use of `machine` since the previous sample, in percent of one core.
    fn cpu_percent(&self, machine: &str, cpu_ns: u64) -> Option<f64> {
        let mut samples = self.inner.cpu_samples.lock().ok()?;
        let prev = samples.insert(machine.to_string(), (cpu_ns, std::time::Instant::now()));
        let (ns, at) = prev?;
        let wall = at.elapsed().as_nanos() as f64;
        (wall > 0.0).then(|| (cpu_ns.saturating_sub(ns) as f64 / wall * 1000.0).round() / 10.0)
    }

    /// Machine `id`'s check runs, newest first (the last 50).
    pub async fn check_history(&self, id: &str) -> Result<Vec<CheckRunRow>> {
        self.inner.platform.get(id).await?;
        Ok(self.inner.checker.history(id, 50).await?)
    }

    /// A read-only view of the terminal the learner uses on running machine `id` (or of a
    /// new one, if the machine has none yet).
    pub async fn watch(&self, id: &str) -> Result<TerminalCreated> {
        let m = self.inner.platform.get(id).await?;
        if m.state != MachineState::Running {
            return Err(UiError::NotFound(format!("running machine {id}")));
        }
        self.page_terminal(id).await
    }
}
