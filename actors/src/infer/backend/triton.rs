//! `backend = "triton"`: the model runs on a Triton Inference Server (or any server speaking
//! the KServe-v2 gRPC protocol, such as KServe's model server), DeepStream's nvinferserver in
//! gRPC mode. The stage still preprocesses and parses; the server only runs the network.
//!
//! At build time the backend checks that the server is live and ready, reads the model's
//! metadata into [`ModelIo`] (so output parsers check the model exactly as with ONNX Runtime)
//! and that the model is ready. Each chunk is one `ModelInfer` call carrying the input as raw
//! little-endian float32 bytes. `grpcs://` servers are reached over TLS (rustls), with the
//! system's roots plus an optional CA file, and a client certificate for mutual TLS.

use std::sync::mpsc;
use std::time::Duration;

use serde::Deserialize;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::kserve_v2 as v2;
use super::{InferenceBackend, ModelIo, OutputTensor};
use crate::stage::StageError;

/// The element type the stage feeds (outputs of other numeric types are converted).
const FP32: &str = "FP32";
/// Default gRPC port of Triton (KServe's model server uses 8081).
const DEFAULT_PORT: u16 = 8001;
/// Largest response accepted. tonic's default (4 MiB) is below a batch of segmentation maps;
/// the bound still keeps a misbehaving server from making us allocate without limit.
const MAX_RESPONSE_BYTES: usize = 1 << 30;

/// Where the model is served, checked when the topology is loaded.
#[derive(Debug, Clone)]
pub struct TritonSettings {
    /// As written in the topology, for messages.
    pub server: String,
    /// The HTTP/2 URI tonic connects to.
    endpoint: String,
    pub model: String,
    /// Empty: the version the server's policy picks.
    pub version: String,
    /// Bound on connecting and on each request.
    pub timeout: Duration,
    /// `grpcs://`: how to check the server and present ourselves.
    tls: Option<Tls>,
}

/// The `tls` table of an infer stage whose `server` is `grpcs://`: PEM files (paths relative to
/// the topology's directory, resolved by the stage).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// CA certificate(s) that may sign the server's certificate, trusted besides the system's
    /// roots (a private CA).
    #[serde(default)]
    pub ca: Option<std::path::PathBuf>,
    /// Client certificate chain, for servers that require mutual TLS; needs `key`.
    #[serde(default)]
    pub cert: Option<std::path::PathBuf>,
    /// The client certificate's private key.
    #[serde(default)]
    pub key: Option<std::path::PathBuf>,
    /// The name the server's certificate must carry; default: the host of `server`.
    #[serde(default)]
    pub domain: Option<String>,
}

/// TLS material read from [`TlsFiles`] when the topology is loaded.
#[derive(Debug, Clone)]
struct Tls {
    ca: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    domain: String,
}

impl Tls {
    fn read(files: &TlsFiles, host: &str) -> Result<Self, String> {
        let read = |key: &str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| format!("tls.{key} {}: {e}", path.display()))
        };
        let ca = files.ca.as_deref().map(|p| read("ca", p)).transpose()?;
        let identity = match (&files.cert, &files.key) {
            (Some(cert), Some(key)) => Some((read("cert", cert)?, read("key", key)?)),
            (None, None) => None,
            _ => {
                return Err(
                    "tls.cert and tls.key go together (the client's certificate and its key)"
                        .into(),
                )
            }
        };
        // A URL's IPv6 host keeps its brackets; certificates name the bare address.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        Ok(Self {
            ca,
            identity,
            domain: files.domain.clone().unwrap_or_else(|| bare.to_string()),
        })
    }

    fn config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new()
            .with_native_roots()
            .domain_name(self.domain.clone());
        if let Some(ca) = &self.ca {
            config = config.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        config
    }
}

