//! ONNX Runtime through the `ort` crate, with the runtime library loaded at run time
//! (`load-dynamic`) from the `onnxruntime` PyPI wheel, so nothing is downloaded at build time.
//!
//! On CPU by default. With the `gpu-ort` feature, `device = "cuda:N"` adds ONNX Runtime's CUDA
//! execution provider and `tensorrt = true` its TensorRT provider in front of it; both live in
//! the library itself (onnxruntime-gpu), so a library without them is an error naming it, never
//! a quiet fall back to the CPU.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use super::{BackendSettings, Device, InferenceBackend, ModelIo, Optimization, OutputTensor};
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
/// The library it was loaded from is kept for error messages.
static ENVIRONMENT: OnceLock<Result<(ort::environment::Environment, PathBuf), String>> =
    OnceLock::new();
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
    venv_library(Path::new(".")).ok_or_else(|| StageError::Runtime(
        "ONNX Runtime library not found: set ORT_DYLIB_PATH to libonnxruntime.so (./scripts/setup installs the onnxruntime wheel into .venv)".into(),
    ))
}

/// The newest libonnxruntime.so of the onnxruntime wheel in `root`/.venv.
fn venv_library(root: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(root.join(".venv/lib")).ok()?;
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
                return Some(lib);
            }
        }
    }
    None
}

fn environment(
    library: Option<PathBuf>,
) -> Result<&'static (ort::environment::Environment, PathBuf), StageError> {
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
        Ok((env, path))
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
    /// Loads `settings.model`, checking that its first input is a float32 image batch.
    pub fn load(settings: &BackendSettings) -> Result<Self, StageError> {
        let model = settings.model.as_path();
        let (env, library) = environment(settings.ort_library.clone())?;
        let context = |e: ort::Error| {
            StageError::Runtime(format!("cannot load model {}: {e}", model.display()))
        };
        let level = match settings.optimization {
            Optimization::Disable => GraphOptimizationLevel::Disable,
            Optimization::Basic => GraphOptimizationLevel::Level1,
            Optimization::Extended => GraphOptimizationLevel::Level2,
            Optimization::All => GraphOptimizationLevel::All,
        };
        let mut builder = Session::builder(env)
            .map_err(context)?
            .with_optimization_level(level)
            .map_err(|e| context(e.into()))?
            .with_intra_op_spinning(settings.spinning)
            .map_err(|e| context(e.into()))?;
        if settings.threads > 0 {
            builder = builder
                .with_intra_threads(settings.threads)
                .map_err(|e| context(e.into()))?;
        }
        if settings.inter_threads > 0 {
            // Inter-op threads only run independent branches of the graph at once when the
            // session executes in parallel mode; sequential mode ignores the count.
            builder = builder
                .with_parallel_execution(true)
                .map_err(|e| context(e.into()))?
                .with_inter_threads(settings.inter_threads)
                .map_err(|e| context(e.into()))?
                .with_inter_op_spinning(settings.spinning)
                .map_err(|e| context(e.into()))?;
        }
        if settings.device != Device::Cpu {
            builder = gpu::register(builder, settings, library)?;
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
        tracing::info!(model = %model.display(), input = %io.input_name, shape = %ModelIo::shape_text(&io.input_shape), device = %settings.device, tensorrt = settings.tensorrt, "model loaded");
        Ok(Self { session, io })
    }
}

/// The GPU execution providers. Each one is registered with `error_on_failure`: `ort` would
/// otherwise log the failure and run everything on the CPU, which a user who asked for a GPU
/// would only notice in the frame rate.
#[cfg(feature = "gpu-ort")]
mod gpu {
    use std::path::Path;

    use super::{BackendSettings, Device, StageError};
    use crate::infer::backend::Precision;
    use ort::ep::{self, ExecutionProvider};
    use ort::session::builder::SessionBuilder;

    /// "the library at X does not have it" unless ONNX Runtime lists `E` among its providers.
    fn require<E: ExecutionProvider>(
        what: &str,
        key: &str,
        library: &Path,
    ) -> Result<(), StageError> {
        let available = E::is_available().map_err(|e| {
            StageError::runtime(
                format!(
                    "cannot list ONNX Runtime's execution providers in {}",
                    library.display()
                ),
                e,
            )
        })?;
        if available {
            return Ok(());
        }
        Err(StageError::Settings(format!(
            "{key} needs ONNX Runtime's {what} execution provider; the library at {} does not have it (install onnxruntime-gpu, e.g. `.venv/bin/pip install onnxruntime-gpu` in place of onnxruntime, with its CUDA/cuDNN{} libraries, and point ORT_DYLIB_PATH or ort_library at its libonnxruntime.so)",
            library.display(),
            if what == "TensorRT" { "/TensorRT" } else { "" }
        )))
    }

