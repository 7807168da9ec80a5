//! The KServe v2 wire format, in one place: the element types ([`DataType`]), fixed-size
//! elements as little-endian bytes ([`Element`]) and the length-prefixed layout of BYTES
//! elements ([`join_bytes_elements`], [`split_bytes_elements`]).
//!
//! The server's front ends and engines and the `rtserve bench` client all read and write tensors
//! through this crate, so an element is encoded one way everywhere.

mod datatype;
mod element;
mod strings;

pub use datatype::{DataType, UnknownDataType, ValueKind};
pub use element::Element;
pub use strings::{join_bytes_elements, split_bytes_elements, BytesLayoutError};
