//! Checks a request body against the input signature of the version it goes
//! to (issue 7): schema violations and per-feature null/NaN/Inf counts.
//!
//! Pure: no I/O, no clock, no allocation beyond the parsed body and the
//! report. Two kinds of registered signature are understood:
//!
//! - **OIP** (`{"inputs": [{"name", "datatype", "shape"}], "outputs": ...}`):
//!   the request is an Open Inference Protocol v2 body, `{"inputs": [{"name",
//!   "datatype", "shape", "data", "parameters"?}], ...}`. Each listed tensor
//!   must be there once, with the listed datatype, a shape of the listed rank
//!   whose dimensions match (`-1` in the signature matches any size), and as
//!   many elements in `data` (flat or nested, row-major) as its shape holds.
//!   A request dimension of `-1` is inferred from the data when it divides.
//!   Elements must fit the datatype: `true`/`false` for BOOL, integers in
//!   range for INT*/UINT* (`1.0` is a float, not an integer), numbers in
//!   range for FP16/FP32/FP64, strings for BYTES. Tensors the signature does
//!   not list are `extra`. A tensor whose `parameters` carry
//!   `binary_data_size` (the binary tensor extension) has its data elsewhere:
//!   only its name, datatype and shape are checked.
//! - **JSON Schema**, the subset users register for plain JSON passthrough:
//!   a top-level `"type": "object"` (or no `type`) with `properties`, each
//!   with a primitive `type` (`string`, `number`, `integer`, `boolean`,
//!   `null`, `object`, `array`, or an array of them; no `type` means any),
//!   `required`, and `additionalProperties: false` (the JSON Schema default
//!   allows extra fields, so only then is an extra field a violation). Other
//!   keywords (`enum`, `minimum`, `format`, nested `properties`, `$ref`...)
//!   are accepted and not checked. The body must be a JSON object.
//!
//! NaN and infinities: JSON has no literal for them, so clients send them
//! as `null`, as the strings `"NaN"`, `"Infinity"`, `"-Infinity"`, or (Python's
//! `json.dumps`) as the bare tokens `NaN`, `Infinity`, `-Infinity`, which are
//! not JSON. Where a number is expected (FP tensors, `number`/`integer`
//! properties) those strings count as `nan`/`inf` and are not violations; a
//! body that only fails to parse because of the bare tokens is read as if
//! they were those strings. `null` counts as `nulls` anywhere and is not a
//! violation either: null rates are for the data-quality triggers to judge.
//! In a BYTES tensor or a `string` property, `"NaN"` is just text.
//!
//! Bounded work: a body over [`Limits::max_body_bytes`] is `too_large`
//! without being parsed; a tensor whose shape or data holds more than
//! [`Limits::max_elements`] elements is `too_large` and its data is not
//! walked further; data nested deeper than [`Limits::max_depth`] is
//! `too_deep` (serde_json itself refuses input nested deeper than 128).
//! Elements that do not fit are reported once per tensor, with their count
//! and the first of them; a tensor gets at most one violation for its shape
//! and one for its element count. `check` never panics.
//!
//! Cost: the body is parsed once into a `serde_json::Value`; measuring it on
//! the hot path is left to the issue that wires the check into the gateway.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

/// The bounds on one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bodies longer than this are not parsed.
    pub max_body_bytes: usize,
    /// Elements of one tensor (by its shape or its data), or of one field.
    pub max_elements: u64,
    /// Nesting of one tensor's data (or one field's value).
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 4 << 20,
            max_elements: 1 << 20,
            max_depth: 32,
        }
    }
}

/// An OIP tensor datatype.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Datatype {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
    Bytes,
}

impl Datatype {
    pub const ALL: [Datatype; 13] = [
        Datatype::Bool,
        Datatype::Uint8,
        Datatype::Uint16,
        Datatype::Uint32,
        Datatype::Uint64,
        Datatype::Int8,
        Datatype::Int16,
        Datatype::Int32,
        Datatype::Int64,
        Datatype::Fp16,
        Datatype::Fp32,
        Datatype::Fp64,
        Datatype::Bytes,
    ];

    /// The OIP name (`FP32`); names are case-sensitive, as in the protocol.
    pub fn parse(name: &str) -> Option<Datatype> {
        Datatype::ALL.into_iter().find(|d| d.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Datatype::Bool => "BOOL",
            Datatype::Uint8 => "UINT8",
            Datatype::Uint16 => "UINT16",
            Datatype::Uint32 => "UINT32",
            Datatype::Uint64 => "UINT64",
            Datatype::Int8 => "INT8",
            Datatype::Int16 => "INT16",
            Datatype::Int32 => "INT32",
            Datatype::Int64 => "INT64",
            Datatype::Fp16 => "FP16",
            Datatype::Fp32 => "FP32",
            Datatype::Fp64 => "FP64",
            Datatype::Bytes => "BYTES",
        }
    }

    fn is_float(self) -> bool {
        matches!(self, Datatype::Fp16 | Datatype::Fp32 | Datatype::Fp64)
    }

    /// Inclusive range of an integer type.
    fn int_range(self) -> Option<(i128, i128)> {
        let range = match self {
            Datatype::Uint8 => (0, u8::MAX as i128),
            Datatype::Uint16 => (0, u16::MAX as i128),
            Datatype::Uint32 => (0, u32::MAX as i128),
            Datatype::Uint64 => (0, u64::MAX as i128),
            Datatype::Int8 => (i8::MIN as i128, i8::MAX as i128),
            Datatype::Int16 => (i16::MIN as i128, i16::MAX as i128),
            Datatype::Int32 => (i32::MIN as i128, i32::MAX as i128),
            Datatype::Int64 => (i64::MIN as i128, i64::MAX as i128),
            _ => return None,
        };
        Some(range)
    }

    /// Largest finite magnitude of a float type.
    fn float_max(self) -> f64 {
        match self {
            Datatype::Fp16 => 65504.0,
            Datatype::Fp32 => f32::MAX as f64,
            _ => f64::MAX,
        }
    }
}

/// One input tensor of an OIP signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: Datatype,
    /// `-1` matches any size.
    pub shape: Vec<i64>,
}

/// A JSON type of the supported JSON Schema subset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonType {
    String,
    Number,
    Integer,
    Boolean,
    Null,
    Object,
    Array,
}

