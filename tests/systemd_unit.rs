//! `deploy/primed.service` is a valid, hardened notify unit (checked by systemd-analyze).
// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/setup.rs"]
mod setup;

use std::path::Path;
use std::process::Command;

fn unit_with_built_binary(dir: &Path) -> std::path::PathBuf {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/primed.service"
    ))
    .expect("deploy/primed.service");
    let unit = unit.replace("/usr/local/bin/primed", env!("CARGO_BIN_EXE_primed"));
    let path = dir.join("primed.service");
    std::fs::write(&path, unit).expect("write unit");
    path
}

fn analyze(args: &[&str]) -> std::process::Output {
    setup::ensure();
    Command::new("systemd-analyze")
        .args(args)
        .output()
        .expect("systemd-analyze must be installed (Debian package systemd); .ci/run installs it")
}

#[test]
fn the_unit_verifies_and_declares_what_operations_rely_on() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_with_built_binary(dir.path());
    let out = analyze(&["verify", "--man=no", unit.to_str().unwrap()]);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&unit).unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "EnvironmentFile=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "DynamicUser=yes",
    ] {
        assert!(text.lines().any(|l| l.starts_with(line)), "missing {line}");
    }
}

#[test]
fn the_unit_is_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_with_built_binary(dir.path());
    // Exposure is reported on a 0-10 scale; the threshold is in tenths. 2.0 or less is "OK".
    let out = analyze(&[
        "security",
        "--offline=yes",
        "--threshold=20",
        unit.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exposure above 2.0:\n{stdout}");
}
