//! Clip naming and manifest building (pure).
//! The names, files and manifest are the clip contract: `docs/clip-contract.md`.

use std::time::SystemTime;

use serde::Serialize;

/// Base name of a clip: `<camera>-<UTC start, YYYYMMDDTHHMMSSmmmZ>-<seq>`; the video, mask
/// archive and manifest add `.mp4`/`.mkv`, `.masks.tar` and `.manifest.json`.
pub fn base_name(camera: &str, start: SystemTime, seq: u64) -> String {
    let stamp: String = humantime::format_rfc3339_millis(start)
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':' | '.'))
        .collect();
    format!("{camera}-{stamp}-{seq:06}")
}

/// The temporary name a file is written under before it is renamed to `final_name`: hidden,
/// with a `.part` suffix, so nothing that looks for final files picks it up.
pub fn temp_name(final_name: &str) -> String {
    format!(".{final_name}.part")
}

/// Whether a directory entry is a temporary file of the runner.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".part")
}

/// The files of a clip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipFile {
    Video,
    Masks,
    Manifest,
}

/// Whether `name` is a final-named clip file of `camera` (the names [`base_name`] makes):
/// its base name and which file it is.
pub fn clip_file<'a>(name: &'a str, camera: &str) -> Option<(&'a str, ClipFile)> {
    let (base, kind) = [
        (".manifest.json", ClipFile::Manifest),
        (".masks.tar", ClipFile::Masks),
        (".mp4", ClipFile::Video),
        (".mkv", ClipFile::Video),
    ]
    .into_iter()
    .find_map(|(suffix, kind)| name.strip_suffix(suffix).map(|b| (b, kind)))?;
    let rest = base.strip_prefix(camera)?.strip_prefix('-')?;
    let (stamp, seq) = rest.split_once('-')?;
    let stamp_ok = stamp.len() == 19
        && stamp.as_bytes()[8] == b'T'
        && stamp.ends_with('Z')
        && stamp
            .bytes()
            .enumerate()
            .all(|(i, b)| i == 8 || i == 18 || b.is_ascii_digit());
    let seq_ok = seq.len() >= 6 && seq.bytes().all(|b| b.is_ascii_digit());
    (stamp_ok && seq_ok).then_some((base, kind))
}

/// Name of the PNG of frame `index` in the mask archive.
pub fn mask_entry_name(index: usize) -> String {
    format!("{index:06}.png")
}

