//! The topology as the dashboard draws it: one node per source and per stage, placed in
//! columns by their distance from the sources, so the page needs no layout engine.

use serde::Serialize;

use crate::node::source_instance;
use crate::topology::{Topology, SOURCES};

/// Horizontal distance between columns and vertical distance between rows, in page units.
const COLUMN: f64 = 170.0;
const ROW: f64 = 80.0;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Node {
    /// `source.<id>` for sources, the stage name otherwise.
    pub id: String,
    pub label: String,
    /// The stage kind, or `source`.
    pub kind: String,
    pub replicas: u32,
    /// Centre of the node.
    pub x: f64,
    pub y: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Edge {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    pub width: f64,
    pub height: f64,
}

/// Places every source in column 0 and every stage one column right of its furthest producer.
pub fn layout(topology: &Topology) -> Graph {
    // Stages come in dependency order, so one pass finds every column.
    let mut column: Vec<(String, usize)> = Vec::new();
    for stage in &topology.stages {
        let c = topology
            .links
            .iter()
            .filter(|(_, to)| to == &stage.name)
            .map(|(from, _)| {
                if from == SOURCES {
                    1
                } else {
                    column
                        .iter()
                        .find(|(n, _)| n == from)
                        .map_or(1, |(_, c)| c + 1)
                }
            })
            .max()
            .unwrap_or(1);
        column.push((stage.name.clone(), c));
    }
    let columns = column.iter().map(|(_, c)| *c).max().unwrap_or(0) + 1;
    let mut rows = vec![0usize; columns];
    let mut place = |c: usize| {
        let row = rows[c];
        rows[c] += 1;
        (
            COLUMN / 2.0 + c as f64 * COLUMN,
            ROW / 2.0 + row as f64 * ROW,
        )
    };

    let mut nodes = Vec::new();
    for source in &topology.sources {
        let (x, y) = place(0);
        nodes.push(Node {
            id: source_instance(&source.settings.id),
            label: source.settings.id.clone(),
            kind: "source".into(),
            replicas: 1,
            x,
            y,
        });
    }
    for (stage, (_, c)) in topology.stages.iter().zip(&column) {
        let (x, y) = place(*c);
        nodes.push(Node {
            id: stage.name.clone(),
            label: stage.name.clone(),
            kind: stage.kind.name.to_string(),
            replicas: stage.runtime.replicas,
            x,
            y,
        });
    }
    // Columns with fewer nodes are centred against the tallest.
    let tallest = rows.iter().copied().max().unwrap_or(1);
    for node in &mut nodes {
        let c = ((node.x - COLUMN / 2.0) / COLUMN).round() as usize;
        node.y += (tallest - rows[c]) as f64 * ROW / 2.0;
    }

    let mut edges = Vec::new();
    for (from, to) in &topology.links {
        if from == SOURCES {
            for source in &topology.sources {
                edges.push(Edge {
                    from: source_instance(&source.settings.id),
                    to: to.clone(),
                });
            }
        } else {
            edges.push(Edge {
                from: from.clone(),
                to: to.clone(),
            });
        }
    }
    Graph {
        nodes,
        edges,
        width: columns as f64 * COLUMN,
        height: tallest as f64 * ROW,
    }
}
