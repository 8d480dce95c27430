//! `cargo xtask list --json` (the binary: it builds both kernels and boots
//! each with `list`) prints one JSON document with the nine rows, and
//! `cargo xtask list` the same rows as text.

use std::process::Command;

fn xtask(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .output()
        .expect("run xtask");
    assert!(
        out.status.success(),
        "xtask {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[test]
fn list_json_has_the_nine_rows() {
    let json: serde_json::Value =
        serde_json::from_str(&xtask(&["list", "--json"])).expect("one JSON document");
    let rows = json["rows"].as_array().expect("rows");
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "demo-lock-vs-put",
            "wp-unlock-vs-zap",
            "gup-fast-folding",
            "zap-rmap-vs-mkclean",
            "ptfrag-refcount",
            "collapse-vs-gup-fast",
            "ptfree-vs-gup-fast",
            "skey-dirty-vs-swapcache",
            "nested-flush"
        ]
    );
    assert_eq!(json["problems"], serde_json::json!([]));
    let text = xtask(&["list", "--arch", "s390x"]);
    for name in names {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    assert!(text.contains("listed by the s390x kernel"), "{text}");
}
