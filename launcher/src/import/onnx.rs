//! Just enough of the ONNX file format (protobuf) to learn a model's input and output shapes,
//! which nvinfer reads from the model itself when a config leaves `infer-dims` or
//! `output-blob-names` out. Malformed files give `None`, never a panic.
//!
//! Fields read: `ModelProto.graph` (7); `GraphProto.initializer` (5, `TensorProto.name` 8),
//! `.input` (11), `.output` (12); `ValueInfoProto.name` (1), `.type` (2); `TypeProto.tensor_type`
//! (1); `Tensor.shape` (2); `TensorShapeProto.dim` (1); `Dimension.dim_value` (1),
//! `.dim_param` (2).

/// One dimension: a number, or a symbolic (dynamic) one.
#[derive(Debug, Clone, PartialEq)]
pub enum Dim {
    Fixed(i64),
    Dynamic,
}

/// A named tensor and its shape (empty when the model does not say).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<Dim>,
}

/// What the importer needs to know about a model.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelInfo {
    /// Graph inputs that are not initializers (weights), in order.
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
}

impl ModelInfo {
    pub fn read(path: &std::path::Path) -> Option<Self> {
        Self::parse(&std::fs::read(path).ok()?)
    }

    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let mut graph = None;
        for field in Fields::new(bytes) {
            let (number, value) = field?;
            if let (7, Value::Bytes(b)) = (number, value) {
                graph = Some(b);
            }
        }
        let graph = graph?;
        let mut initializers = Vec::new();
        let mut inputs = Vec::new();
        let mut outputs = Vec::new();
        for field in Fields::new(graph) {
            match field? {
                (5, Value::Bytes(b)) => initializers.push(tensor_name(b)?),
                (11, Value::Bytes(b)) => inputs.push(value_info(b)?),
                (12, Value::Bytes(b)) => outputs.push(value_info(b)?),
                _ => {}
            }
        }
        inputs.retain(|i| !initializers.contains(&i.name));
        Some(ModelInfo { inputs, outputs })
    }
}

fn tensor_name(bytes: &[u8]) -> Option<String> {
    for field in Fields::new(bytes) {
        if let (8, Value::Bytes(b)) = field? {
            return Some(String::from_utf8_lossy(b).into_owned());
        }
    }
    Some(String::new())
}

fn value_info(bytes: &[u8]) -> Option<TensorInfo> {
    let mut info = TensorInfo {
        name: String::new(),
        shape: Vec::new(),
    };
    for field in Fields::new(bytes) {
        match field? {
            (1, Value::Bytes(b)) => info.name = String::from_utf8_lossy(b).into_owned(),
            (2, Value::Bytes(type_proto)) => {
                for f in Fields::new(type_proto) {
                    if let (1, Value::Bytes(tensor)) = f? {
                        for f in Fields::new(tensor) {
                            if let (2, Value::Bytes(shape)) = f? {
                                info.shape = dims(shape)?;
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Some(info)
}

fn dims(shape: &[u8]) -> Option<Vec<Dim>> {
    let mut out = Vec::new();
    for field in Fields::new(shape) {
        if let (1, Value::Bytes(dim)) = field? {
            let mut d = Dim::Dynamic;
            for f in Fields::new(dim) {
                if let (1, Value::Varint(v)) = f? {
                    d = Dim::Fixed(v as i64);
                }
            }
            out.push(d);
        }
    }
    Some(out)
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The fields of one protobuf message; yields `None` once on malformed input, then stops.
struct Fields<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            rest: bytes,
            failed: false,
        }
    }

    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.rest.split_first()?;
            self.rest = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    fn skip(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        Some(taken)
    }

    fn field(&mut self) -> Option<(u64, Value<'a>)> {
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => self.skip(8).map(|_| Value::Fixed)?,
            2 => {
                let len = usize::try_from(self.varint()?).ok()?;
                Value::Bytes(self.skip(len)?)
            }
            5 => self.skip(4).map(|_| Value::Fixed)?,
            _ => return None,
        };
        Some((key >> 3, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Option<(u64, Value<'a>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let field = self.field();
        self.failed = field.is_none();
        Some(field)
    }
}
