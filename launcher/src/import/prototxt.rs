//! Protocol Buffers text format, the language of nvinferserver configs (and of Triton's
//! `config.pbtxt`), parsed without a schema:
//!
//! ```text
//! # a comment
//! infer_config {
//!   unique_id: 1
//!   backend { triton { model_name: "detector" version: -1 grpc { url: "localhost:8001" } } }
//!   preprocess { network_format: IMAGE_FORMAT_RGB normalize { channel_offsets: [0, 0, 0] } }
//! }
//! ```
//!
//! A field is `name: value`, `name { ... }` or `name: { ... }` (also `<...>`); values are
//! strings (double or single quoted, with C escapes, adjacent strings joined), numbers,
//! identifiers (enum values, `true`, `false`) or lists `[a, b]`. Fields may be separated by `,`
//! or `;`. A repeated field is a list. Anything else is an error at its line.
//!
//! [`Message`] remembers which fields were read, so the importer can report every field it
//! did not use, as [`super::ini::GroupReader`] does for key files.

use std::cell::Cell;
use std::path::Path;

use super::ini::ConfigError;

/// A scalar or nested value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    /// A number as written (parsed when read, as int or float).
    Number(String),
    /// An enum value, `true`, `false`, `inf`...
    Ident(String),
    Message(Message),
}

/// One `name: value` (a list gives one field per element).
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub value: Value,
    pub line: usize,
    used: Cell<bool>,
}

/// A message: its fields in file order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Message {
    pub fields: Vec<Field>,
    /// The line it opens at (1 for the file).
    pub line: usize,
}

/// Nesting deeper than this is refused (a stack overflow is not an error message).
const MAX_DEPTH: usize = 64;

impl Message {
    /// Every field called `name`, marked as read.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Field> + 'a {
        self.fields
            .iter()
            .filter(move |f| f.name == name)
            .inspect(|f| f.used.set(true))
    }

    /// The last field called `name` (a repeated scalar keeps its last value, as protobuf does).
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields
            .iter()
            .filter(|f| f.name == name)
            .inspect(|f| f.used.set(true))
            .last()
    }

    pub fn has(&self, name: &str) -> bool {
        self.fields.iter().any(|f| f.name == name)
    }

    /// Marks `name` as handled without reading it.
    pub fn touch(&self, name: &str) {
        self.all(name).for_each(drop);
    }

    /// The nested message `name`.
    pub fn message(&self, path: &Path, name: &str) -> Result<Option<&Message>, ConfigError> {
        match self.field(name) {
            None => Ok(None),
            Some(Field {
                value: Value::Message(m),
                ..
            }) => Ok(Some(m)),
            Some(f) => Err(ConfigError::new(
                path,
                Some(f.line),
                format!("`{name}` must be a message `{name} {{ ... }}`"),
            )),
        }
    }

    /// A string or identifier value.
    pub fn string(&self, path: &Path, name: &str) -> Result<Option<String>, ConfigError> {
        match self.field(name) {
            None => Ok(None),
            Some(Field {
                value: Value::Str(s) | Value::Ident(s),
                ..
            }) => Ok(Some(s.clone())),
            Some(f) => Err(ConfigError::new(
                path,
                Some(f.line),
                format!("`{name}` must be a string"),
            )),
        }
    }

    pub fn float(&self, path: &Path, name: &str) -> Result<Option<f64>, ConfigError> {
        self.field(name).map(|f| f.float(path)).transpose()
    }

    pub fn int(&self, path: &Path, name: &str) -> Result<Option<i64>, ConfigError> {
        self.field(name).map(|f| f.int(path)).transpose()
    }

    pub fn bool(&self, path: &Path, name: &str) -> Result<Option<bool>, ConfigError> {
        self.field(name).map(|f| f.bool(path)).transpose()
    }

    /// Every value of a repeated number field.
    pub fn floats(&self, path: &Path, name: &str) -> Result<Vec<f64>, ConfigError> {
        self.all(name).map(|f| f.float(path)).collect()
    }

    pub fn ints(&self, path: &Path, name: &str) -> Result<Vec<i64>, ConfigError> {
        self.all(name).map(|f| f.int(path)).collect()
    }

    /// Dotted paths of the fields nobody read, in file order; a nested message that was read
    /// is looked into, one that was not is named whole.
    pub fn unused(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        self.collect_unused("", &mut out);
        out
    }

    fn collect_unused(&self, prefix: &str, out: &mut Vec<(String, usize)>) {
        let mut named = std::collections::BTreeSet::new();
        for f in &self.fields {
            let path = format!("{prefix}{}", f.name);
            match (&f.value, f.used.get()) {
                (Value::Message(m), true) => m.collect_unused(&format!("{path}."), out),
                (_, true) => {}
                // A repeated field is named once.
                (_, false) => {
                    if named.insert(path.clone()) {
                        out.push((path, f.line));
                    }
                }
            }
        }
    }
}