impl TritonSettings {
    /// Checks the `server` URL (`grpc://host[:port]`, or `grpcs://` with `tls`) and the rest
    /// of the keys, and reads the TLS files.
    pub fn new(
        server: &str,
        model: &str,
        version: &str,
        timeout: Duration,
        tls: Option<&TlsFiles>,
    ) -> Result<Self, StageError> {
        let settings_error =
            |what: String| StageError::Settings(format!("server \"{server}\": {what}"));
        let url = url::Url::parse(server)
            .map_err(|e| settings_error(format!("not a URL ({e}); expected grpc://host:port")))?;
        let secure = match url.scheme() {
            "grpc" => false,
            "grpcs" => true,
            other => {
                return Err(settings_error(format!(
                "scheme `{other}` is not supported; expected grpc://host:port or grpcs://host:port"
            )))
            }
        };
        if tls.is_some() && !secure {
            return Err(settings_error(
                "`tls` is for grpcs:// servers; this one is plain grpc://".into(),
            ));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| settings_error("no host; expected grpc://host:port".into()))?;
        if !matches!(url.path(), "" | "/") || url.query().is_some() || !url.username().is_empty() {
            return Err(settings_error(
                "only grpc://host:port is understood (no path, query or credentials)".into(),
            ));
        }
        if model.trim().is_empty() {
            return Err(StageError::Settings(
                "model: with backend = \"triton\" it is the model's name on the server, and must not be empty".into(),
            ));
        }
        if timeout.is_zero() {
            return Err(StageError::Settings(
                "request_timeout must be longer than zero".into(),
            ));
        }
        let port = url.port().unwrap_or(DEFAULT_PORT);
        // IPv6 literals keep their brackets in host_str.
        let endpoint = format!("{}://{host}:{port}", if secure { "https" } else { "http" });
        let tls = secure
            .then(|| Tls::read(&tls.cloned().unwrap_or_default(), host))
            .transpose()
            .map_err(settings_error)?;
        Ok(Self {
            server: server.to_string(),
            endpoint,
            model: model.to_string(),
            version: version.to_string(),
            timeout,
            tls,
        })
    }

    /// "model `m` (version 2) on grpc://host:8001", for messages.
    fn what(&self) -> String {
        if self.version.is_empty() {
            format!("model `{}` on {}", self.model, self.server)
        } else {
            format!(
                "model `{}` (version {}) on {}",
                self.model, self.version, self.server
            )
        }
    }
}

/// A model on a KServe-v2 server.
pub struct TritonBackend {
    settings: TritonSettings,
    /// Our own runtime: the stage runs on a plain thread, and build may run inside the
    /// launcher's runtime, where blocking on a future of that same runtime would panic.
    runtime: Option<tokio::runtime::Runtime>,
    client: tonic::client::Grpc<Channel>,
    io: ModelIo,
    requested: Vec<v2::InferRequestedOutputTensor>,
    requests: u64,
}

/// `error: cause: cause...`, with a cause that repeats the previous one's text left out
/// (hyper and tonic wrap connection errors in layers that say the same thing).
/// `shown` is what `text` already says of `error` itself.
fn with_causes(error: &dyn std::error::Error, mut text: String, shown: &str) -> String {
    let mut last = shown.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if line != last {
            text.push_str(&format!(": {line}"));
        }
        last = line;
        source = cause.source();
    }
    text
}

/// Why a call failed: the gRPC status and its transport cause.
fn describe_status(status: &tonic::Status) -> String {
    let mut text = format!("gRPC status {:?}", status.code());
    if !status.message().is_empty() {
        text.push_str(&format!(": {}", status.message()));
    }
    // Transport failures (connection refused, reset) hide the cause in the source chain.
    with_causes(status, text, status.message())
}

