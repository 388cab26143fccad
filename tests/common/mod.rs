//! Running topologies from the end-to-end tests (each test file is its own crate and includes
//! this module).

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use vidmesh::{run, RunOptions, RunSummary, Topology};
use vidmesh_tests::repo_root;

/// Validates and runs a topology file, relative paths resolved from the repository root.
pub fn run_file(path: &Path) -> RunSummary {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let topology = Topology::parse(path, &text, &repo_root()).unwrap_or_else(|e| panic!("{e}"));
    run(
        &topology,
        &RunOptions::default(),
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`run_file`], and every source and stage must have succeeded.
pub fn run_ok(path: &Path) -> RunSummary {
    let summary = run_file(path);
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    summary
}
