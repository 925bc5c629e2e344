//! Credentials never leave the process (pure): the one function every configuration value,
//! URL and GStreamer text goes through before it reaches a log line or an error.

/// Query parameters whose values are secrets (compared case-insensitively).
const SECRET_PARAMS: &[&str] = &[
    "user",
    "username",
    "login",
    "password",
    "passwd",
    "pass",
    "pwd",
    "token",
    "key",
    "secret",
    "auth",
    "authorization",
    "signature",
    "sig",
];

fn is_end(b: u8) -> bool {
    matches!(b, b'/' | b'?' | b'#' | b'"' | b'\'' | b'<' | b'>' | b'`') || b.is_ascii_whitespace()
}

/// `text` with every URL's `user:password@` replaced by `***@`, and the values of query
/// parameters that carry secrets (`?user=…&password=…`) by `***`. Only ASCII delimiters are
/// looked at, so any UTF-8 text stays valid.
pub fn redact(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        // userinfo after "://"
        if b[i..].starts_with(b"://") {
            out.push_str("://");
            let start = i + 3;
            let end = (start..b.len()).find(|&j| is_end(b[j])).unwrap_or(b.len());
            match text[start..end].rfind('@') {
                Some(at) => {
                    out.push_str("***@");
                    out.push_str(&text[start + at + 1..end]);
                }
                None => out.push_str(&text[start..end]),
            }
            i = end;
            continue;
        }
        // name=value after '?' or '&'
        if (b[i] == b'?' || b[i] == b'&') && i + 1 < b.len() {
            let name_end = (i + 1..b.len())
                .find(|&j| b[j] == b'=' || b[j] == b'&' || is_end(b[j]))
                .unwrap_or(b.len());
            if name_end < b.len() && b[name_end] == b'=' {
                let name = &text[i + 1..name_end];
                if SECRET_PARAMS.iter().any(|p| p.eq_ignore_ascii_case(name)) {
                    let value_end = (name_end + 1..b.len())
                        .find(|&j| b[j] == b'&' || (b[j] != b'/' && b[j] != b'?' && is_end(b[j])))
                        .unwrap_or(b.len());
                    out.push_str(&text[i..=name_end]);
                    out.push_str("***");
                    i = value_end;
                    continue;
                }
            }
        }
        let ch = text[i..].chars().next().expect("i is on a char boundary");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// [`redact`], then cut to at most `max` bytes on a character boundary (`…` marks a cut).
pub fn shown(text: &str, max: usize) -> String {
    let r = redact(text);
    if r.len() <= max {
        return r;
    }
    let mut cut = max;
    while !r.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &r[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_and_secret_parameters_are_hidden() {
        assert_eq!(redact("rtsp://u:secret@cam:8554/s"), "rtsp://***@cam:8554/s");
        assert_eq!(redact("rtsp://cam/s"), "rtsp://cam/s");
        assert_eq!(
            redact("rtsp://cam/s?user=admin&password=hunter2&channel=1"),
            "rtsp://cam/s?user=***&password=***&channel=1"
        );
        assert_eq!(redact("rtsp://cam/s?Pwd=x#frag"), "rtsp://cam/s?Pwd=***#frag");
        // Inside other text: a GStreamer message, a TOML value, several URLs.
        assert_eq!(
            redact("Could not open resource (rtsp://a:b@h/x) and \"rtsps://c:d@[::1]:322/y\""),
            "Could not open resource (rtsp://***@h/x) and \"rtsps://***@[::1]:322/y\""
        );
        // A password holding '@' or '/': everything up to the last '@' of the authority.
        assert_eq!(redact("rtsp://u:p@ss@h/x"), "rtsp://***@h/x");
        // Not a secret parameter; no URL at all; non-ASCII untouched.
        assert_eq!(redact("a?width=3&height=4"), "a?width=3&height=4");
        assert_eq!(redact("caméra ✓"), "caméra ✓");
    }

    #[test]
    fn shown_values_are_cut_on_a_character_boundary() {
        let v = format!("\"{}\"", "é".repeat(40));
        let s = shown(&v, 60);
        assert!(s.len() <= 60 + "…".len() && s.ends_with('…'), "{s}");
        assert_eq!(shown("short", 60), "short");
        assert_eq!(shown("rtsp://a:hunter2@h/x", 60), "rtsp://***@h/x");
    }
}
