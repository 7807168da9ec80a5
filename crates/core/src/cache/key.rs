//! The cache key: a 128-bit BLAKE3 digest of everything that decides a reply.
//!
//! What goes in, each field length-prefixed so that no two different requests have the same
//! encoding:
//! - the model name and the resolved model version (the caller passes a version identity: the
//!   version number, or the number plus something that changes when the file under it is replaced);
//! - every input, sorted by name: name, datatype, shape and the element bytes (the little-endian
//!   bytes for fixed-size types, each element length-prefixed for BYTES);
//! - the requested outputs, sorted;
//! - the reply options that change the returned tensors (for example a classification top-k).
//!
//! What stays out: the request id, `priority`, `timeout`, the cache bypass switch and the
//! `binary_data` output flag. None of them changes the tensors of the reply, only how or when they
//! are sent.
//!
//! The JSON, binary-HTTP and gRPC front ends all decode into the same [`Tensor`] (little-endian
//! bytes plus a shape), so the key is equal across encodings by construction.
//!
//! BLAKE3 rather than a non-cryptographic hash: the key decides whose answer a client gets, and a
//! shared (Redis) tier makes the key space common to every client, so crafted collisions must be out
//! of reach.

use std::fmt;
use std::sync::Arc;

use crate::{NamedTensor, Parameter, TensorData};

/// Identifies one cacheable reply. Equal keys mean the same model version, the same inputs and the
/// same requested outputs.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    model: Arc<str>,
    digest: u128,
}

impl CacheKey {
    /// The model the key belongs to (kept in clear so that a model's entries can be dropped).
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The 128-bit digest.
    pub fn digest(&self) -> u128 {
        self.digest
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({}:{:032x})", self.model, self.digest)
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{:032x}", self.model, self.digest)
    }
}

/// Computes the key of a request.
///
/// - `version`: the resolved version identity (never "latest").
/// - `outputs`: the outputs the reply will hold, resolved (an empty request list should be passed
///   as the model's full output list so that both spellings share entries). Their order does not
///   matter; a cached reply keeps the order of the request that computed it.
/// - `reply_options`: `(name, value)` pairs that change the returned tensors, named by the caller
///   (for example `("OUT.classification", Int(3))`); order does not matter.
pub fn cache_key(
    model: &str,
    version: &str,
    inputs: &[NamedTensor],
    outputs: &[String],
    reply_options: &[(&str, &Parameter)],
) -> CacheKey {
    let mut w = KeyWriter::new();
    w.bytes(b"rtserve-cache-key-v1");
    w.str(model);
    w.str(version);

    let mut sorted_inputs: Vec<&NamedTensor> = inputs.iter().collect();
    sorted_inputs.sort_by(|a, b| a.name.cmp(&b.name));
    w.len(sorted_inputs.len());
    for input in sorted_inputs {
        let tensor = &input.tensor;
        w.str(&input.name);
        w.str(tensor.datatype().as_str());
        w.len(tensor.shape().len());
        for &dim in tensor.shape() {
            w.len(dim);
        }
        match tensor.data() {
            TensorData::Raw(bytes) => {
                w.tag(0);
                w.bytes(bytes);
            }
            TensorData::Strings(items) => {
                w.tag(1);
                w.len(items.len());
                for item in items {
                    w.bytes(item);
                }
            }
        }
    }

    let mut sorted_outputs: Vec<&str> = outputs.iter().map(String::as_str).collect();
    sorted_outputs.sort_unstable();
    w.len(sorted_outputs.len());
    for output in sorted_outputs {
        w.str(output);
    }

    let mut options: Vec<&(&str, &Parameter)> = reply_options.iter().collect();
    options.sort_by(|a, b| a.0.cmp(b.0));
    w.len(options.len());
    for (name, value) in options {
        w.str(name);
        match value {
            Parameter::Bool(b) => {
                w.tag(0);
                w.tag(u8::from(*b));
            }
            Parameter::Int(i) => {
                w.tag(1);
                w.small(&i.to_le_bytes());
            }
            Parameter::Double(d) => {
                w.tag(2);
                w.small(&d.to_bits().to_le_bytes());
            }
            Parameter::String(s) => {
                w.tag(3);
                w.str(s);
            }
        }
    }

    CacheKey { model: Arc::from(model), digest: w.finish() }
}

/// Feeds a BLAKE3 hasher, batching the many small fields into one buffer so that the hasher sees
/// few, large updates.
struct KeyWriter {
    hasher: blake3::Hasher,
    buf: Vec<u8>,
}

/// Byte strings longer than this go to the hasher directly instead of through the buffer.
const DIRECT: usize = 512;

impl KeyWriter {
    fn new() -> Self {
        KeyWriter { hasher: blake3::Hasher::new(), buf: Vec::with_capacity(2 * DIRECT) }
    }

    fn small(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= DIRECT {
            self.flush();
        }
    }

    fn tag(&mut self, tag: u8) {
        self.small(&[tag]);
    }

    fn len(&mut self, n: usize) {
        self.small(&(n as u64).to_le_bytes());
    }

    /// A length-prefixed byte string.
    fn bytes(&mut self, bytes: &[u8]) {
        self.len(bytes.len());
        if bytes.len() > DIRECT {
            self.flush();
            self.hasher.update(bytes);
        } else {
            self.small(bytes);
        }
    }

    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    fn flush(&mut self) {
        self.hasher.update(&self.buf);
        self.buf.clear();
    }

    fn finish(mut self) -> u128 {
        self.flush();
        let hash = self.hasher.finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&hash.as_bytes()[..16]);
        u128::from_le_bytes(first)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::{DataType, Tensor};