impl TritonBackend {
    /// Connects, checks the server and the model, and reads the model's inputs and outputs.
    pub fn connect(settings: TritonSettings) -> Result<Self, StageError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("triton-client")
            .enable_all()
            .build()
            .map_err(|e| StageError::runtime("cannot start the gRPC client's runtime", e))?;
        let mut endpoint = Endpoint::from_shared(settings.endpoint.clone())
            .map_err(|e| StageError::Settings(format!("server \"{}\": {e}", settings.server)))?
            .connect_timeout(settings.timeout)
            .timeout(settings.timeout)
            .tcp_nodelay(true);
        if let Some(tls) = &settings.tls {
            endpoint = endpoint.tls_config(tls.config()).map_err(|e| {
                StageError::Settings(format!(
                    "server \"{}\": TLS settings: {}",
                    settings.server,
                    with_causes(&e, e.to_string(), &e.to_string())
                ))
            })?;
        }
        let (tx, rx) = mpsc::sync_channel(1);
        runtime.spawn(async move {
            let _ = tx.send(endpoint.connect().await);
        });
        let channel = rx
            .recv_timeout(settings.timeout + Duration::from_secs(1))
            .map_err(|_| {
                StageError::Runtime(format!(
                    "cannot reach inference server {}: no connection within {:?}",
                    settings.server, settings.timeout
                ))
            })?
            .map_err(|e| {
                StageError::Runtime(format!(
                    "cannot reach inference server {} (is it running?): {}",
                    settings.server,
                    with_causes(&e, e.to_string(), &e.to_string())
                ))
            })?;
        let client =
            tonic::client::Grpc::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES);
        let mut backend = Self {
            settings,
            runtime: Some(runtime),
            client,
            io: ModelIo {
                input_name: String::new(),
                input_shape: Vec::new(),
                outputs: Vec::new(),
            },
            requested: Vec::new(),
            requests: 0,
        };
        backend.check_server()?;
        backend.io = backend.read_metadata()?;
        backend.requested = backend
            .io
            .outputs
            .iter()
            .map(|(name, _)| v2::InferRequestedOutputTensor { name: name.clone() })
            .collect();
        tracing::info!(
            server = %backend.settings.server,
            model = %backend.settings.model,
            input = %backend.io.input_name,
            shape = %ModelIo::shape_text(&backend.io.input_shape),
            "model ready on the inference server"
        );
        Ok(backend)
    }

    /// One unary call, waited for on this (non-async) thread.
    fn call<Req, Resp>(&self, method: &'static str, request: Req) -> Result<Resp, String>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let runtime = self.runtime.as_ref().ok_or("the client is shut down")?;
        let mut client = self.client.clone();
        let timeout = self.settings.timeout;
        let path = PathAndQuery::from_static(method);
        let (tx, rx) = mpsc::sync_channel(1);
        runtime.spawn(async move {
            let result = async {
                client
                    .ready()
                    .await
                    .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                let mut request = tonic::Request::new(request);
                request.set_timeout(timeout);
                let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
                client.unary(request, path, codec).await
            }
            .await;
            let _ = tx.send(result.map(tonic::Response::into_inner));
        });
        // The request carries the deadline; this margin only guards against a runtime that
        // never answers at all.
        match rx.recv_timeout(timeout + Duration::from_secs(2)) {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(status)) => Err(describe_status(&status)),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    fn check_server(&self) -> Result<(), StageError> {
        let server = &self.settings.server;
        let live: v2::ServerLiveResponse = self
            .call(SERVER_LIVE, v2::ServerLiveRequest {})
            .map_err(|e| {
                StageError::Runtime(format!(
                    "inference server {server} does not answer ServerLive: {e}"
                ))
            })?;
        if !live.live {
            return Err(StageError::Runtime(format!(
                "inference server {server} says it is not live"
            )));
        }
        let ready: v2::ServerReadyResponse = self
            .call(SERVER_READY, v2::ServerReadyRequest {})
            .map_err(|e| {
                StageError::Runtime(format!(
                    "inference server {server} does not answer ServerReady: {e}"
                ))
            })?;
        if !ready.ready {
            return Err(StageError::Runtime(format!(
                "inference server {server} is not ready (still loading models?)"
            )));
        }
        Ok(())
    }

    /// ModelMetadata first: for an unknown model its error says so ("unknown model"), where
    /// ModelReady would only answer "not ready". Then ModelReady, since a known model may be
    /// loading or failed.
    fn read_metadata(&self) -> Result<ModelIo, StageError> {
        let s = &self.settings;
        let what = s.what();
        let meta: v2::ModelMetadataResponse = self
            .call(
                MODEL_METADATA,
                v2::ModelMetadataRequest {
                    name: s.model.clone(),
                    version: s.version.clone(),
                },
            )
            .map_err(|e| {
                StageError::Settings(format!(
                    "cannot get the metadata of {what} (is the model name right and the model loaded?): {e}"
                ))
            })?;
        let ready: v2::ModelReadyResponse = self
            .call(
                MODEL_READY,
                v2::ModelReadyRequest {
                    name: s.model.clone(),
                    version: s.version.clone(),
                },
            )
            .map_err(|e| StageError::Runtime(format!("{what} does not answer ModelReady: {e}")))?;
        if !ready.ready {
            return Err(StageError::Runtime(format!(
                "{what} is known to the server but not ready (loading, or failed to load: see the server's log)"
            )));
        }
        model_io(&meta).map_err(|e| StageError::Settings(format!("{what}: {e}")))
    }
}

