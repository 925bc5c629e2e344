//! The shipped deployment files keep the properties the daemon relies on, and the daemon
//! finds its host name where the unit's sandbox leaves it.

mod common;

use std::path::PathBuf;

use common::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn json(rel: &str) -> serde_json::Value {
    let p = repo().join(rel);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn statements(v: &serde_json::Value) -> Vec<serde_json::Value> {
    v["Statement"].as_array().unwrap().clone()
}

fn actions(s: &serde_json::Value) -> Vec<String> {
    match &s["Action"] {
        serde_json::Value::String(a) => vec![a.clone()],
        serde_json::Value::Array(a) => a.iter().map(|x| x.as_str().unwrap().to_string()).collect(),
        _ => vec![],
    }
}

/// Least privilege: no listing of objects, no deletion, object access only under the
/// host's own prefix. (The daemon's 403 handling assumes exactly this: no
/// `s3:ListBucket`, so AWS answers 403 for missing keys.)
#[test]
fn the_host_policy_grants_no_listing_no_deletion_and_only_its_own_prefix() {
    let p = json("configs/iam/edgemask-syncd-policy.json");
    for s in statements(&p) {
        assert_eq!(s["Effect"], "Allow");
        for a in actions(&s) {
            assert!(
                !matches!(
                    a.as_str(),
                    "s3:ListBucket" | "s3:DeleteObject" | "s3:*" | "s3:Delete*"
                ),
                "{a} granted"
            );
            if matches!(a.as_str(), "s3:PutObject" | "s3:GetObject") {
                let r = s["Resource"].as_str().unwrap();
                assert!(
                    r.ends_with("/${aws:PrincipalTag/edgemask-host}/*"),
                    "{a} not confined to the host's prefix: {r}"
                );
            }
        }
    }
}

/// The bucket policy refuses writes that could overwrite (no `If-None-Match`) except the
/// multipart steps that cannot carry it, and every request without TLS.
#[test]
fn the_bucket_policy_denies_overwrites_and_clear_text() {
    let p = json("configs/iam/edgemask-clips-bucket-policy.json");
    let st = statements(&p);
    let clobber = st
        .iter()
        .find(|s| actions(s).contains(&"s3:PutObject".to_string()) && s["Effect"] == "Deny")
        .expect("a deny on PutObject");
    assert_eq!(clobber["Condition"]["Null"]["s3:if-none-match"], "true");
    assert_eq!(clobber["Condition"]["Bool"]["s3:ObjectCreationOperation"], "true");
    let tls = st
        .iter()
        .find(|s| s["Condition"]["Bool"]["aws:SecureTransport"] == "false")
        .expect("a deny without TLS");
    assert_eq!(tls["Effect"], "Deny");
    assert!(actions(tls).contains(&"s3:*".to_string()));
}

/// The unit's `ProcSubset=pid` hides `/proc/sys`; the daemon used to read its host name
/// from `/proc/sys/kernel/hostname` there, and every host became `localhost` (every
/// host's clips under one prefix, or refused by a per-host policy). Run here in a mount
/// namespace with `/proc/sys` hidden the same way.
#[test]
fn the_host_name_survives_a_hidden_proc_sys() {
    let unshare_works = std::process::Command::new("unshare")
        .args(["-m", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !unshare_works {
        eprintln!("skipped: no mount namespaces here (needs root and unshare)");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("foreign.bin"), b"x").unwrap();
    let cfg = write_config(
        work.path(),
        &format!(
            "watch = [\"{}\"]\ndestination = \"file://{}/up\"\njournal = \"{}/j.sqlite\"\nkey_template = \"{{host}}/{{file}}\"\n[readiness]\nsettle_secs = 0\n",
            out.display(),
            work.path().display(),
            work.path().display()
        ),
    );
    let script = format!(
        "mount -t tmpfs none /proc/sys && ! test -e /proc/sys/kernel/hostname && exec {} --config {} --dry-run",
        syncd_bin().display(),
        cfg.display()
    );
    let o = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .unwrap();
    let so = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{so}\n{}", String::from_utf8_lossy(&o.stderr));
    let host = std::process::Command::new("hostname").output().unwrap();
    let host = String::from_utf8_lossy(&host.stdout).trim().to_string();
    if host.is_empty() || host == "localhost" {
        eprintln!("skipped: this machine is called {host:?}, the fallback itself");
        return;
    }
    assert!(
        so.contains(&format!("/{host}/foreign.bin")),
        "host {host:?} not in {so}"
    );
}

/// A configuration error exits 2, and the unit does not restart on 2: a loop under
/// `Restart=always` would only bury the message.
#[test]
fn a_config_error_exits_2_and_is_not_restarted() {
    let work = tempfile::tempdir().unwrap();
    let cfg = write_config(
        work.path(),
        "watch = [\"/tmp\"]\ndestination = \"s3://b/p\"\n[upload]\nrequest_timeout_secs = inf\n",
    );
    let (code, _, se) = run(&cfg, &[], &["check"], std::time::Duration::from_secs(20));
    assert_eq!(code, 2, "{se}");
    assert!(se.contains("upload.request_timeout_secs"), "{se}");
    let unit = edgemask_tests::units::Unit::read(&repo().join("configs/systemd/edgemask-syncd.service"));
    let prevent = unit
        .get("Service", "RestartPreventExitStatus")
        .unwrap_or_default();
    assert!(
        prevent.split_whitespace().any(|c| c == "2"),
        "RestartPreventExitStatus = {prevent:?}"
    );
}

/// The shipped configs (the annotated example, the demo's) are valid as they stand: a key
/// renamed or a range narrowed in the code must be followed there.
#[test]
fn the_shipped_configs_pass_check() {
    let edgemask_user = std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("edgemask:"));
    for rel in ["configs/syncd.example.toml", "configs/demo-syncd.toml"] {
        let check = |env: &[(String, String)]| {
            run(
                &repo().join(rel),
                env,
                &["check"],
                std::time::Duration::from_secs(20),
            )
        };
        let (code, so, se) = check(&[]);
        if rel.contains("example") && !edgemask_user {
            // Its runner_user is the sysusers file's `edgemask`, absent on a build host.
            assert_eq!(code, 2, "{rel}: {so}{se}");
            assert!(
                se.contains("files.runner_user") && se.contains("no such user"),
                "{se}"
            );
            let (code, so, se) = check(&[("EDGEMASK_SYNCD__FILES__RUNNER_USER".into(), "root".into())]);
            assert_eq!(code, 0, "{rel}: {so}{se}");
        } else {
            assert_eq!(code, 0, "{rel}: {so}{se}");
        }
    }
}
