//! Graph checks: every stage is fed, and links form no cycle.

use super::{StageEntry, SOURCES};

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