impl JsonType {
    fn parse(name: &str) -> Option<JsonType> {
        Some(match name {
            "string" => JsonType::String,
            "number" => JsonType::Number,
            "integer" => JsonType::Integer,
            "boolean" => JsonType::Boolean,
            "null" => JsonType::Null,
            "object" => JsonType::Object,
            "array" => JsonType::Array,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            JsonType::String => "string",
            JsonType::Number => "number",
            JsonType::Integer => "integer",
            JsonType::Boolean => "boolean",
            JsonType::Null => "null",
            JsonType::Object => "object",
            JsonType::Array => "array",
        }
    }

    fn matches(self, value: &Value) -> bool {
        match (self, value) {
            (JsonType::String, Value::String(_)) => true,
            (JsonType::Number, Value::Number(_)) => true,
            (JsonType::Number, Value::String(s)) => non_finite(s).is_some(),
            (JsonType::Integer, Value::Number(n)) => {
                n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            (JsonType::Integer, Value::String(s)) => non_finite(s).is_some(),
            (JsonType::Boolean, Value::Bool(_)) => true,
            (JsonType::Null, Value::Null) => true,
            (JsonType::Object, Value::Object(_)) => true,
            (JsonType::Array, Value::Array(_)) => true,
            _ => false,
        }
    }
}

/// One property of a JSON Schema signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldSpec {
    pub name: String,
    /// Empty: any type.
    pub types: Vec<JsonType>,
    pub required: bool,
    /// NaN/Inf strings count here (`number`/`integer`, or an array whose
    /// `items` are).
    pub numeric: bool,
}

/// What a request body is checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Format {
    /// An OIP v2 request's `inputs`.
    Oip(Vec<TensorSpec>),
    /// A plain JSON object.
    Json {
        fields: Vec<FieldSpec>,
        additional_properties: bool,
    },
}

/// A version's input signature, ready to check requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputSignature {
    pub format: Format,
    pub limits: Limits,
}

/// What is wrong with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// The body is not JSON (nor JSON but for bare NaN/Infinity tokens).
    NotJson,
    /// JSON, but not the expected structure (not an object, `inputs` not
    /// an array of tensors, a tensor without a name, ...).
    Malformed,
    /// A listed tensor or required field is absent.
    Missing,
    /// A tensor or field the signature does not list.
    Extra,
    /// A tensor given twice.
    Duplicate,
    /// A tensor's declared datatype differs, or its elements do not fit it.
    Datatype,
    /// A tensor's shape is not the listed one (rank or a fixed dimension).
    Shape,
    /// A tensor's element count is not the product of its shape.
    DataLength,
    /// A JSON field's value is not of its listed type.
    Type,
    /// Over a limit: the body, a tensor's elements.
    TooLarge,
    /// Data nested deeper than the limit.
    TooDeep,
}

/// One violation. `field` is the tensor or property name where there is
/// one, else a path (`inputs[2]`), or empty for the whole body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub kind: ViolationKind,
    pub field: String,
    pub detail: String,
}

/// Per feature: elements seen (`values`, nulls and non-finite included)
/// and how many of them were null, NaN or infinite.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FeatureCounts {
    pub values: u64,
    pub nulls: u64,
    pub nan: u64,
    pub inf: u64,
}

/// The outcome of one check. `per_feature` has an entry for each tensor or
/// property the signature lists and the request holds (names a request
/// makes up are not counted, so the keys stay bounded).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CheckReport {
    pub violations: Vec<Violation>,
    pub per_feature: BTreeMap<String, FeatureCounts>,
    /// Values of the features asked for with [`InputSignature::check_observing`],
    /// at most [`OBSERVED_PER_FEATURE`] each, for the drift sketches.
    #[serde(skip)]
    pub observed: BTreeMap<String, Vec<Observed>>,
    /// Features whose values are wanted (empty: none).
    #[serde(skip)]
    wanted: Vec<String>,
}

/// Values kept per feature and request: a batch of thousands of rows is
/// sketched from its first rows rather than all of them (bounded work).
pub const OBSERVED_PER_FEATURE: usize = 64;

/// A feature's value as the drift sketches take it.
#[derive(Clone, Debug, PartialEq)]
pub enum Observed {
    /// Numbers, NaN and infinities included.
    Number(f64),
    /// Strings and booleans: categories.
    Category(String),
}

impl CheckReport {
    pub fn is_valid(&self) -> bool {
        self.violations.is_empty()
    }

    /// Adds the observed feature values to `signals`' sketches (numbers
    /// and categories), as the gateway does for live traffic and `profile
    /// build` for a reference profile, so the two compare like with like.
    pub fn sketch_into(&self, signals: &mut backstop_core::analysis::Signals) {
        for (feature, values) in &self.observed {
            for value in values {
                match value {
                    Observed::Number(v) => signals.sketch_number(feature, *v),
                    Observed::Category(c) => signals.sketch_category(feature, c),
                }
            }
        }
    }

    fn push(&mut self, kind: ViolationKind, field: &str, detail: impl Into<String>) {
        self.violations.push(Violation {
            kind,
            field: field.to_string(),
            detail: detail.into(),
        });
    }
}

impl InputSignature {
    /// Reads a registered signature (`VersionRecord::signature`). Refuses
    /// one that lists no inputs, an OIP tensor with an unknown datatype or a
    /// dimension below -1, and a JSON Schema outside the subset (see the
    /// module documentation).
    pub fn from_registered(signature: &Value) -> Result<InputSignature, String> {
        let Some(object) = signature.as_object() else {
            return Err("a signature is an object (OIP inputs/outputs or a JSON Schema)".into());
        };
        let format = if let Some(inputs) = object.get("inputs") {
            Format::Oip(oip_inputs(inputs)?)
        } else if object.contains_key("properties") || object.get("type") == Some(&"object".into())
        {
            json_schema(object)?
        } else if object.contains_key("outputs") {
            return Err("the signature lists outputs but no inputs".into());
        } else {
            return Err(
                "neither OIP inputs nor a JSON Schema object with properties: nothing to check"
                    .into(),
            );
        };
        Ok(InputSignature {
            format,
            limits: Limits::default(),
        })
    }