/// Converts one response into the outputs the stage reads, checking every size against the
/// shape the server declares and that every `requested` output came back.
fn outputs_of(
    response: v2::ModelInferResponse,
    requested: &[v2::InferRequestedOutputTensor],
) -> Result<Vec<OutputTensor>, String> {
    let raw = &response.raw_output_contents;
    if !raw.is_empty() && raw.len() != response.outputs.len() {
        return Err(format!(
            "the response has {} outputs but {} raw_output_contents",
            response.outputs.len(),
            raw.len()
        ));
    }
    let mut outputs = Vec::with_capacity(response.outputs.len());
    for (i, out) in response.outputs.iter().enumerate() {
        let element = OutputType::of(&out.datatype).ok_or_else(|| {
            format!(
                "output `{}` is {}, which the backend cannot convert to numbers",
                out.name, out.datatype
            )
        })?;
        let shape = out
            .shape
            .iter()
            .map(|&d| usize::try_from(d).ok())
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| format!("output `{}` has shape {:?}", out.name, out.shape))?;
        let count = shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| format!("output `{}` has shape {:?}", out.name, out.shape))?;
        let data = match (raw.get(i), &out.contents) {
            (Some(bytes), _) => {
                if Some(bytes.len()) != count.checked_mul(element.size()) {
                    return Err(format!(
                        "output `{}` of shape {shape:?} needs {count} {} values, the response carries {} bytes",
                        out.name,
                        out.datatype,
                        bytes.len()
                    ));
                }
                element.decode_raw(bytes)
            }
            (None, Some(contents)) => {
                let data = element.decode_contents(contents).ok_or_else(|| {
                    format!(
                        "output `{}` is {}, which travels as raw bytes only, but the response has typed contents",
                        out.name, out.datatype
                    )
                })?;
                if data.len() != count {
                    return Err(format!(
                        "output `{}` of shape {shape:?} needs {count} {} values, the response carries {}",
                        out.name,
                        out.datatype,
                        data.len()
                    ));
                }
                data
            }
            (None, None) => {
                return Err(format!("output `{}` carries no values", out.name));
            }
        };
        outputs.push(OutputTensor {
            name: out.name.clone(),
            shape,
            data,
        });
    }
    if let Some(missing) = requested
        .iter()
        .find(|r| !outputs.iter().any(|o| o.name == r.name))
    {
        return Err(format!("the response lacks output `{}`", missing.name));
    }
    Ok(outputs)
}

/// The numeric KServe-v2 element types; output parsers read every output as f32, as the ONNX
/// Runtime backend gives them (class ids from an ArgMax are INT64, FP16 models are common).
#[derive(Debug, Clone, Copy, PartialEq)]
enum OutputType {
    Bool,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    F16,
    Bf16,
    F32,
    F64,
}

impl OutputType {
    fn of(datatype: &str) -> Option<Self> {
        Some(match datatype {
            "BOOL" => Self::Bool,
            "INT8" => Self::I8,
            "INT16" => Self::I16,
            "INT32" => Self::I32,
            "INT64" => Self::I64,
            "UINT8" => Self::U8,
            "UINT16" => Self::U16,
            "UINT32" => Self::U32,
            "UINT64" => Self::U64,
            "FP16" => Self::F16,
            "BF16" => Self::Bf16,
            "FP32" => Self::F32,
            "FP64" => Self::F64,
            _ => return None,
        })
    }

    /// Bytes per element in `raw_output_contents`.
    fn size(self) -> usize {
        match self {
            Self::Bool | Self::I8 | Self::U8 => 1,
            Self::I16 | Self::U16 | Self::F16 | Self::Bf16 => 2,
            Self::I32 | Self::U32 | Self::F32 => 4,
            Self::I64 | Self::U64 | Self::F64 => 8,
        }
    }

