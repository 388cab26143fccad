//! `${env:NAME}` and `${file:PATH}` inside a topology's string values, so credentials (camera
//! and broker passwords, SAS keys, tokens) live in the environment or in secret files (Docker
//! and Kubernetes mount them under /run/secrets) instead of in the topology file.
//!
//! Expanded values are never echoed back: a missing variable or unreadable file is an error
//! naming the reference, and what the value ends up in (URIs) is printed with its password
//! redacted wherever vidmesh prints it. `$${` writes a literal `${`.

use std::path::Path;

/// Expands every string in `table`, recursively.
pub fn expand_table(table: &mut toml::Table, base_dir: &Path) -> Result<(), String> {
    for (key, value) in table.iter_mut() {
        expand_value(value, base_dir).map_err(|e| format!("`{key}`: {e}"))?;
    }
    Ok(())
}

fn expand_value(value: &mut toml::Value, base_dir: &Path) -> Result<(), String> {
    match value {
        toml::Value::String(s) if s.contains("${") => *s = expand(s, base_dir)?,
        toml::Value::Array(items) => {
            for item in items {
                expand_value(item, base_dir)?;
            }
        }
        toml::Value::Table(t) => expand_table(t, base_dir)?,
        _ => {}
    }
    Ok(())
}

/// One string with its references replaced.
pub fn expand(text: &str, base_dir: &Path) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        if rest[..at].ends_with('$') {
            // `$${`: a literal `${`.
            out.push_str(&rest[..at - 1]);
            out.push_str("${");
            rest = &rest[at + 2..];
            continue;
        }
        out.push_str(&rest[..at]);
        let body_and_rest = &rest[at + 2..];
        let end = body_and_rest
            .find('}')
            .ok_or_else(|| format!("`${{` without a closing `}}` in `{}`", shorten(rest)))?;
        let reference = &body_and_rest[..end];
        out.push_str(&resolve(reference, base_dir)?);
        rest = &body_and_rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn resolve(reference: &str, base_dir: &Path) -> Result<String, String> {
    match reference.split_once(':') {
        Some(("env", name)) if !name.is_empty() => match std::env::var(name) {
            Ok(value) => Ok(value),
            Err(std::env::VarError::NotPresent) => Err(format!(
                "`${{env:{name}}}`: the environment variable is not set"
            )),
            Err(std::env::VarError::NotUnicode(_)) => Err(format!(
                "`${{env:{name}}}`: the environment variable is not valid UTF-8"
            )),
        },
        Some(("file", path)) if !path.is_empty() => {
            let full = base_dir.join(path);
            let text = std::fs::read_to_string(&full)
                .map_err(|e| format!("`${{file:{path}}}`: cannot read {}: {e}", full.display()))?;
            // Secret files usually end with a newline the secret does not contain.
            Ok(text.trim_end_matches(['\n', '\r']).to_string())
        }
        _ => Err(format!(
            "`${{{}}}` is not a reference vidmesh knows; write ${{env:NAME}} or ${{file:PATH}} \
             (or $${{ for a literal ${{)",
            shorten(reference)
        )),
    }
}

/// At most 40 characters of `s`, for messages about text that may be long.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_and_file_references_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "from-file\n").unwrap();
        std::env::set_var("VIDMESH_SECRETS_TEST_USER", "alice");
        let got = expand(
            "rtsp://${env:VIDMESH_SECRETS_TEST_USER}:${file:pw}@cam/live $${literal}",
            dir.path(),
        )
        .unwrap();
        assert_eq!(got, "rtsp://alice:from-file@cam/live ${literal}");
        assert_eq!(
            expand("no references", dir.path()).unwrap(),
            "no references"
        );

        let mut table: toml::Table = toml::from_str(
            "uri = 'x://${env:VIDMESH_SECRETS_TEST_USER}'\noptions = { a = ['${env:VIDMESH_SECRETS_TEST_USER}'] }\nn = 3",
        )
        .unwrap();
        expand_table(&mut table, dir.path()).unwrap();
        assert_eq!(table["uri"].as_str(), Some("x://alice"));
        assert_eq!(table["options"]["a"][0].as_str(), Some("alice"));
    }

    #[test]
    fn missing_or_unknown_references_are_named_without_values() {
        let dir = tempfile::tempdir().unwrap();
        std::env::remove_var("VIDMESH_SECRETS_TEST_ABSENT");
        let e = expand("${env:VIDMESH_SECRETS_TEST_ABSENT}", dir.path()).unwrap_err();
        assert!(
            e.contains("VIDMESH_SECRETS_TEST_ABSENT") && e.contains("not set"),
            "{e}"
        );
        let e = expand("${file:nope.txt}", dir.path()).unwrap_err();
        assert!(e.contains("nope.txt") && e.contains("cannot read"), "{e}");
        let e = expand("${vault:x}", dir.path()).unwrap_err();
        assert!(e.contains("${env:NAME}"), "{e}");
        let e = expand("a ${env:X", dir.path()).unwrap_err();
        assert!(e.contains("closing"), "{e}");
    }
}
