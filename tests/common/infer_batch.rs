//! Running an infer stage directly on one batch of whole frames, for the parser tests
//! (`#[path]`-included by tests/infer_parsers{,_2}.rs).

use std::path::Path;

use vidmesh_actors::stage::{BuildContext, Outputs};
use vidmesh_protocol::{
    Batch, DataMessage, DataType, FrameMeta, FrameTransform, TensorLayout, TensorMeta, TensorRow,
};
use vidmesh_transport::{in_process_link, Received};

/// Builds the infer stage `table` (relative paths from `base_dir`) and runs it on `data`, a
/// float32 NCHW tensor of `shape` whose rows are whole frames of one source; returns the
/// frames of the one batch it sends on. `what` names the case in failures.
pub fn infer_whole_frames(
    table: &toml::Table,
    base_dir: &Path,
    data: Vec<u8>,
    shape: &[usize],
    what: &str,
) -> Vec<FrameMeta> {
    let ctx = BuildContext {
        stage_name: "detect".into(),
        replica: 0,
        base_dir: base_dir.to_path_buf(),
        sources: vec!["cam0".into()],
        resume: None,
        peers: Default::default(),
    };
    let mut stage = (vidmesh_actors::infer::KIND.build)(table, &ctx)
        .unwrap_or_else(|e| panic!("{what}: the stage builds: {e}"));
    let [n, _, height, width] = shape[..] else {
        panic!("{what}: input shape {shape:?} is not NCHW");
    };
    assert_eq!(
        data.len(),
        shape.iter().product::<usize>() * 4,
        "{what}: input size"
    );
    let frames = (0..n)
        .map(|i| FrameMeta {
            source_id: 0,
            source_name: "cam0".into(),
            frame_num: i as u64,
            width: width as u32,
            height: height as u32,
            ..Default::default()
        })
        .collect();
    let rows = (0..n)
        .map(|i| TensorRow {
            frame: i as u32,
            object: None,
            transform: FrameTransform::default(),
        })
        .collect();
    let batch = Batch {
        batch_id: 1,
        frames,
        tensors: vec![TensorMeta {
            name: String::new(),
            dtype: DataType::F32,
            shape: shape.to_vec(),
            layout: Some(TensorLayout::Nchw),
            data: data.into(),
            rows,
        }],
    };
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let (tx, mut rx) = in_process_link("detect->test", 4, rt.handle().clone());
    let mut out = Outputs::new(vec![tx]);
    stage
        .on_batch(batch, &mut out)
        .unwrap_or_else(|e| panic!("{what}: on_batch: {e}"));
    match rx.recv_blocking(Some(std::time::Instant::now())) {
        Received::Message(DataMessage::Batch(b)) => {
            assert_eq!(b.frames.len(), n, "{what}: one batch of {n} frames out");
            b.frames
        }
        other => panic!("{what}: no batch came out: {other:?}"),
    }
}
