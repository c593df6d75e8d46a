//! The crate's layers, bottom to top, and a test that every `crate::…` path points down.
//!
//! A module may use modules of a lower layer and its own top-level module, never one of its
//! own layer or above: the log knows nothing of sources, sources nothing of HTTP.

/// Top-level module → layer.
const LAYERS: &[(&str, u8)] = &[
    // Leaves: the change record, time, metric names, config types, SSE framing.
    ("record", 0),
    ("time", 0),
    ("telemetry", 0),
    ("config", 0),
    ("sse", 0),
    // `deltarelay check` results and their report.
    ("check", 0),
    // The log: writing, reading and following it.
    // Shapes: row filters and projections over change records.
    ("shape", 1),
    ("log", 2),
    // What feeds the log, and who may read it.
    ("source", 3),
    ("auth", 3),
    // What serves it.
    ("http", 4),
    ("systemd", 4),
    // Wiring.
    ("relay", 5),
];

/// Imports still to be turned around (module → module). Empty is the goal; the test fails
/// when an entry here is no longer needed, so the list only shrinks.
const NOT_YET: &[(&str, &str)] = &[];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// Every `crate::<module>` a file names outside comments.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let tail = &rest[at + "crate::".len()..];
            let name: String = tail
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `$crate::` in macros and `{…}` groups are not module names.
            let preceded_by_dollar = rest[..at].ends_with('$');
            if !name.is_empty() && !preceded_by_dollar {
                found.push((number + 1, name));
            }
            rest = tail;
        }
    }
    found
}

fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("read src/").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every upward or sideways import in `src/`, as `file:line: a -> b` lines.
fn violations() -> Vec<String> {
    violations_with(NOT_YET)
}

fn violations_with(allowed: &[(&str, &str)]) -> Vec<String> {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut found = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let top = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .unwrap()
            .trim_end_matches(".rs")
            .to_string();
        // The crate root and the binary sit above every layer.
        if top == "lib" || top == "main" || top == "layers" {
            continue;
        }
        let own = layer(&top).unwrap_or_else(|| {
            panic!(
                "src/{} is in no layer: add it to LAYERS",
                relative.display()
            )
        });
        let text = std::fs::read_to_string(&file).unwrap();
        for (line, used) in crate_paths(&text) {
            if used == top {
                continue;
            }
            let Some(theirs) = layer(&used) else {
                found.push(format!(
                    "src/{}:{line}: {top} -> unknown module {used}",
                    relative.display()
                ));
                continue;
            };
            if theirs >= own && !allowed.contains(&(top.as_str(), used.as_str())) {
                found.push(format!(
                    "src/{}:{line}: {top} -> {used}",
                    relative.display()
                ));
            }
        }
    }
    found
}

#[test]
fn imports_only_point_down_the_layers() {
    let found = violations();
    assert!(
        found.is_empty(),
        "imports that point up or sideways (see src/layers.rs):\n{}",
        found.join("\n")
    );
}

#[test]
fn every_exception_is_still_needed() {
    let found = violations_with(&[]);
    for (from, to) in NOT_YET {
        let needle = format!(": {from} -> {to}");
        assert!(
            found.iter().any(|v| v.ends_with(&needle)),
            "{from} -> {to} no longer occurs: remove it from NOT_YET"
        );
    }
}

#[test]
fn the_check_sees_an_upward_import() {
    let paths = crate_paths("use crate::http::telemetry; // crate::log\nlet x = $crate::y;\n");
    assert_eq!(paths, vec![(1, "http".to_string())]);
}