impl Field {
    pub fn float(&self, path: &Path) -> Result<f64, ConfigError> {
        let parsed = match &self.value {
            Value::Number(n) => n.parse::<f64>().ok().filter(|v| v.is_finite()),
            _ => None,
        };
        parsed.ok_or_else(|| self.error(path, "a finite number"))
    }

    pub fn int(&self, path: &Path) -> Result<i64, ConfigError> {
        let parsed = match &self.value {
            Value::Number(n) => n.parse::<i64>().ok(),
            _ => None,
        };
        parsed.ok_or_else(|| self.error(path, "an integer"))
    }

    pub fn bool(&self, path: &Path) -> Result<bool, ConfigError> {
        match &self.value {
            Value::Ident(s) if s == "true" || s == "True" || s == "t" => Ok(true),
            Value::Ident(s) if s == "false" || s == "False" || s == "f" => Ok(false),
            Value::Number(n) if n == "1" => Ok(true),
            Value::Number(n) if n == "0" => Ok(false),
            _ => Err(self.error(path, "true or false")),
        }
    }

    fn error(&self, path: &Path, expected: &str) -> ConfigError {
        let got = match &self.value {
            Value::Str(s) => format!("\"{s}\""),
            Value::Number(s) | Value::Ident(s) => s.clone(),
            Value::Message(_) => "a message".into(),
        };
        ConfigError::new(
            path,
            Some(self.line),
            format!("`{}` must be {expected}, got {got}", self.name),
        )
    }
}

/// Parses `bytes` as read from `path` (which names the file in errors).
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Message, ConfigError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        ConfigError::new(path, Some(line), "not UTF-8 text")
    })?;
    let mut parser = Parser {
        path,
        chars: text.char_indices().peekable(),
        text,
        line: 1,
    };
    let message = parser.message(None, 1, 0)?;
    Ok(message)
}

struct Parser<'a> {
    path: &'a Path,
    text: &'a str,
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
    line: usize,
}

