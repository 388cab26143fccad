//! The topology as a graph: checks (every stage is fed, links form no cycle) and drawings
//! for `vidmesh graph` (Graphviz DOT, and SVG through Graphviz's `dot`).

use std::io::Write as _;
use std::process::{Command, Stdio};

use thiserror::Error;
use vidmesh_actors::source::SourceUri;

use super::{Payload, SourceEntry, StageEntry, StageRuntime, Topology, SOURCES};

/// Indices of `stages` in dependency order (producers first), or an error naming a cycle or an
/// unfed stage.
pub fn order(stages: &[StageEntry], links: &[(String, String)]) -> Result<Vec<usize>, String> {
    let index = |name: &str| stages.iter().position(|s| s.name == name);
    if let Some(s) = stages
        .iter()
        .find(|s| !links.iter().any(|(_, to)| to == &s.name))
    {
        return Err(format!(
            "stage `{}` has no input: add a link [\"...\", \"{}\"]",
            s.name, s.name
        ));
    }
    let mut indegree = vec![0usize; stages.len()];
    for (from, to) in links {
        if let (Some(t), true) = (index(to), from != SOURCES) {
            indegree[t] += 1;
        }
    }
    // Kahn's algorithm: stages fed only by sources start.
    let mut ready: Vec<usize> = (0..stages.len()).filter(|&i| indegree[i] == 0).collect();
    let mut ordered = Vec::with_capacity(stages.len());
    while let Some(i) = ready.pop() {
        ordered.push(i);
        for (from, to) in links {
            if from == &stages[i].name {
                if let Some(t) = index(to) {
                    indegree[t] -= 1;
                    if indegree[t] == 0 {
                        ready.push(t);
                    }
                }
            }
        }
    }
    if ordered.len() < stages.len() {
        return Err(format!(
            "links form a cycle: {}",
            describe_cycle(stages, links, &ordered)
        ));
    }
    Ok(ordered)
}

/// Walks backwards from a stage Kahn's algorithm could not order until a stage repeats.
fn describe_cycle(stages: &[StageEntry], links: &[(String, String)], ordered: &[usize]) -> String {
    let stuck: Vec<&str> = (0..stages.len())
        .filter(|i| !ordered.contains(i))
        .map(|i| stages[i].name.as_str())
        .collect();
    let mut path: Vec<&str> = vec![stuck[0]];
    loop {
        let current = path[path.len() - 1];
        let Some(prev) = links
            .iter()
            .find(|(f, t)| t == current && stuck.contains(&f.as_str()))
            .map(|(f, _)| f.as_str())
        else {
            return stuck.join(", ");
        };
        if let Some(start) = path.iter().position(|p| *p == prev) {
            let mut cycle: Vec<&str> = path[start..].iter().rev().copied().collect();
            cycle.push(cycle[0]);
            return cycle.join(" -> ");
        }
        path.push(prev);
    }
}

/// Why `vidmesh graph --format svg` could not draw.
#[derive(Debug, Error)]
pub enum GraphError {
    #[error("Graphviz's `dot` is not installed: install graphviz (Debian/Ubuntu: `apt-get install graphviz`), or print DOT with `--format dot`")]
    NotInstalled,
    #[error("cannot run Graphviz's `dot`: {0}")]
    Unusable(std::io::Error),
    #[error("Graphviz's `dot -Tsvg` failed: {0}")]
    Failed(String),
}

