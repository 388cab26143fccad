//! Writing the converted topology as TOML text, keys in the order a reader expects (`kind`
//! first) and with comments saying where each part came from. `toml::Table` sorts its keys,
//! hence this small writer; values themselves are printed by the `toml` crate.

use std::fmt::Write as _;

/// A TOML table whose keys keep the order they were set in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table(pub Vec<(String, Node)>);

/// A value in a [`Table`].
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Value(toml::Value),
    /// Written inline: `parser = { type = "ssd", ... }`.
    Inline(Table),
    /// Written as `[[path.key]]` sections.
    Tables(Vec<Table>),
}

impl Table {
    /// Sets `key`, replacing an earlier value in place.
    pub fn set(&mut self, key: &str, value: impl Into<toml::Value>) -> &mut Self {
        self.put(key, Node::Value(value.into()))
    }

    pub fn inline(&mut self, key: &str, table: Table) -> &mut Self {
        self.put(key, Node::Inline(table))
    }

    pub fn tables(&mut self, key: &str, tables: Vec<Table>) -> &mut Self {
        self.put(key, Node::Tables(tables))
    }

    fn put(&mut self, key: &str, node: Node) -> &mut Self {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some((_, old)) => *old = node,
            None => self.0.push((key.to_string(), node)),
        }
        self
    }

    pub fn remove(&mut self, key: &str) -> &mut Self {
        self.0.retain(|(k, _)| k != key);
        self
    }

    pub fn get(&self, key: &str) -> Option<&toml::Value> {
        self.0.iter().find_map(|(k, n)| match n {
            Node::Value(v) if k == key => Some(v),
            _ => None,
        })
    }

    /// Writes the table's keys, then its arrays of tables under `[[path.key]]` (`[[key]]` at
    /// the top level, `path` empty).
    pub fn write(&self, path: &str, out: &mut String) {
        for (key, node) in &self.0 {
            match node {
                Node::Value(v) => {
                    let _ = writeln!(out, "{} = {}", key_text(key), value_text(v));
                }
                Node::Inline(t) => {
                    let _ = writeln!(out, "{} = {}", key_text(key), t.inline_text());
                }
                Node::Tables(_) => {}
            }
        }
        for (key, node) in &self.0 {
            if let Node::Tables(tables) = node {
                let sub = if path.is_empty() {
                    key_text(key)
                } else {
                    format!("{path}.{}", key_text(key))
                };
                for t in tables {
                    let _ = writeln!(out, "\n[[{sub}]]");
                    t.write(&sub, out);
                }
            }
        }
    }

    fn inline_text(&self) -> String {
        let items: Vec<String> = self
            .0
            .iter()
            .map(|(k, n)| {
                let v = match n {
                    Node::Value(v) => value_text(v),
                    Node::Inline(t) => t.inline_text(),
                    Node::Tables(ts) => format!(
                        "[{}]",
                        ts.iter()
                            .map(Table::inline_text)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                format!("{} = {v}", key_text(k))
            })
            .collect();
        format!("{{ {} }}", items.join(", "))
    }
}

/// A bare key when TOML allows one, else a quoted one.
pub fn key_text(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_string()
    } else {
        value_text(&toml::Value::String(key.to_string()))
    }
}

/// A value as inline TOML.
pub fn value_text(value: &toml::Value) -> String {
    match value {
        // Whole numbers given as floats stay floats (`1.0`), short ones without noise.
        toml::Value::Float(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{f:.1}"),
        toml::Value::Array(items) => format!(
            "[{}]",
            items.iter().map(value_text).collect::<Vec<_>>().join(", ")
        ),
        other => other.to_string(),
    }
}

/// Comment lines: each line of `text` prefixed with `# `.
pub fn comment(text: &str, out: &mut String) {
    for line in text.lines() {
        if line.is_empty() {
            out.push_str("#\n");
        } else {
            let _ = writeln!(out, "# {line}");
        }
    }
}

/// The topology, section by section.
#[derive(Debug, Clone, Default)]
pub struct TopologyDoc {
    /// Comment lines at the top.
    pub header: String,
    pub name: String,
    pub links: Vec<(String, String)>,
    /// (comment, `[[source]]` table)
    pub sources: Vec<(String, Table)>,
    /// (name, comment, table)
    pub stages: Vec<(String, String, Table)>,
}

impl TopologyDoc {
    pub fn render(&self) -> String {
        let mut out = String::new();
        comment(&self.header, &mut out);
        out.push_str("\n[pipeline]\n");
        let _ = writeln!(
            out,
            "name = {}",
            value_text(&toml::Value::String(self.name.clone()))
        );
        out.push_str("links = [\n");
        for (from, to) in &self.links {
            let _ = writeln!(
                out,
                "  [{}, {}],",
                value_text(&toml::Value::String(from.clone())),
                value_text(&toml::Value::String(to.clone()))
            );
        }
        out.push_str("]\n");
        for (note, table) in &self.sources {
            out.push('\n');
            comment(note, &mut out);
            out.push_str("[[source]]\n");
            table.write("source", &mut out);
        }
        for (name, note, table) in &self.stages {
            out.push('\n');
            comment(note, &mut out);
            let path = format!("stage.{}", key_text(name));
            let _ = writeln!(out, "[{path}]");
            table.write(&path, &mut out);
        }
        out
    }
}
