//! deepstream-app's configuration format: GLib key files (`GKeyFile`), parsed the way GLib does.
//!
//! ```text
//! # a comment (only on its own line: GKeyFile has no trailing comments)
//! [group]
//! key=value
//! list=a;b;c;
//! ```
//!
//! Keys before the first group, lines that are neither a group, a key nor a comment, and bytes
//! that are not UTF-8 are errors naming `FILE:LINE`. A group that appears twice is merged and a
//! repeated key keeps its last value, as in GLib. String values undergo GLib's escapes (`\s`,
//! `\n`, `\t`, `\r`, `\\`, and `\;` inside lists).
//!
//! [`GroupReader`] reads typed values and remembers which keys it was asked for, so the
//! importer can report every key it did not use.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

/// A problem with a configuration file, at a line when it has one.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl ConfigError {
    pub fn new(file: &Path, line: Option<usize>, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            line,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// One `key=value` line.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    /// The text after `=`, surrounding whitespace removed (`\s` keeps a space), escapes not
    /// yet applied.
    pub raw: String,
    pub line: usize,
}

/// One `[group]` with its entries in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub name: String,
    pub line: usize,
    pub entries: Vec<Entry>,
}

impl Group {
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.key == key)
    }
}

/// A parsed key file.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyFile {
    pub path: PathBuf,
    pub groups: Vec<Group>,
}

impl KeyFile {
    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let bytes = std::fs::read(path)
            .map_err(|e| ConfigError::new(path, None, format!("cannot read: {e}")))?;
        Self::parse(path, &bytes)
    }

    /// Parses `bytes` as if read from `path` (which only names the file in errors).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, ConfigError> {
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let mut groups: Vec<Group> = Vec::new();
        let mut current: Option<usize> = None;
        for (index, raw_line) in bytes.split(|b| *b == b'\n').enumerate() {
            let number = index + 1;
            let at = |message: String| ConfigError::new(path, Some(number), message);
            let raw_line = raw_line.strip_suffix(b"\r").unwrap_or(raw_line);
            let line = std::str::from_utf8(raw_line).map_err(|e| {
                at(format!(
                    "invalid UTF-8 at byte {} of the line (key files are UTF-8 text)",
                    e.valid_up_to() + 1
                ))
            })?;
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if trimmed.starts_with('[') {
                let name = group_name(trimmed).map_err(at)?;
                current = Some(match groups.iter().position(|g| g.name == name) {
                    Some(i) => i,
                    None => {
                        groups.push(Group {
                            name,
                            line: number,
                            entries: Vec::new(),
                        });
                        groups.len() - 1
                    }
                });
                continue;
            }
            let Some((key, value)) = trimmed.split_once('=') else {
                return Err(at(format!(
                    "`{}` is not a group, a key=value pair or a comment",
                    shorten(trimmed)
                )));
            };
            let key = key.trim_end();
            if key.is_empty() {
                return Err(at("a key=value line without a key".into()));
            }
            if key.contains(['[', ']']) && !is_localized_key(key) {
                return Err(at(format!("`{key}` is not a valid key name")));
            }
            let Some(group) = current else {
                return Err(at(format!(
                    "key `{key}` comes before the first [group] (put it under one, e.g. [application])"
                )));
            };
            let entries = &mut groups[group].entries;
            let entry = Entry {
                key: key.to_string(),
                raw: value.trim().to_string(),
                line: number,
            };
            match entries.iter_mut().find(|e| e.key == entry.key) {
                Some(old) => *old = entry,
                None => entries.push(entry),
            }
        }
        Ok(KeyFile {
            path: path.to_path_buf(),
            groups,
        })
    }

    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// A reader for `group`, or `None` when the file has no such group.
    pub fn reader(&self, group: &str) -> Option<GroupReader<'_>> {
        self.group(group).map(|g| GroupReader::new(self, g))
    }
}

/// `[name]` → name; GLib allows no brackets or control characters inside, and nothing but
/// whitespace after the closing bracket.
fn group_name(line: &str) -> Result<String, String> {
    let inner = &line[1..];
    let Some(end) = inner.find(']') else {
        return Err(format!(
            "group header `{}` has no closing `]`",
            shorten(line)
        ));
    };
    let (name, rest) = (&inner[..end], &inner[end + 1..]);
    if !rest.trim().is_empty() {
        return Err(format!(
            "unexpected `{}` after the group header [{name}]",
            shorten(rest.trim())
        ));
    }
    if name.is_empty() {
        return Err("empty group name `[]`".into());
    }
    if name.contains('[') || name.chars().any(char::is_control) {
        return Err(format!("`[{name}]` is not a valid group name"));
    }
    Ok(name.to_string())
}

/// `Name[de_DE]`: GLib's localised keys.
fn is_localized_key(key: &str) -> bool {
    match key.split_once('[') {
        Some((base, rest)) => {
            !base.is_empty() && rest.ends_with(']') && !rest[..rest.len() - 1].contains(['[', ']'])
        }
        None => false,
    }
}

/// Long lines are cut in error messages.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// GLib's string unescaping: `\s` space, `\n`, `\t`, `\r`, `\\`, and `\;` (meaningful in
/// lists, harmless elsewhere). An unknown escape or a trailing `\` is an error.
fn unescape(raw: &str) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('s') => out.push(' '),
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('\\') => out.push('\\'),
            Some(';') => out.push(';'),
            Some(other) => return Err(format!("unknown escape `\\{other}`")),
            None => return Err("a value ends with a lone `\\`".into()),
        }
    }
    Ok(out)
}