    /// The features a request has: tensor or property names.
    pub fn feature_names(&self) -> Vec<&str> {
        match &self.format {
            Format::Oip(inputs) => inputs.iter().map(|t| t.name.as_str()).collect(),
            Format::Json { fields, .. } => fields.iter().map(|f| f.name.as_str()).collect(),
        }
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Checks one request body. Never panics; see the module documentation
    /// for what is checked and counted.
    pub fn check(&self, body: &[u8]) -> CheckReport {
        self.check_observing(body, &[])
    }

    /// [`check`](Self::check), also keeping the values of `features` (see
    /// [`CheckReport::observed`]).
    pub fn check_observing(&self, body: &[u8], features: &[String]) -> CheckReport {
        let mut report = CheckReport {
            wanted: features.to_vec(),
            ..CheckReport::default()
        };
        if body.len() > self.limits.max_body_bytes {
            report.push(
                ViolationKind::TooLarge,
                "",
                format!(
                    "body of {} bytes is over the {}-byte limit",
                    body.len(),
                    self.limits.max_body_bytes
                ),
            );
            return report;
        }
        let value = match parse(body) {
            Ok(value) => value,
            Err(e) => {
                report.push(ViolationKind::NotJson, "", e.to_string());
                return report;
            }
        };
        match &self.format {
            Format::Oip(inputs) => self.check_oip(inputs, &value, &mut report),
            Format::Json {
                fields,
                additional_properties,
            } => self.check_json(fields, *additional_properties, &value, &mut report),
        }
        report
    }

    fn check_oip(&self, inputs: &[TensorSpec], value: &Value, report: &mut CheckReport) {
        let Some(tensors) = value.get("inputs") else {
            let detail = if value.is_object() {
                "no \"inputs\": not an OIP inference request"
            } else {
                "not a JSON object: not an OIP inference request"
            };
            report.push(ViolationKind::Malformed, "", detail);
            return;
        };
        let Some(tensors) = tensors.as_array() else {
            report.push(
                ViolationKind::Malformed,
                "inputs",
                "\"inputs\" is not an array",
            );
            return;
        };
        let mut seen = vec![false; inputs.len()];
        for (i, tensor) in tensors.iter().enumerate() {
            let Some(name) = tensor.get("name").and_then(Value::as_str) else {
                report.push(
                    ViolationKind::Malformed,
                    &format!("inputs[{i}]"),
                    "not a tensor with a string \"name\"",
                );
                continue;
            };
            let Some(index) = inputs.iter().position(|spec| spec.name == name) else {
                report.push(
                    ViolationKind::Extra,
                    name,
                    format!("tensor {name} is not in the signature"),
                );
                continue;
            };
            if std::mem::replace(&mut seen[index], true) {
                report.push(
                    ViolationKind::Duplicate,
                    name,
                    format!("tensor {name} is given more than once"),
                );
                continue;
            }
            self.check_tensor(&inputs[index], tensor, report);
        }
        for (spec, seen) in inputs.iter().zip(seen) {
            if !seen {
                report.push(
                    ViolationKind::Missing,
                    &spec.name,
                    format!(
                        "tensor {} ({}) is missing",
                        spec.name,
                        spec.datatype.as_str()
                    ),
                );
            }
        }
    }

    fn check_tensor(&self, spec: &TensorSpec, tensor: &Value, report: &mut CheckReport) {
        let name = spec.name.as_str();
        let expected = spec.datatype.as_str();
        match tensor.get("datatype") {
            Some(Value::String(declared)) if declared == expected => {}
            Some(Value::String(declared)) => report.push(
                ViolationKind::Datatype,
                name,
                format!("datatype {declared}, expected {expected}"),
            ),
            Some(_) => report.push(
                ViolationKind::Malformed,
                name,
                "\"datatype\" is not a string",
            ),
            None => report.push(
                ViolationKind::Datatype,
                name,
                format!("no datatype, expected {expected}"),
            ),
        }
        let shape = self.tensor_shape(spec, tensor, report);
        let binary = tensor
            .get("parameters")
            .and_then(|p| p.get("binary_data_size"))
            .is_some();
        if binary {
            return;
        }
        let Some(data) = tensor.get("data") else {
            report.push(ViolationKind::Malformed, name, "no \"data\"");
            return;
        };
        let known = match &shape {
            Some(Shape::Elements(n)) | Some(Shape::Infer { known: n, .. }) => *n,
            None => 0,
        };
        if known > self.limits.max_elements {
            report.push(
                ViolationKind::TooLarge,
                name,
                format!(
                    "shape holds {known} elements, over the limit of {}",
                    self.limits.max_elements
                ),
            );
            return;
        }
        let mut walk = Walk::new(self.limits, spec.datatype);
        walk.observing = report.wanted.iter().any(|w| w == name);
        walk.visit(data, 0);
        report.per_feature.insert(name.to_string(), walk.counts);
        if walk.observing {
            report
                .observed
                .insert(name.to_string(), std::mem::take(&mut walk.observed));
        }
        if walk.too_large {
            report.push(
                ViolationKind::TooLarge,
                name,
                format!("data holds over {} elements", self.limits.max_elements),
            );
            return;
        }
        if walk.too_deep {
            report.push(
                ViolationKind::TooDeep,
                name,
                format!("data nested deeper than {}", self.limits.max_depth),
            );
            return;
        }
        if walk.misfits > 0 {
            let (at, what) = walk.first_misfit.unwrap_or_default();
            report.push(
                ViolationKind::Datatype,
                name,
                format!(
                    "{} element(s) do not fit {expected}; first at [{at}]: {what}",
                    walk.misfits
                ),
            );
        }
        let count = walk.counts.values;
        match shape {
            Some(Shape::Elements(expected)) if expected != count => report.push(
                ViolationKind::DataLength,
                name,
                format!("data holds {count} elements, shape holds {expected}"),
            ),
            // Zero elements fit a zero-sized shape whatever the -1 stands for.
            Some(Shape::Infer { known: 0, .. }) if count == 0 => {}
            Some(Shape::Infer { known, dims }) => {
                let inferred = count.checked_div(known).filter(|n| n * known == count);
                match inferred {
                    Some(n) => {
                        // The inferred size must still fit the signature.
                        let at = dims.iter().position(|&d| d == -1).unwrap_or(0);
                        // (A rank that differs is already reported.)
                        let listed = if dims.len() == spec.shape.len() {
                            spec.shape.get(at).copied().unwrap_or(-1)
                        } else {
                            -1
                        };
                        if listed != -1 && listed as u64 != n {
                            report.push(
                                ViolationKind::Shape,
                                name,
                                format!(
                                    "dimension {at} inferred from the data as {n}, expected {listed}"
                                ),
                            );
                        }
                    }
                    None => report.push(
                        ViolationKind::DataLength,
                        name,
                        format!(
                            "data holds {count} elements, not a multiple of the {known} that shape {dims:?} fixes"
                        ),
                    ),
                }
            }
            _ => {}
        }
    }

    /// The request tensor's shape, checked against the signature's; `None`
    /// when it is unusable (reported).
    fn tensor_shape(
        &self,
        spec: &TensorSpec,
        tensor: &Value,
        report: &mut CheckReport,
    ) -> Option<Shape> {
        let name = spec.name.as_str();
        let Some(shape) = tensor.get("shape") else {
            report.push(ViolationKind::Shape, name, "no shape");
            return None;
        };
        let dims: Option<Vec<i64>> = shape
            .as_array()
            .and_then(|dims| dims.iter().map(Value::as_i64).collect());
        let Some(dims) = dims.filter(|dims| dims.iter().all(|&d| d >= -1)) else {
            report.push(
                ViolationKind::Shape,
                name,
                "shape is not an array of sizes (integers >= 0, or one -1)",
            );
            return None;
        };
        if dims.iter().filter(|&&d| d == -1).count() > 1 {
            report.push(ViolationKind::Shape, name, "more than one -1 in the shape");
            return None;
        }
        if dims.len() != spec.shape.len() {
            report.push(
                ViolationKind::Shape,
                name,
                format!(
                    "shape {dims:?} has rank {}, expected {:?}",
                    dims.len(),
                    spec.shape
                ),
            );
        } else if let Some(at) = dims
            .iter()
            .zip(&spec.shape)
            .position(|(&got, &want)| want != -1 && got != -1 && got != want)
        {
            report.push(
                ViolationKind::Shape,
                name,
                format!(
                    "shape {dims:?} does not match {:?} (dimension {at})",
                    spec.shape
                ),
            );
        }
        let product = |dims: &[i64]| {
            dims.iter()
                .filter(|&&d| d != -1)
                .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        };
        let Some(known) = product(&dims) else {
            report.push(
                ViolationKind::TooLarge,
                name,
                format!("shape {dims:?} overflows an element count"),
            );
            return None;
        };
        Some(if dims.contains(&-1) {
            Shape::Infer { known, dims }
        } else {
            Shape::Elements(known)
        })
    }

    fn check_json(
        &self,
        fields: &[FieldSpec],
        additional_properties: bool,
        value: &Value,
        report: &mut CheckReport,
    ) {
        let Some(object) = value.as_object() else {
            report.push(
                ViolationKind::Type,
                "",
                format!("body is {}, expected an object", json_type_name(value)),
            );
            return;
        };
        for field in fields {
            let name = field.name.as_str();
            let Some(value) = object.get(name) else {
                if field.required {
                    report.push(
                        ViolationKind::Missing,
                        name,
                        format!("required field {name} is missing"),
                    );
                }
                continue;
            };
            if !field.types.is_empty() && !field.types.iter().any(|t| t.matches(value)) {
                let listed: Vec<&str> = field.types.iter().map(|t| t.as_str()).collect();
                report.push(
                    ViolationKind::Type,
                    name,
                    format!(
                        "{}, expected {}",
                        json_type_name(value),
                        listed.join(" or ")
                    ),
                );
            }
            let mut walk = Walk::counting(self.limits, field.numeric);
            walk.observing = report.wanted.iter().any(|w| w == name);
            walk.visit(value, 0);
            report.per_feature.insert(name.to_string(), walk.counts);
            if walk.observing {
                report
                    .observed
                    .insert(name.to_string(), std::mem::take(&mut walk.observed));
            }
            if walk.too_large {
                report.push(
                    ViolationKind::TooLarge,
                    name,
                    format!("value holds over {} elements", self.limits.max_elements),
                );
            } else if walk.too_deep {
                report.push(
                    ViolationKind::TooDeep,
                    name,
                    format!("value nested deeper than {}", self.limits.max_depth),
                );
            }
        }
        if !additional_properties {
            for key in object.keys() {
                if !fields.iter().any(|f| f.name == *key) {
                    report.push(
                        ViolationKind::Extra,
                        key,
                        format!("field {key} is not in the signature"),
                    );
                }
            }
        }
    }
}

/// A request tensor's element count, or what its known dimensions hold
/// when one is `-1`.
enum Shape {
    Elements(u64),
    Infer { known: u64, dims: Vec<i64> },
}

/// Walks (possibly nested) data, counting elements and checking each one.
struct Walk {
    limits: Limits,
    /// `None`: count only (JSON fields).
    datatype: Option<Datatype>,
    /// NaN/Inf strings count.
    numeric: bool,
    counts: FeatureCounts,
    misfits: u64,
    first_misfit: Option<(u64, String)>,
    too_large: bool,
    too_deep: bool,
    /// Keep values (up to [`OBSERVED_PER_FEATURE`]) in `observed`.
    observing: bool,
    observed: Vec<Observed>,
}

impl Walk {
    fn new(limits: Limits, datatype: Datatype) -> Walk {
        Walk {
            datatype: Some(datatype),
            numeric: datatype.is_float(),
            ..Walk::counting(limits, false)
        }
    }

