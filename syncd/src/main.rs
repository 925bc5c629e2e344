//! `edgemask-syncd`: the upload daemon.
//!
//! It will watch the runner's output directory and ship every finished clip (media,
//! masks, manifest last) to S3 or an S3-compatible store exactly once, with a crash-safe
//! journal, resumable multipart uploads, end-to-end checksums and disk-pressure rules.

use std::process::ExitCode;

const USAGE: &str = "\
edgemask-syncd — clip upload daemon (not implemented yet)

Tracked in the project's syncd issue. Nothing is uploaded by this build.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version" | "-V") => {
            println!("edgemask-syncd {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("--help" | "-h") => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprint!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
