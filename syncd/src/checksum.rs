//! CRC32C checksums in S3's formats (pure), and reading a file's checksums from disk.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::error::{Result, SyncError};
use crate::tree;

/// A file to read. A watched file is a [`tree::Source`]: opened beneath its root, no
/// symlink followed, checked against the identity the journal recorded — there is no way
/// to read one by its path. [`Own`] is for the daemon's own files (the file destination's
/// copies).
pub trait Readable {
    fn open_file(&self) -> Result<File>;
    /// For error messages.
    fn path(&self) -> PathBuf;
}

impl Readable for tree::Source {
    fn open_file(&self) -> Result<File> {
        self.open().map(|(f, _)| f)
    }
    fn path(&self) -> PathBuf {
        tree::Source::path(self)
    }
}

/// A file the daemon wrote itself.
pub struct Own<'a>(pub &'a Path);

impl Readable for Own<'_> {
    fn open_file(&self) -> Result<File> {
        File::open(self.0).map_err(|e| SyncError::io(self.0, e))
    }
    fn path(&self) -> PathBuf {
        self.0.to_path_buf()
    }
}

/// S3's `x-amz-checksum-crc32c` form: base64 of the big-endian 4 bytes.
pub fn b64(crc: u32) -> String {
    STANDARD.encode(crc.to_be_bytes())
}

/// The checksum S3 reports for a multipart object uploaded with per-part CRC32C
/// ("composite"): CRC32C of the concatenated binary part checksums, then `-<parts>`.
pub fn composite(parts: &[u32]) -> String {
    let mut bytes = Vec::with_capacity(parts.len() * 4);
    for p in parts {
        bytes.extend_from_slice(&p.to_be_bytes());
    }
    format!("{}-{}", b64(crc32c::crc32c(&bytes)), parts.len())
}

/// Whether the checksum a store reports matches the local content: either the
/// full-object CRC32C, or the composite one of the parts.
pub fn matches(reported: &str, full: u32, parts: &[u32]) -> bool {
    if reported.contains('-') {
        !parts.is_empty() && reported == composite(parts)
    } else {
        reported == b64(full)
    }
}

/// The size, full CRC32C and per-part CRC32Cs of a file read from disk (blocking).
pub fn file_checksums(src: &(impl Readable + ?Sized), part_size: u64) -> Result<(u64, u32, Vec<u32>)> {
    let mut f = src.open_file()?;
    let path = &src.path();
    let mut buf = vec![0u8; 1 << 20];
    let (mut full, mut part, mut in_part, mut total) = (0u32, 0u32, 0u64, 0u64);
    let mut parts = Vec::new();
    loop {
        let want = buf.len().min((part_size - in_part) as usize);
        let n = f.read(&mut buf[..want]).map_err(|e| SyncError::io(path, e))?;
        if n == 0 {
            break;
        }
        full = crc32c::crc32c_append(full, &buf[..n]);
        part = crc32c::crc32c_append(part, &buf[..n]);
        in_part += n as u64;
        total += n as u64;
        if in_part == part_size {
            parts.push(part);
            part = 0;
            in_part = 0;
        }
    }
    if in_part > 0 {
        parts.push(part);
    }
    Ok((total, full, parts))
}

/// MD5 of `data` (for `Content-MD5` on stores that do not take `x-amz-checksum-crc32c`).
pub fn md5(data: &[u8]) -> [u8; 16] {
    use md5::Digest;
    md5::Md5::digest(data).into()
}