impl Parser<'_> {
    fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.path, Some(self.line), message)
    }

    fn bump(&mut self) -> Option<char> {
        let (_, c) = self.chars.next()?;
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn peek(&mut self) -> Option<char> {
        self.chars.peek().map(|(_, c)| *c)
    }

    /// Skips whitespace and `#` comments.
    fn skip(&mut self) {
        while let Some(c) = self.peek() {
            if c == '#' {
                while self.peek().is_some_and(|c| c != '\n') {
                    self.bump();
                }
            } else if c.is_whitespace() {
                self.bump();
            } else {
                break;
            }
        }
    }

    /// Fields until `close` (or the end of the file when `None`).
    fn message(
        &mut self,
        close: Option<char>,
        line: usize,
        depth: usize,
    ) -> Result<Message, ConfigError> {
        if depth > MAX_DEPTH {
            return Err(self.error(format!("messages nested deeper than {MAX_DEPTH}")));
        }
        let mut fields = Vec::new();
        loop {
            self.skip();
            match (self.peek(), close) {
                (None, None) => break,
                (None, Some(c)) => {
                    return Err(self.error(format!(
                        "the message opened at line {line} is not closed with `{c}`"
                    )))
                }
                (Some(c), Some(want)) if c == want => {
                    self.bump();
                    break;
                }
                (Some(',' | ';'), _) => {
                    self.bump();
                    continue;
                }
                _ => {}
            }
            let next = self.peek();
            let name = self.ident().ok_or_else(|| {
                self.error(match next {
                    Some(c) => format!("expected a field name, found `{c}`"),
                    None => "expected a field name".into(),
                })
            })?;
            let field_line = self.line;
            self.skip();
            let colon = self.peek() == Some(':');
            if colon {
                self.bump();
                self.skip();
            }
            let values = match self.peek() {
                Some('{' | '<') => vec![self.nested(depth)?],
                Some('[') if colon => self.list(depth)?,
                _ if colon => vec![self.scalar()?],
                _ => return Err(self.error(format!("expected `:` or `{{` after `{name}`"))),
            };
            fields.extend(values.into_iter().map(|value| Field {
                name: name.clone(),
                value,
                line: field_line,
                used: Cell::new(false),
            }));
        }
        Ok(Message { fields, line })
    }

    fn nested(&mut self, depth: usize) -> Result<Value, ConfigError> {
        let line = self.line;
        let close = match self.bump() {
            Some('{') => '}',
            _ => '>',
        };
        Ok(Value::Message(self.message(
            Some(close),
            line,
            depth + 1,
        )?))
    }

    fn list(&mut self, depth: usize) -> Result<Vec<Value>, ConfigError> {
        self.bump(); // [
        let mut values = Vec::new();
        loop {
            self.skip();
            match self.peek() {
                Some(']') => {
                    self.bump();
                    return Ok(values);
                }
                Some(',') if !values.is_empty() => {
                    self.bump();
                    self.skip();
                }
                None => return Err(self.error("a list `[` is not closed with `]`")),
                _ => {}
            }
            if self.peek() == Some(']') {
                continue;
            }
            values.push(match self.peek() {
                Some('{' | '<') => self.nested(depth)?,
                _ => self.scalar()?,
            });
        }
    }

    fn ident(&mut self) -> Option<String> {
        let start = match self.chars.peek() {
            Some((i, c)) if c.is_ascii_alphabetic() || *c == '_' => *i,
            _ => return None,
        };
        let mut end = start;
        while let Some((i, c)) = self.chars.peek().copied() {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                end = i + c.len_utf8();
                self.bump();
            } else {
                break;
            }
        }
        Some(self.text[start..end].to_string())
    }

    fn scalar(&mut self) -> Result<Value, ConfigError> {
        match self.peek() {
            Some('"' | '\'') => {
                let mut text = self.string()?;
                // Adjacent strings are one: "abc" "def".
                loop {
                    self.skip();
                    if !matches!(self.peek(), Some('"' | '\'')) {
                        break;
                    }
                    text.push_str(&self.string()?);
                }
                Ok(Value::Str(text))
            }
            Some(c) if c == '-' || c == '+' || c == '.' || c.is_ascii_digit() => {
                let mut text = String::new();
                while let Some(c) = self.peek() {
                    if c.is_ascii_alphanumeric() || matches!(c, '-' | '+' | '.') {
                        text.push(c);
                        self.bump();
                    } else {
                        break;
                    }
                }
                // Float suffixes (`1.5f`) as protobuf allows.
                let trimmed = text.trim_end_matches(['f', 'F']);
                let plain = trimmed.strip_prefix(['-', '+']).unwrap_or(trimmed);
                if plain.is_empty()
                    || !(plain.parse::<f64>().is_ok()
                        || plain.eq_ignore_ascii_case("inf")
                        || plain.eq_ignore_ascii_case("nan"))
                {
                    return Err(self.error(format!("`{text}` is not a number")));
                }
                Ok(Value::Number(trimmed.to_string()))
            }
            _ => self
                .ident()
                .map(Value::Ident)
                .ok_or_else(|| self.error("expected a value (a string, number or name)")),
        }
    }

    fn string(&mut self) -> Result<String, ConfigError> {
        let start = self.line;
        let unclosed = |p: &Self| ConfigError::new(p.path, Some(start), "a string is not closed");
        let quote = self.bump().unwrap_or('"');
        let mut out = String::new();
        loop {
            match self.bump() {
                None | Some('\n') => return Err(unclosed(self)),
                Some(c) if c == quote => return Ok(out),
                Some('\\') => match self.bump() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('r') => out.push('\r'),
                    Some(c @ ('\\' | '\'' | '"' | '?')) => out.push(c),
                    Some(c) => return Err(self.error(format!("unknown escape `\\{c}`"))),
                    None => return Err(unclosed(self)),
                },
                Some(c) => out.push(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Message, ConfigError> {
        parse(Path::new("c.txt"), text.as_bytes())
    }

    #[test]
    fn messages_scalars_lists_and_comments() {
        let m = parse_text(
            "# nvinferserver\ninfer_config {\n  unique_id: 3\n  gpu_ids: [0, 1]\n  backend: {\n    \
             triton { model_name: 'det' \"ector\" version: -1 grpc < url: \"h:8001\" > }\n  }\n  \
             preprocess { network_format: IMAGE_FORMAT_BGR; normalize { scale_factor: 0.5f \
             channel_offsets: [1.5, 2, 3] } }\n  extra {}\n}\ninput_control { interval: 2 }\n",
        )
        .unwrap();
        let p = Path::new("c.txt");
        let infer = m.message(p, "infer_config").unwrap().unwrap();
        assert_eq!(infer.int(p, "unique_id").unwrap(), Some(3));
        assert_eq!(infer.ints(p, "gpu_ids").unwrap(), [0, 1]);
        let triton = infer
            .message(p, "backend")
            .unwrap()
            .unwrap()
            .message(p, "triton")
            .unwrap()
            .unwrap();
        assert_eq!(
            triton.string(p, "model_name").unwrap().as_deref(),
            Some("detector")
        );
        assert_eq!(triton.int(p, "version").unwrap(), Some(-1));
        let grpc = triton.message(p, "grpc").unwrap().unwrap();
        assert_eq!(grpc.string(p, "url").unwrap().as_deref(), Some("h:8001"));
        let pre = infer.message(p, "preprocess").unwrap().unwrap();
        assert_eq!(
            pre.string(p, "network_format").unwrap().as_deref(),
            Some("IMAGE_FORMAT_BGR")
        );
        let norm = pre.message(p, "normalize").unwrap().unwrap();
        assert_eq!(norm.float(p, "scale_factor").unwrap(), Some(0.5));
        assert_eq!(norm.floats(p, "channel_offsets").unwrap(), [1.5, 2.0, 3.0]);
        // What was not read is reported, nested where the parent was read.
        let unused: Vec<String> = m.unused().into_iter().map(|(p, _)| p).collect();
        assert_eq!(unused, ["infer_config.extra", "input_control"]);
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line, needle) in [
            ("a {\n b: 1\n", 3, "not closed with `}`"),
            ("a: \"x\n", 1, "string is not closed"),
            ("a 1", 1, "expected `:` or `{`"),
            ("\n\na: [1, 2", 3, "not closed with `]`"),
            ("a: 1.2.3", 1, "not a number"),
            ("a: \"\\q\"", 1, "unknown escape"),
            ("}", 1, "expected a field name, found `}`"),
            ("a: :", 1, "expected a value"),
        ] {
            let e = parse_text(text).unwrap_err();
            assert_eq!(e.line, Some(line), "{text:?}: {e}");
            assert!(e.message.contains(needle), "{text:?}: {e}");
        }
        let deep = "a {".repeat(100);
        assert!(parse_text(&deep)
            .unwrap_err()
            .message
            .contains("nested deeper"));
        let m = parse_text("a: \"x\"\nb: 7").unwrap();
        let p = Path::new("c.txt");
        assert!(m
            .int(p, "a")
            .unwrap_err()
            .to_string()
            .contains("c.txt:1: `a` must be an integer, got \"x\""));
        assert!(m.message(p, "b").is_err());
        assert!(m.bool(p, "b").is_err());
        assert!(parse(p, b"a: \"\xff\"").is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let alphabet = b"ab_:{}<>[],;\"'\\#\n 0123456789.-+ef";
        for _ in 0..3000 {
            let len = (seed % 48) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    alphabet[(seed % alphabet.len() as u64) as usize]
                })
                .collect();
            if let Ok(m) = parse(Path::new("f"), &bytes) {
                let _ = m.unused();
            }
        }
    }
}
