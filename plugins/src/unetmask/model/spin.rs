//! When ONNX Runtime's intra-op workers busy-wait for work instead of sleeping.
//!
//! A UNet is hundreds of small parallel sections; a worker that sleeps between them pays a
//! wake-up each time, which on a 2-core host costs about a third of the inference rate. A
//! worker that keeps spinning after the run returns burns a core between the frames of a
//! live camera; one that spins inside a run while other sessions' runs hold the cores burns
//! what they need. `in-run` spins inside a run only, and at most [`IN_RUN_SPIN_US`] at a
//! time: the figures behind both are in docs/benchmarks.md ("What spinning costs").

use std::fmt;

/// The longest a worker spins for its next piece of work inside a run before it sleeps.
/// Parallel sections of one run follow each other within microseconds; a longer wait means
/// the run's own thread lost its core to another session. Measured in development runs:
/// one stream within the noise of uncapped spinning (100 us, 500 us and 2 ms alike), and
/// twelve live streams on 2 cores near the CPU of never spinning, where uncapped in-run
/// spinning took about a third more.
pub const IN_RUN_SPIN_US: u32 = 100;

/// The element's `spin` property.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Spin {
    /// Workers always sleep when out of work.
    Never,
    /// Workers spin inside a run, each wait at most [`IN_RUN_SPIN_US`], and stop when the
    /// session's last concurrent run returns (`session.force_spinning_stop`).
    #[default]
    InRun,
    /// ONNX Runtime's own default: workers spin inside and between runs.
    Always,
}

impl fmt::Display for Spin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Never => "never",
            Self::InRun => "in-run",
            Self::Always => "always",
        })
    }
}

impl std::str::FromStr for Spin {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Self::Never, Self::InRun, Self::Always]
            .into_iter()
            .find(|v| v.to_string() == s)
            .ok_or_else(|| format!("unknown spin policy {s:?}: use never, in-run or always"))
    }
}

impl Spin {
    /// The session config entries that select this policy, `(key, value)`.
    pub fn config_entries(self) -> Vec<(&'static str, String)> {
        let allow = |on: bool| {
            let v = if on { "1" } else { "0" };
            [
                ("session.intra_op.allow_spinning", v.to_string()),
                ("session.inter_op.allow_spinning", v.to_string()),
            ]
        };
        match self {
            Self::Never => allow(false).to_vec(),
            Self::Always => allow(true).to_vec(),
            Self::InRun => {
                let mut v = allow(true).to_vec();
                v.push(("session.force_spinning_stop", "1".into()));
                v.push(("session.intra_op.spin_duration_us", IN_RUN_SPIN_US.to_string()));
                v
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(s: Spin) -> Vec<String> {
        s.config_entries()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }

    #[test]
    fn policies_select_ort_entries() {
        assert_eq!(
            entries(Spin::InRun),
            [
                "session.intra_op.allow_spinning=1",
                "session.inter_op.allow_spinning=1",
                "session.force_spinning_stop=1",
                "session.intra_op.spin_duration_us=100",
            ]
        );
        assert_eq!(
            entries(Spin::Always),
            [
                "session.intra_op.allow_spinning=1",
                "session.inter_op.allow_spinning=1"
            ]
        );
        assert_eq!(
            entries(Spin::Never),
            [
                "session.intra_op.allow_spinning=0",
                "session.inter_op.allow_spinning=0"
            ]
        );
        assert_eq!(Spin::default(), Spin::InRun);
    }

    #[test]
    fn policies_parse_back_and_a_wrong_one_names_the_choices() {
        for s in [Spin::Never, Spin::InRun, Spin::Always] {
            assert_eq!(s.to_string().parse::<Spin>(), Ok(s));
        }
        assert!(
            "sometimes"
                .parse::<Spin>()
                .unwrap_err()
                .contains("never, in-run or always")
        );
    }
}