/// `Content-MD5` form: base64 of the 16 bytes.
pub fn md5_b64(d: &[u8; 16]) -> String {
    STANDARD.encode(d)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The ETag S3 gives an object uploaded in one PUT (no SSE-KMS/SSE-C): its MD5 in hex.
pub fn md5_etag(d: &[u8; 16]) -> String {
    hex(d)
}

/// The ETag S3 gives a multipart object: the MD5 of the concatenated binary part MD5s,
/// in hex, then `-<parts>`.
pub fn multipart_etag(parts: &[[u8; 16]]) -> String {
    format!("{}-{}", hex(&md5(&parts.concat())), parts.len())
}

/// Whether an ETag as a store reports it (quoted or not) is `expected`.
pub fn etag_is(reported: &str, expected: &str) -> bool {
    reported.trim().trim_matches('"').eq_ignore_ascii_case(expected)
}

/// The full MD5 and per-part MD5s of a file read from disk (blocking).
pub fn file_md5s(src: &(impl Readable + ?Sized), part_size: u64) -> Result<([u8; 16], Vec<[u8; 16]>)> {
    use md5::Digest;
    let mut f = src.open_file()?;
    let path = &src.path();
    let mut buf = vec![0u8; 1 << 20];
    let (mut full, mut part, mut in_part) = (md5::Md5::new(), md5::Md5::new(), 0u64);
    let mut parts = Vec::new();
    loop {
        let want = buf.len().min((part_size - in_part) as usize);
        let n = f.read(&mut buf[..want]).map_err(|e| SyncError::io(path, e))?;
        if n == 0 {
            break;
        }
        full.update(&buf[..n]);
        part.update(&buf[..n]);
        in_part += n as u64;
        if in_part == part_size {
            parts.push(std::mem::take(&mut part).finalize().into());
            in_part = 0;
        }
    }
    if in_part > 0 {
        parts.push(part.finalize().into());
    }
    Ok((full.finalize().into(), parts))
}

/// Read `len` bytes at `offset` (blocking). Fails if the file is shorter.
pub fn read_range(src: &(impl Readable + ?Sized), offset: u64, len: usize) -> Result<Vec<u8>> {
    use std::io::{Seek, SeekFrom};
    let mut f = src.open_file()?;
    let path = &src.path();
    f.seek(SeekFrom::Start(offset))
        .map_err(|e| SyncError::io(path, e))?;
    // Straight into spare capacity: no zeroing of a buffer about to be overwritten.
    let mut buf = Vec::with_capacity(len);
    f.take(len as u64)
        .read_to_end(&mut buf)
        .map_err(|e| SyncError::io(path, e))?;
    if buf.len() != len {
        let e = std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{} bytes at offset {offset}, expected {len}", buf.len()),
        );
        return Err(SyncError::io(path, e));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // CRC32C("123456789") = 0xE3069283 (the standard check value).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(b64(0xE306_9283), "4waSgw==");
        assert_eq!(b64(0), "AAAAAA==");
    }

    #[test]
    fn composite_and_matching() {
        let a = crc32c::crc32c(b"hello ");
        let b = crc32c::crc32c(b"world");
        let full = crc32c::crc32c(b"hello world");
        assert_eq!(crc32c::crc32c_append(a, b"world"), full);
        let c = composite(&[a, b]);
        assert!(c.ends_with("-2"));
        assert!(matches(&c, full, &[a, b]));
        assert!(matches(&b64(full), full, &[a, b]));
        assert!(!matches(&c, full, &[b, a]));
        assert!(!matches(&b64(a), full, &[a, b]));
        assert!(!matches("xyz-2", full, &[]));
    }

    #[test]
    fn md5_forms() {
        // RFC 1321 test vectors.
        assert_eq!(md5_etag(&md5(b"")), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_etag(&md5(b"abc")), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(md5_b64(&md5(b"")), "1B2M2Y8AsgTpgAmY7PhCfg==");
        assert!(etag_is(
            "\"900150983CD24FB0D6963F7D28E17F72\"",
            "900150983cd24fb0d6963f7d28e17f72"
        ));
        assert!(!etag_is(
            "\"900150983cd24fb0d6963f7d28e17f73\"",
            "900150983cd24fb0d6963f7d28e17f72"
        ));
        // Multipart: MD5 of the concatenated binary part MD5s, then the part count.
        let (a, b) = (md5(b"hello "), md5(b"world"));
        let mut cat = a.to_vec();
        cat.extend_from_slice(&b);
        assert_eq!(multipart_etag(&[a, b]), format!("{}-2", md5_etag(&md5(&cat))));
        assert_ne!(multipart_etag(&[a, b]), multipart_etag(&[b, a]));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..(2 << 20) + 5).map(|i| (i * 13 % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let (full, parts) = file_md5s(&Own(&p), 1 << 20).unwrap();
        assert_eq!(full, md5(&data));
        let expect: Vec<[u8; 16]> = data.chunks(1 << 20).map(md5).collect();
        assert_eq!(parts, expect);
    }

    #[test]
    fn file_checksums_split_parts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..(3 << 20) + 17).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let ps = (1 << 20) + 3;
        let (size, full, parts) = file_checksums(&Own(&p), ps).unwrap();
        assert_eq!(size, data.len() as u64);
        assert_eq!(full, crc32c::crc32c(&data));
        let expect: Vec<u32> = data.chunks(ps as usize).map(crc32c::crc32c).collect();
        assert_eq!(parts, expect);
        assert_eq!(read_range(&Own(&p), 5, 10).unwrap(), data[5..15].to_vec());
        assert!(read_range(&Own(&p), data.len() as u64 - 2, 10).is_err());
    }
}
