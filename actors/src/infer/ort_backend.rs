//! ONNX Runtime on CPU through the `ort` crate, with the runtime library loaded at run time
//! (`load-dynamic`) from the `onnxruntime` PyPI wheel, so nothing is downloaded at build time.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef, ValueType};
use vidmesh_protocol::{DataType, TensorMeta};

use crate::stage::StageError;

/// One output of a run, copied out of ONNX Runtime's memory.
#[derive(Debug, Clone)]
pub struct OutputTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl OutputTensor {
    /// The slice belonging to image `index` of the batch, checked against the buffer size.
    pub fn image(&self, index: usize, per_image: usize) -> Result<&[f32], StageError> {
        let start = index.checked_mul(per_image);
        start
            .and_then(|s| self.data.get(s..s.checked_add(per_image)?))
            .ok_or_else(|| {
                StageError::Runtime(format!(
                    "output `{}` is too short for image {index}",
                    self.name
                ))
            })
    }
}

/// Names and shapes the model declares (-1 = dynamic dimension).
#[derive(Debug, Clone)]
pub struct ModelIo {
    pub input_name: String,
    pub input_shape: Vec<i64>,
    pub outputs: Vec<(String, Vec<i64>)>,
}

impl ModelIo {
    pub fn output_shape(&self, name: &str) -> Option<&[i64]> {
        self.outputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.as_slice())
    }

    pub fn output_names(&self) -> Vec<&str> {
        self.outputs.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// `[N,300,300,3]`-style text, `N` (or `?`) for dynamic dimensions.
    pub fn shape_text(shape: &[i64]) -> String {
        let dims: Vec<String> = shape
            .iter()
            .enumerate()
            .map(|(i, d)| match (i, *d) {
                (0, d) if d < 0 => "N".to_string(),
                (_, d) if d < 0 => "?".to_string(),
                (_, d) => d.to_string(),
            })
            .collect();
        format!("[{}]", dims.join(","))
    }
}

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

    pub fn io(&self) -> &ModelIo {
        &self.io
    }

    /// Runs the whole batch. A model with a fixed batch dimension B runs in chunks of B, the
    /// last chunk padded with zeros and the padding's outputs dropped.
    pub fn run(&mut self, tensor: &TensorMeta) -> Result<Vec<OutputTensor>, StageError> {
        if tensor.dtype != DataType::F32 {
            return Err(StageError::Input(format!(
                "the ort backend needs float32 input, got {:?}",
                tensor.dtype
            )));
        }
        let n = tensor.shape[0];
        let per_image: usize = tensor.shape[1..].iter().product();
        let input: std::borrow::Cow<[f32]> = match bytemuck::try_cast_slice::<u8, f32>(&tensor.data)
        {
            Ok(s) => std::borrow::Cow::Borrowed(s),
            // Unaligned storage (e.g. after a network hop): copy once.
            Err(_) => tensor
                .data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        };
        if input.len() != n * per_image {
            return Err(StageError::Input(format!(
                "tensor holds {} values, its shape {:?} needs {}",
                input.len(),
                tensor.shape,
                n * per_image
            )));
        }
        let chunk = match self.io.input_shape.first() {
            Some(&b) if b > 0 => b as usize,
            _ => n,
        };
        let mut merged: Vec<OutputTensor> = Vec::new();
        let mut padded = Vec::new();
        for start in (0..n).step_by(chunk) {
            let count = chunk.min(n - start);
            let slice = &input[start * per_image..(start + count) * per_image];
            let data: &[f32] = if count < chunk {
                padded.clear();
                padded.extend_from_slice(slice);
                padded.resize(chunk * per_image, 0.0);
                &padded
            } else {
                slice
            };
            let mut shape: Vec<usize> = tensor.shape.clone();
            shape[0] = chunk;
            let value = TensorRef::from_array_view((shape, data))
                .map_err(|e| StageError::runtime("cannot wrap the input tensor", e))?;
            let results = self
                .session
                .run(ort::inputs![self.io.input_name.as_str() => value])
                .map_err(|e| StageError::runtime("inference failed", e))?;
            for (name, value) in results.iter() {
                let Ok((shape, values)) = value.try_extract_tensor::<f32>() else {
                    continue; // Non-float outputs are not read by any parser.
                };
                let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
                let keep_per_image = if shape.first() == Some(&chunk) {
                    values.len() / chunk.max(1)
                } else {
                    values.len()
                };
                let keep = &values[..(keep_per_image * count).min(values.len())];
                match merged.iter_mut().find(|o| o.name == name) {
                    Some(o) => {
                        o.data.extend_from_slice(keep);
                        o.shape[0] += count;
                    }
                    None => {
                        let mut shape = shape;
                        if !shape.is_empty() {
                            shape[0] = count;
                        }
                        merged.push(OutputTensor {
                            name: name.to_string(),
                            shape,
                            data: keep.to_vec(),
                        });
                    }
                }
            }
        }
        Ok(merged)
    }
}