    fn counting(limits: Limits, numeric: bool) -> Walk {
        Walk {
            limits,
            datatype: None,
            numeric,
            counts: FeatureCounts::default(),
            misfits: 0,
            first_misfit: None,
            too_large: false,
            too_deep: false,
            observing: false,
            observed: Vec::new(),
        }
    }

    fn observe(&mut self, value: Observed) {
        if self.observing && self.observed.len() < OBSERVED_PER_FEATURE {
            self.observed.push(value);
        }
    }

    fn visit(&mut self, value: &Value, depth: usize) {
        if self.too_large || self.too_deep {
            return;
        }
        if let Value::Array(items) = value {
            if depth >= self.limits.max_depth {
                self.too_deep = true;
                return;
            }
            for item in items {
                self.visit(item, depth + 1);
                if self.too_large || self.too_deep {
                    return;
                }
            }
            return;
        }
        if self.counts.values >= self.limits.max_elements {
            self.too_large = true;
            return;
        }
        let index = self.counts.values;
        self.counts.values += 1;
        match value {
            Value::Null => {
                self.counts.nulls += 1;
                return;
            }
            Value::String(s) if self.numeric => match non_finite(s) {
                Some(NonFinite::Nan) => {
                    self.counts.nan += 1;
                    self.observe(Observed::Number(f64::NAN));
                    return;
                }
                Some(NonFinite::Inf) => {
                    self.counts.inf += 1;
                    let sign = if s.starts_with('-') { -1.0 } else { 1.0 };
                    self.observe(Observed::Number(sign * f64::INFINITY));
                    return;
                }
                None => {}
            },
            _ => {}
        }
        if self.observing {
            match value {
                Value::Number(n) => {
                    if let Some(f) = n.as_f64() {
                        self.observe(Observed::Number(f));
                    }
                }
                Value::String(s) => self.observe(Observed::Category(s.clone())),
                Value::Bool(b) => self.observe(Observed::Category(b.to_string())),
                _ => {}
            }
        }
        if let Some(datatype) = self.datatype {
            if let Err(what) = fits(datatype, value) {
                self.misfits += 1;
                if self.first_misfit.is_none() {
                    self.first_misfit = Some((index, what));
                }
            }
        }
    }
}

enum NonFinite {
    Nan,
    Inf,
}

/// The strings clients send for NaN and the infinities.
fn non_finite(s: &str) -> Option<NonFinite> {
    match s {
        "NaN" => Some(NonFinite::Nan),
        "Infinity" | "-Infinity" => Some(NonFinite::Inf),
        _ => None,
    }
}

/// Whether one (non-null, finite) element fits a datatype; else what it is.
fn fits(datatype: Datatype, value: &Value) -> Result<(), String> {
    let describe = || {
        let mut text = value.to_string();
        if text.len() > 40 {
            let mut cut = 37;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str("...");
        }
        text
    };
    let ok = match datatype {
        Datatype::Bool => value.is_boolean(),
        Datatype::Bytes => value.is_string(),
        d if d.is_float() => match value.as_f64() {
            Some(f) => f.abs() <= d.float_max(),
            None => false,
        },
        d => match (value, d.int_range()) {
            (Value::Number(n), Some((min, max))) => {
                let n = n
                    .as_i64()
                    .map(i128::from)
                    .or_else(|| n.as_u64().map(i128::from));
                n.is_some_and(|n| (min..=max).contains(&n))
            }
            _ => false,
        },
    };
    if ok {
        Ok(())
    } else {
        Err(describe())
    }
}

fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses a body; one that fails only for Python's bare `NaN`, `Infinity`
/// and `-Infinity` tokens is read with them as strings.
fn parse(body: &[u8]) -> Result<Value, serde_json::Error> {
    match serde_json::from_slice(body) {
        Ok(value) => Ok(value),
        Err(e) => match quote_non_finite(body) {
            Some(quoted) => serde_json::from_slice(&quoted).map_err(|_| e),
            None => Err(e),
        },
    }
}

/// The body with bare `NaN`/`Infinity`/`-Infinity` outside strings quoted;
/// `None` when there are none.
fn quote_non_finite(body: &[u8]) -> Option<Vec<u8>> {
    const TOKENS: [&[u8]; 3] = [b"-Infinity", b"Infinity", b"NaN"];
    let mut out: Option<Vec<u8>> = None;
    let (mut in_string, mut escaped, mut i) = (false, false, 0);
    while i < body.len() {
        let byte = body[i];
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
        } else if byte == b'"' {
            in_string = true;
        } else if let Some(token) = TOKENS.iter().find(|t| body[i..].starts_with(t)) {
            let out = out.get_or_insert_with(|| {
                let mut out = Vec::with_capacity(body.len() + 16);
                out.extend_from_slice(&body[..i]);
                out
            });
            out.push(b'"');
            out.extend_from_slice(token);
            out.push(b'"');
            i += token.len();
            continue;
        }
        if let Some(out) = out.as_mut() {
            out.push(byte);
        }
        i += 1;
    }
    out
}