impl Topology {
    /// Graphviz DOT: sources as input shapes naming what they read, stages as boxes with
    /// their kind, replicas and placement under the name, links into a stage labelled with
    /// its payload and drop policy when the topology sets them.
    pub fn graphviz(&self) -> String {
        let mut s = format!(
            "digraph {} {{\n  rankdir=LR;\n  labelloc=t;\n  label={};\n  \
             node [fontname=\"Helvetica\", fontsize=11];\n  \
             edge [fontname=\"Helvetica\", fontsize=9];\n",
            quoted(&self.name),
            quoted(&self.name)
        );
        for source in &self.sources {
            s.push_str(&format!(
                "  {} [shape=invhouse, style=filled, fillcolor=\"#dbeafe\", label=<{}>];\n",
                source_node(&source.settings.id),
                two_lines(&source.settings.id, &[source_location(source)])
            ));
        }
        for stage in &self.stages {
            // Stages nothing reads from (sinks, brokers) are where the pipeline ends.
            let terminal = !self.links.iter().any(|(from, _)| from == &stage.name);
            s.push_str(&format!(
                "  {} [shape=box, style=\"{}\", label=<{}>];\n",
                stage_node(&stage.name),
                if terminal { "rounded,bold" } else { "rounded" },
                two_lines(&stage.name, &self.stage_details(stage))
            ));
        }
        for (from, to) in &self.links {
            let label = self
                .stages
                .iter()
                .find(|st| &st.name == to)
                .map(|st| link_label(&st.runtime))
                .filter(|l| !l.is_empty())
                .map(|l| format!(" [label={}]", quoted(&l)))
                .unwrap_or_default();
            let producers: Vec<String> = if from == SOURCES {
                self.sources
                    .iter()
                    .map(|x| source_node(&x.settings.id))
                    .collect()
            } else {
                vec![stage_node(from)]
            };
            for producer in producers {
                s.push_str(&format!("  {producer} -> {}{label};\n", stage_node(to)));
            }
        }
        s.push_str("}\n");
        s
    }

    /// The graph drawn as SVG by Graphviz's `dot`.
    pub fn svg(&self) -> Result<String, GraphError> {
        dot_to_svg(&self.graphviz())
    }

    /// What a stage's box says under its name: kind, then replicas and placement when set.
    fn stage_details(&self, stage: &StageEntry) -> Vec<String> {
        let mut lines = vec![stage.kind.name.to_string()];
        if stage.runtime.replicas > 1 {
            lines.push(format!("×{} replicas", stage.runtime.replicas));
        }
        if let Some(p) = self.deployment.placement.get(&stage.name) {
            let place: Vec<String> = [
                p.host.as_ref().map(|h| format!("on {h}")),
                p.gpu.map(|g| format!("GPU {g}")),
            ]
            .into_iter()
            .flatten()
            .collect();
            if !place.is_empty() {
                lines.push(place.join(", "));
            }
        }
        lines
    }
}

/// Runs `dot -Tsvg` on `dot_text`.
pub fn dot_to_svg(dot_text: &str) -> Result<String, GraphError> {
    let mut child = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => GraphError::NotInstalled,
            _ => GraphError::Unusable(e),
        })?;
    // Written from another thread so that a `dot` writing before it has read everything
    // cannot deadlock against us.
    let Some(mut stdin) = child.stdin.take() else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(GraphError::Unusable(std::io::Error::other(
            "dot started without a pipe to its input",
        )));
    };
    let input = dot_text.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().map_err(GraphError::Unusable)?;
    let written = writer
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("writer panicked")));
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(GraphError::Failed(format!(
            "{} ({})",
            stderr.trim(),
            output.status
        )));
    }
    written.map_err(GraphError::Unusable)?;
    String::from_utf8(output.stdout).map_err(|e| GraphError::Failed(e.to_string()))
}

fn source_node(id: &str) -> String {
    quoted(&format!("source:{id}"))
}

fn stage_node(name: &str) -> String {
    quoted(&format!("stage:{name}"))
}

/// Where a source reads from, short: a file's name, or the URI without its password.
fn source_location(source: &SourceEntry) -> String {
    match &source.uri {
        SourceUri::File(path) => path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| source.uri.display()),
        other => other.display(),
    }
}

/// "payload jpeg q85, drop oldest": the runtime keys that change what travels into a stage.
fn link_label(runtime: &StageRuntime) -> String {
    let mut parts = Vec::new();
    match runtime.payload {
        Some(Payload::Shm) => parts.push("payload shm".to_string()),
        Some(Payload::Raw) => parts.push("payload raw".to_string()),
        Some(Payload::Jpeg { quality }) => parts.push(format!("payload jpeg q{quality}")),
        None => {}
    }
    if runtime.drop_oldest {
        parts.push("drop oldest".to_string());
    }
    parts.join(", ")
}

