//! `rnr machine …`: a small client of a running platform's REST API.

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

#[derive(Args)]
pub struct MachineArgs {
    /// Base URL of the platform.
    #[arg(
        long,
        env = "RNR_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// API key (`rnr apikey create NAME`).
    #[arg(long, env = "RNR_API_KEY", hide_env_values = true, global = true)]
    api_key: Option<String>,
    #[command(subcommand)]
    command: MachineCommand,
}

#[derive(Subcommand)]
enum MachineCommand {
    /// Create a machine and print it as JSON.
    Create {
        #[arg(long)]
        image: Option<String>,
        #[arg(long)]
        ttl_seconds: Option<u64>,
        #[arg(long)]
        memory_mib: Option<u64>,
        #[arg(long)]
        cpu_millis: Option<u64>,
        #[arg(long)]
        pids: Option<u64>,
        #[arg(long)]
        owner: Option<String>,
    },
    /// List machines.
    List {
        /// Include deleted machines.
        #[arg(long)]
        all: bool,
    },
    /// Run a command in a machine; exits with the command's exit code.
    Exec {
        id: String,
        #[arg(long, default_value_t = 30)]
        timeout_seconds: u64,
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// Delete machines.
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

struct Client {
    http: reqwest::Client,
    url: String,
    key: String,
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url.trim_end_matches('/')))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the platform at {}", self.url))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| {
                    let e = v.get("error")?;
                    Some(format!(
                        "{} ({})",
                        e.get("message")?.as_str()?,
                        e.get("code")?.as_str()?
                    ))
                })
                .unwrap_or(text);
            anyhow::bail!("{status}: {message}");
        }
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).context("the platform answered with invalid JSON")
    }
}

pub async fn run(args: MachineArgs) -> anyhow::Result<()> {
    let key = args
        .api_key
        .context("no API key: pass --api-key or set RNR_API_KEY (`rnr apikey create NAME`)")?;
    let c = Client {
        http: reqwest::Client::new(),
        url: args.url,
        key,
    };
    use reqwest::Method;
    match args.command {
        MachineCommand::Create {
            image,
            ttl_seconds,
            memory_mib,
            cpu_millis,
            pids,
            owner,
        } => {
            let mut body = json!({});
            let mut limits = json!({});
            for (k, v) in [
                ("memory_mib", memory_mib),
                ("cpu_millis", cpu_millis),
                ("pids", pids),
            ] {
                if let Some(v) = v {
                    limits[k] = json!(v);
                }
            }
            body["limits"] = limits;
            if let Some(i) = image {
                body["image"] = json!(i);
            }
            if let Some(t) = ttl_seconds {
                body["ttl_seconds"] = json!(t);
            }
            if let Some(o) = owner {
                body["owner"] = json!(o);
            }
            let m = c.call(Method::POST, "/api/v1/machines", Some(body)).await?;
            println!("{}", serde_json::to_string_pretty(&m)?);
        }
        MachineCommand::List { all } => {
            let q = if all {
                "?state=creating,running,failed,deleted"
            } else {
                ""
            };
            let v = c
                .call(Method::GET, &format!("/api/v1/machines{q}"), None)
                .await?;
            println!(
                "{:<16} {:<9} {:<10} {:<15} {:<20}",
                "ID", "STATE", "IMAGE", "ADDRESS", "EXPIRES"
            );
            for m in v["machines"].as_array().into_iter().flatten() {
                let s = |k: &str| m[k].as_str().unwrap_or("-").to_string();
                println!(
                    "{:<16} {:<9} {:<10} {:<15} {:<20}",
                    s("id"),
                    s("state"),
                    s("image"),
                    s("address"),
                    s("expires_at")
                );
            }
        }
        MachineCommand::Exec {
            id,
            timeout_seconds,
            argv,
        } => {
            let v = c
                .call(
                    Method::POST,
                    &format!("/api/v1/machines/{id}/exec"),
                    Some(json!({"argv": argv, "timeout_seconds": timeout_seconds})),
                )
                .await?;
            print!("{}", v["stdout"].as_str().unwrap_or(""));
            eprint!("{}", v["stderr"].as_str().unwrap_or(""));
            if v["timed_out"].as_bool() == Some(true) {
                eprintln!("rnr: command timed out after {timeout_seconds}s and was killed");
                std::process::exit(124);
            }
            let code = v["exit_code"].as_i64().unwrap_or(1);
            std::process::exit(i32::try_from(code).unwrap_or(1));
        }
        MachineCommand::Rm { ids } => {
            for id in ids {
                c.call(Method::DELETE, &format!("/api/v1/machines/{id}"), None)
                    .await?;
                eprintln!("deleted {id}");
            }
        }
    }
    Ok(())
}
