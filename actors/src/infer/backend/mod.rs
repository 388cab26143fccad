//! Inference backends: something that takes a float32 input batch and returns the model's
//! named outputs. The stage does everything around it (tensor checks, parsing, placement of
//! results), so a backend only has to run one chunk the model accepts.

pub mod kserve_v2;
pub mod ort;
pub mod triton;

use std::path::Path;

use crate::stage::{BuildContext, StageError};

/// One output of a run, copied out of the backend's memory.
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

    /// Values per image: everything after the batch dimension.
    pub fn per_image(&self) -> usize {
        self.shape.iter().skip(1).product()
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

    /// The declared shape of output `name`, or an error that lists the outputs there are.
    pub fn require_output(&self, name: &str) -> Result<&[i64], String> {
        self.output_shape(name).ok_or_else(|| {
            format!(
                "the model has no output `{name}` (outputs: {})",
                self.output_names().join(", ")
            )
        })
    }

    /// The batch size the model accepts per run: `None` when the batch dimension is dynamic.
    pub fn fixed_batch(&self) -> Option<usize> {
        match self.input_shape.first() {
            Some(&b) if b > 0 => Some(b as usize),
            _ => None,
        }
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

/// A loaded model behind some runtime.
pub trait InferenceBackend: Send {
    /// The model's input and outputs.
    fn io(&self) -> &ModelIo;

    /// Runs one chunk: `data` is `shape` (row-major, float32) with `shape[0]` no larger than
    /// [`ModelIo::fixed_batch`] when the model fixes it (exactly that size then).
    fn run_chunk(&mut self, data: &[f32], shape: &[usize])
        -> Result<Vec<OutputTensor>, StageError>;
}

/// Runs a whole batch through `backend`. A model with a fixed batch dimension B runs in chunks
/// of B, the last chunk padded with zeros and the padding's outputs dropped; a dynamic batch
/// runs in one go. Outputs without a batch dimension of the chunk's size are kept whole from
/// the first chunk.
pub fn run_batch(
    backend: &mut dyn InferenceBackend,
    input: &[f32],
    shape: &[usize],
) -> Result<Vec<OutputTensor>, StageError> {
    let n = *shape
        .first()
        .ok_or_else(|| StageError::Input("the input tensor has no batch dimension".to_string()))?;
    let per_image: usize = shape[1..].iter().product();
    if input.len() != n * per_image {
        return Err(StageError::Input(format!(
            "tensor holds {} values, its shape {shape:?} needs {}",
            input.len(),
            n * per_image
        )));
    }
    let chunk = backend.io().fixed_batch().unwrap_or(n).max(1);
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
        let mut chunk_shape = shape.to_vec();
        chunk_shape[0] = chunk;
        for out in backend.run_chunk(data, &chunk_shape)? {
            let batched = out.shape.first() == Some(&chunk);
            let keep = if batched {
                &out.data[..(out.per_image() * count).min(out.data.len())]
            } else {
                &out.data[..]
            };
            match merged.iter_mut().find(|o| o.name == out.name) {
                Some(o) if batched => {
                    o.data.extend_from_slice(keep);
                    o.shape[0] += count;
                }
                Some(_) => {}
                None => {
                    let mut shape = out.shape.clone();
                    if batched {
                        shape[0] = count;
                    }
                    merged.push(OutputTensor {
                        name: out.name,
                        shape,
                        data: keep.to_vec(),
                    });
                }
            }
        }
    }
    Ok(merged)
}

/// Which runtime executes the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// ONNX Runtime (CPU here; CUDA/TensorRT execution providers with `device`).
    #[default]
    Ort,
    /// A Triton Inference Server or other KServe-v2 gRPC server (nvinferserver).
    Triton,
}

/// Where the model runs (`device`): "cpu", or "cuda:N" (ONNX Runtime's CUDA execution
/// provider on GPU N; "cuda" alone means GPU 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum Device {
    #[default]
    Cpu,
    Cuda(u32),
}

