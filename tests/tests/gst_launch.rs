//! The plugin as users meet it: `gst-inspect-1.0` and `gst-launch-1.0` in fresh processes,
//! with `GST_PLUGIN_PATH` pointing at the build, as the README shows.

use std::process::{Command, Output};

use edgemask_tests::{onnxruntime, plugin_dir, root, shared};

fn gst(tool: &str, args: &[&str], ort: Option<&str>) -> Output {
    let mut cmd = Command::new(tool);
    cmd.args(args)
        .env("GST_PLUGIN_PATH", plugin_dir())
        // A private registry, so a stale system registry cache never hides the fresh build.
        .env(
            "GST_REGISTRY",
            std::env::temp_dir().join(format!("edgemask-registry-{}.bin", std::process::id())),
        )
        .env_remove("GST_DEBUG");
    match ort {
        Some(p) => cmd.env("ORT_DYLIB_PATH", p),
        None => cmd.env_remove("ORT_DYLIB_PATH"),
    };
    cmd.output()
        .unwrap_or_else(|e| panic!("{tool}: {e} (run scripts/setup.sh)"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn launch_line(model: &str) -> Vec<String> {
    let photo = shared().join("testdata/person_400x600.png");
    format!(
        "filesrc location={} ! decodebin ! videoconvert ! imagefreeze num-buffers=3 ! unetmask model={model} mode=mask ! fakesink",
        photo.display()
    )
    .split(' ')
    .map(String::from)
    .collect()
}

#[test]
fn gst_inspect_documents_every_property() {
    let out = gst("gst-inspect-1.0", &["unetmask"], None);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    for prop in [
        "model",
        "onnxruntime-library",
        "device",
        "threads",
        "mode",
        "threshold",
        "smoothing",
        "inference-interval",
        "skip-late",
        "layout",
        "channel-order",
        "resize",
        "input-size",
        "scale",
        "mean",
        "std",
        "output-activation",
        "person-class",
        "overlay-color",
        "overlay-opacity",
        "blur-radius",
        "replace-color",
        "replace-image",
        "stats-interval",
        "stats",
    ] {
        assert!(
            t.contains(&format!("  {prop:<20}")) || t.contains(&format!("  {prop} ")),
            "property {prop} missing:\n{t}"
        );
    }
    for nick in ["meta", "mask", "alpha", "overlay", "blur", "replace"] {
        assert!(
            t.contains(&format!("({nick})")) || t.contains(nick),
            "mode {nick} undocumented"
        );
    }
}

#[test]
fn gst_launch_runs_the_bundled_model() {
    let model = root().join("models/selfie_segmentation_256x256.onnx");
    let args = launch_line(&model.display().to_string());
    let args: Vec<&str> = std::iter::once("-q")
        .chain(args.iter().map(String::as_str))
        .collect();
    let out = gst(
        "gst-launch-1.0",
        &args,
        Some(&onnxruntime().display().to_string()),
    );
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn missing_onnxruntime_is_named_with_the_fix() {
    let model = root().join("models/selfie_segmentation_256x256.onnx");
    let args = launch_line(&model.display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = gst("gst-launch-1.0", &args, Some("/nonexistent/libonnxruntime.so"));
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("ONNX Runtime library"), "{t}");
    assert!(
        t.contains("ORT_DYLIB_PATH /nonexistent/libonnxruntime.so (missing)"),
        "{t}"
    );
    assert!(t.contains("scripts/setup.sh"), "{t}");
    // A file that is not a library at all.
    let out = gst("gst-launch-1.0", &args, Some(&model.display().to_string()));
    assert!(!out.status.success());
    let t = text(&out);
    assert!(
        t.contains("ONNX Runtime library") && t.contains("selfie_segmentation_256x256.onnx"),
        "{t}"
    );
}