    pub(super) fn register(
        builder: SessionBuilder,
        settings: &BackendSettings,
        library: &Path,
    ) -> Result<SessionBuilder, StageError> {
        let Device::Cuda(gpu) = settings.device else {
            return Ok(builder);
        };
        let gpu_id = i32::try_from(gpu).map_err(|_| {
            StageError::Settings(format!(
                "device = \"{}\": no such GPU index",
                settings.device
            ))
        })?;
        let device_key = format!("device = \"{}\"", settings.device);
        require::<ep::CUDA>("CUDA", &device_key, library)?;
        let mut providers = Vec::new();
        if settings.tensorrt {
            require::<ep::TensorRT>("TensorRT", "tensorrt = true", library)?;
            let mut trt = ep::TensorRT::default()
                .with_device_id(gpu_id)
                .with_fp16(settings.precision == Precision::Fp16);
            if let Some(dir) = &settings.engine_cache {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StageError::Settings(format!(
                        "engine_cache {} cannot be created: {e}",
                        dir.display()
                    ))
                })?;
                trt = trt
                    .with_engine_cache(true)
                    .with_engine_cache_path(dir.display())
                    .with_timing_cache(true)
                    .with_timing_cache_path(dir.display());
            }
            providers.push(trt.build().error_on_failure());
        }
        // After TensorRT, CUDA takes the nodes TensorRT does not support; ONNX Runtime's CPU
        // provider still takes the few the CUDA one lacks (shape arithmetic, mostly).
        providers.push(
            ep::CUDA::default()
                .with_device_id(gpu_id)
                .build()
                .error_on_failure(),
        );
        builder.with_execution_providers(providers).map_err(|e| {
            StageError::Runtime(format!(
                "cannot start ONNX Runtime's {} execution provider on {}: {e} (are the CUDA/cuDNN{} libraries onnxruntime-gpu needs installed and on the library path?)",
                if settings.tensorrt { "TensorRT" } else { "CUDA" },
                settings.device,
                if settings.tensorrt { "/TensorRT" } else { "" }
            ))
        })
    }
}

/// Without the `gpu-ort` feature [`BackendSettings::check`] rejects GPU devices before this
/// runs; kept so a caller that skipped the check gets the same answer.
#[cfg(not(feature = "gpu-ort"))]
mod gpu {
    use std::path::Path;

    use super::{BackendSettings, StageError};
    use ort::session::builder::SessionBuilder;

