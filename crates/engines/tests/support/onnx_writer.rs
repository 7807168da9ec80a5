//! A minimal ONNX protobuf writer, enough for graphs of `Identity` nodes, so the tests can build
//! models of every element type without Python or committed binaries.

/// ONNX `TensorProto.DataType` codes.
pub mod elem {
    pub const FLOAT: u64 = 1;
    pub const UINT8: u64 = 2;
    pub const INT8: u64 = 3;
    pub const UINT16: u64 = 4;
    pub const INT16: u64 = 5;
    pub const INT32: u64 = 6;
    pub const INT64: u64 = 7;
    pub const STRING: u64 = 8;
    pub const BOOL: u64 = 9;
    pub const FLOAT16: u64 = 10;
    pub const DOUBLE: u64 = 11;
    pub const UINT32: u64 = 12;
    pub const UINT64: u64 = 13;
    pub const BFLOAT16: u64 = 16;
}

/// A dimension: fixed, or a named symbol.
pub enum Dim {
    Fixed(u64),
    Symbol(&'static str),
}

/// A graph input or output.
pub struct Io {
    pub name: String,
    pub elem_type: u64,
    pub dims: Vec<Dim>,
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_varint(out: &mut Vec<u8>, field: u64, v: u64) {
    varint(out, field << 3);
    varint(out, v);
}

fn field_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, (field << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn value_info(io: &Io) -> Vec<u8> {
    let mut shape = Vec::new();
    for d in &io.dims {
        let mut dim = Vec::new();
        match d {
            Dim::Fixed(v) => field_varint(&mut dim, 1, *v),
            Dim::Symbol(s) => field_bytes(&mut dim, 2, s.as_bytes()),
        }
        field_bytes(&mut shape, 1, &dim);
    }
    let mut tensor = Vec::new();
    field_varint(&mut tensor, 1, io.elem_type);
    field_bytes(&mut tensor, 2, &shape);
    let mut ty = Vec::new();
    field_bytes(&mut ty, 1, &tensor);
    let mut info = Vec::new();
    field_bytes(&mut info, 1, io.name.as_bytes());
    field_bytes(&mut info, 2, &ty);
    info
}

/// A model (IR 8, opset 17) where output `i` is `Identity(input i)`.
pub fn identity_model(pairs: &[(Io, Io)]) -> Vec<u8> {
    let mut graph = Vec::new();
    for (input, output) in pairs {
        let mut node = Vec::new();
        field_bytes(&mut node, 1, input.name.as_bytes());
        field_bytes(&mut node, 2, output.name.as_bytes());
        field_bytes(&mut node, 4, b"Identity");
        field_bytes(&mut graph, 1, &node);
    }
    field_bytes(&mut graph, 2, b"identity");
    for (input, _) in pairs {
        field_bytes(&mut graph, 11, &value_info(input));
    }
    for (_, output) in pairs {
        field_bytes(&mut graph, 12, &value_info(output));
    }
    let mut opset = Vec::new();
    field_bytes(&mut opset, 1, b"");
    field_varint(&mut opset, 2, 17);
    let mut model = Vec::new();
    field_varint(&mut model, 1, 8);
    field_bytes(&mut model, 2, b"rtserve-tests");
    field_bytes(&mut model, 7, &graph);
    field_bytes(&mut model, 8, &opset);
    model
}
