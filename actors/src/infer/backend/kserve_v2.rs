//! The messages of the KServe-v2 / Triton gRPC protocol (`inference.GRPCInferenceService`)
//! that the `triton` backend sends and reads, written by hand with prost's derive so that
//! building vidmesh needs no protoc (see docs/DECISIONS.md). Only the RPCs and fields used are
//! here; prost skips the fields a server sends that are not declared (the `parameters` maps,
//! typed contents other than fp32), so a newer server's additions do no harm. Tags and types
//! follow the protocol's `grpc_service.proto`; the test at the bottom checks them against
//! bytes laid out by hand from that schema.

/// The gRPC service name: each method's path is `/inference.GRPCInferenceService/<Method>`.
pub const SERVICE: &str = "inference.GRPCInferenceService";

#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerLiveRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerLiveResponse {
    #[prost(bool, tag = "1")]
    pub live: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerReadyRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerReadyResponse {
    #[prost(bool, tag = "1")]
    pub ready: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelReadyRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    /// Empty: the version the server's policy picks.
    #[prost(string, tag = "2")]
    pub version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelReadyResponse {
    #[prost(bool, tag = "1")]
    pub ready: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelMetadataRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelMetadataResponse {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, repeated, tag = "2")]
    pub versions: Vec<String>,
    #[prost(string, tag = "3")]
    pub platform: String,
    #[prost(message, repeated, tag = "4")]
    pub inputs: Vec<TensorMetadata>,
    #[prost(message, repeated, tag = "5")]
    pub outputs: Vec<TensorMetadata>,
}

/// `ModelMetadataResponse.TensorMetadata`: shape -1 marks a variable dimension (the batch
/// dimension of a model with `max_batch_size > 0`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorMetadata {
    #[prost(string, tag = "1")]
    pub name: String,
    /// "FP32", "UINT8", "INT64"...
    #[prost(string, tag = "2")]
    pub datatype: String,
    #[prost(int64, repeated, tag = "3")]
    pub shape: Vec<i64>,
}

/// `InferTensorContents`, the typed alternative to raw bytes: one list per element type
/// (8- and 16-bit integers travel in the 32-bit lists; FP16 and BF16 only as raw bytes).
#[derive(Clone, PartialEq, prost::Message)]
pub struct InferTensorContents {
    #[prost(bool, repeated, tag = "1")]
    pub bool_contents: Vec<bool>,
    #[prost(int32, repeated, tag = "2")]
    pub int_contents: Vec<i32>,
    #[prost(int64, repeated, tag = "3")]
    pub int64_contents: Vec<i64>,
    #[prost(uint32, repeated, tag = "4")]
    pub uint_contents: Vec<u32>,
    #[prost(uint64, repeated, tag = "5")]
    pub uint64_contents: Vec<u64>,
    #[prost(float, repeated, tag = "6")]
    pub fp32_contents: Vec<f32>,
    #[prost(double, repeated, tag = "7")]
    pub fp64_contents: Vec<f64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelInferRequest {
    #[prost(string, tag = "1")]
    pub model_name: String,
    #[prost(string, tag = "2")]
    pub model_version: String,
    #[prost(string, tag = "3")]
    pub id: String,
    #[prost(message, repeated, tag = "5")]
    pub inputs: Vec<InferInputTensor>,
    #[prost(message, repeated, tag = "6")]
    pub outputs: Vec<InferRequestedOutputTensor>,
    /// One entry per input, in order: the tensor's values, little-endian, row-major.
    #[prost(bytes = "vec", repeated, tag = "7")]
    pub raw_input_contents: Vec<Vec<u8>>,
}

/// `ModelInferRequest.InferInputTensor` (its data goes in `raw_input_contents`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct InferInputTensor {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub datatype: String,
    #[prost(int64, repeated, tag = "3")]
    pub shape: Vec<i64>,
}

/// `ModelInferRequest.InferRequestedOutputTensor`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InferRequestedOutputTensor {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelInferResponse {
    #[prost(string, tag = "1")]
    pub model_name: String,
    #[prost(string, tag = "2")]
    pub model_version: String,
    #[prost(string, tag = "3")]
    pub id: String,
    #[prost(message, repeated, tag = "5")]
    pub outputs: Vec<InferOutputTensor>,
    /// Either empty (values are in each output's `contents`) or one entry per output, in order.
    #[prost(bytes = "bytes", repeated, tag = "6")]
    pub raw_output_contents: Vec<bytes::Bytes>,
}

