//! The runner's side of the clip contract, as the daemon reads it (pure). The one
//! definition is `docs/clip-contract.md`; a test here checks this code against its tables.

/// What a runner-named file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunnerKind {
    Video,
    Masks,
    Manifest,
}

/// A file name of the runner's: its camera, base name and kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunnerName<'a> {
    pub camera: &'a str,
    pub base: &'a str,
    pub kind: RunnerKind,
}

/// `Some` when `name` is a final name the runner writes:
/// `<camera>-<YYYYMMDDTHHMMSSmmmZ>-<seq>.{mp4,mkv,masks.tar,manifest.json}`.
pub fn runner_name(name: &str) -> Option<RunnerName<'_>> {
    let (base, kind) = [
        (".mp4", RunnerKind::Video),
        (".mkv", RunnerKind::Video),
        (".masks.tar", RunnerKind::Masks),
        (".manifest.json", RunnerKind::Manifest),
    ]
    .into_iter()
    .find_map(|(ext, kind)| name.strip_suffix(ext).map(|b| (b, kind)))?;
    let (rest, seq) = base.rsplit_once('-')?;
    let (camera, stamp) = rest.rsplit_once('-')?;
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let stamp_ok = stamp.len() == 19
        && digits(&stamp[..8])
        && stamp.as_bytes()[8] == b'T'
        && digits(&stamp[9..18])
        && stamp.as_bytes()[18] == b'Z';
    let camera_ok = (1..=64).contains(&camera.len())
        && camera
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'));
    (seq.len() >= 6 && digits(seq) && stamp_ok && camera_ok).then_some(RunnerName { camera, base, kind })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ready::NameRules;

    #[test]
    fn names_are_read_as_the_contract_says() {
        let rows = edgemask_tests::contract_table("| name | kind | camera |");
        assert!(rows.len() >= 10, "{rows:?}");
        let rules = NameRules::default();
        for r in rows {
            let (name, kind, camera) = (&r[0], r[1].as_str(), &r[2]);
            let got = if rules.is_temp(name) {
                "temp"
            } else {
                match runner_name(name).map(|n| n.kind) {
                    Some(RunnerKind::Video) => "video",
                    Some(RunnerKind::Masks) => "masks",
                    Some(RunnerKind::Manifest) => "manifest",
                    None => "foreign",
                }
            };
            assert_eq!(got, kind, "{name}");
            if let Some(n) = runner_name(name)
                && !rules.is_temp(name)
            {
                assert_eq!(n.camera, camera, "{name}");
                assert!(name.starts_with(n.base));
            }
        }
    }
}
