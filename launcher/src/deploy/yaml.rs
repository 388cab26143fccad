//! A YAML writer for the deployment files, keeping keys in the order they were added.
//!
//! Compose files and Kubernetes manifests only need maps, lists, strings, numbers and
//! booleans, so this writes block-style YAML itself instead of depending on a YAML crate
//! (see docs/DECISIONS.md). Strings are written as JSON strings, which are valid YAML
//! double-quoted scalars, so no value can change type or break the document.

use std::fmt::Write;

/// A YAML value.
#[derive(Debug, Clone, PartialEq)]
pub enum Yaml {
    Str(String),
    Int(i64),
    Bool(bool),
    List(Vec<Yaml>),
    Map(Vec<(String, Yaml)>),
}

impl From<&str> for Yaml {
    fn from(s: &str) -> Self {
        Yaml::Str(s.to_string())
    }
}

impl From<String> for Yaml {
    fn from(s: String) -> Self {
        Yaml::Str(s)
    }
}

impl From<i64> for Yaml {
    fn from(n: i64) -> Self {
        Yaml::Int(n)
    }
}

impl From<bool> for Yaml {
    fn from(b: bool) -> Self {
        Yaml::Bool(b)
    }
}

impl<T: Into<Yaml>> From<Vec<T>> for Yaml {
    fn from(items: Vec<T>) -> Self {
        Yaml::List(items.into_iter().map(Into::into).collect())
    }
}

/// Builds a map: `map([("image", "x".into()), ...])`.
pub fn map<K: Into<String>>(entries: impl IntoIterator<Item = (K, Yaml)>) -> Yaml {
    Yaml::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

impl Yaml {
    /// Adds `key: value` to a map (keeping order); other values are left as they are.
    pub fn insert(&mut self, key: &str, value: Yaml) {
        if let Yaml::Map(entries) = self {
            match entries.iter_mut().find(|(k, _)| k == key) {
                Some(entry) => entry.1 = value,
                None => entries.push((key.to_string(), value)),
            }
        }
    }

    /// The document as block-style YAML, ending with a newline.
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        match self {
            Yaml::Map(entries) if !entries.is_empty() => write_map(&mut out, entries, 0),
            Yaml::List(items) if !items.is_empty() => write_list(&mut out, items, 0),
            scalar => {
                out.push_str(&inline(scalar));
                out.push('\n');
            }
        }
        out
    }
}

fn key(k: &str) -> String {
    let plain = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
        && !matches!(
            k,
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n"
        )
        && !k.starts_with(|c: char| c.is_ascii_digit() || c == '-');
    if plain {
        k.to_string()
    } else {
        quoted(k)
    }
}

fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// A scalar, or an empty collection, on one line.
fn inline(value: &Yaml) -> String {
    match value {
        Yaml::Str(s) => quoted(s),
        Yaml::Int(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        Yaml::List(_) => "[]".into(),
        Yaml::Map(_) => "{}".into(),
    }
}

fn is_block(value: &Yaml) -> bool {
    matches!(value, Yaml::List(v) if !v.is_empty())
        || matches!(value, Yaml::Map(v) if !v.is_empty())
}

fn write_map(out: &mut String, entries: &[(String, Yaml)], indent: usize) {
    for (k, v) in entries {
        let pad = " ".repeat(indent);
        if is_block(v) {
            let _ = writeln!(out, "{pad}{}:", key(k));
            match v {
                Yaml::Map(m) => write_map(out, m, indent + 2),
                Yaml::List(l) => write_list(out, l, indent + 2),
                _ => unreachable!("is_block"),
            }
        } else {
            let _ = writeln!(out, "{pad}{}: {}", key(k), inline(v));
        }
    }
}

fn write_list(out: &mut String, items: &[Yaml], indent: usize) {
    let pad = " ".repeat(indent);
    for item in items {
        match item {
            Yaml::Map(m) if !m.is_empty() => {
                // The first key goes on the dash's line, the rest under it.
                let mut nested = String::new();
                write_map(&mut nested, m, indent + 2);
                let first = nested.trim_start();
                let _ = write!(out, "{pad}- {first}");
            }
            Yaml::List(l) if !l.is_empty() => {
                let _ = writeln!(out, "{pad}-");
                write_list(out, l, indent + 2);
            }
            scalar => {
                let _ = writeln!(out, "{pad}- {}", inline(scalar));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_maps_and_lists_are_written_in_block_style_in_insertion_order() {
        let doc = map([
            (
                "services",
                map([(
                    "b-1",
                    map([
                        ("command", vec!["stage", "--replica", "0"].into()),
                        ("ports", Yaml::List(vec![])),
                        (
                            "healthcheck",
                            map([("retries", 3.into()), ("disable", false.into())]),
                        ),
                    ]),
                )]),
            ),
            ("volumes", map([("state", map::<&str>([]))])),
            (
                "list",
                Yaml::List(vec![map([("name", "a".into()), ("value", "x: y".into())])]),
            ),
        ]);
        assert_eq!(
            doc.to_yaml(),
            "services:\n  b-1:\n    command:\n      - \"stage\"\n      - \"--replica\"\n      - \"0\"\n    \
             ports: []\n    healthcheck:\n      retries: 3\n      disable: false\nvolumes:\n  state: {}\n\
             list:\n  - name: \"a\"\n    value: \"x: y\"\n"
        );
    }

    #[test]
    fn keys_that_yaml_would_read_as_something_else_are_quoted() {
        let doc = map([
            ("on", 1.into()),
            ("8080", 2.into()),
            ("io.vidmesh/stage", 3.into()),
            ("a b", 4.into()),
        ]);
        assert_eq!(
            doc.to_yaml(),
            "\"on\": 1\n\"8080\": 2\nio.vidmesh/stage: 3\n\"a b\": 4\n"
        );
    }

    #[test]
    fn strings_with_quotes_newlines_and_yaml_syntax_stay_strings() {
        let doc = map([("s", "a \"q\"\nb: #c".into()), ("t", "true".into())]);
        assert_eq!(doc.to_yaml(), "s: \"a \\\"q\\\"\\nb: #c\"\nt: \"true\"\n");
    }
}