    /// Little-endian raw bytes (length already checked) → f32.
    fn decode_raw(self, bytes: &[u8]) -> Vec<f32> {
        fn each<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
            bytes
                .chunks_exact(N)
                .map(|c| f(c.try_into().expect("chunks_exact gives N bytes")))
                .collect()
        }
        match self {
            Self::Bool => bytes.iter().map(|&b| f32::from(u8::from(b != 0))).collect(),
            Self::I8 => bytes.iter().map(|&b| f32::from(b as i8)).collect(),
            Self::U8 => bytes.iter().map(|&b| f32::from(b)).collect(),
            Self::I16 => each(bytes, |b| f32::from(i16::from_le_bytes(b))),
            Self::U16 => each(bytes, |b| f32::from(u16::from_le_bytes(b))),
            Self::F16 => each(bytes, |b| half::f16::from_le_bytes(b).to_f32()),
            Self::Bf16 => each(bytes, |b| half::bf16::from_le_bytes(b).to_f32()),
            Self::I32 => each(bytes, |b| i32::from_le_bytes(b) as f32),
            Self::U32 => each(bytes, |b| u32::from_le_bytes(b) as f32),
            Self::F32 => each(bytes, f32::from_le_bytes),
            Self::I64 => each(bytes, |b| i64::from_le_bytes(b) as f32),
            Self::U64 => each(bytes, |b| u64::from_le_bytes(b) as f32),
            Self::F64 => each(bytes, |b| f64::from_le_bytes(b) as f32),
        }
    }

    /// The typed list this element type travels in → f32; `None` for FP16/BF16, which have
    /// no typed list.
    fn decode_contents(self, c: &v2::InferTensorContents) -> Option<Vec<f32>> {
        Some(match self {
            Self::Bool => c
                .bool_contents
                .iter()
                .map(|&b| f32::from(u8::from(b)))
                .collect(),
            Self::I8 | Self::I16 | Self::I32 => c.int_contents.iter().map(|&v| v as f32).collect(),
            Self::I64 => c.int64_contents.iter().map(|&v| v as f32).collect(),
            Self::U8 | Self::U16 | Self::U32 => c.uint_contents.iter().map(|&v| v as f32).collect(),
            Self::U64 => c.uint64_contents.iter().map(|&v| v as f32).collect(),
            Self::F32 => c.fp32_contents.clone(),
            Self::F64 => c.fp64_contents.iter().map(|&v| v as f32).collect(),
            Self::F16 | Self::Bf16 => return None,
        })
    }
}

const SERVER_LIVE: &str = "/inference.GRPCInferenceService/ServerLive";
const SERVER_READY: &str = "/inference.GRPCInferenceService/ServerReady";
const MODEL_READY: &str = "/inference.GRPCInferenceService/ModelReady";
const MODEL_METADATA: &str = "/inference.GRPCInferenceService/ModelMetadata";
const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