/// A DOT string literal.
fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// An HTML-like label: `title` in bold, then each of `details` in a smaller font.
fn two_lines(title: &str, details: &[String]) -> String {
    let mut label = format!("<b>{}</b>", html(title));
    for d in details {
        label.push_str(&format!("<br/><font point-size=\"9\">{}</font>", html(d)));
    }
    label
}

fn html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const TOPOLOGY: &str = r#"
[pipeline]
name = "people <count>"
links = [["sources", "mux"], ["mux", "track"], ["track", "osd"], ["osd", "out"], ["track", "events"]]

[[source]]
id = "street"
uri = "file://clips/vtest.avi"

[[source]]
id = "gate"
uri = "rtsp://admin:s3cret@10.0.0.5/stream1"

[stage.mux]
kind = "mux"

[stage.track]
kind = "track"
replicas = 2
payload = "jpeg"
jpeg_quality = 70
drop = "oldest"

[stage.osd]
kind = "osd"

[stage.out]
kind = "sink"
uri = "file://out/{source}.mp4"

[stage.events]
kind = "broker"
uri = "file://out/events.jsonl"
"#;

    fn topology() -> Topology {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("clips")).unwrap();
        std::fs::write(dir.path().join("clips/vtest.avi"), b"x").unwrap();
        Topology::parse(Path::new("t.toml"), TOPOLOGY, dir.path()).unwrap()
    }

    #[test]
    fn dot_shows_sources_kinds_replicas_and_link_policies() {
        let dot = topology().graphviz();
        let expected_lines = [
            "digraph \"people <count>\" {",
            "  \"source:street\" [shape=invhouse, style=filled, fillcolor=\"#dbeafe\", label=<<b>street</b><br/><font point-size=\"9\">vtest.avi</font>>];",
            "  \"source:gate\" [shape=invhouse, style=filled, fillcolor=\"#dbeafe\", label=<<b>gate</b><br/><font point-size=\"9\">rtsp://admin:***@10.0.0.5/stream1</font>>];",
            "  \"stage:mux\" [shape=box, style=\"rounded\", label=<<b>mux</b><br/><font point-size=\"9\">mux</font>>];",
            "  \"stage:track\" [shape=box, style=\"rounded\", label=<<b>track</b><br/><font point-size=\"9\">track</font><br/><font point-size=\"9\">×2 replicas</font>>];",
            "  \"stage:out\" [shape=box, style=\"rounded,bold\", label=<<b>out</b><br/><font point-size=\"9\">sink</font>>];",
            "  \"source:street\" -> \"stage:mux\";",
            "  \"source:gate\" -> \"stage:mux\";",
            "  \"stage:mux\" -> \"stage:track\" [label=\"payload jpeg q70, drop oldest\"];",
            "  \"stage:track\" -> \"stage:events\";",
            "}",
        ];
        for line in expected_lines {
            assert!(dot.lines().any(|l| l == line), "no `{line}` in:\n{dot}");
        }
        assert!(!dot.contains("s3cret"), "{dot}");
        // Every node is declared once and every edge uses declared nodes.
        assert_eq!(dot.matches(" -> ").count(), 6, "{dot}");
    }

    #[test]
    fn dot_quoting_survives_odd_names() {
        assert_eq!(quoted(r#"a "b" \c"#), r#""a \"b\" \\c""#);
        assert_eq!(html("<a & b>"), "&lt;a &amp; b&gt;");
    }

    #[test]
    fn svg_comes_from_graphviz_or_says_to_install_it() {
        match topology().svg() {
            Ok(svg) => {
                assert!(svg.contains("<svg"), "{svg}");
                for name in ["street", "gate", "mux", "track", "osd", "out", "events"] {
                    assert!(svg.contains(&format!(">{name}<")), "no {name} in the SVG");
                }
            }
            Err(GraphError::NotInstalled) => {
                let e = GraphError::NotInstalled.to_string();
                assert!(e.contains("install graphviz"), "{e}");
                eprintln!("skipped the drawing: Graphviz's `dot` is not installed");
            }
            Err(e) => panic!("{e}"),
        }
    }
}