/// Mean of `coverage` per whole second since the first frame (`pts` in ns).
pub fn per_second_mean(frames: &[(u64, f64)]) -> Vec<f64> {
    let Some(&(first, _)) = frames.first() else {
        return Vec::new();
    };
    let mut sums: Vec<(f64, u32)> = Vec::new();
    for &(pts, v) in frames {
        let s = (pts.saturating_sub(first) / 1_000_000_000) as usize;
        if sums.len() <= s {
            sums.resize(s + 1, (0.0, 0));
        }
        sums[s].0 += v;
        sums[s].1 += 1;
    }
    sums.into_iter()
        .map(|(s, n)| {
            if n == 0 {
                0.0
            } else {
                (s / n as f64 * 1e4).round() / 1e4
            }
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelInfo {
    pub file: String,
    pub sha256: String,
    /// Execution provider the element used (`cpu`, `cuda:0`, ...).
    pub device: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MaskInfo {
    pub file: String,
    /// `tar` of one 8-bit grey PNG per frame (`000000.png`, ...) plus `frames.csv`.
    pub format: &'static str,
    pub width: u32,
    pub height: u32,
    /// The element's threshold (hard mask at frame size: bilinear upscale, then `> threshold*255`);
    /// `null` for a soft mask.
    pub threshold: Option<f64>,
}

/// One frame's mask summary, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameSummary {
    pub pts: u64,
    pub fresh: bool,
    pub coverage: f64,
    pub uncertain: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Manifest {
    pub version: u32,
    pub camera: String,
    pub host: String,
    pub video: String,
    pub video_bytes: u64,
    pub container: String,
    pub masks: MaskInfo,
    pub wall_clock_start: String,
    pub wall_clock_end: String,
    pub first_pts_ns: Option<u64>,
    pub last_pts_ns: Option<u64>,
    pub frame_count: u64,
    pub width: u32,
    pub height: u32,
    pub model: ModelInfo,
    pub coverage_per_second: Vec<f64>,
    pub fresh_masks: u64,
    pub carried_masks: u64,
    pub policy: String,
}

/// Everything the manifest needs besides the frames.
#[derive(Debug, Clone)]
pub struct ClipHeader {
    pub camera: String,
    pub host: String,
    pub video: String,
    pub video_bytes: u64,
    pub container: String,
    pub masks: MaskInfo,
    pub wall_start: SystemTime,
    pub wall_end: SystemTime,
    pub width: u32,
    pub height: u32,
    pub model: ModelInfo,
    pub policy: String,
}

pub fn build_manifest(h: ClipHeader, frames: &[FrameSummary]) -> Manifest {
    let cov: Vec<(u64, f64)> = frames.iter().map(|f| (f.pts, f.coverage)).collect();
    let fresh = frames.iter().filter(|f| f.fresh).count() as u64;
    Manifest {
        version: 1,
        camera: h.camera,
        host: h.host,
        video: h.video,
        video_bytes: h.video_bytes,
        container: h.container,
        masks: h.masks,
        wall_clock_start: humantime::format_rfc3339_millis(h.wall_start).to_string(),
        wall_clock_end: humantime::format_rfc3339_millis(h.wall_end).to_string(),
        first_pts_ns: frames.first().map(|f| f.pts),
        last_pts_ns: frames.last().map(|f| f.pts),
        frame_count: frames.len() as u64,
        width: h.width,
        height: h.height,
        model: h.model,
        coverage_per_second: per_second_mean(&cov),
        fresh_masks: fresh,
        carried_masks: frames.len() as u64 - fresh,
        policy: h.policy,
    }
}

/// `frames.csv` of the mask archive: one line per frame.
pub fn frames_csv(frames: &[FrameSummary]) -> String {
    let mut s = String::from("index,pts_ns,fresh,coverage,uncertain\n");
    for (i, f) in frames.iter().enumerate() {
        s.push_str(&format!(
            "{i},{},{},{:.6},{:.6}\n",
            f.pts,
            u8::from(f.fresh),
            f.coverage,
            f.uncertain
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn names() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(base_name("front", t, 7), "front-20231114T221320123Z-000007");
        assert_eq!(temp_name("a.mp4"), ".a.mp4.part");
        assert!(is_temp_name(".a.mp4.part"));
        assert!(!is_temp_name("a.mp4"));
        assert_eq!(mask_entry_name(3), "000003.png");
        let base = base_name("front", t, 7);
        for (suffix, kind) in [
            (".mp4", ClipFile::Video),
            (".mkv", ClipFile::Video),
            (".masks.tar", ClipFile::Masks),
            (".manifest.json", ClipFile::Manifest),
        ] {
            assert_eq!(
                clip_file(&format!("{base}{suffix}"), "front"),
                Some((base.as_str(), kind))
            );
        }
        // Other cameras (a prefix of this one's name included), temporaries, look-alikes.
        assert_eq!(clip_file(&format!("{base}.mp4"), "fron"), None);
        assert_eq!(clip_file(&format!("{base}.mp4"), "front2"), None);
        assert_eq!(clip_file(&format!(".{base}.mp4.part"), "front"), None);
        assert_eq!(clip_file("front-notes.mp4", "front"), None);
        assert_eq!(clip_file("front-20231114T221320123Z-7.mp4", "front"), None);
        assert_eq!(clip_file(&format!("{base}.mp4.bak"), "front"), None);
    }

    #[test]
    fn per_second() {
        let s = 1_000_000_000;
        let v = per_second_mean(&[(10 * s, 0.2), (10 * s + s / 2, 0.4), (11 * s, 1.0), (13 * s, 0.5)]);
        assert_eq!(v, vec![0.3, 1.0, 0.0, 0.5]);
        assert!(per_second_mean(&[]).is_empty());
    }

    #[test]
    fn manifest_counts() {
        let h = ClipHeader {
            camera: "c".into(),
            host: "h".into(),
            video: "v.mp4".into(),
            video_bytes: 10,
            container: "mp4".into(),
            masks: MaskInfo {
                file: "v.masks.tar".into(),
                format: "tar/png-gray8",
                width: 2,
                height: 2,
                threshold: None,
            },
            wall_start: UNIX_EPOCH,
            wall_end: UNIX_EPOCH + Duration::from_secs(1),
            width: 4,
            height: 4,
            model: ModelInfo {
                file: "m.onnx".into(),
                sha256: "x".into(),
                device: "cpu".into(),
            },
            policy: "always".into(),
        };
        let f = |pts, fresh| FrameSummary {
            pts,
            fresh,
            coverage: 0.5,
            uncertain: 0.0,
        };
        let m = build_manifest(h, &[f(5, true), f(6, false), f(7, true)]);
        assert_eq!((m.frame_count, m.fresh_masks, m.carried_masks), (3, 2, 1));
        assert_eq!((m.first_pts_ns, m.last_pts_ns), (Some(5), Some(7)));
        assert_eq!(m.wall_clock_start, "1970-01-01T00:00:00.000Z");
        assert!(frames_csv(&[f(5, true)]).contains("0,5,1,0.500000,0.000000"));
    }

    /// The runner makes the names the contract (the daemon's side reads the same page)
    /// says it makes, and its temporary names are the contract's temporary names.
    #[test]
    fn names_follow_the_clip_contract() {
        let rows = edgemask_tests::contract_table("| camera | start | seq | base name |");
        assert!(rows.len() >= 3);
        for r in rows {
            let start = humantime::parse_rfc3339(&r[1]).unwrap();
            assert_eq!(base_name(&r[0], start, r[2].parse().unwrap()), r[3], "{r:?}");
        }
        for r in edgemask_tests::contract_table("| name | kind | camera |") {
            if r[1] == "temp" && r[0].ends_with(".part") {
                assert!(is_temp_name(&r[0]), "{r:?}");
                let fin = r[0].trim_start_matches('.').trim_end_matches(".part");
                assert_eq!(temp_name(fin), r[0]);
            }
            if matches!(r[1].as_str(), "video" | "masks" | "manifest") {
                assert!(!is_temp_name(&r[0]), "{r:?}");
                assert!(r[0].starts_with(&format!("{}-", r[2])), "{r:?}");
            }
        }
    }
}
