//! `edgemask-syncd`: the upload daemon. See `syncd/README.md`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use edgemask_syncd::config::Config;
use edgemask_syncd::daemon::{self, RunOpts};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "edgemask-syncd",
    version,
    about = "Uploads finished clips to S3 exactly once"
)]
struct Cli {
    /// Config file (TOML); `EDGEMASK_SYNCD__SECTION__KEY` variables override it.
    #[arg(
        short,
        long,
        global = true,
        env = "EDGEMASK_SYNCD_CONFIG",
        default_value = "/etc/edgemask/syncd.toml"
    )]
    config: PathBuf,
    /// Drain the backlog, then exit (0 when everything went up).
    #[arg(long)]
    once: bool,
    /// Print what would be uploaded where, and exit.
    #[arg(long)]
    dry_run: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon (the default).
    Run,
    /// Show the journal: counts per state, queue, errors.
    Status {
        /// Journal to read instead of the config's.
        #[arg(long)]
        journal: Option<PathBuf>,
    },
    /// Validate the config and exit.
    Check,
}

/// Exit codes: 0 ok, 1 runtime error, 2 bad config, 3 destination refused us,
/// 4 `--once` left files behind.
fn main() -> ExitCode {
    limit_heap_retention();
    let cli = Cli::parse();
    init_logging();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("edgemask-syncd: {e:#}");
            if e.downcast_ref::<edgemask_syncd::SyncError>()
                .is_some_and(|s| matches!(s, edgemask_syncd::SyncError::Config(_)))
            {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// Part buffers (up to `part_size`, 8 MiB by default) come and go all the time. glibc's
/// dynamic mmap threshold grows to the size of the largest freed buffer, after which such
/// buffers are carved from the heap and what they free is kept by the process: resident
/// memory creeps well above the buffers actually in use. A fixed threshold of 1 MiB keeps
/// every part buffer an mmap of its own, returned to the system when dropped.
fn limit_heap_retention() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,aws_config=warn,aws_smithy_runtime=warn,aws_sdk_s3=warn,hyper=warn")
    });
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    // journald stamps lines itself.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        b.without_time().init();
    } else {
        b.init();
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Some(Cmd::Status { journal }) = &cli.cmd {
        let path = match journal {
            Some(p) => p.clone(),
            None => Config::load(&cli.config)?.journal,
        };
        print!(
            "{}",
            edgemask_syncd::status::report(&path).with_context(|| format!("reading {}", path.display()))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let cfg = Config::load(&cli.config)?;
    if matches!(cli.cmd, Some(Cmd::Check)) {
        println!("{}: ok", cli.config.display());
        return Ok(ExitCode::SUCCESS);
    }
    if cli.dry_run {
        let n = daemon::dry_run(&cfg)?;
        println!("{n} file(s) would be uploaded");
        return Ok(ExitCode::SUCCESS);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(cfg.upload.io_threads)
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) =
                (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
            else {
                return;
            };
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            tracing::info!("signal received: finishing uploads in flight (a second signal exits at once)");
            c.cancel();
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            eprintln!("edgemask-syncd: second signal, exiting now");
            std::process::exit(130);
        });
        let once = cli.once;
        // On the runtime's workers, not on this thread: with one I/O thread everything
        // asynchronous then runs on it, without hand-offs between threads.
        let report = tokio::spawn(daemon::run(cfg, RunOpts { once }, cancel))
            .await
            .context("the daemon's task failed")??;
        if let Some(e) = report.destination_error {
            eprintln!("edgemask-syncd: destination refused uploads: {e}; every file is kept");
            return Ok(ExitCode::from(3));
        }
        if once && (report.failed > 0 || report.unsettled > 0) {
            eprintln!(
                "edgemask-syncd: {} file(s) failed, {} not settled; they stay queued",
                report.failed, report.unsettled
            );
            return Ok(ExitCode::from(4));
        }
        Ok(ExitCode::SUCCESS)
    })
}