/// Splits on unescaped `;` (a trailing `;` ends the list, as in GLib) and unescapes each item.
fn split_list(raw: &str) -> Result<Vec<String>, String> {
    let mut items = Vec::new();
    let mut item = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            // An escape belongs to its item whatever it escapes (`\\;` ends the item).
            '\\' => {
                item.push(c);
                if let Some(next) = chars.next() {
                    item.push(next);
                }
            }
            ';' => items.push(unescape(&std::mem::take(&mut item))?),
            _ => item.push(c),
        }
    }
    if !item.is_empty() {
        items.push(unescape(&item)?);
    }
    Ok(items)
}

/// Reads one group's values, typed, and records which keys were read.
pub struct GroupReader<'a> {
    file: &'a KeyFile,
    group: &'a Group,
    used: RefCell<BTreeSet<String>>,
}

impl<'a> GroupReader<'a> {
    pub fn new(file: &'a KeyFile, group: &'a Group) -> Self {
        Self {
            file,
            group,
            used: RefCell::new(BTreeSet::new()),
        }
    }

    pub fn name(&self) -> &str {
        &self.group.name
    }

    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// An error at `key`'s line (or the group's line when the key is absent).
    pub fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let line = self.group.get(key).map_or(self.group.line, |e| e.line);
        ConfigError::new(&self.file.path, Some(line), message)
    }

    fn entry(&self, key: &str) -> Option<&'a Entry> {
        self.used.borrow_mut().insert(key.to_string());
        self.group.get(key)
    }

    pub fn has(&self, key: &str) -> bool {
        self.group.get(key).is_some()
    }

    /// Marks `key` as handled without reading it.
    pub fn touch(&self, key: &str) {
        self.used.borrow_mut().insert(key.to_string());
    }

    /// The value as written, escapes applied.
    pub fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        self.entry(key)
            .map(|e| {
                unescape(&e.raw)
                    .map_err(|m| self.error(key, format!("[{}] {key}: {m}", self.group.name)))
            })
            .transpose()
    }

    fn typed<T>(
        &self,
        key: &str,
        what: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, ConfigError> {
        let Some(text) = self.string(key)? else {
            return Ok(None);
        };
        let value = text.trim();
        parse(value).map(Some).ok_or_else(|| {
            let hint = if value.contains('#') {
                " (comments must be on their own line)"
            } else {
                ""
            };
            self.error(
                key,
                format!(
                    "[{}] {key}: expected {what}, got `{}`{hint}",
                    self.group.name,
                    shorten(value)
                ),
            )
        })
    }

    pub fn int(&self, key: &str) -> Result<Option<i64>, ConfigError> {
        self.typed(key, "an integer", |v| v.parse().ok())
    }

    pub fn float(&self, key: &str) -> Result<Option<f64>, ConfigError> {
        self.typed(key, "a number", |v| {
            v.parse::<f64>().ok().filter(|f| f.is_finite())
        })
    }

    /// GLib booleans: `true`/`false`; deepstream-app mostly writes `1`/`0`, accepted too.
    pub fn bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        self.typed(key, "true, false, 1 or 0", |v| match v {
            "true" | "1" => Some(true),
            "false" | "0" => Some(false),
            _ => None,
        })
    }

    /// `enable=1`; `default` when the group has no `enable` (deepstream-app's own groups are
    /// off without it, nvdsanalytics and msgconv groups on).
    pub fn enabled(&self, default: bool) -> Result<bool, ConfigError> {
        Ok(self.bool("enable")?.unwrap_or(default))
    }

    pub fn list(&self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        self.entry(key)
            .map(|e| {
                split_list(&e.raw)
                    .map_err(|m| self.error(key, format!("[{}] {key}: {m}", self.group.name)))
            })
            .transpose()
    }

    pub fn float_list(&self, key: &str) -> Result<Option<Vec<f64>>, ConfigError> {
        let Some(items) = self.list(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .map(|item| {
                item.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .ok_or_else(|| {
                        self.error(
                            key,
                            format!(
                                "[{}] {key}: expected numbers separated by `;`, got `{}`",
                                self.group.name,
                                shorten(item.trim())
                            ),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    pub fn int_list(&self, key: &str) -> Result<Option<Vec<i64>>, ConfigError> {
        let Some(items) = self.list(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .map(|item| {
                item.trim().parse::<i64>().map_err(|_| {
                    self.error(
                        key,
                        format!(
                            "[{}] {key}: expected integers separated by `;`, got `{}`",
                            self.group.name,
                            shorten(item.trim())
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// Every entry, for groups whose keys carry names (`roi-NAME=...`).
    pub fn entries(&self) -> &'a [Entry] {
        &self.group.entries
    }

    /// Whether any key was asked for yet.
    pub fn read_any(&self) -> bool {
        !self.used.borrow().is_empty()
    }

    /// Entries nobody asked for, in file order.
    pub fn unused(&self) -> Vec<&'a Entry> {
        let used = self.used.borrow();
        self.group
            .entries
            .iter()
            .filter(|e| !used.contains(&e.key))
            .collect()
    }
}