/// The model's input and outputs as the stage sees them: one FP32 input, numeric outputs.
fn model_io(meta: &v2::ModelMetadataResponse) -> Result<ModelIo, String> {
    let input = match meta.inputs.as_slice() {
        [input] => input,
        [] => return Err("the model declares no inputs".into()),
        more => {
            return Err(format!(
                "the model has {} inputs ({}); the infer stage feeds exactly one image tensor",
                more.len(),
                more.iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    };
    if input.datatype != FP32 {
        return Err(format!(
            "input `{}` is {}; the triton backend sends {FP32} tensors (change the model's input type, or add a cast in an ensemble)",
            input.name, input.datatype
        ));
    }
    if meta.outputs.is_empty() {
        return Err("the model declares no outputs".into());
    }
    if let Some(other) = meta
        .outputs
        .iter()
        .find(|o| OutputType::of(&o.datatype).is_none())
    {
        return Err(format!(
            "output `{}` is {}; the backend converts numeric outputs (BOOL, INT8..INT64, UINT8..UINT64, FP16, BF16, FP32, FP64) to FP32 for the parsers, not this type",
            other.name, other.datatype
        ));
    }
    Ok(ModelIo {
        input_name: input.name.clone(),
        input_shape: input.shape.clone(),
        outputs: meta
            .outputs
            .iter()
            .map(|o| (o.name.clone(), o.shape.clone()))
            .collect(),
    })
}

impl InferenceBackend for TritonBackend {
    fn io(&self) -> &ModelIo {
        &self.io
    }

    fn run_chunk(
        &mut self,
        data: &[f32],
        shape: &[usize],
    ) -> Result<Vec<OutputTensor>, StageError> {
        let dims = shape
            .iter()
            .map(|&d| i64::try_from(d))
            .collect::<Result<Vec<i64>, _>>()
            .map_err(|_| StageError::Input(format!("input shape {shape:?} is too large")))?;
        self.requests += 1;
        let request = v2::ModelInferRequest {
            model_name: self.settings.model.clone(),
            model_version: self.settings.version.clone(),
            id: self.requests.to_string(),
            inputs: vec![v2::InferInputTensor {
                name: self.io.input_name.clone(),
                datatype: FP32.to_string(),
                shape: dims,
            }],
            outputs: self.requested.clone(),
            raw_input_contents: vec![le_bytes(data)],
        };
        let what = self.settings.what();
        let response: v2::ModelInferResponse = self
            .call(MODEL_INFER, request)
            .map_err(|e| StageError::Runtime(format!("inference on {what} failed: {e}")))?;
        outputs_of(response, &self.requested).map_err(|e| {
            StageError::Runtime(format!(
                "{what} answered a malformed ModelInfer response: {e}"
            ))
        })
    }
}

impl Drop for TritonBackend {
    fn drop(&mut self) {
        // Dropping a runtime blocks until its tasks end, which panics inside another runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The values as little-endian bytes (the wire order `raw_input_contents` requires).
fn le_bytes(data: &[f32]) -> Vec<u8> {
    #[cfg(target_endian = "little")]
    {
        bytemuck::cast_slice::<f32, u8>(data).to_vec()
    }
    #[cfg(not(target_endian = "little"))]
    {
        data.iter().flat_map(|v| v.to_le_bytes()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(server: &str) -> Result<TritonSettings, StageError> {
        TritonSettings::new(server, "m", "", Duration::from_secs(1), None)
    }

    #[test]
    fn server_urls() {
        assert_eq!(settings("grpc://h:9000").unwrap().endpoint, "http://h:9000");
        assert_eq!(settings("grpc://h").unwrap().endpoint, "http://h:8001");
        assert_eq!(
            settings("grpc://[::1]:8001").unwrap().endpoint,
            "http://[::1]:8001"
        );
        for bad in ["h:8001", "http://h:8001", "grpc://", "grpc://h/x"] {
            let e = settings(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{bad}: {e}");
        }
        let second = Duration::from_secs(1);
        assert!(TritonSettings::new("grpc://h", " ", "", second, None).is_err());
        assert!(TritonSettings::new("grpc://h", "m", "", Duration::ZERO, None).is_err());
    }

    #[test]
    fn grpcs_servers_read_their_tls_files_when_loaded() {
        let secure = settings("grpcs://[::1]:9000").unwrap();
        assert_eq!(secure.endpoint, "https://[::1]:9000");
        assert_eq!(secure.tls.as_ref().unwrap().domain, "::1");
        assert!(secure.tls.unwrap().ca.is_none(), "system roots only");

        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let with = |files: TlsFiles, server: &str| {
            TritonSettings::new(server, "m", "", Duration::from_secs(1), Some(&files))
                .map_err(|e| e.to_string())
        };
        let files = TlsFiles {
            ca: Some(ca.clone()),
            domain: Some("triton.internal".into()),
            ..Default::default()
        };
        let s = with(files.clone(), "grpcs://10.0.0.5").unwrap();
        let tls = s.tls.unwrap();
        assert_eq!(tls.domain, "triton.internal");
        assert!(tls.ca.is_some());

        let e = with(files, "grpc://h").unwrap_err();
        assert!(e.contains("`tls` is for grpcs://"), "{e}");
        let missing = TlsFiles {
            ca: Some(dir.path().join("absent.pem")),
            ..Default::default()
        };
        let e = with(missing, "grpcs://h").unwrap_err();
        assert!(e.contains("tls.ca") && e.contains("absent.pem"), "{e}");
        let half = TlsFiles {
            cert: Some(ca),
            ..Default::default()
        };
        let e = with(half, "grpcs://h").unwrap_err();
        assert!(e.contains("tls.cert and tls.key go together"), "{e}");
    }

    fn tensor(name: &str, datatype: &str, shape: &[i64]) -> v2::TensorMetadata {
        v2::TensorMetadata {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
        }
    }

    fn output(name: &str, shape: &[i64]) -> v2::InferOutputTensor {
        v2::InferOutputTensor {
            name: name.into(),
            datatype: "FP32".into(),
            shape: shape.to_vec(),
            contents: None,
        }
    }

    fn requested(names: &[&str]) -> Vec<v2::InferRequestedOutputTensor> {
        names
            .iter()
            .map(|n| v2::InferRequestedOutputTensor {
                name: n.to_string(),
            })
            .collect()
    }

    fn raw(values: &[f32]) -> bytes::Bytes {
        le_bytes(values).into()
    }

    #[test]
    fn raw_and_typed_outputs_are_read() {
        let response = v2::ModelInferResponse {
            outputs: vec![output("a", &[1, 2]), output("b", &[1])],
            raw_output_contents: vec![raw(&[1.0, -2.5]), raw(&[7.0])],
            ..Default::default()
        };
        let out = outputs_of(response, &requested(&["a", "b"])).unwrap();
        assert_eq!(
            (out[0].shape.clone(), out[0].data.clone()),
            (vec![1, 2], vec![1.0, -2.5])
        );
        assert_eq!(out[1].data, vec![7.0]);

        let mut typed = output("a", &[2]);
        typed.contents = Some(v2::InferTensorContents {
            fp32_contents: vec![0.5, 0.25],
            ..Default::default()
        });
        let response = v2::ModelInferResponse {
            outputs: vec![typed],
            ..Default::default()
        };
        let out = outputs_of(response, &requested(&["a"])).unwrap();
        assert_eq!(out[0].data, vec![0.5, 0.25]);
    }

    /// One output of `datatype` carrying `raw` bytes, read back as f32.
    fn read_raw(datatype: &str, shape: &[i64], raw: Vec<u8>) -> Result<Vec<f32>, String> {
        let response = v2::ModelInferResponse {
            outputs: vec![v2::InferOutputTensor {
                datatype: datatype.into(),
                ..output("a", shape)
            }],
            raw_output_contents: vec![raw.into()],
            ..Default::default()
        };
        outputs_of(response, &requested(&["a"])).map(|mut o| o.remove(0).data)
    }

    #[test]
    fn other_numeric_outputs_become_f32() {
        let halves: Vec<u8> = [1.5f32, -0.25, 65504.0]
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        assert_eq!(
            read_raw("FP16", &[3], halves).unwrap(),
            [1.5, -0.25, 65504.0]
        );
        let brain: Vec<u8> = [3.0f32, -1.0]
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        assert_eq!(read_raw("BF16", &[2], brain).unwrap(), [3.0, -1.0]);
        let ids: Vec<u8> = [7i64, -1].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(read_raw("INT64", &[1, 2], ids).unwrap(), [7.0, -1.0]);
        assert_eq!(
            read_raw("UINT8", &[3], vec![0, 9, 255]).unwrap(),
            [0.0, 9.0, 255.0]
        );
        assert_eq!(read_raw("INT8", &[2], vec![0xff, 3]).unwrap(), [-1.0, 3.0]);
        assert_eq!(read_raw("BOOL", &[2], vec![0, 2]).unwrap(), [0.0, 1.0]);
        let wide: Vec<u8> = [0.5f64, 1e300]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(read_raw("FP64", &[2], wide).unwrap(), [0.5, f32::INFINITY]);
        let e = read_raw("INT64", &[2], vec![0; 12]).unwrap_err();
        assert!(
            e.contains("needs 2 INT64 values") && e.contains("12 bytes"),
            "{e}"
        );
        let e = read_raw("BYTES", &[1], vec![1]).unwrap_err();
        assert!(e.contains("BYTES"), "{e}");

        let typed = |datatype: &str, contents: v2::InferTensorContents| {
            let response = v2::ModelInferResponse {
                outputs: vec![v2::InferOutputTensor {
                    datatype: datatype.into(),
                    contents: Some(contents),
                    ..output("a", &[2])
                }],
                ..Default::default()
            };
            outputs_of(response, &requested(&["a"])).map(|mut o| o.remove(0).data)
        };
        let ints = v2::InferTensorContents {
            int_contents: vec![-3, 4],
            ..Default::default()
        };
        assert_eq!(typed("INT16", ints.clone()).unwrap(), [-3.0, 4.0]);
        let longs = v2::InferTensorContents {
            int64_contents: vec![5, 6],
            ..Default::default()
        };
        assert_eq!(typed("INT64", longs).unwrap(), [5.0, 6.0]);
        assert!(typed("INT64", ints)
            .unwrap_err()
            .contains("needs 2 INT64 values"));
        let e = typed("FP16", v2::InferTensorContents::default()).unwrap_err();
        assert!(e.contains("raw bytes only"), "{e}");
    }

    #[test]
    fn malformed_responses_are_errors_not_panics() {
        let cases: Vec<(v2::ModelInferResponse, &str)> = vec![
            (
                v2::ModelInferResponse {
                    outputs: vec![output("a", &[1, 3])],
                    raw_output_contents: vec![raw(&[1.0, 2.0])],
                    ..Default::default()
                },
                "needs 3 FP32 values",
            ),
            (
                v2::ModelInferResponse {
                    outputs: vec![output("a", &[2])],
                    raw_output_contents: vec![bytes::Bytes::from_static(&[0, 0, 0, 0, 1])],
                    ..Default::default()
                },
                "5 bytes",
            ),
            (
                v2::ModelInferResponse {
                    outputs: vec![output("a", &[-1, 2])],
                    raw_output_contents: vec![raw(&[1.0, 2.0])],
                    ..Default::default()
                },
                "shape [-1, 2]",
            ),
            (
                v2::ModelInferResponse {
                    outputs: vec![output("a", &[i64::MAX, i64::MAX, 4])],
                    raw_output_contents: vec![raw(&[1.0])],
                    ..Default::default()
                },
                "has shape",
            ),
            (
                v2::ModelInferResponse {
                    outputs: vec![output("a", &[1]), output("b", &[1])],
                    raw_output_contents: vec![raw(&[1.0])],
                    ..Default::default()
                },
                "2 outputs but 1 raw_output_contents",
            ),
            (
                v2::ModelInferResponse {
                    outputs: vec![output("a", &[1])],
                    ..Default::default()
                },
                "carries no values",
            ),
            (
                v2::ModelInferResponse {
                    outputs: vec![output("b", &[1])],
                    raw_output_contents: vec![raw(&[1.0])],
                    ..Default::default()
                },
                "lacks output `a`",
            ),
            (
                v2::ModelInferResponse {
                    outputs: vec![v2::InferOutputTensor {
                        datatype: "STRING".into(),
                        ..output("a", &[1])
                    }],
                    raw_output_contents: vec![raw(&[1.0, 2.0])],
                    ..Default::default()
                },
                "STRING",
            ),
        ];
        for (response, expected) in cases {
            let e = outputs_of(response.clone(), &requested(&["a"])).unwrap_err();
            assert!(
                e.contains(expected),
                "{response:?}: `{e}` lacks `{expected}`"
            );
        }
    }

    #[test]
    fn metadata_becomes_model_io() {
        let meta = v2::ModelMetadataResponse {
            inputs: vec![tensor("image", "FP32", &[-1, 300, 300, 3])],
            outputs: vec![
                tensor("boxes", "FP32", &[-1, 1917, 4]),
                tensor("scores", "FP32", &[-1, 1917, 2]),
            ],
            ..Default::default()
        };
        let io = model_io(&meta).unwrap();
        assert_eq!(io.input_name, "image");
        assert_eq!(io.fixed_batch(), None);
        assert_eq!(io.output_shape("scores"), Some(&[-1, 1917, 2][..]));

        let mut uint8 = meta.clone();
        uint8.inputs[0].datatype = "UINT8".into();
        let e = model_io(&uint8).unwrap_err();
        assert!(e.contains("UINT8") && e.contains("image"), "{e}");
        let mut int_out = meta.clone();
        int_out.outputs[1].datatype = "INT64".into();
        assert!(model_io(&int_out).is_ok(), "INT64 outputs are converted");
        let mut bytes_out = meta.clone();
        bytes_out.outputs[1].datatype = "BYTES".into();
        let e = model_io(&bytes_out).unwrap_err();
        assert!(e.contains("scores") && e.contains("BYTES"), "{e}");
        let mut two = meta.clone();
        two.inputs.push(tensor("im_info", "FP32", &[-1, 3]));
        assert!(model_io(&two).unwrap_err().contains("im_info"));
        let mut none = meta;
        none.outputs.clear();
        assert!(model_io(&none).is_err());
    }
}
