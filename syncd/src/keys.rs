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

/// Make a key safe: no leading `/`, no empty, `.` or `..` segments, no control characters
/// or backslashes, at most 1024 bytes (S3's limit), cut on a character boundary.
pub fn sanitize_key(raw: &str) -> String {
    let mut segments = Vec::new();
    for seg in raw.split('/') {
        let cleaned: String = seg
            .chars()
            .map(|c| if c.is_control() || c == '\\' { '_' } else { c })
            .collect();
        let trimmed = cleaned.trim();
        match trimmed {
            "" | "." => continue,
            ".." => segments.push("__".to_string()),
            s => segments.push(s.to_string()),
        }
    }
    let mut key = segments.join("/");
    if key.len() > 1024 {
        let mut cut = 1024;
        while !key.is_char_boundary(cut) {
            cut -= 1;
        }
        key.truncate(cut);
    }
    key
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
        assert!(k.chars().all(|c| c == 'é'));
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
        assert_eq!(probe_key("retrain", t, "gpu-01"), "retrain/gpu-01/.edgemask-syncd-probe");
        assert_eq!(probe_key("", t, "gpu-01"), "gpu-01/.edgemask-syncd-probe");
        assert_eq!(
            probe_key("p", "fleet/{host}/{rel}", "h"),
            "p/fleet/h/.edgemask-syncd-probe"
        );
        assert_eq!(probe_key("p", "{rel}", "h"), "p/.edgemask-syncd-probe");
        assert_eq!(probe_key("p", "{camera}/{host}/{file}", "h"), "p/.edgemask-syncd-probe");
        assert_eq!(probe_key("p", "{host}", "h"), "p/.edgemask-syncd-probe");
        // A hostile host name stays inside the prefix.
        assert_eq!(probe_key("p", t, "../.."), "p/__/__/.edgemask-syncd-probe");
    }
}
