//! `edgemask`: command line of the runner (see the crate README).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use edgemask::config;
use edgemask::error::{Error, exit};

const AFTER_HELP: &str = "\
Environment: EDGEMASK__SECTION__KEY=value overrides config keys (e.g. EDGEMASK__MODEL__DEVICE=cpu),
EDGEMASK_LOG (or RUST_LOG) sets the log filter (default: info), ORT_DYLIB_PATH the ONNX Runtime library.

Exit codes: 0 done, 1 a pipeline failed, 2 usage, 3 invalid config, 4 model unusable,
5 source unavailable, 6 output directory unusable, 130 forced exit (second signal).";

#[derive(Parser)]
#[command(
    name = "edgemask",
    version,
    about = "edgemask — person-segmentation runner: cameras, files and RTSP feeds → masks → clips",
    after_help = AFTER_HELP,
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the cameras of the config(s).
    Run {
        /// Config files (TOML); later files override earlier ones.
        #[arg(value_name = "CONFIG.TOML", required = true)]
        configs: Vec<PathBuf>,
    },
    /// Validate config, model, sources and output dir; run nothing.
    Check {
        /// Do not try a TCP connection to each RTSP camera.
        #[arg(long)]
        no_network: bool,
        /// Config files (TOML); later files override earlier ones.
        #[arg(value_name = "CONFIG.TOML", required = true)]
        configs: Vec<PathBuf>,
    },
    /// Print the contract the unetmask element detects in a model.
    ProbeModel {
        /// The model file.
        #[arg(value_name = "MODEL.ONNX")]
        model: PathBuf,
    },
}

fn init_logging() {
    let filter = std::env::var("EDGEMASK_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_string());
    // Under systemd (journald) the journal adds timestamps; no colours there either.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(!journald && std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if journald {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

fn load(paths: &[PathBuf]) -> Result<config::Settings, Error> {
    let file = config::load(paths)?;
    let base = paths
        .last()
        .and_then(|p| p.parent())
        .map_or_else(|| Path::new(".").to_path_buf(), Path::to_path_buf);
    let base = if base.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base
    };
    config::validate(&file, &base)
}

fn check(paths: &[PathBuf], probe_network: bool) -> Result<(), Error> {
    let settings = load(paths)?;
    edgemask::runner::init_gst()?;
    let models = edgemask::runner::preflight(&settings, probe_network)?;
    println!("config OK: {} camera(s)", settings.cameras.len());
    #[cfg(feature = "cuda")]
    for line in edgemask::runner::gpu_paths(&settings)? {
        println!("{line}");
    }
    for c in &settings.cameras {
        let m = &models[&c.model.path];
        println!(
            "  {}: {} → {} (model {} on {}, policy {:?})",
            c.name,
            describe(&c.source),
            settings.runner.output_dir.join(&c.name).display(),
            m.file,
            m.device,
            c.policy.kind
        );
    }
    Ok(())
}

fn describe(s: &config::Source) -> String {
    match s {
        config::Source::File { path } => format!("file {}", path.display()),
        config::Source::Rtsp { url, tcp, .. } => {
            format!(
                "rtsp {} ({})",
                edgemask::redact::redact(url),
                if *tcp { "tcp" } else { "udp" }
            )
        }
        config::Source::V4l2 { device } => format!("v4l2 {}", device.display()),
        config::Source::TestPattern {
            pattern,
            width,
            height,
            fps,
            ..
        } => {
            format!("test pattern {pattern} {width}x{height}@{fps}")
        }
    }
}

fn probe_model(path: &Path) -> anyhow::Result<()> {
    edgemask::runner::init_gst()?;
    let element = gst::ElementFactory::make("unetmask")
        .property("model", path.to_string_lossy().as_ref())
        .build()?;
    let mut model = edgemask::runner::open_model(&element, path)?;
    let r = model.report((640, 480)).map_err(|reason| Error::Model {
        path: path.to_path_buf(),
        reason,
    })?;
    println!("model:          {}", path.display());
    println!("sha256:         {}", edgemask::runner::sha256_file(path)?);
    println!("input:          '{}' {}", r.input_name, r.layout);
    match r.fixed_input_size {
        Some((w, h)) => println!("input size:     {w}x{h}"),
        None => println!(
            "input size:     dynamic (e.g. {}x{} for 640x480 frames)",
            r.input_size.0, r.input_size.1
        ),
    }
    println!(
        "output:         '{}' {}, {} channel(s)",
        r.output_name, r.output_layout, r.output_channels
    );
    println!("output size:    {}x{}", r.output_size.0, r.output_size.1);
    println!("activation:     {}", r.activation);
    println!("person channel: {}", r.person_channel);
    println!("provider:       {}", model.provider());
    println!(
        "inference:      {:.2} ms (median of the warm-up runs)",
        r.inference_time.as_secs_f64() * 1e3
    );
    Ok(())
}

fn code_of(e: &anyhow::Error) -> u8 {
    e.downcast_ref::<Error>().map_or(exit::RUNTIME, Error::exit_code)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version go to stdout and succeed; anything else is a usage error.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE } else { exit::OK });
        }
    };
    init_logging();
    let result: anyhow::Result<u8> = match cli.cmd {
        Cmd::Check { no_network, configs } => check(&configs, !no_network)
            .map(|_| exit::OK)
            .map_err(anyhow::Error::from),
        Cmd::ProbeModel { model } => probe_model(&model).map(|_| exit::OK),
        Cmd::Run { configs } => load(&configs)
            .map_err(anyhow::Error::from)
            .and_then(|s| edgemask::runner::run(s).map_err(anyhow::Error::from))
            .context("edgemask run"),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = code_of(&e);
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}
