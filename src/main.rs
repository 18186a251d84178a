//! The `backstop` command line. Everything it runs lives in the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

// The proxy allocates a few small buffers per request (hyper's heads and
// bodies); mimalloc's thread-local free lists make that measurably cheaper
// than glibc malloc (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "backstop",
    version,
    about = "Safe model rollouts: split, compare, roll back"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

use backstop::cli::{self, Output};
use backstop::config::LogFormat;

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway: data plane and admin API.
    Serve {
        #[arg(long, default_value = "backstop.yaml")]
        config: PathBuf,
        /// Log lines as text or as JSON objects (default: the config's
        /// `log.format`, else text).
        #[arg(long, value_enum, env = "BACKSTOP_LOG_FORMAT")]
        log_format: Option<LogFormatArg>,
    },
    /// Register, list, show, verify, deprecate and delete immutable model
    /// versions.
    Version {
        #[command(subcommand)]
        command: cli::VersionCommand,
        #[command(flatten)]
        remote: cli::Remote,
    },
    /// Create and list bundles: versions that move together.
    Bundle {
        #[command(subcommand)]
        command: cli::BundleCommand,
        #[command(flatten)]
        remote: cli::Remote,
    },
    /// Start, watch and steer rollouts: canary, linear, blue/green,
    /// shadow.
    Rollout {
        #[command(subcommand)]
        command: cli::RolloutCommand,
        #[command(flatten)]
        remote: cli::Remote,
    },
    /// Make a bundle a model's last-known-good (approver).
    #[command(
        after_help = "Example:\n  backstop promote fraud-scorer b7 --reason \"clean week in production\""
    )]
    Promote {
        model: String,
        bundle: String,
        /// Why, for the audit log.
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        remote: cli::Remote,
    },
    /// Remove stored artifacts that no version names (admin).
    #[command(after_help = "Example:\n  backstop gc --output json")]
    Gc {
        #[command(flatten)]
        remote: cli::Remote,
    },
    /// List and verify the tamper-evident audit log.
    Audit {
        #[command(subcommand)]
        command: cli::AuditCommand,
        #[command(flatten)]
        remote: cli::Remote,
    },
    /// Incidents that rollbacks opened: list, show, export for the
    /// postmortem.
    Incident {
        #[command(subcommand)]
        command: cli::IncidentCommand,
        #[command(flatten)]
        remote: cli::Remote,
    },
    /// Rollback figures (M1–M10) per model and overall, from the store.
    #[command(after_help = "Example:\n  backstop report --model fraud-scorer --output json")]
    Report {
        #[arg(long)]
        model: Option<String>,
        #[command(flatten)]
        remote: cli::Remote,
    },
    /// Create, list and revoke admin API tokens in the local data directory.
    Token {
        #[command(subcommand)]
        command: cli::TokenCommand,
        #[command(flatten)]
        local: cli::Local,
    },
    /// Validate rollout policy files and print their JSON Schema.
    Policy {
        #[command(subcommand)]
        command: cli::PolicyCommand,
    },
    /// Build reference profiles of input features (for `drift_psi` with
    /// `reference: profile`) from request bodies.
    Profile {
        #[command(subcommand)]
        command: cli::ProfileCommand,
    },
    /// Evaluate PromQL on the config's Prometheus server, as a trigger
    /// would read it.
    Prometheus {
        #[command(subcommand)]
        command: PrometheusCommand,
    },
    /// Check a config file without starting anything.
    Check {
        #[arg(long, default_value = "backstop.yaml")]
        config: PathBuf,
    },
    /// Run the whole story on loopback with built-in toy model servers.
    Demo {
        /// Longest the load runs; it stops 3 s after the verdict.
        #[arg(long, default_value_t = 60)]
        duration_s: u64,
        /// Requests per second, open loop.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Print the one-page runbook for a model's current policy: triggers in
    /// words, what happens by itself, manual rollback commands, recovery
    /// checks, who is notified, where evidence goes.
    #[command(
        after_help = "Examples:\n  backstop runbook fraud-scorer\n  backstop runbook fraud-scorer --policy policy.yaml --output json"
    )]
    Runbook {
        #[command(flatten)]
        args: cli::RunbookArgs,
        #[command(flatten)]
        remote: cli::Remote,
    },
    /// Rehearse the plan: inject a fault into the candidate (in the
    /// simulator, or with --live into the model's rehearsal version on the
    /// running gateway) and check that the policy rolls back within the
    /// target. Exit 0 passed, 1 not.
    #[command(
        after_help = "Examples:\n  backstop gameday fraud-scorer --fault latency\n  backstop gameday fraud-scorer --policy policy.yaml --fault errors --runs 50 --output json\n  backstop gameday fraud-scorer --fault timeouts --detect-within 30s --seed 7\n  backstop gameday fraud-scorer --live --fault errors --policy policy.yaml --timeout 5m"
    )]
    Gameday {
        #[command(flatten)]
        args: cli::GamedayArgs,
        #[command(flatten)]
        remote: cli::Remote,
    },
    /// Run thousands of rollouts of the real controller on a virtual clock:
    /// false rollbacks, missed regressions, detection delay.
    #[command(
        after_help = "Examples:\n  backstop sim\n  backstop sim --seed 7 --runs 200 --output json\n  backstop sim --policy my-policy.yaml --only errors"
    )]
    Sim {
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Rollouts per scenario.
        #[arg(long, default_value_t = 1000)]
        runs: usize,
        /// Policy file to evaluate (default: the embedded examples/sim-policy.yaml).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Only scenarios whose name contains this text.
        #[arg(long)]
        only: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Measure the gateway against a direct call and nginx on loopback.
    Bench {
        #[command(flatten)]
        options: backstop::bench::BenchOptions,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Registers `count` versions in a store file, one durable write each,
    /// printing `ack <id>` as each commit returns and a JSON summary at the
    /// end: the crash test kills it mid-way, the store benchmark times it.
    #[command(hide = true)]
    StoreWriter {
        #[arg(long)]
        db: PathBuf,
        #[arg(long, default_value_t = 0)]
        start: u64,
        #[arg(long, default_value_t = 1000)]
        count: u64,
    },
    /// A toy model server (used by the benchmark as a separate process).
    #[command(hide = true)]
    ToyUpstream {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        #[arg(long, default_value = "v1")]
        version: String,
    },
}

#[derive(Subcommand)]
enum PrometheusCommand {
    /// Evaluate a query template once per version: `{{model}}` and
    /// `{{version}}` are filled in. Exit 1 when a version gets no number.
    #[command(
        after_help = "Example:\n  backstop prometheus query --model fraud-scorer --version v1 --version v2 \\\n    'sum(rate(backstop_requests_total{model=\"{{model}}\",version=\"{{version}}\",outcome=\"server_error\"}[1m]))'"
    )]
    Query {
        /// PromQL, with `{{model}}` and `{{version}}` inside double quotes.
        query: String,
        #[arg(long, default_value = "backstop.yaml")]
        config: PathBuf,
        #[arg(long)]
        model: String,
        /// A version to evaluate for; repeat for candidate and baseline.
        #[arg(long = "version", required = true)]
        versions: Vec<String>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("backstop: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime(worker_threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = worker_threads {
        builder.worker_threads(threads);
    }
    builder
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Token { command, local } = cli.command {
        return cli::token(command, &local);
    }
    if let Command::Sim {
        seed,
        runs,
        policy,
        only,
        output,
    } = cli.command
    {
        let report = backstop::sim::run(&backstop::sim::SimOptions {
            seed,
            runs,
            policy,
            only,
        })?;
        match output {
            Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
            Output::Text => backstop::sim::print_human(&report),
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Pure file work: no runtime needed.
    if let Command::Policy { command } = cli.command {
        return cli::policy(command);
    }
    if let Command::Profile { command } = cli.command {
        return cli::profile(command);
    }
    if let Command::Serve { config, log_format } = &cli.command {
        let mut config = backstop::config::Config::load(config)?;
        let format = match log_format {
            Some(LogFormatArg::Json) => LogFormat::Json,
            Some(LogFormatArg::Text) => LogFormat::Text,
            None => config.log.format,
        };
        // The access log is at info level under its own target, so it shows
        // even where RUST_LOG quiets the rest.
        let access = config.log.requests.then_some("backstop::access=info");
        init_logging("info", format, access);
        if config.data_dir.is_none() {
            config.data_dir = Some(PathBuf::from("backstop-data"));
        }
        runtime(config.worker_threads)?.block_on(backstop::gateway::serve(config))?;
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = runtime(None)?;
    match cli.command {
        Command::Serve { .. }
        | Command::Token { .. }
        | Command::Policy { .. }
        | Command::Profile { .. }
        | Command::Sim { .. } => {
            unreachable!("handled above")
        }
        Command::Version { command, remote } => {
            return runtime.block_on(cli::version(command, &remote));
        }
        Command::Audit { command, remote } => {
            return runtime.block_on(cli::audit(command, &remote));
        }
        Command::Incident { command, remote } => {
            return runtime.block_on(cli::incident(command, &remote));
        }
        Command::Report { model, remote } => {
            return runtime.block_on(cli::report(model, &remote));
        }
        Command::Bundle { command, remote } => {
            return runtime.block_on(cli::bundle(command, &remote));
        }
        Command::Promote {
            model,
            bundle,
            reason,
            remote,
        } => {
            return runtime.block_on(cli::promote(&model, &bundle, &reason, &remote));
        }
        Command::Gc { remote } => return runtime.block_on(cli::gc(&remote)),
        Command::Runbook { args, remote } => return runtime.block_on(cli::runbook(args, &remote)),
        Command::Gameday { args, remote } => return runtime.block_on(cli::gameday(args, &remote)),
        Command::Rollout { command, remote } => {
            return runtime.block_on(cli::rollout(command, &remote));
        }
        Command::Prometheus {
            command:
                PrometheusCommand::Query {
                    query,
                    config,
                    model,
                    versions,
                    output,
                },
        } => {
            let json = output == Output::Json;
            let all_read = runtime.block_on(backstop::prometheus::cli_query(
                &config, &query, &model, &versions, json,
            ))?;
            if !all_read {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Check { config } => {
            backstop::config::Config::load(&config)?;
            println!("{}: ok", config.display());
        }
        Command::Demo {
            duration_s,
            rate,
            output,
        } => {
            if output == Output::Text {
                // The demo prints the rollout's story itself.
                init_logging("error", LogFormat::Text, None);
            }
            let options = backstop::demo::DemoOptions {
                duration: std::time::Duration::from_secs(duration_s),
                rate_per_s: rate,
                json: output == Output::Json,
            };
            let report = runtime.block_on(backstop::demo::run(options))?;
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
            if !report.as_designed() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Bench { options, output } => {
            let report = runtime.block_on(backstop::bench::run(options))?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Output::Text => println!("{}", report.to_markdown()),
            }
        }
        Command::StoreWriter { db, start, count } => {
            let summary = backstop::store::sqlite::write_versions(&db, start, count)?;
            println!("{}", serde_json::to_string(&summary)?);
        }
        Command::ToyUpstream { listen, version } => {
            runtime.block_on(async {
                let toy = backstop::toy::ToyServer::start(listen, &version).await?;
                println!("toy upstream listening: http://{}", toy.addr);
                tokio::signal::ctrl_c().await?;
                anyhow::Ok(())
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Logs go to stderr; `RUST_LOG` filters them (default: `default_level`),
/// plus `extra` (a directive that always applies).
fn init_logging(default_level: &str, format: LogFormat, extra: Option<&str>) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    if let Some(directive) = extra.and_then(|d| d.parse().ok()) {
        filter = filter.add_directive(directive);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == LogFormat::Json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}