    pub(super) fn register(
        _builder: SessionBuilder,
        settings: &BackendSettings,
        _library: &Path,
    ) -> Result<SessionBuilder, StageError> {
        settings.check()?;
        Err(StageError::Settings(format!(
            "device = \"{}\" needs the `{}` feature",
            settings.device,
            super::super::GPU_FEATURE
        )))
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
        // No IO binding or pre-allocated outputs: on the CPU provider the input is already
        // borrowed without a copy, and binding pre-allocated output buffers measured no faster
        // (demo model, onnxruntime 1.31, 2 CPUs: batch 1 22.9 vs 22.3 ms, batch 8 1003 vs
        // 1019 ms, medians of 20, noise larger than the difference). The one copy left, the
        // outputs into `OutputTensor`s, is 368 KB at batch 8, well under 0.1% of the run
        // (docs/BENCHMARKS.md, "infer stage"). With CUDA, parsers need the outputs on the host
        // anyway, so binding them to device memory would only move the same copy.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::backend::{run_batch, BackendKind, Precision};

    /// The repository root (the model and the venv the setup makes live there).
    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// Settings for the demo model with the library of the setup's venv; missing pieces fail
    /// the test with the command that provides them.
    fn demo_settings() -> BackendSettings {
        let model = root().join("models/ssdlite_person.onnx");
        assert!(
            model.is_file(),
            "{} is missing: run scripts/setup first",
            model.display()
        );
        let library = std::env::var_os("ORT_DYLIB_PATH")
            .map(PathBuf::from)
            .or_else(|| venv_library(&root()))
            .expect(
                "libonnxruntime.so not found (ORT_DYLIB_PATH or .venv): run scripts/setup first",
            );
        BackendSettings {
            kind: BackendKind::Ort,
            model,
            threads: 0,
            inter_threads: 0,
            spinning: false,
            ort_library: Some(library),
            optimization: Optimization::All,
            device: Device::Cpu,
            tensorrt: false,
            precision: Precision::Fp32,
            engine_cache: None,
            triton: None,
        }
    }

    const IMAGE: usize = 300 * 300 * 3;

    /// `n` different images in -1..1 (the model's input range): smooth gradients with a
    /// per-image phase, so each image gets different boxes and scores.
    fn images(n: usize) -> Vec<f32> {
        (0..n * IMAGE)
            .map(|i| {
                let (img, px) = (i / IMAGE, i % IMAGE);
                ((px as f32 * 0.0007 + img as f32 * 1.3).sin() * 0.9).clamp(-1.0, 1.0)
            })
            .collect()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn batch_8_gives_each_image_its_batch_1_outputs() {
        let mut backend = OrtBackend::load(&demo_settings()).unwrap();
        let input = images(8);
        let batched = run_batch(&mut backend, &input, &[8, 300, 300, 3]).unwrap();
        for i in 0..8 {
            let alone = run_batch(
                &mut backend,
                &input[i * IMAGE..(i + 1) * IMAGE],
                &[1, 300, 300, 3],
            )
            .unwrap();
            for (b, a) in batched.iter().zip(&alone) {
                assert_eq!(b.name, a.name);
                assert_eq!(b.shape[0], 8);
                let per = a.per_image();
                let d = max_diff(b.image(i, per).unwrap(), &a.data);
                assert!(
                    d <= 1e-4,
                    "output {} of image {i}: batch 8 vs 1 differ by {d}",
                    a.name
                );
            }
        }
    }

    #[test]
    fn every_optimisation_level_and_parallel_execution_compute_the_same() {
        let input = images(2);
        let run = |settings: &BackendSettings| {
            let mut backend = OrtBackend::load(settings).unwrap();
            run_batch(&mut backend, &input, &[2, 300, 300, 3]).unwrap()
        };
        let reference = run(&demo_settings());
        let variants = [
            (Optimization::Disable, 0),
            (Optimization::Basic, 0),
            (Optimization::Extended, 0),
            (Optimization::All, 2),
        ];
        for (optimization, inter_threads) in variants {
            let got = run(&BackendSettings {
                optimization,
                inter_threads,
                threads: 1,
                ..demo_settings()
            });
            assert_eq!(got.len(), reference.len());
            for (g, r) in got.iter().zip(&reference) {
                assert_eq!((&g.name, &g.shape), (&r.name, &r.shape));
                let d = max_diff(&g.data, &r.data);
                assert!(
                    d <= 1e-4,
                    "{optimization:?}, inter_threads {inter_threads}: output {} differs by {d}",
                    g.name
                );
            }
        }
    }

    /// The CPU wheel the setup installs has no GPU providers: asking for one must fail and
    /// say which library lacks what, not run on the CPU.
    #[cfg(feature = "gpu-ort")]
    #[test]
    fn a_gpu_device_on_a_library_without_gpu_providers_is_an_error_naming_it() {
        let cpu = demo_settings();
        let library = cpu.ort_library.clone().unwrap();
        let err = OrtBackend::load(&BackendSettings {
            device: Device::Cuda(0),
            ..demo_settings()
        })
        .err()
        .expect("the CPU library has no CUDA provider")
        .to_string();
        assert!(
            err.contains("device = \"cuda:0\" needs ONNX Runtime's CUDA execution provider")
                && err.contains(&library.display().to_string())
                && err.contains("onnxruntime-gpu"),
            "{err}"
        );
        let err = OrtBackend::load(&BackendSettings {
            device: Device::Cuda(1),
            tensorrt: true,
            precision: Precision::Fp16,
            ..demo_settings()
        })
        .err()
        .expect("the CPU library has no GPU providers")
        .to_string();
        assert!(
            err.contains("device = \"cuda:1\"") && err.contains("onnxruntime-gpu"),
            "{err}"
        );
    }

    #[cfg(not(feature = "gpu-ort"))]
    #[test]
    fn a_gpu_device_without_the_feature_names_the_feature() {
        let err = OrtBackend::load(&BackendSettings {
            device: Device::Cuda(0),
            ..demo_settings()
        })
        .err()
        .expect("no GPU providers compiled in")
        .to_string();
        assert!(err.contains("--features gpu-ort"), "{err}");
    }
}
