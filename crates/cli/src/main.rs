//! `rnr`: the one binary. A thin command-line layer over the library crates: it parses
//! flags, loads layered configuration, and calls the serve, image, key and client code.

mod client;
mod config;
mod exercise;
mod images;
mod serve;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "rnr",
    version,
    about = "rootnroll: throwaway Linux machines for interactive exercises"
)]
struct Cli {
    /// Configuration file (TOML); see `rnr config example`.
    #[arg(long, global = true, env = "RNR_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for the database, images and state.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the platform: API, reaper, reconciliation.
    Serve {
        /// Address to listen on, e.g. 127.0.0.1:8080.
        #[arg(long)]
        listen: Option<String>,
        /// Where machines run.
        #[arg(long, value_enum)]
        driver: Option<config::DriverChoice>,
        /// Most machines at once.
        #[arg(long)]
        capacity: Option<u64>,
    },
    /// Manage API keys (works while `rnr serve` runs).
    #[command(subcommand)]
    Apikey(ApikeyCommand),
    /// Build, import, list and remove machine images.
    #[command(subcommand)]
    Image(images::ImageCommand),
    /// Manage machines through a running platform's API.
    Machine(client::MachineArgs),
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Author exercises: validate them, test them on a real machine.
    #[command(subcommand)]
    Exercise(exercise::ExerciseCommand),
}

#[derive(Subcommand)]
enum ApikeyCommand {
    /// Create a key and print it (shown only this once).
    Create {
        name: String,
        /// Most machines creating or running at once for this key (its links' learners
        /// included); default: `[quotas] max_machines_per_key`. 0: no limit.
        #[arg(long)]
        max_machines: Option<u64>,
        /// Most machine creations per minute for this key; default: `[quotas]
        /// creations_per_minute_per_key`. 0: no limit.
        #[arg(long)]
        creations_per_minute: Option<u64>,
    },
    /// List keys (without their secrets).
    List,
    /// Revoke a key by id.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print a commented example configuration with every default.
    Example,
    /// Print the configuration in force after all layers.
    Show,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut flags = config::FlagOverrides {
        data_dir: cli.data_dir.clone(),
        ..Default::default()
    };
    match cli.command {
        Command::Config(ConfigCommand::Example) => {
            print!("{}", config::EXAMPLE);
            Ok(())
        }
        Command::Config(ConfigCommand::Show) => {
            let cfg = config::load(cli.config.as_deref(), &flags)?;
            print!("{}", toml::to_string_pretty(&cfg)?);
            Ok(())
        }
        Command::Serve {
            listen,
            driver,
            capacity,
        } => {
            flags.listen = listen;
            flags.driver = driver;
            flags.capacity = capacity;
            let cfg = config::load(cli.config.as_deref(), &flags)?;
            serve::init_logging(&cfg);
            serve::serve(cfg).await
        }
        Command::Apikey(cmd) => {
            let cfg = config::load(cli.config.as_deref(), &flags)?;
            let store = serve::open_store(&cfg).await?;
            match cmd {
                ApikeyCommand::Create {
                    name,
                    max_machines,
                    creations_per_minute,
                } => {
                    anyhow::ensure!(!name.trim().is_empty(), "the key needs a name");
                    let limits = rnr_core::KeyLimits {
                        max_machines,
                        creations_per_minute,
                    };
                    let key = rnr_core::new_api_key(&store, &name, limits).await?;
                    println!("{}", key.key);
                    eprintln!(
                        "created API key {} ({}); it is shown only this once",
                        key.id, key.name
                    );
                }
                ApikeyCommand::List => {
                    println!(
                        "{:<14} {:<24} {:<8} {:<13} {:<14}",
                        "ID", "NAME", "STATE", "MAX_MACHINES", "CREATIONS/MIN"
                    );
                    let own = |v: Option<i64>| v.map_or("default".to_string(), |v| v.to_string());
                    for k in store.list_api_keys().await? {
                        let state = if k.revoked_at.is_some() {
                            "revoked"
                        } else {
                            "active"
                        };
                        println!(
                            "{:<14} {:<24} {:<8} {:<13} {:<14}",
                            k.id,
                            k.name,
                            state,
                            own(k.max_machines),
                            own(k.creations_per_minute)
                        );
                    }
                }
                ApikeyCommand::Revoke { id } => {
                    anyhow::ensure!(
                        store.revoke_api_key(&id, rnr_core::now_ms()).await?,
                        "no active API key with id {id}"
                    );
                    eprintln!("revoked {id}");
                }
            }
            store.close().await;
            Ok(())
        }
        Command::Image(cmd) => {
            let cfg = config::load(cli.config.as_deref(), &flags)?;
            serve::init_logging(&cfg);
            images::run(&cfg, cmd).await
        }
        Command::Machine(args) => client::run(args).await,
        Command::Exercise(cmd) => {
            let cfg = config::load(cli.config.as_deref(), &flags)?;
            serve::init_logging(&cfg);
            exercise::run(&cfg, cmd).await
        }
    }
}
