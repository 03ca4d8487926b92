//! The runbooks under `docs/runbooks/` as the tests read them: one page per alert, with the
//! commands, SQL, PromQL, settings and dashboard panels it tells an operator to use.

use std::path::{Path, PathBuf};

/// The sections every runbook has, in this order.
pub const SECTIONS: [&str; 5] = [
    "## What it means",
    "## Confirm",
    "## What to do",
    "## When it is over",
    "## What the chaos harness measured",
];

/// One runbook page.
pub struct Runbook {
    /// The alert it is for (its file name without `.md`).
    pub alert: String,
    /// Its path.
    pub path: PathBuf,
    /// Its text.
    pub text: String,
}

impl Runbook {
    /// The bodies of its fenced code blocks tagged `lang`.
    pub fn blocks(&self, lang: &str) -> Vec<String> {
        blocks(&self.text, lang)
    }

    /// The shell command lines of its `sh` blocks (comments and blank lines left out), then
    /// the `primed …` commands it writes inline.
    pub fn commands(&self) -> Vec<String> {
        let inline = regex::Regex::new(r"`(primed [^`]+)`").unwrap();
        self.blocks("sh")
            .iter()
            .flat_map(|b| {
                b.lines()
                    .map(str::trim)
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .chain(inline.captures_iter(&self.text).map(|c| c[1].to_string()))
            .collect()
    }

    /// The statements of its `sql` blocks.
    pub fn statements(&self) -> Vec<String> {
        self.blocks("sql")
            .iter()
            .flat_map(|b| {
                b.split(';')
                    .map(|s| {
                        s.lines()
                            .filter(|l| !l.trim_start().starts_with("--"))
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                    .collect::<Vec<_>>()
            })
            .filter(|s| !s.trim().is_empty())
            .collect()
    }

    /// The configuration keys it names: upper-case words with an underscore.
    pub fn settings(&self) -> Vec<String> {
        let re = regex::Regex::new(r"\b[A-Z][A-Z0-9]*_[A-Z0-9_]*[A-Z0-9]\b").unwrap();
        let mut out: Vec<String> = re
            .find_iter(&self.text)
            .map(|m| m.as_str().to_string())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The dashboard panels it points at, written `**Dashboard › Panel**`.
    pub fn panels(&self) -> Vec<(String, String)> {
        let re = regex::Regex::new(r"\*\*([^*›]+?) › ([^*]+?)\*\*").unwrap();
        re.captures_iter(&self.text)
            .map(|c| (c[1].to_string(), c[2].to_string()))
            .collect()
    }

    /// The metric names it writes inline (in backticks, with a metric's suffix), beside those
    /// of its `promql` blocks.
    pub fn inline_metrics(&self) -> Vec<String> {
        let re = regex::Regex::new(
            r"`([a-z][a-z0-9_]*_(total|seconds|bytes|count|length|active|up|pending|info|fds|clients|bucket))(\{[^`]*\})?`",
        )
        .unwrap();
        re.captures_iter(&self.text)
            .map(|c| c[1].to_string())
            .collect()
    }
}

/// The fenced code blocks tagged `lang` in `text`.
pub fn blocks(text: &str, lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut current, fence) {
            (None, Some(tag)) if tag.trim() == lang => current = Some(String::new()),
            (Some(body), Some(_)) => {
                out.push(std::mem::take(body));
                current = None;
            }
            (Some(body), None) => {
                body.push_str(line);
                body.push('\n');
            }
            _ => {}
        }
    }
    out
}

/// The repository's root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every runbook (the index, `README.md`, left out), by alert name.
pub fn all() -> Vec<Runbook> {
    let dir = root().join("docs/runbooks");
    let mut out: Vec<Runbook> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .filter(|p| p.file_name().is_some_and(|n| n != "README.md"))
        .map(|path| Runbook {
            alert: path.file_stem().unwrap().to_string_lossy().into_owned(),
            text: std::fs::read_to_string(&path).unwrap(),
            path,
        })
        .collect();
    out.sort_by(|a, b| a.alert.cmp(&b.alert));
    out
}

/// Every alert rule under `monitoring/alerts/`: its name and its annotations.
pub fn alerts() -> Vec<(String, serde_json::Value)> {
    let dir = root().join("monitoring/alerts");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let doc: serde_json::Value =
            serde_json::to_value(serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text).unwrap())
                .unwrap();
        for group in doc["groups"].as_array().unwrap() {
            for rule in group["rules"].as_array().unwrap() {
                if let Some(name) = rule["alert"].as_str() {
                    out.push((name.to_string(), rule["annotations"].clone()));
                }
            }
        }
    }
    out
}
