//! `edgemask-syncd status`: what the journal says.

use std::fmt::Write;
use std::path::Path;

use crate::error::Result;
use crate::journal::{self, Journal, State};

/// A human-readable report of the journal at `path`.
pub fn report(path: &Path) -> Result<String> {
    let j = Journal::open_read_only(path)?;
    let s = j.summary()?;
    let mut o = String::new();
    let _ = writeln!(o, "journal: {}", path.display());
    for st in State::ALL {
        let _ = writeln!(
            o,
            "{:>10}: {}",
            st.as_str(),
            s.counts.get(st.as_str()).copied().unwrap_or(0)
        );
    }
    let _ = writeln!(o, "queued bytes: {}", s.pending_bytes);
    if let Some(t) = s.oldest_pending_ready_at {
        let _ = writeln!(o, "oldest queued file: {} s", (journal::now_secs() - t).max(0));
    }
    match j.meta("destination_error")? {
        Some(e) if !e.is_empty() => {
            let _ = writeln!(o, "destination: DOWN — {e}");
        }
        _ => {
            let _ = writeln!(o, "destination: ok");
        }
    }
    // Files the daemon will not touch (symlinks, hard links, bad manifests…), as found by
    // its scans since it last started.
    let (refused, by_reason) = j.refusals(20)?;
    if !by_reason.is_empty() {
        let total: u64 = by_reason.iter().map(|(_, n)| n).sum();
        let reasons: Vec<String> = by_reason.iter().map(|(r, n)| format!("{r} {n}")).collect();
        let _ = writeln!(o, "refused files: {total} ({})", reasons.join(", "));
        for (path, reason, detail) in refused {
            let _ = writeln!(o, "refused ({reason}): {} ({detail})", path.display());
        }
    }
    for st in [
        State::Conflict,
        State::Rejected,
        State::Dropped,
        State::Pending,
        State::Uploading,
    ] {
        for row in j.with_state(st, 20)? {
            if st.is_open() && row.last_error.is_none() {
                continue;
            }
            let _ = writeln!(
                o,
                "{}: {} -> {}{}",
                st.as_str(),
                row.path.display(),
                row.key,
                row.last_error.map(|e| format!(" ({e})")).unwrap_or_default()
            );
        }
    }
    Ok(o)
}