impl TryFrom<String> for Device {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let bad = || format!("device = \"{text}\" is not \"cpu\" or \"cuda:N\" (N = GPU index)");
        match text.as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<u32>().ok())
                .map(Device::Cuda)
                .ok_or_else(bad),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Arithmetic precision TensorRT may build its engines with (`precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Fp16,
}

/// ONNX Runtime's graph optimisation level (`optimization`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimization {
    Disable,
    Basic,
    Extended,
    #[default]
    All,
}

/// Backend-related keys of the infer stage's settings.
#[derive(Debug, Clone)]
pub struct BackendSettings {
    pub kind: BackendKind,
    /// `model` from the topology, resolved against the topology's directory.
    pub model: std::path::PathBuf,
    pub threads: usize,
    /// ONNX Runtime inter-op threads (parallel branches of the graph); 0 = its default.
    pub inter_threads: usize,
    pub spinning: bool,
    pub ort_library: Option<std::path::PathBuf>,
    pub optimization: Optimization,
    pub device: Device,
    /// TensorRT execution provider in front of CUDA's (needs a CUDA device).
    pub tensorrt: bool,
    pub precision: Precision,
    /// Where TensorRT keeps built engines between runs (resolved path).
    pub engine_cache: Option<std::path::PathBuf>,
    /// `Some` exactly when `kind` is [`BackendKind::Triton`].
    pub triton: Option<triton::TritonSettings>,
}

/// The cargo feature that compiles the GPU execution providers in.
pub const GPU_FEATURE: &str = "gpu-ort";

impl BackendSettings {
    /// Checks the combination of keys before any model is loaded.
    pub fn check(&self) -> Result<(), StageError> {
        let err = |m: String| Err(StageError::Settings(m));
        if self.device != Device::Cpu && !cfg!(feature = "gpu-ort") {
            return err(format!(
                "device = \"{}\" needs ONNX Runtime's GPU execution providers, which this vidmesh was built without: build it with `--features {GPU_FEATURE}` (cargo build --release -p vidmesh --features {GPU_FEATURE}) and use the onnxruntime-gpu library",
                self.device
            ));
        }
        if self.tensorrt && self.device == Device::Cpu {
            return err("tensorrt = true needs a GPU: set device = \"cuda:N\" as well".to_string());
        }
        if self.precision == Precision::Fp16 && !self.tensorrt {
            return err(
                "precision = \"fp16\" needs tensorrt = true: the CUDA and CPU execution providers run the model in the precision it was exported in".to_string(),
            );
        }
        if self.engine_cache.is_some() && !self.tensorrt {
            return err("engine_cache is TensorRT's engine cache: it needs tensorrt = true".into());
        }
        Ok(())
    }
}

/// Loads the model with the configured backend.
pub fn open(settings: &BackendSettings) -> Result<Box<dyn InferenceBackend>, StageError> {
    settings.check()?;
    match settings.kind {
        BackendKind::Ort => Ok(Box::new(ort::OrtBackend::load(settings)?)),
        BackendKind::Triton => {
            let triton = settings.triton.clone().ok_or_else(|| {
                StageError::Settings("backend = \"triton\" needs `server`".into())
            })?;
            Ok(Box::new(triton::TritonBackend::connect(triton)?))
        }
    }
}

/// Resolves the model path of a file-based backend (checked to exist).
pub fn model_file(model: &str, ctx: &BuildContext) -> Result<std::path::PathBuf, StageError> {
    let path = ctx.resolve(model);
    if !Path::new(&path).is_file() {
        return Err(StageError::Settings(format!(
            "model file {} does not exist",
            path.display()
        )));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Doubles its input; fixed batch 2; one batched output and one constant output.
    struct Doubler {
        io: ModelIo,
        calls: Vec<usize>,
    }

    impl InferenceBackend for Doubler {
        fn io(&self) -> &ModelIo {
            &self.io
        }
        fn run_chunk(
            &mut self,
            data: &[f32],
            shape: &[usize],
        ) -> Result<Vec<OutputTensor>, StageError> {
            self.calls.push(shape[0]);
            Ok(vec![
                OutputTensor {
                    name: "y".into(),
                    shape: shape.to_vec(),
                    data: data.iter().map(|v| v * 2.0).collect(),
                },
                OutputTensor {
                    name: "anchors".into(),
                    shape: vec![3],
                    data: vec![1.0, 2.0, 3.0],
                },
            ])
        }
    }

    #[test]
    fn fixed_batch_runs_in_padded_chunks_and_drops_the_padding() {
        let mut b = Doubler {
            io: ModelIo {
                input_name: "x".into(),
                input_shape: vec![2, 1],
                outputs: vec![],
            },
            calls: vec![],
        };
        let out = run_batch(&mut b, &[1.0, 2.0, 3.0], &[3, 1]).unwrap();
        assert_eq!(b.calls, vec![2, 2]);
        assert_eq!(out[0].shape, vec![3, 1]);
        assert_eq!(out[0].data, vec![2.0, 4.0, 6.0]);
        assert_eq!(
            out[1].data,
            vec![1.0, 2.0, 3.0],
            "unbatched output kept once"
        );
    }

    #[test]
    fn a_tensor_of_the_wrong_length_is_an_input_error() {
        let mut b = Doubler {
            io: ModelIo {
                input_name: "x".into(),
                input_shape: vec![-1, 2],
                outputs: vec![],
            },
            calls: vec![],
        };
        assert!(run_batch(&mut b, &[1.0, 2.0, 3.0], &[2, 2]).is_err());
        assert!(b.calls.is_empty());
    }

    #[test]
    fn devices_parse_and_print() {
        let parse = |t: &str| Device::try_from(t.to_string());
        assert_eq!(parse("cpu"), Ok(Device::Cpu));
        assert_eq!(parse("cuda"), Ok(Device::Cuda(0)));
        assert_eq!(parse("cuda:3"), Ok(Device::Cuda(3)));
        assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
        for bad in ["gpu", "cuda:", "cuda:-1", "cuda:x", "CUDA:0", ""] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains("\"cpu\" or \"cuda:N\""), "{bad}: {err}");
        }
    }

    fn cpu_settings() -> BackendSettings {
        BackendSettings {
            kind: BackendKind::Ort,
            model: "m.onnx".into(),
            threads: 0,
            inter_threads: 0,
            spinning: false,
            ort_library: None,
            optimization: Optimization::All,
            device: Device::Cpu,
            tensorrt: false,
            precision: Precision::Fp32,
            engine_cache: None,
            triton: None,
        }
    }

    #[test]
    fn gpu_keys_need_what_they_build_on() {
        assert!(cpu_settings().check().is_ok());
        let err = |s: BackendSettings| s.check().unwrap_err().to_string();
        let e = err(BackendSettings {
            tensorrt: true,
            ..cpu_settings()
        });
        assert!(e.contains("tensorrt = true needs a GPU"), "{e}");
        let e = err(BackendSettings {
            precision: Precision::Fp16,
            ..cpu_settings()
        });
        assert!(
            e.contains("precision = \"fp16\" needs tensorrt = true"),
            "{e}"
        );
        let e = err(BackendSettings {
            engine_cache: Some("cache".into()),
            ..cpu_settings()
        });
        assert!(
            e.contains("engine_cache") && e.contains("tensorrt = true"),
            "{e}"
        );
        let gpu = BackendSettings {
            device: Device::Cuda(0),
            tensorrt: true,
            precision: Precision::Fp16,
            engine_cache: Some("cache".into()),
            ..cpu_settings()
        };
        if cfg!(feature = "gpu-ort") {
            assert!(gpu.check().is_ok());
        } else {
            let e = err(gpu);
            assert!(
                e.contains("device = \"cuda:0\"") && e.contains("--features gpu-ort"),
                "{e}"
            );
        }
    }

    /// The keys as a topology writes them, checked by the stage before any model is loaded.
    #[test]
    fn the_infer_stage_checks_the_backend_keys_before_loading() {
        let dir = tempfile::tempdir().unwrap();
        // Only existence is checked before loading; an empty file proves no load happened.
        std::fs::write(dir.path().join("m.onnx"), b"").unwrap();
        let ctx = BuildContext {
            stage_name: "detect".into(),
            replica: 0,
            base_dir: dir.path().to_path_buf(),
            sources: vec!["cam".into()],
            resume: None,
            peers: Default::default(),
        };
        let check = |extra: &str| {
            let text = format!(
                "kind = \"infer\"\nmodel = \"m.onnx\"\nparser = {{ type = \"ssd\" }}\n{extra}"
            );
            (crate::infer::KIND.check)(&toml::from_str(&text).unwrap(), &ctx)
                .map_err(|e| e.to_string())
        };
        check("optimization = \"basic\"\ninter_threads = 2").unwrap();
        let e = check("optimization = \"max\"").unwrap_err();
        assert!(e.contains("max") && e.contains("extended"), "{e}");
        let e = check("device = \"gpu0\"").unwrap_err();
        assert!(e.contains("\"cuda:N\""), "{e}");
        let e = check("precision = \"fp16\"").unwrap_err();
        assert!(e.contains("needs tensorrt = true"), "{e}");
        let gpu = check("device = \"cuda:0\"\ntensorrt = true\nengine_cache = \"trt\"");
        if cfg!(feature = "gpu-ort") {
            gpu.unwrap();
        } else {
            let e = gpu.unwrap_err();
            assert!(e.contains("--features gpu-ort"), "{e}");
        }
    }
}
