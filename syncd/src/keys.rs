//! Object keys: template rendering and sanitisation (pure).

use crate::error::{Result, SyncError};

/// The variables a key template may use.
pub const VARIABLES: &[&str] = &["host", "camera", "date", "clip", "file", "rel", "dir"];

/// Values for one file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyVars {
    /// The daemon's host name (`host` in the config, else `gethostname(2)`); never the
    /// manifest's, which would let a runner steer uploads into another host's prefix.
    pub host: String,
    /// Camera: from the manifest's `camera`, else the first directory under the watched
    /// root, else `unknown`.
    pub camera: String,
    /// `YYYY-MM-DD` (UTC): from the manifest's start time, else the file's mtime.
    pub date: String,
    /// The clip stem (file name up to its first `.`).
    pub clip: String,
    /// The file name.
    pub file: String,
    /// The path relative to the watched root.
    pub rel: String,
    /// The directory relative to the watched root (may be empty).
    pub dir: String,
}

impl KeyVars {
    fn get(&self, name: &str) -> Option<&str> {
        Some(match name {
            "host" => &self.host,
            "camera" => &self.camera,
            "date" => &self.date,
            "clip" => &self.clip,
            "file" => &self.file,
            "rel" => &self.rel,
            "dir" => &self.dir,
            _ => return None,
        })
    }
}

/// Check a template at start: balanced braces, known variables, not empty.
pub fn validate_template(template: &str) -> Result<()> {
    render_raw(template, &KeyVars::default()).map(|_| ())
}

