//! ONNX Runtime on CPU through the `ort` crate, with the runtime library loaded at run time
//! (`load-dynamic`) from the `onnxruntime` PyPI wheel, so nothing is downloaded at build time.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use super::{InferenceBackend, ModelIo, OutputTensor};
use crate::stage::StageError;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef, ValueType};

/// A loaded model.
pub struct OrtBackend {
    session: Session,
    io: ModelIo,
}

/// ONNX Runtime allows one environment per process; every infer stage shares it.
static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();
/// Serialises the first initialisation so two stages building at once do not race.
static INIT_LOCK: Mutex<()> = Mutex::new(());

fn find_library(explicit: Option<PathBuf>) -> Result<PathBuf, StageError> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return Ok(PathBuf::from(p));
    }
    // The setup script installs the onnxruntime wheel into ./.venv.
    let venv_lib = Path::new(".venv/lib");
    if let Ok(entries) = std::fs::read_dir(venv_lib) {
        for python in entries.flatten() {
            let capi = python.path().join("site-packages/onnxruntime/capi");
            if let Ok(files) = std::fs::read_dir(&capi) {
                let mut libs: Vec<PathBuf> = files
                    .flatten()
                    .map(|f| f.path())
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("libonnxruntime.so"))
                    })
                    .collect();
                libs.sort();
                if let Some(lib) = libs.pop() {
                    return Ok(lib);
                }
            }
        }
    }
    Err(StageError::Runtime(
        "ONNX Runtime library not found: set ORT_DYLIB_PATH to libonnxruntime.so (./scripts/setup installs the onnxruntime wheel into .venv)".into(),
    ))
}

fn environment(
    library: Option<PathBuf>,
) -> Result<&'static ort::environment::Environment, StageError> {
    let _guard = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let result = ENVIRONMENT.get_or_init(|| {
        let path = find_library(library).map_err(|e| e.to_string())?;
        if !path.is_file() {
            return Err(format!(
                "ONNX Runtime library {} does not exist",
                path.display()
            ));
        }
        let builder = ort::init_from(&path)
            .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))?;
        let env = builder
            .with_name("vidmesh")
            .build()
            .map_err(|e| format!("cannot start ONNX Runtime: {e}"))?;
        tracing::info!(library = %path.display(), "ONNX Runtime loaded");
        Ok(env)
    });
    result.as_ref().map_err(|e| StageError::Runtime(e.clone()))
}

fn shape_of(ty: &ValueType) -> Option<(TensorElementType, Vec<i64>)> {
    match ty {
        ValueType::Tensor { ty, shape, .. } => Some((*ty, shape.iter().copied().collect())),
        _ => None,
    }
}

impl OrtBackend {
    /// Loads `model`, checking that its first input is a float32 image batch.
    pub fn load(
        model: &Path,
        threads: usize,
        spinning: bool,
        library: Option<PathBuf>,
    ) -> Result<Self, StageError> {
        let env = environment(library)?;
        let context = |e: ort::Error| {
            StageError::Runtime(format!("cannot load model {}: {e}", model.display()))
        };
        let mut builder = Session::builder(env)
            .map_err(context)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| context(e.into()))?
            .with_intra_op_spinning(spinning)
            .map_err(|e| context(e.into()))?;
        if threads > 0 {
            builder = builder
                .with_intra_threads(threads)
                .map_err(|e| context(e.into()))?;
        }
        let session = builder.commit_from_file(model).map_err(context)?;
        let input = session.inputs().first().ok_or_else(|| {
            StageError::Settings(format!("model {} has no inputs", model.display()))
        })?;
        let (ty, input_shape) = shape_of(input.dtype()).ok_or_else(|| {
            StageError::Settings(format!(
                "model {} input `{}` is not a tensor",
                model.display(),
                input.name()
            ))
        })?;
        if ty != TensorElementType::Float32 {
            return Err(StageError::Settings(format!(
                "model {} input `{}` is {ty:?}; the ort backend feeds float32 tensors",
                model.display(),
                input.name()
            )));
        }
        let outputs = session
            .outputs()
            .iter()
            .filter_map(|o| shape_of(o.dtype()).map(|(_, s)| (o.name().to_string(), s)))
            .collect();
        let io = ModelIo {
            input_name: input.name().to_string(),
            input_shape,
            outputs,
        };
        tracing::info!(model = %model.display(), input = %io.input_name, shape = %ModelIo::shape_text(&io.input_shape), "model loaded");
        Ok(Self { session, io })
    }
}

impl InferenceBackend for OrtBackend {
    fn io(&self) -> &ModelIo {
        &self.io
    }

    fn run_chunk(
        &mut self,
        data: &[f32],
        shape: &[usize],
    ) -> Result<Vec<OutputTensor>, StageError> {
        let value = TensorRef::from_array_view((shape.to_vec(), data))
            .map_err(|e| StageError::runtime("cannot wrap the input tensor", e))?;
        let results = self
            .session
            .run(ort::inputs![self.io.input_name.as_str() => value])
            .map_err(|e| StageError::runtime("inference failed", e))?;
        let mut outputs = Vec::with_capacity(results.len());
        for (name, value) in results.iter() {
            // Integer outputs (class ids from an ArgMax inside the model) become floats, which
            // hold every id below 2^24 exactly; other element types are not read by any parser.
            let (shape, data) = if let Ok((shape, values)) = value.try_extract_tensor::<f32>() {
                (shape, values.to_vec())
            } else if let Ok((shape, values)) = value.try_extract_tensor::<i64>() {
                (shape, values.iter().map(|&v| v as f32).collect())
            } else if let Ok((shape, values)) = value.try_extract_tensor::<i32>() {
                (shape, values.iter().map(|&v| v as f32).collect())
            } else {
                continue;
            };
            outputs.push(OutputTensor {
                name: name.to_string(),
                shape: shape.iter().map(|&d| d.max(0) as usize).collect(),
                data,
            });
        }
        Ok(outputs)
    }
}
