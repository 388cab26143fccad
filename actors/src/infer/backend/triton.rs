//! `backend = "triton"`: the model runs on a Triton Inference Server (or any server speaking
//! the KServe-v2 gRPC protocol, such as KServe's model server), DeepStream's nvinferserver in
//! gRPC mode. The stage still preprocesses and parses; the server only runs the network.
//!
//! At build time the backend checks that the server is live and ready, reads the model's
//! metadata into [`ModelIo`] (so output parsers check the model exactly as with ONNX Runtime)
//! and that the model is ready. Each chunk is one `ModelInfer` call carrying the input as raw
//! little-endian float32 bytes.

use std::sync::mpsc;
use std::time::Duration;

use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

use super::kserve_v2 as v2;
use super::{InferenceBackend, ModelIo, OutputTensor};
use crate::stage::StageError;

/// The only element type the stage feeds and parsers read.
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
}

impl TritonSettings {
    /// Checks the `server` URL (`grpc://host[:port]`) and the rest of the keys.
    pub fn new(
        server: &str,
        model: &str,
        version: &str,
        timeout: Duration,
    ) -> Result<Self, StageError> {
        let settings_error =
            |what: String| StageError::Settings(format!("server \"{server}\": {what}"));
        let url = url::Url::parse(server)
            .map_err(|e| settings_error(format!("not a URL ({e}); expected grpc://host:port")))?;
        match url.scheme() {
            "grpc" => {}
            "grpcs" => {
                return Err(settings_error(
                    "TLS (grpcs://) is not supported by the triton backend yet; use grpc:// (behind a TLS-terminating proxy on the same host if the link must be encrypted)".into(),
                ))
            }
            other => {
                return Err(settings_error(format!(
                    "scheme `{other}` is not supported; expected grpc://host:port"
                )))
            }
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
        let endpoint = format!("http://{host}:{port}");
        Ok(Self {
            server: server.to_string(),
            endpoint,
            model: model.to_string(),
            version: version.to_string(),
            timeout,
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
        let endpoint = Endpoint::from_shared(settings.endpoint.clone())
            .map_err(|e| StageError::Settings(format!("server \"{}\": {e}", settings.server)))?
            .connect_timeout(settings.timeout)
            .timeout(settings.timeout)
            .tcp_nodelay(true);
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
        if out.datatype != FP32 {
            return Err(format!(
                "output `{}` is {}, the backend reads {FP32} only",
                out.name, out.datatype
            ));
        }
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
                if Some(bytes.len()) != count.checked_mul(4) {
                    return Err(format!(
                            "output `{}` of shape {shape:?} needs {count} float32 values, the response carries {} bytes",
                            out.name,
                            bytes.len()
                        ));
                }
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            }
            (None, Some(contents)) => {
                if contents.fp32_contents.len() != count {
                    return Err(format!(
                            "output `{}` of shape {shape:?} needs {count} float32 values, the response carries {}",
                            out.name,
                            contents.fp32_contents.len()
                        ));
                }
                contents.fp32_contents.clone()
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

const SERVER_LIVE: &str = "/inference.GRPCInferenceService/ServerLive";
const SERVER_READY: &str = "/inference.GRPCInferenceService/ServerReady";
const MODEL_READY: &str = "/inference.GRPCInferenceService/ModelReady";
const MODEL_METADATA: &str = "/inference.GRPCInferenceService/ModelMetadata";
const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

/// The model's input and outputs as the stage sees them: one FP32 input, FP32 outputs.
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
    if let Some(other) = meta.outputs.iter().find(|o| o.datatype != FP32) {
        return Err(format!(
            "output `{}` is {}; output parsers read {FP32} tensors only",
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
        TritonSettings::new(server, "m", "", Duration::from_secs(1))
    }

    #[test]
    fn server_urls() {
        assert_eq!(settings("grpc://h:9000").unwrap().endpoint, "http://h:9000");
        assert_eq!(settings("grpc://h").unwrap().endpoint, "http://h:8001");
        assert_eq!(
            settings("grpc://[::1]:8001").unwrap().endpoint,
            "http://[::1]:8001"
        );
        for bad in [
            "h:8001",
            "http://h:8001",
            "grpc://",
            "grpc://h/x",
            "grpcs://h",
        ] {
            let e = settings(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{bad}: {e}");
        }
        assert!(TritonSettings::new("grpc://h", " ", "", Duration::from_secs(1)).is_err());
        assert!(TritonSettings::new("grpc://h", "m", "", Duration::ZERO).is_err());
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
        });
        let response = v2::ModelInferResponse {
            outputs: vec![typed],
            ..Default::default()
        };
        let out = outputs_of(response, &requested(&["a"])).unwrap();
        assert_eq!(out[0].data, vec![0.5, 0.25]);
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
                "needs 3 float32 values",
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
                        datatype: "INT64".into(),
                        ..output("a", &[1])
                    }],
                    raw_output_contents: vec![raw(&[1.0, 2.0])],
                    ..Default::default()
                },
                "INT64",
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
        assert!(model_io(&int_out).unwrap_err().contains("scores"));
        let mut two = meta.clone();
        two.inputs.push(tensor("im_info", "FP32", &[-1, 3]));
        assert!(model_io(&two).unwrap_err().contains("im_info"));
        let mut none = meta;
        none.outputs.clear();
        assert!(model_io(&none).is_err());
    }
}
