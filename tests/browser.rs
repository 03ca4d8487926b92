//! The web pages in a real headless Chromium (Debian's `chromium`, driven by playwright-core
//! from npm; `scripts/ensure-services.sh` installs both). Screenshots go to
//! `target/test-artifacts/`.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::Daemon;

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn node_script(script: &str, args: &[&str]) -> serde_json::Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let playwright =
        std::env::var("PLAYWRIGHT_PREFIX").unwrap_or_else(|_| "/opt/playwright".into());
    let out = Command::new("node")
        .arg(root.join("tests/browser").join(script))
        .args(args)
        .env("NODE_PATH", Path::new(&playwright).join("node_modules"))
        .output()
        .expect("node must be installed (scripts/ensure-services.sh installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("{script} printed no report:\n{stdout}\n{stderr}"));
    assert!(
        out.status.success() && report["ok"] == true,
        "{script}: {report}\n{stderr}"
    );
    report
}

#[test]
fn the_public_page_submits_a_number_and_shows_its_result() {
    let d = Daemon::start(&[]);
    let shots = artifacts();
    let report = node_script("public_page.mjs", &[&d.url("/"), shots.to_str().unwrap()]);
    assert_eq!(report["result"], "2305843009213693951 is prime.");
    for shot in ["public-page-error.png", "public-page-result.png"] {
        let png = std::fs::read(shots.join(shot)).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{shot} is not a PNG");
    }
}
