//! The tests' set-up, run on first need: `scripts/ensure-services.sh` installs the tools the
//! tests call (maildev, playwright-core and Chromium, promtool, amtool, the database and
//! Redis clients) and starts MariaDB, NATS and Redis where they do not answer. Once per test
//! binary, and one binary at a time (`flock` on a lock file in the target directory), so
//! `cargo test --workspace` on a fresh machine sets itself up. Shared by the daemon's and
//! the chaos harness's tests.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// Runs the set-up once in this process; panics with what to do when it fails.
pub fn ensure() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        // The workspace root: the daemon's crate, or the parent of the chaos crate.
        let root = if root.join("scripts/ensure-services.sh").exists() {
            root.to_path_buf()
        } else {
            root.parent().unwrap_or(root).to_path_buf()
        };
        let script = root.join("scripts/ensure-services.sh");
        let lock = root.join("target/.test-setup.lock");
        let _ = std::fs::create_dir_all(root.join("target"));
        let out = Command::new("flock")
            .arg(&lock)
            .arg("bash")
            .arg(&script)
            .output();
        let out = match out {
            Ok(out) => out,
            Err(e) => panic!(
                "cannot run the tests' set-up ({}) under flock: {e}; flock is in util-linux",
                script.display()
            ),
        };
        if !out.status.success() {
            panic!(
                "the tests' set-up failed ({}, exit {}):\n{}{}\n\
                 It installs missing tools with apt-get and npm (root and network access are \
                 needed the first time) and starts MariaDB, NATS and Redis on loopback; run it \
                 by hand to see what is missing.",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    });
}
