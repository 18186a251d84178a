//! Shared by the YAML files Backstop reads (`backstop.yaml`, policies):
//! turning parser messages and field paths into `file:line:column` errors.

use serde::Serialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// A YAML file that could not be used: where, which field, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileError {
    #[serde(skip)]
    pub file: PathBuf,
    /// 1-based; absent when the parser could not tell (e.g. unreadable file).
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// The field path, like `triggers[1].above`; empty for the whole file.
    pub path: String,
    pub message: String,
}

impl FileError {
    /// An error about the file as a whole (unreadable, too big).
    pub fn whole_file(file: &Path, message: String) -> Self {
        Self {
            file: file.to_path_buf(),
            line: None,
            column: None,
            path: String::new(),
            message,
        }
    }

    /// An error about the field at `path`, located in `text`.
    pub fn at_field(file: &Path, text: &str, path: String, message: String) -> Self {
        let (line, column) = locate(text, &path).unzip();
        Self {
            file: file.to_path_buf(),
            line,
            column,
            path,
            message,
        }
    }
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, ":{line}:{column}")?;
        }
        if !self.path.is_empty() && self.path != "." {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for FileError {}

/// Deserializes YAML `text`; a type error names the file, line, column and
/// field path.
pub fn deserialize<T: serde::de::DeserializeOwned>(
    file: &Path,
    text: &str,
) -> Result<T, FileError> {
    let deserializer = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = match e.path().to_string() {
            // The whole document; "." would read like a field.
            root if root == "." => String::new(),
            path => path,
        };
        let mut at = e.inner().location().map(|l| (l.line(), l.column()));
        // Errors raised after a whole value was read (an "exactly one of")
        // carry the parser's position at the time, which can be before the
        // field itself; an error about a field is never before it.
        if let Some(field_at) = locate(text, &path) {
            if at.is_none_or(|at| at < field_at) {
                at = Some(field_at);
            }
        }
        FileError {
            file: file.to_path_buf(),
            line: at.map(|(line, _)| line),
            column: at.map(|(_, column)| column),
            message: strip_location(&e.inner().to_string(), &path),
            path,
        }
    })
}

/// The YAML parser puts the path in front of messages and "at line L
/// column C" behind; we print both ourselves, once.
fn strip_location(message: &str, path: &str) -> String {
    // The parser's own path may stop short of ours (for an unknown field it
    // names the map, we name the field): strip any prefix of our path.
    let message = match message.split_once(": ") {
        Some((prefix, rest)) if !prefix.is_empty() && path.starts_with(prefix) => rest,
        _ => message,
    };
    match message.find(" at line ") {
        Some(at) => message[..at].to_string(),
        None => message.to_string(),
    }
}

/// Finds the line and column of a dotted field path (`a.b[2].c`) in YAML
/// text written in block style, with one-line flow mappings inside it
/// (`- { metric: x, above: "5%" }`): good enough to point at the field a
/// semantic check rejected. Returns `None` when it cannot tell.
pub fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    let mut segments = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            segments.push(Segment::Key(key));
        }
        while let Some(end) = rest.find(']') {
            if !rest.starts_with('[') {
                break;
            }
            segments.push(Segment::Index(rest.get(1..end)?.parse().ok()?));
            rest = &rest[end + 1..];
        }
    }
    if segments.is_empty() {
        return None;
    }
    let lines: Vec<&str> = text.lines().collect();
    let (mut from, mut parent_indent, mut in_item) = (0usize, -1isize, false);
    let mut found: Option<(usize, usize)> = None;
    let mut flow = false;
    for segment in segments {
        if flow {
            // Inside a one-line flow mapping: keys only, on the same line.
            let (Segment::Key(key), Some((line, column))) = (segment, found) else {
                break;
            };
            match find_flow_key(lines[line - 1], column - 1, key) {
                Some(at) => found = Some((line, at + 1)),
                None => break,
            }
            continue;
        }
        let mut hit = None;
        let mut seen_items = 0usize;
        for (n, line) in lines.iter().enumerate().skip(from) {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let indent = (line.len() - trimmed.len()) as isize;
            let item_first_line = in_item && n == from;
            // A list may sit at its key's indent (`key:\n- a`).
            let sibling_item = matches!(segment, Segment::Index(_))
                && indent == parent_indent
                && trimmed.starts_with('-');
            if indent <= parent_indent && !item_first_line && !sibling_item {
                break;
            }
            match segment {
                Segment::Key(key) => {
                    let body = trimmed.strip_prefix("- ").unwrap_or(trimmed);
                    let body_indent = indent + (trimmed.len() - body.len()) as isize;
                    let quoted = format!("\"{key}\":");
                    if body.starts_with(&format!("{key}:")) || body.starts_with(&quoted) {
                        hit = Some((n, body_indent));
                        break;
                    }
                }
                Segment::Index(index) => {
                    if trimmed.starts_with("- ") || trimmed == "-" {
                        if seen_items == index {
                            hit = Some((n, indent));
                            break;
                        }
                        seen_items += 1;
                    }
                }
            }
        }
        // Not spelled out in block style: perhaps a flow mapping on the
        // enclosing field's line (`- { metric: x, above: "5%" }`); from then
        // on only that line is searched. Otherwise point at the closest
        // enclosing field found so far.
        let Some((n, indent)) = hit else {
            match (segment, found) {
                (Segment::Key(key), Some((line, column))) => {
                    match find_flow_key(lines[line - 1], column - 1, key) {
                        Some(at) => {
                            found = Some((line, at + 1));
                            flow = true;
                            continue;
                        }
                        None => break,
                    }
                }
                _ => break,
            }
        };
        found = Some((n + 1, indent as usize + 1));
        in_item = matches!(segment, Segment::Index(_));
        // A list item's first key sits on the dash's own line.
        from = if in_item { n } else { n + 1 };
        parent_indent = indent;
    }
    found
}

/// The byte offset of `key:` (or `"key":`) written as a flow-mapping key
/// on `line`, after `from`: preceded by `{`, `,` or a space.
fn find_flow_key(line: &str, from: usize, key: &str) -> Option<usize> {
    let bytes = line.as_bytes();
    let rest = line.get(from..)?;
    let plain = format!("{key}:");
    let quoted = format!("\"{key}\":");
    rest.char_indices().find_map(|(i, _)| {
        let at = from + i;
        let starts_key = rest[i..].starts_with(&plain) || rest[i..].starts_with(&quoted);
        let after_separator = at > 0 && matches!(bytes[at - 1], b'{' | b',' | b' ');
        (starts_key && after_separator).then_some(at)
    })
}

#[derive(Clone, Copy)]
enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_finds_keys_in_one_line_flow_mappings() {
        let text = "strategy: { canary: { steps: [1, 5], bake: 2m } }\ntriggers:\n  - { metric: x, above: \"5%\" }\n  - metric: y\n    below: 1s\n";
        assert_eq!(locate(text, "strategy.canary.bake"), Some((1, 38)));
        assert_eq!(locate(text, "strategy.canary.steps"), Some((1, 23)));
        assert_eq!(locate(text, "triggers[0].above"), Some((3, 18)));
        assert_eq!(locate(text, "triggers[1].below"), Some((5, 5)));
        // Not there: the closest enclosing field.
        assert_eq!(locate(text, "triggers[0].for"), Some((3, 3)));
        assert_eq!(locate(text, "strategy.canary.steps[1]"), Some((1, 23)));
    }
}
