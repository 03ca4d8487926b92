//! The operator-facing documents name every configuration key the daemon reads.
// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use primed::config::KEYS;

#[test]
fn readme_and_env_example_list_every_configuration_key() {
    let root = env!("CARGO_MANIFEST_DIR");
    for doc in ["README.md", "deploy/primed.env.example"] {
        let text = std::fs::read_to_string(format!("{root}/{doc}")).unwrap();
        let missing: Vec<&str> = KEYS
            .iter()
            .map(|k| k.name)
            .filter(|name| !text.contains(name))
            .collect();
        assert!(missing.is_empty(), "{doc} does not mention {missing:?}");
    }
}