/// `ModelInferResponse.InferOutputTensor`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InferOutputTensor {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub datatype: String,
    #[prost(int64, repeated, tag = "3")]
    pub shape: Vec<i64>,
    #[prost(message, optional, tag = "5")]
    pub contents: Option<InferTensorContents>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// Bytes written field by field from the schema (tag = field << 3 | wire type), so a wrong
    /// tag or type in the structs above fails here rather than against a server.
    #[test]
    fn an_infer_response_laid_out_by_hand_decodes() {
        let mut contents = vec![0x32, 8]; // InferTensorContents.fp32_contents (6, packed)
        contents.extend(1.5f32.to_le_bytes());
        contents.extend((-2.0f32).to_le_bytes());
        let mut output = vec![0x0a, 1, b'y']; // name = "y"
        output.extend([0x12, 4, b'F', b'P', b'3', b'2']); // datatype = "FP32"
        output.extend([0x1a, 2, 1, 2]); // shape = [1, 2] (packed int64)
        output.extend([0x22, 0]); // parameters (a map entry, skipped)
        output.push(0x2a); // contents
        output.push(contents.len() as u8);
        output.extend(&contents);
        let mut response = vec![0x0a, 1, b'm']; // model_name = "m"
        response.extend([0x12, 1, b'3']); // model_version = "3"
        response.push(0x2a); // outputs
        response.push(output.len() as u8);
        response.extend(&output);
        response.extend([0x32, 2, 0xAA, 0xBB]); // raw_output_contents
        let decoded = ModelInferResponse::decode(response.as_slice()).unwrap();
        assert_eq!(decoded.model_name, "m");
        assert_eq!(decoded.model_version, "3");
        let out = &decoded.outputs[0];
        assert_eq!((out.name.as_str(), out.datatype.as_str()), ("y", "FP32"));
        assert_eq!(out.shape, vec![1, 2]);
        assert_eq!(
            out.contents.as_ref().unwrap().fp32_contents,
            vec![1.5, -2.0]
        );
        assert_eq!(decoded.raw_output_contents, vec![vec![0xAA, 0xBB]]);
    }

    #[test]
    fn an_infer_request_encodes_to_the_schema_layout() {
        let request = ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![InferInputTensor {
                name: "x".into(),
                datatype: "FP32".into(),
                shape: vec![1],
            }],
            outputs: vec![InferRequestedOutputTensor { name: "y".into() }],
            raw_input_contents: vec![vec![0, 0, 128, 63]],
            ..Default::default()
        };
        let input = [0x0a, 1, b'x', 0x12, 4, b'F', b'P', b'3', b'2', 0x1a, 1, 1];
        let mut want = vec![0x0a, 1, b'm', 0x2a, input.len() as u8];
        want.extend(input);
        want.extend([0x32, 3, 0x0a, 1, b'y']);
        want.extend([0x3a, 4, 0, 0, 128, 63]);
        assert_eq!(request.encode_to_vec(), want);
    }

    #[test]
    fn metadata_decodes_shapes_and_types() {
        let mut tensor = vec![0x0a, 5];
        tensor.extend(b"image");
        tensor.extend([0x12, 4, b'F', b'P', b'3', b'2']);
        // shape [-1, 300]: packed int64 varints (-1 takes ten bytes).
        let mut shape = vec![0xff; 9];
        shape.push(0x01);
        shape.extend([0xac, 0x02]);
        tensor.push(0x1a);
        tensor.push(shape.len() as u8);
        tensor.extend(&shape);
        let mut response = vec![0x0a, 1, b'm', 0x12, 1, b'1', 0x1a, 6];
        response.extend(b"python");
        response.push(0x22);
        response.push(tensor.len() as u8);
        response.extend(&tensor);
        let decoded = ModelMetadataResponse::decode(response.as_slice()).unwrap();
        assert_eq!(decoded.versions, vec!["1"]);
        assert_eq!(decoded.platform, "python");
        assert_eq!(decoded.inputs[0].name, "image");
        assert_eq!(decoded.inputs[0].shape, vec![-1, 300]);
        assert!(decoded.outputs.is_empty());
    }
}
