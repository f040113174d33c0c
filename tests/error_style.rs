//! An error either says its cause in its own message or hands it out as `source()`, never
//! both: anyhow's `{:#}` (the CLI's edge) prints every `source()` after the message, so a
//! variant like `#[error("cannot read {path}: {source}")] Read { path, source }` prints
//! "No such file or directory" twice. thiserror makes a field `source` when it is named
//! `source` or marked `#[source]`/`#[from]`; labgpu's errors name the field `cause` instead.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text of the variant that follows an `#[error(..)]` attribute, up to the `,` or `}`
/// that ends it at depth 0.
fn variant_after(text: &str) -> &str {
    let mut depth = 0i32;
    for (i, c) in text.char_indices() {
        match c {
            '{' | '(' | '[' => depth += 1,
            '}' | ')' | ']' if depth == 0 => return &text[..i],
            '}' | ')' | ']' => depth -= 1,
            ',' if depth == 0 => return &text[..i],
            _ => {}
        }
    }
    text
}

/// Placeholders in the message that are the variant's source, e.g. `{source}` or `{0}`.
fn doubled(message: &str, variant: &str) -> Vec<String> {
    let fields_at = variant.find(['{', '(']);
    let Some(at) = fields_at else { return vec![] };
    let tuple = variant[at..].starts_with('(');
    let body = &variant[at + 1..];
    let mut found = Vec::new();
    for (i, field) in body.split(',').enumerate() {
        let field = field.trim();
        let marked = field.contains("#[source]") || field.contains("#[from]");
        let name = if tuple {
            i.to_string()
        } else {
            let bare = field.rsplit(']').next().unwrap_or(field).trim();
            bare.split(':').next().unwrap_or("").trim().to_string()
        };
        let is_source = marked || (!tuple && name == "source");
        if is_source && message.contains(&format!("{{{name}}}")) {
            found.push(name);
        }
    }
    found
}

#[test]
fn no_error_prints_its_cause_twice() {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let mut offenders = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (at, _) in text.match_indices("#[error(\"") {
            let rest = &text[at + 9..];
            let Some(end) = rest.find("\")]") else {
                continue;
            };
            let message = &rest[..end];
            let after = rest[end + 3..].trim_start();
            for name in doubled(message, variant_after(after)) {
                let line = text[..at].matches('\n').count() + 1;
                offenders.push(format!("{}:{line}: {{{name}}}", file.display()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "these errors say their source in the message and also return it from source(): {offenders:#?}"
    );
}

#[test]
fn the_check_sees_the_doubled_pattern() {
    assert_eq!(
        doubled(
            "cannot read {path}: {source}",
            "Read { path: PathBuf, source: io::Error }"
        ),
        ["source"]
    );
    assert_eq!(
        doubled(
            "the proxy cannot use its policy: {0}",
            "Policy(#[from] PolicyError)"
        ),
        ["0"]
    );
    assert!(doubled(
        "cannot read {path}: {cause}",
        "Read { path: PathBuf, cause: io::Error }"
    )
    .is_empty());
    assert!(doubled(
        "{path} failed",
        "Read { path: PathBuf, #[source] cause: io::Error }"
    )
    .is_empty());
}