fn render_raw(template: &str, vars: &KeyVars) -> Result<String> {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| SyncError::Config(format!("key_template {template:?}: unclosed '{{'")))?;
        let name = &after[..close];
        let value = vars.get(name).ok_or_else(|| {
            SyncError::Config(format!(
                "key_template {template:?}: unknown variable {{{name}}}; allowed: {}",
                VARIABLES
                    .iter()
                    .map(|v| format!("{{{v}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        out.push_str(value);
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(SyncError::Config(format!(
            "key_template {template:?}: unmatched '}}'"
        )));
    }
    out.push_str(rest);
    Ok(out)
}

/// Render `template` with `vars`, prepend `prefix`, and sanitise the result.
pub fn render_key(prefix: &str, template: &str, vars: &KeyVars) -> Result<String> {
    let body = render_raw(template, vars)?;
    let joined = if prefix.is_empty() {
        body
    } else {
        format!("{prefix}/{body}")
    };
    let key = sanitize_key(&joined);
    if key.is_empty() {
        return Err(SyncError::Config(format!(
            "key_template {template:?} renders an empty key for {:?}",
            vars.rel
        )));
    }
    Ok(key)
}

/// S3's limit on a key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// Unicode format characters (general category Cf): invisible, and some reorder what is
/// shown (bidi overrides), so a key could display as another. Also the BOM.
fn is_format_char(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x0600..=0x0605 | 0x061C | 0x06DD | 0x070F | 0x0890..=0x0891 | 0x08E2
        | 0x180E | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F
        | 0xFEFF | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F
        | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F)
}

/// One key segment made safe: control and format characters, and backslashes, become `_`;
/// surrounding white space goes; `.` and empty vanish (`None`); `..` becomes `__`.
fn clean_segment(seg: &str) -> Option<String> {
    let cleaned: String = seg
        .chars()
        .map(|c| {
            if c.is_control() || c == '\\' || is_format_char(c) {
                '_'
            } else {
                c
            }
        })
        .collect();
    match cleaned.trim() {
        "" | "." => None,
        ".." => Some("__".to_string()),
        s => Some(s.to_string()),
    }
}

/// Cut `seg` to at most `max` bytes (on a character boundary), keeping a file name's
/// extension (from its first `.`, when short) and adding a hash of the whole segment, so
/// two long names that differ only past the cut stay two keys.
fn shorten_segment(seg: &str, max: usize, is_file: bool) -> String {
    let tag = format!("~{:08x}", crc32c::crc32c(seg.as_bytes()));
    let ext = match seg.find('.') {
        Some(i) if is_file && i > 0 && seg.len() - i <= 64 => &seg[i..],
        _ => "",
    };
    let room = max.saturating_sub(tag.len() + ext.len());
    let mut cut = room.min(seg.len() - ext.len());
    while !seg.is_char_boundary(cut) {
        cut -= 1;
    }
    let head = seg[..cut].trim_end_matches(['.', ' ']);
    let head = if head.is_empty() { "_" } else { head };
    format!("{head}{tag}{ext}")
}

/// Make a key safe: no leading `/`, no empty, `.` or `..` segments, no control, format
/// (bidi, zero-width) characters or backslashes, at most [`MAX_KEY_BYTES`] (S3's limit).
/// A key too long is shortened segment by segment, the longest first, each cut marked by a
/// hash of what it held and the file name keeping its extension: never a cut that leaves
/// `..`, an empty segment, or a name without its type.
pub fn sanitize_key(raw: &str) -> String {
    let mut segments: Vec<String> = raw.split('/').filter_map(clean_segment).collect();
    let total = |s: &[String]| s.iter().map(String::len).sum::<usize>() + s.len().saturating_sub(1);
    while total(&segments) > MAX_KEY_BYTES {
        let over = total(&segments) - MAX_KEY_BYTES;
        let (i, longest) = segments
            .iter()
            .enumerate()
            .max_by_key(|(_, s)| s.len())
            .map(|(i, s)| (i, s.len()))
            .expect("a key over the limit has segments");
        // Each segment keeps room for its marker (and the file its extension).
        let floor = 16 + if i + 1 == segments.len() { 64 } else { 0 };
        let target = longest.saturating_sub(over).max(floor);
        if target >= longest {
            // Nothing left to gain here (a key of many short segments): drop whole
            // directory segments from the middle, marked.
            let mid = segments.len() / 2;
            segments[mid] = format!("~{:08x}", crc32c::crc32c(raw.as_bytes()));
            if segments.len() > 2 {
                segments.remove(mid - 1);
            }
            continue;
        }
        let is_file = i + 1 == segments.len();
        segments[i] = shorten_segment(&segments[i], target, is_file);
    }
    segments.join("/")
}

/// The key of the endpoint probe's object: in the part of the key space every upload
/// shares — the prefix, then the template's leading segments as long as they are literal
/// or `{host}` — so credentials confined to `<prefix>/<host>/` can write it too.
pub fn probe_key(prefix: &str, template: &str, host: &str) -> String {
    let mut parts = vec![prefix.to_string()];
    let segments: Vec<&str> = template.split('/').collect();
    // The last segment names the file; only directories are shared.
    for seg in &segments[..segments.len().saturating_sub(1)] {
        match *seg {
            "{host}" => parts.push(host.to_string()),
            s if !s.contains(['{', '}']) => parts.push(s.to_string()),
            _ => break,
        }
    }
    parts.push(".edgemask-syncd-probe".into());
    sanitize_key(&parts.join("/"))
}

/// Only characters that are safe in an `x-amz-meta-*` header value survive (printable
/// ASCII); anything else becomes `_`. Values are cut at 256 bytes.
pub fn sanitize_metadata(value: &str) -> String {
    value
        .chars()
        .take(256)
        .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> KeyVars {
        KeyVars {
            host: "gpu-01".into(),
            camera: "door".into(),
            date: "2026-11-22".into(),
            clip: "clip-0001".into(),
            file: "clip-0001.mkv".into(),
            rel: "door/clip-0001.mkv".into(),
            dir: "door".into(),
        }
    }

    #[test]
    fn renders_template_with_prefix() {
        let k = render_key("retrain", "{host}/{camera}/{date}/{file}", &vars()).unwrap();
        assert_eq!(k, "retrain/gpu-01/door/2026-11-22/clip-0001.mkv");
        let k = render_key("", "{rel}", &vars()).unwrap();
        assert_eq!(k, "door/clip-0001.mkv");
    }

    #[test]
    fn rejects_bad_templates() {
        assert!(validate_template("{host}/{nope}").is_err());
        assert!(validate_template("{host").is_err());
        assert!(validate_template("host}").is_err());
        assert!(validate_template("{host}/{file}").is_ok());
    }

    #[test]
    fn sanitises_traversal_control_and_leading_slash() {
        let mut v = vars();
        v.camera = "../../etc".into();
        v.host = "/abs\u{0}host\n".into();
        let k = render_key("", "{host}/{camera}/{file}", &v).unwrap();
        assert_eq!(k, "abs_host_/__/__/etc/clip-0001.mkv");
        assert!(!k.starts_with('/'));
        assert!(!k.split('/').any(|s| s == ".." || s == "." || s.is_empty()));
        assert_eq!(sanitize_key("//a//./b\\c/"), "a/b_c");
        assert_eq!(sanitize_key("../.."), "__/__");
    }

    #[test]
    fn caps_length_on_char_boundary() {
        let long = "é".repeat(800);
        let k = sanitize_key(&long);
        assert!(k.len() <= 1024);
        let (head, tag) = k.split_once('~').unwrap();
        assert!(head.chars().all(|c| c == 'é'), "{k}");
        assert_eq!(tag.len(), 8, "{k}");
    }

    #[test]
    fn empty_key_is_an_error() {
        let v = KeyVars::default();
        assert!(render_key("", "{camera}/{file}", &v).is_err());
    }

    #[test]
    fn metadata_is_printable_ascii() {
        assert_eq!(sanitize_metadata("caméra\n1"), "cam_ra_1");
        assert_eq!(sanitize_metadata(&"x".repeat(1000)).len(), 256);
    }

    #[test]
    fn probe_key_shares_the_uploads_directories() {
        let t = "{host}/{camera}/{date}/{file}";
        assert_eq!(
            probe_key("retrain", t, "gpu-01"),
            "retrain/gpu-01/.edgemask-syncd-probe"
        );
        assert_eq!(probe_key("", t, "gpu-01"), "gpu-01/.edgemask-syncd-probe");
        assert_eq!(
            probe_key("p", "fleet/{host}/{rel}", "h"),
            "p/fleet/h/.edgemask-syncd-probe"
        );
        assert_eq!(probe_key("p", "{rel}", "h"), "p/.edgemask-syncd-probe");
        assert_eq!(
            probe_key("p", "{camera}/{host}/{file}", "h"),
            "p/.edgemask-syncd-probe"
        );
        assert_eq!(probe_key("p", "{host}", "h"), "p/.edgemask-syncd-probe");
        // A hostile host name stays inside the prefix.
        assert_eq!(probe_key("p", t, "../.."), "p/__/__/.edgemask-syncd-probe");
    }

    #[test]
    fn format_characters_cannot_disguise_a_key() {
        // RIGHT-TO-LEFT OVERRIDE makes "clip\u{202E}4pm.exe" display as "clipexe.mp4".
        let k = sanitize_key("cam/clip\u{202E}4pm.exe");
        assert_eq!(k, "cam/clip_4pm.exe");
        assert_eq!(sanitize_key("a\u{200B}b/\u{FEFF}c\u{2066}"), "a_b/_c_");
        assert_eq!(sanitize_key("\u{200B}/x"), "_/x");
    }

    #[test]
    fn shortening_keeps_the_extension_and_never_makes_dot_dot() {
        let long = format!("cam/{}.mask.tar", "x".repeat(2000));
        let k = sanitize_key(&long);
        assert!(k.len() <= MAX_KEY_BYTES, "{}", k.len());
        assert!(k.starts_with("cam/x"));
        assert!(k.ends_with(".mask.tar"), "{k}");
        // Names that differ only past the cut stay different keys.
        let other = sanitize_key(&format!("cam/{}y.mask.tar", "x".repeat(1999)));
        assert_ne!(k, other);
        // A directory that is dots up to the cut: never `..` or empty.
        let dots = format!("{}/f.mp4", ".".repeat(1500));
        let k = sanitize_key(&dots);
        assert!(k.len() <= MAX_KEY_BYTES);
        assert!(
            !k.split('/').any(|s| s == ".." || s == "." || s.is_empty()),
            "{k}"
        );
        assert!(k.ends_with("/f.mp4"), "{k}");
        // Many segments, each short.
        let many = vec!["abcdefgh"; 400].join("/") + "/clip.mp4";
        let k = sanitize_key(&many);
        assert!(k.len() <= MAX_KEY_BYTES, "{}", k.len());
        assert!(k.ends_with("/clip.mp4"), "{k}");
        assert!(!k.split('/').any(|s| s == ".." || s == "." || s.is_empty()));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// Anything a manifest, a directory name or a config could put in a variable.
    fn hostile() -> impl Strategy<Value = String> {
        prop_oneof![
            ".{0,40}",
            "[./\\\\ ]{0,12}",
            proptest::collection::vec(
                prop_oneof![
                    Just("..".to_string()),
                    Just("/".to_string()),
                    Just("\u{202E}".to_string()),
                    Just("\u{200B}".to_string()),
                    Just("\u{0}".to_string()),
                    Just("é".to_string()),
                    "[a-z.]{1,300}",
                ],
                0..12
            )
            .prop_map(|v| v.concat()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Any values give a valid key under the prefix, or a clear error; never a panic.
        #[test]
        fn any_input_renders_a_valid_key_under_the_prefix(
            host in hostile(), camera in hostile(), date in hostile(), file in hostile(),
            rel in hostile(), dir in hostile(),
            template in prop_oneof![
                Just("{host}/{camera}/{date}/{file}".to_string()),
                Just("{rel}".to_string()),
                Just("{dir}/{clip}-{file}".to_string()),
                "[{}a-z/]{0,20}",
            ],
        ) {
            let vars = KeyVars { host, camera, date, clip: file.clone(), file, rel, dir };
            match render_key("retrain", &template, &vars) {
                Ok(k) => {
                    prop_assert!(k.len() <= MAX_KEY_BYTES, "{} bytes", k.len());
                    prop_assert!(k.starts_with("retrain/") || k == "retrain", "{k}");
                    for seg in k.split('/') {
                        prop_assert!(!seg.is_empty() && seg != "." && seg != "..", "{k}");
                        prop_assert!(!seg.chars().any(|c| c.is_control() || c == '\\' || is_format_char(c)), "{k:?}");
                    }
                }
                Err(e) => prop_assert!(e.to_string().contains("key_template"), "{e}"),
            }
        }

        /// Sanitising is idempotent: a key already made safe stays as it is.
        #[test]
        fn sanitising_is_idempotent(raw in hostile()) {
            let once = sanitize_key(&raw);
            prop_assert_eq!(sanitize_key(&once), once);
        }
    }
}