fn oip_inputs(inputs: &Value) -> Result<Vec<TensorSpec>, String> {
    let Some(inputs) = inputs.as_array() else {
        return Err("inputs: expected an array of tensors".into());
    };
    let mut specs: Vec<TensorSpec> = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        // The registry's own reading of a signature tensor.
        let tensor: crate::registry::Tensor = serde_json::from_value(input.clone())
            .map_err(|e| format!("inputs[{i}]: not an OIP tensor (name, datatype, shape): {e}"))?;
        let datatype = Datatype::parse(&tensor.datatype).ok_or_else(|| {
            let known: Vec<&str> = Datatype::ALL.iter().map(|d| d.as_str()).collect();
            format!(
                "inputs[{i}] ({}): unknown datatype {:?} (one of {})",
                tensor.name,
                tensor.datatype,
                known.join(", ")
            )
        })?;
        if tensor.shape.iter().any(|&d| d < -1) {
            return Err(format!(
                "inputs[{i}] ({}): shape {:?}: sizes are >= 0, or -1 for any",
                tensor.name, tensor.shape
            ));
        }
        if specs.iter().any(|s| s.name == tensor.name) {
            return Err(format!("inputs[{i}]: tensor {} listed twice", tensor.name));
        }
        specs.push(TensorSpec {
            name: tensor.name,
            datatype,
            shape: tensor.shape,
        });
    }
    Ok(specs)
}

fn json_schema(schema: &Map<String, Value>) -> Result<Format, String> {
    match schema.get("type") {
        None => {}
        Some(Value::String(t)) if t == "object" => {}
        Some(other) => {
            return Err(format!(
                "type {other}: only an object schema (\"type\": \"object\") is supported"
            ))
        }
    }
    let properties = match schema.get("properties") {
        None => &Map::new(),
        Some(Value::Object(properties)) => properties,
        Some(_) => return Err("properties: expected an object".into()),
    };
    let required: Vec<&str> = match schema.get("required") {
        None => Vec::new(),
        Some(Value::Array(names)) => names
            .iter()
            .map(|n| n.as_str().ok_or("required: expected an array of names"))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("required: expected an array of names".into()),
    };
    let additional_properties = match schema.get("additionalProperties") {
        None | Some(Value::Bool(true)) | Some(Value::Object(_)) => true,
        Some(Value::Bool(false)) => false,
        Some(_) => return Err("additionalProperties: expected a boolean".into()),
    };
    let mut fields = Vec::with_capacity(properties.len());
    for (name, property) in properties {
        let types = types_of(property).map_err(|e| format!("properties.{name}: {e}"))?;
        let items = property
            .get("items")
            .map(types_of)
            .transpose()
            .map_err(|e| format!("properties.{name}.items: {e}"))?
            .unwrap_or_default();
        let numeric = |types: &[JsonType]| {
            types
                .iter()
                .any(|t| matches!(t, JsonType::Number | JsonType::Integer))
        };
        fields.push(FieldSpec {
            name: name.clone(),
            numeric: numeric(&types) || numeric(&items),
            types,
            required: required.contains(&name.as_str()),
        });
    }
    for name in &required {
        if !properties.contains_key(*name) {
            // Required but undescribed: present with any type.
            fields.push(FieldSpec {
                name: name.to_string(),
                types: Vec::new(),
                required: true,
                numeric: false,
            });
        }
    }
    Ok(Format::Json {
        fields,
        additional_properties,
    })
}