    fn named(name: &str, tensor: Tensor) -> NamedTensor {
        NamedTensor { name: name.to_string(), tensor }
    }

    fn fp32(name: &str, shape: Vec<usize>, values: &[f32]) -> NamedTensor {
        named(name, Tensor::from_f32(shape, values).expect("valid tensor"))
    }

    fn key(inputs: &[NamedTensor]) -> CacheKey {
        cache_key("mlp", "1", inputs, &["out".to_string()], &[])
    }

    #[test]
    fn equal_for_typed_values_and_raw_wire_bytes() {
        let values = [1.0f32, -2.5, 3.25, 0.0, 7.0, 8.5];
        // As the JSON front end builds it: from typed values.
        let from_json = fp32("x", vec![2, 3], &values);
        // As binary HTTP or gRPC raw_input_contents deliver it: little-endian bytes in a buffer.
        let mut wire = Vec::new();
        for v in values {
            wire.extend_from_slice(&v.to_le_bytes());
        }
        let from_binary = named(
            "x",
            Tensor::new(DataType::Fp32, vec![2, 3], TensorData::Raw(Bytes::from(wire.clone())))
                .expect("valid"),
        );
        // A slice of a larger receive buffer, as a zero-copy decoder hands it out.
        let mut framed = b"header".to_vec();
        framed.extend_from_slice(&wire);
        let framed = Bytes::from(framed).slice(6..);
        let from_grpc =
            named("x", Tensor::new(DataType::Fp32, vec![2, 3], TensorData::Raw(framed)).expect("valid"));
        assert_eq!(key(std::slice::from_ref(&from_json)), key(&[from_binary]));
        assert_eq!(key(&[from_json]), key(&[from_grpc]));
    }

    #[test]
    fn input_and_output_order_do_not_matter() {
        let a = fp32("a", vec![1], &[1.0]);
        let b = fp32("b", vec![1], &[2.0]);
        let outs1 = ["y".to_string(), "z".to_string()];
        let outs2 = ["z".to_string(), "y".to_string()];
        assert_eq!(
            cache_key("m", "1", &[a.clone(), b.clone()], &outs1, &[]),
            cache_key("m", "1", &[b, a], &outs2, &[])
        );
    }

    #[test]
    fn differs_when_anything_that_decides_the_reply_differs() {
        let base = fp32("x", vec![2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let k = key(std::slice::from_ref(&base));

        let reshaped = fp32("x", vec![4], &[1.0, 2.0, 3.0, 4.0]);
        assert_ne!(k, key(&[reshaped]), "shape");

        let raw = base.tensor.raw().expect("raw").clone();
        let retyped = named(
            "x",
            Tensor::new(DataType::Int32, vec![2, 2], TensorData::Raw(raw.clone())).expect("valid"),
        );
        assert_ne!(k, key(&[retyped]), "datatype");

        let mut flipped = raw.to_vec();
        flipped[9] ^= 1;
        let one_byte = named(
            "x",
            Tensor::new(DataType::Fp32, vec![2, 2], TensorData::Raw(flipped.into())).expect("valid"),
        );
        assert_ne!(k, key(&[one_byte]), "one byte");

        assert_ne!(k, key(&[named("x2", base.tensor.clone())]), "input name");

        let inputs = [base.clone()];
        let outs = ["out".to_string()];
        assert_ne!(k, cache_key("mlp", "2", &inputs, &outs, &[]), "version");
        assert_ne!(k, cache_key("mlp2", "1", &inputs, &outs, &[]), "model");
        assert_ne!(k, cache_key("mlp", "1", &inputs, &["other".to_string()], &[]), "outputs");
        assert_ne!(k, cache_key("mlp", "1", &inputs, &[], &[]), "no outputs");
        let top3 = Parameter::Int(3);
        assert_ne!(k, cache_key("mlp", "1", &inputs, &outs, &[("out.classification", &top3)]), "options");
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        // Same concatenated text, split differently between model name and version.
        let inputs = [fp32("x", vec![1], &[1.0])];
        assert_ne!(cache_key("ab", "1", &inputs, &[], &[]), cache_key("a", "b1", &inputs, &[], &[]));
        // BYTES elements: ["ab", "c"] vs ["a", "bc"].
        let s = |items: &[&'static [u8]]| {
            let items: Vec<Bytes> = items.iter().map(|i| Bytes::from_static(i)).collect();
            named("s", Tensor::new(DataType::Bytes, vec![2], TensorData::Strings(items)).expect("valid"))
        };
        assert_ne!(key(&[s(&[b"ab", b"c"])]), key(&[s(&[b"a", b"bc"])]));
        // An input named like the outputs field cannot stand in for an output.
        let outs = ["y".to_string()];
        assert_ne!(
            cache_key("m", "1", &[fp32("y", vec![1], &[0.0])], &[], &[]),
            cache_key("m", "1", &[], &outs, &[])
        );
    }

    #[test]
    fn large_inputs_hash_the_same_through_buffer_and_direct_paths() {
        let values: Vec<f32> = (0..10_000).map(|i| i as f32).collect();
        let a = fp32("x", vec![values.len()], &values);
        let b = fp32("x", vec![values.len()], &values);
        assert_eq!(key(std::slice::from_ref(&a)), key(&[b]));
        let mut changed = values.clone();
        changed[9_999] = -1.0;
        assert_ne!(key(&[a]), key(&[fp32("x", vec![changed.len()], &changed)]));
    }
}
