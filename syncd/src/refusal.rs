//! Why a file under a watch root is not uploaded: one reason per kind of hostile or
//! broken file, named as logs, metrics and `status` show it.

/// Why a file (or directory) under a watch root is not uploaded. Each one is logged once per
/// path, counted in `files_refused_total{reason}` and listed by `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    /// A symbolic link (to a file or a directory): never followed.
    Symlink,
    /// A FIFO, socket or device: not a clip, and opening one can block or have effects.
    NotRegular,
    /// More than one name for the same file: it may be a link to a file outside the tree.
    HardLink,
    /// Owned by another user than the daemon's.
    OtherOwner,
    /// A path that does not lie beneath any watch root (e.g. a root removed from the config
    /// while its files were queued).
    OutsideTree,
    /// A file or directory name that is not UTF-8 (keys and the journal need UTF-8).
    NotUtf8,
    /// An mtime that cannot be represented (outside 1677..2262 in nanoseconds).
    BadMtime,
    /// A manifest date that is not `YYYY-MM-DD…`; the clip is still uploaded, its `{date}`
    /// taken from the file's mtime.
    BadDate,
    /// A manifest larger than `tree::MAX_MANIFEST_BYTES`: not read, not uploaded; its clip's
    /// files are treated like files without a manifest.
    ManifestTooLarge,
    /// A manifest that is not JSON: not uploaded; its clip's files are treated like files
    /// without a manifest.
    BadManifest,
    /// The key template renders no usable key for this file.
    BadKey,
    /// A manifest whose clip has a refused file: held back (the store never shows a
    /// manifest naming a file it lacks) until that file is fixed.
    MemberRefused,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Symlink => "symlink",
            Refusal::NotRegular => "not_regular",
            Refusal::HardLink => "hard_link",
            Refusal::OtherOwner => "other_owner",
            Refusal::OutsideTree => "outside_tree",
            Refusal::NotUtf8 => "not_utf8",
            Refusal::BadMtime => "bad_mtime",
            Refusal::BadDate => "bad_date",
            Refusal::ManifestTooLarge => "manifest_too_large",
            Refusal::BadManifest => "bad_manifest",
            Refusal::BadKey => "bad_key",
            Refusal::MemberRefused => "member_refused",
        }
    }
}