/// A property's `type`: one name or an array of names; none is any.
fn types_of(property: &Value) -> Result<Vec<JsonType>, String> {
    let parse = |name: &Value| {
        name.as_str()
            .and_then(JsonType::parse)
            .ok_or_else(|| format!("unknown type {name}"))
    };
    match property.get("type") {
        None => Ok(Vec::new()),
        Some(Value::Array(names)) => names.iter().map(parse).collect(),
        Some(name) => Ok(vec![parse(name)?]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn oip(inputs: Value) -> InputSignature {
        InputSignature::from_registered(&json!({ "inputs": inputs, "outputs": [] })).unwrap()
    }

    fn one(datatype: &str, shape: Value) -> InputSignature {
        oip(json!([{"name": "x", "datatype": datatype, "shape": shape}]))
    }

    fn request(tensors: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({ "id": "r1", "inputs": tensors })).unwrap()
    }

    fn tensor(datatype: &str, shape: Value, data: Value) -> Vec<u8> {
        request(json!([{"name": "x", "datatype": datatype, "shape": shape, "data": data}]))
    }

    fn kinds(report: &CheckReport) -> Vec<ViolationKind> {
        report.violations.iter().map(|v| v.kind).collect()
    }

    #[test]
    fn observing_keeps_the_values_of_the_features_asked_for() {
        let signature = oip(json!([
            {"name": "age", "datatype": "FP32", "shape": [-1]},
            {"name": "country", "datatype": "BYTES", "shape": [-1]},
        ]));
        let body = request(json!([
            {"name": "age", "datatype": "FP32", "shape": [4], "data": [30.5, "NaN", null, 41]},
            {"name": "country", "datatype": "BYTES", "shape": [1], "data": ["fr"]},
        ]));
        let report = signature.check_observing(&body, &["age".into(), "country".into()]);
        assert!(report.is_valid(), "{:?}", report.violations);
        let age = &report.observed["age"];
        assert_eq!(age.len(), 3, "null is not a value: {age:?}");
        assert_eq!(age[0], Observed::Number(30.5));
        assert!(matches!(age[1], Observed::Number(v) if v.is_nan()));
        assert_eq!(
            report.observed["country"],
            [Observed::Category("fr".into())]
        );
        // Bounded per request, and nothing kept unless asked.
        let many: Vec<f64> = (0..1000).map(f64::from).collect();
        let body =
            request(json!([{"name": "age", "datatype": "FP32", "shape": [1000], "data": many}]));
        let report = signature.check_observing(&body, &["age".into()]);
        assert_eq!(report.observed["age"].len(), OBSERVED_PER_FEATURE);
        assert!(signature.check(&body).observed.is_empty());
    }

    #[test]
    fn every_datatype_accepts_its_values_and_refuses_others() {
        use Datatype::*;
        // (datatype, valid elements, invalid elements)
        let cases: Vec<(Datatype, Value, Vec<Value>)> = vec![
            (Bool, json!([true, false]), vec![json!(1), json!("true")]),
            (
                Uint8,
                json!([0, 255]),
                vec![json!(256), json!(-1), json!(1.5)],
            ),
            (Uint16, json!([0, 65535]), vec![json!(65536), json!(-1)]),
            (
                Uint32,
                json!([0, 4294967295u64]),
                vec![json!(4294967296u64), json!(-1)],
            ),
            (
                Uint64,
                json!([0, u64::MAX]),
                vec![json!(-1), json!(1.0), json!("1")],
            ),
            (
                Int8,
                json!([-128, 127]),
                vec![json!(128), json!(-129), json!(true)],
            ),
            (
                Int16,
                json!([-32768, 32767]),
                vec![json!(32768), json!(-32769)],
            ),
            (
                Int32,
                json!([i32::MIN, i32::MAX]),
                vec![json!(2147483648i64), json!(0.5)],
            ),
            (
                Int64,
                json!([i64::MIN, i64::MAX]),
                vec![json!(u64::MAX), json!(1e3)],
            ),
            (
                Fp16,
                json!([-65504.0, 1.5]),
                vec![json!(70000.0), json!("1.5"), json!(true)],
            ),
            (Fp32, json!([1, -2.5e38]), vec![json!(1e39), json!("x")]),
            (
                Fp64,
                json!([1e300, -0.0]),
                vec![json!("1e3"), json!([]), json!({})],
            ),
            (Bytes, json!(["a", ""]), vec![json!(1), json!(true)]),
        ];
        for (datatype, valid, invalid) in cases {
            let name = datatype.as_str();
            assert_eq!(Datatype::parse(name), Some(datatype));
            let signature = one(name, json!([-1]));
            let report = signature.check(&tensor(name, json!([2]), valid.clone()));
            assert!(report.is_valid(), "{name} {valid}: {:?}", report.violations);
            assert_eq!(report.per_feature["x"].values, 2);
            for bad in invalid {
                let body = tensor(name, json!([2]), json!([valid[0].clone(), bad.clone()]));
                let report = signature.check(&body);
                // `[]` in the data is an empty nested row: one element, and
                // the length check reports it.
                assert!(!report.is_valid(), "{name} accepted {bad}");
                assert!(
                    kinds(&report).contains(&ViolationKind::Datatype)
                        || kinds(&report).contains(&ViolationKind::DataLength),
                    "{name} {bad}: {:?}",
                    report.violations
                );
            }
        }
        assert_eq!(Datatype::parse("fp32"), None);
        assert_eq!(Datatype::parse("STRING"), None);
    }

    #[test]
    fn misfits_are_reported_once_with_a_count_and_the_first() {
        let signature = one("INT8", json!([4]));
        let report = signature.check(&tensor("INT8", json!([4]), json!([1, 300, 2, "a"])));
        assert_eq!(kinds(&report), vec![ViolationKind::Datatype]);
        let detail = &report.violations[0].detail;
        assert!(
            detail.contains("2 element(s)") && detail.contains("[1]: 300"),
            "{detail}"
        );
        assert_eq!(report.violations[0].field, "x");
    }

    #[test]
    fn declared_datatype_must_match() {
        let signature = one("FP32", json!([2]));
        let report = signature.check(&tensor("FP64", json!([2]), json!([1.0, 2.0])));
        assert_eq!(kinds(&report), vec![ViolationKind::Datatype]);
        assert!(report.violations[0].detail.contains("FP64, expected FP32"));
        let body = request(json!([{"name": "x", "shape": [2], "data": [1.0, 2.0]}]));
        assert_eq!(
            kinds(&signature.check(&body)),
            vec![ViolationKind::Datatype]
        );
    }

    #[test]
    fn shapes_rank_fixed_dims_and_any() {
        let signature = one("FP32", json!([-1, 4]));
        let ok = signature.check(&tensor(
            "FP32",
            json!([2, 4]),
            json!([0, 1, 2, 3, 4, 5, 6, 7]),
        ));
        assert!(ok.is_valid(), "{:?}", ok.violations);
        let ok = signature.check(&tensor("FP32", json!([0, 4]), json!([])));
        assert!(ok.is_valid(), "{:?}", ok.violations);
        let wrong_dim = signature.check(&tensor("FP32", json!([2, 3]), json!([0, 1, 2, 3, 4, 5])));
        assert_eq!(kinds(&wrong_dim), vec![ViolationKind::Shape]);
        let wrong_rank = signature.check(&tensor("FP32", json!([4]), json!([0, 1, 2, 3])));
        assert_eq!(kinds(&wrong_rank), vec![ViolationKind::Shape]);
        let short = signature.check(&tensor("FP32", json!([2, 4]), json!([0, 1, 2])));
        assert_eq!(kinds(&short), vec![ViolationKind::DataLength]);
        for bad in [
            json!("2x4"),
            json!([2, -4]),
            json!([2.5, 4]),
            json!([-1, -1]),
        ] {
            let report = signature.check(&tensor("FP32", bad.clone(), json!([0])));
            assert_eq!(kinds(&report), vec![ViolationKind::Shape], "{bad}");
        }
        let report = signature.check(&request(
            json!([{"name": "x", "datatype": "FP32", "data": [1]}]),
        ));
        assert_eq!(kinds(&report), vec![ViolationKind::Shape]);
    }

    #[test]
    fn minus_one_in_a_request_is_inferred_from_the_data() {
        let signature = one("INT32", json!([-1, 2]));
        let ok = signature.check(&tensor("INT32", json!([-1, 2]), json!([1, 2, 3, 4, 5, 6])));
        assert!(ok.is_valid(), "{:?}", ok.violations);
        let odd = signature.check(&tensor("INT32", json!([-1, 2]), json!([1, 2, 3])));
        assert_eq!(kinds(&odd), vec![ViolationKind::DataLength]);
        // The signature fixes the dimension the request leaves open.
        let fixed = one("INT32", json!([3, 2]));
        let ok = fixed.check(&tensor("INT32", json!([3, -1]), json!([1, 2, 3, 4, 5, 6])));
        assert!(ok.is_valid(), "{:?}", ok.violations);
        let bad = fixed.check(&tensor("INT32", json!([-1, 2]), json!([1, 2, 3, 4])));
        assert_eq!(kinds(&bad), vec![ViolationKind::Shape]);
        let rank = fixed.check(&tensor("INT32", json!([-1]), json!([1, 2, 3, 4])));
        assert_eq!(kinds(&rank), vec![ViolationKind::Shape]);
        // Zero-sized known dimensions leave nothing to infer from.
        let zero = one("INT32", json!([-1, -1]));
        let report = zero.check(&tensor("INT32", json!([0, -1]), json!([1])));
        assert_eq!(kinds(&report), vec![ViolationKind::DataLength]);
    }

    #[test]
    fn nested_and_flat_data_count_the_same() {
        let signature = one("FP64", json!([2, 3]));
        let flat = signature.check(&tensor("FP64", json!([2, 3]), json!([1, 2, 3, 4, 5, 6])));
        let nested = signature.check(&tensor(
            "FP64",
            json!([2, 3]),
            json!([[1, 2, 3], [4, 5, 6]]),
        ));
        assert!(flat.is_valid() && nested.is_valid());
        assert_eq!(flat.per_feature, nested.per_feature);
        let ragged = signature.check(&tensor("FP64", json!([2, 3]), json!([[1, 2, 3], [4, 5]])));
        assert_eq!(kinds(&ragged), vec![ViolationKind::DataLength]);
    }

    #[test]
    fn missing_extra_duplicate_and_unnamed_tensors() {
        let signature = oip(json!([
            {"name": "a", "datatype": "FP32", "shape": [1]},
            {"name": "b", "datatype": "BYTES", "shape": [1]},
        ]));
        let a = json!({"name": "a", "datatype": "FP32", "shape": [1], "data": [1.0]});
        let b = json!({"name": "b", "datatype": "BYTES", "shape": [1], "data": ["x"]});
        let c = json!({"name": "c", "datatype": "FP32", "shape": [1], "data": [1.0]});
        assert!(signature.check(&request(json!([b, a]))).is_valid());
        let missing = signature.check(&request(json!([a])));
        assert_eq!(kinds(&missing), vec![ViolationKind::Missing]);
        assert_eq!(missing.violations[0].field, "b");
        let extra = signature.check(&request(json!([a, b, c])));
        assert_eq!(kinds(&extra), vec![ViolationKind::Extra]);
        assert_eq!(extra.violations[0].field, "c");
        assert!(!extra.per_feature.contains_key("c"));
        let twice = signature.check(&request(json!([a, b, a])));
        assert_eq!(kinds(&twice), vec![ViolationKind::Duplicate]);
        let unnamed = signature.check(&request(json!([a, b, {"data": [1]}, 7])));
        assert_eq!(kinds(&unnamed), vec![ViolationKind::Malformed; 2]);
        assert_eq!(unnamed.violations[1].field, "inputs[3]");
        let no_data = signature.check(&request(
            json!([a, {"name": "b", "datatype": "BYTES", "shape": [1]}]),
        ));
        assert_eq!(kinds(&no_data), vec![ViolationKind::Malformed]);
    }

    #[test]
    fn binary_extension_tensors_skip_their_data() {
        let signature = one("FP32", json!([4]));
        let body = request(json!([{"name": "x", "datatype": "FP32", "shape": [4],
            "parameters": {"binary_data_size": 16}}]));
        let report = signature.check(&body);
        assert!(report.is_valid(), "{:?}", report.violations);
        assert!(!report.per_feature.contains_key("x"));
    }

    #[test]
    fn nulls_nan_and_inf_are_counted_per_feature() {
        let signature = oip(json!([
            {"name": "amount", "datatype": "FP32", "shape": [-1]},
            {"name": "count", "datatype": "INT64", "shape": [-1]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ]));
        let body = request(json!([
            {"name": "amount", "datatype": "FP32", "shape": [6],
             "data": [1.5, null, "NaN", "Infinity", "-Infinity", "NaN"]},
            {"name": "count", "datatype": "INT64", "shape": [3], "data": [1, null, "NaN"]},
            {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["NaN", null]},
        ]));
        let report = signature.check(&body);
        let counts = |values, nulls, nan, inf| FeatureCounts {
            values,
            nulls,
            nan,
            inf,
        };
        assert_eq!(report.per_feature["amount"], counts(6, 1, 2, 2));
        // "NaN" is no integer, and no NaN in a string tensor.
        assert_eq!(report.per_feature["count"], counts(3, 1, 0, 0));
        assert_eq!(report.per_feature["label"], counts(2, 1, 0, 0));
        assert_eq!(kinds(&report), vec![ViolationKind::Datatype]);
        assert_eq!(report.violations[0].field, "count");
    }

    #[test]
    fn bare_python_nan_tokens_are_read_as_non_finite() {
        let signature = one("FP64", json!([4]));
        let body = br#"{"inputs":[{"name":"x","datatype":"FP64","shape":[4],
            "data":[NaN, Infinity, -Infinity, 1.0]}], "id": "NaN-Infinity \"NaN\""}"#;
        let report = signature.check(body);
        assert!(report.is_valid(), "{:?}", report.violations);
        assert_eq!(
            report.per_feature["x"],
            FeatureCounts {
                values: 4,
                nulls: 0,
                nan: 1,
                inf: 2
            }
        );
        assert_eq!(quote_non_finite(br#"{"a":"NaN"}"#), None);
        assert_eq!(
            quote_non_finite(br#"["\"NaN",NaN]"#).unwrap(),
            br#"["\"NaN","NaN"]"#.to_vec()
        );
        // Still not JSON for other reasons: the parser's own error.
        let report = signature.check(b"{NaN");
        assert_eq!(kinds(&report), vec![ViolationKind::NotJson]);
    }

    #[test]
    fn huge_tensors_are_refused_without_walking() {
        let signature = one("FP32", json!([-1, -1]));
        let limits = Limits {
            max_elements: 100,
            ..Limits::default()
        };
        let small = signature.clone().with_limits(limits);
        // A shape that claims a lot, with little data.
        let report = signature.check(&tensor(
            "FP32",
            json!([1_000_000_000, 1_000_000_000]),
            json!([1]),
        ));
        assert_eq!(kinds(&report), vec![ViolationKind::TooLarge]);
        let report = signature.check(&tensor("FP32", json!([i64::MAX, 4]), json!([1])));
        assert_eq!(kinds(&report), vec![ViolationKind::TooLarge]);
        // Data over the limit, whatever the shape says.
        let data: Vec<u32> = (0..1000).collect();
        let report = small.check(&tensor("FP32", json!([10, 10]), json!(data)));
        assert_eq!(kinds(&report), vec![ViolationKind::TooLarge]);
        assert_eq!(report.per_feature["x"].values, 100);
        // A body over the limit is not parsed.
        let tiny = signature.with_limits(Limits {
            max_body_bytes: 64,
            ..Limits::default()
        });
        let report = tiny.check(&tensor("FP32", json!([10, 10]), json!(data)));
        assert_eq!(kinds(&report), vec![ViolationKind::TooLarge]);
        assert_eq!(report.violations[0].field, "");
        assert!(report.per_feature.is_empty());
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let signature = one("FP32", json!([-1]));
        let mut data = json!(1.0);
        for _ in 0..40 {
            data = json!([data]);
        }
        let report = signature.check(&tensor("FP32", json!([1]), data));
        assert_eq!(kinds(&report), vec![ViolationKind::TooDeep]);
        // Past serde_json's own limit: not JSON, no stack overflow.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(
            kinds(&signature.check(deep.as_bytes())),
            vec![ViolationKind::NotJson]
        );
    }

    #[test]
    fn malformed_bodies() {
        let signature = one("FP32", json!([1]));
        for body in [&b""[..], b"{", b"\xff\xfe", b"{\"inputs\": [1,]}"] {
            assert_eq!(kinds(&signature.check(body)), vec![ViolationKind::NotJson]);
        }
        for body in [&b"[]"[..], b"1", b"{}", b"{\"inputs\": {}}", b"null"] {
            assert_eq!(
                kinds(&signature.check(body)),
                vec![ViolationKind::Malformed],
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let report = signature.check(b"{\"inputs\": []}");
        assert_eq!(kinds(&report), vec![ViolationKind::Missing]);
    }

    #[test]
    fn registered_signatures_are_read_or_refused() {
        for bad in [
            json!([]),
            json!({"outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}]}),
            json!({"inputs": {}}),
            json!({"inputs": [{"name": "x", "datatype": "FLOAT", "shape": [1]}]}),
            json!({"inputs": [{"name": "x", "datatype": "FP32"}]}),
            json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-2]}]}),
            json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]},
                              {"name": "x", "datatype": "FP32", "shape": [1]}]}),
            json!({"type": "array", "items": {}}),
            json!({"type": "object", "properties": {"a": {"type": "float"}}}),
            json!({"type": "object", "properties": [], "required": []}),
            json!({"properties": {}, "required": [1]}),
            json!({"description": "nothing"}),
        ] {
            assert!(InputSignature::from_registered(&bad).is_err(), "{bad}");
        }
        let read = InputSignature::from_registered(
            &json!({"inputs": [{"name": "x", "datatype": "UINT16", "shape": [-1, 3]}]}),
        )
        .unwrap();
        assert_eq!(
            read.format,
            Format::Oip(vec![TensorSpec {
                name: "x".into(),
                datatype: Datatype::Uint16,
                shape: vec![-1, 3]
            }])
        );
        assert_eq!(read.limits, Limits::default());
    }

    fn schema() -> InputSignature {
        InputSignature::from_registered(&json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "amount": {"type": "number", "minimum": 0},
                "count": {"type": "integer"},
                "country": {"type": ["string", "null"]},
                "vip": {"type": "boolean"},
                "history": {"type": "array", "items": {"type": "number"}},
                "meta": {"type": "object"},
                "anything": {}
            },
            "required": ["amount", "country", "user"],
            "additionalProperties": false
        }))
        .unwrap()
    }

    fn json_body(value: Value) -> Vec<u8> {
        serde_json::to_vec(&value).unwrap()
    }

    #[test]
    fn json_schema_subset_valid_requests() {
        let signature = schema();
        let body = json_body(json!({
            "amount": 12.5, "count": 3.0, "country": null, "vip": true,
            "history": [1, null, "NaN", "Infinity"], "meta": {"a": [1]},
            "anything": "x", "user": [1, 2]
        }));
        let report = signature.check(&body);
        assert!(report.is_valid(), "{:?}", report.violations);
        let counts = |values, nulls, nan, inf| FeatureCounts {
            values,
            nulls,
            nan,
            inf,
        };
        assert_eq!(report.per_feature["country"], counts(1, 1, 0, 0));
        assert_eq!(report.per_feature["history"], counts(4, 1, 1, 1));
        assert_eq!(report.per_feature["user"], counts(2, 0, 0, 0));
        // An object is one value.
        assert_eq!(report.per_feature["meta"], counts(1, 0, 0, 0));
        // A NaN sent for a number counts, and is no violation.
        let report = signature.check(&json_body(
            json!({"amount": "NaN", "country": "FR", "user": 1}),
        ));
        assert!(report.is_valid(), "{:?}", report.violations);
        assert_eq!(report.per_feature["amount"], counts(1, 0, 1, 0));
    }

    #[test]
    fn json_schema_subset_violations() {
        let signature = schema();
        let report = signature.check(&json_body(json!({
            "amount": "12", "count": 1.5, "country": 3, "vip": "yes",
            "history": 4, "meta": [], "extra": 1, "user": null
        })));
        let mut found: Vec<(ViolationKind, &str)> = report
            .violations
            .iter()
            .map(|v| (v.kind, v.field.as_str()))
            .collect();
        found.sort();
        use ViolationKind::{Extra, Type};
        assert_eq!(
            found,
            vec![
                (Extra, "extra"),
                (Type, "amount"),
                (Type, "count"),
                (Type, "country"),
                (Type, "history"),
                (Type, "meta"),
                (Type, "vip"),
            ]
        );
        let missing = signature.check(&json_body(json!({"amount": 1})));
        assert_eq!(kinds(&missing), vec![ViolationKind::Missing; 2]);
        for body in [json!([1]), json!("a"), json!(null)] {
            assert_eq!(
                kinds(&signature.check(&json_body(body))),
                vec![ViolationKind::Type]
            );
        }
        // Extra fields are allowed unless the schema says otherwise.
        let open =
            InputSignature::from_registered(&json!({"properties": {"a": {"type": "string"}}}))
                .unwrap();
        assert!(open.check(br#"{"a": "x", "b": 2}"#).is_valid());
        assert!(open.check(br#"{}"#).is_valid());
        assert_eq!(
            kinds(&open.check(b"{\"a\": 1")),
            vec![ViolationKind::NotJson]
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let signatures = [
            oip(json!([
                {"name": "x", "datatype": "FP32", "shape": [-1, 2]},
                {"name": "b", "datatype": "BOOL", "shape": [1]},
                {"name": "s", "datatype": "BYTES", "shape": [-1]},
            ]))
            .with_limits(Limits {
                max_elements: 50,
                max_depth: 4,
                max_body_bytes: 4096,
            }),
            schema(),
        ];
        let seeds: Vec<&[u8]> = vec![
            br#"{"inputs":[{"name":"x","datatype":"FP32","shape":[-1,2],"data":[[1,2],[NaN,null]]},{"name":"b","datatype":"BOOL","shape":[1],"data":[true]}]}"#,
            br#"{"amount": 1.5, "country": "FR", "history": [1, "NaN"], "user": 1}"#,
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        let alphabet = b"{}[]\",:-01289.eE NaInfityulrsd\\x";
        for round in 0..20_000 {
            let mut body = seeds[round % seeds.len()].to_vec();
            match round % 3 {
                0 => {
                    for _ in 0..rng.usize(1..4) {
                        let at = rng.usize(..body.len());
                        body[at] = alphabet[rng.usize(..alphabet.len())];
                    }
                }
                1 => body.truncate(rng.usize(..body.len())),
                _ => {
                    body = (0..rng.usize(..64))
                        .map(|_| alphabet[rng.usize(..alphabet.len())])
                        .collect();
                }
            }
            for signature in &signatures {
                let report = signature.check(&body);
                assert!(report.violations.len() <= 64);
            }
        }
    }

    #[test]
    fn reports_serialize_with_snake_case_kinds() {
        let report = one("FP32", json!([1])).check(b"nope");
        let value = serde_json::to_value(&report).unwrap();
        assert_eq!(value["violations"][0]["kind"], "not_json");
        assert_eq!(value["per_feature"], json!({}));
    }
}
