//! The shipped deployment files keep the properties the daemon relies on.


use std::path::PathBuf;


fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn json(rel: &str) -> serde_json::Value {
    let p = repo().join(rel);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
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
                !matches!(a.as_str(), "s3:ListBucket" | "s3:DeleteObject" | "s3:*" | "s3:Delete*"),
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
