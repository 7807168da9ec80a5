//! Types generated from `proto/inference.proto` (KServe v2 gRPC and Triton's model
//! configuration): a leaf that the gRPC front end and the Triton config/statistics views share.

#![allow(clippy::all, missing_docs)]
tonic::include_proto!("inference");
