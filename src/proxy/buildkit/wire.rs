//! The few BuildKit messages the proxy reads, written from the field numbers BuildKit
//! documents in its control and gateway APIs (moby.buildkit.v1 and
//! moby.buildkit.v1.frontend), decoded and encoded with prost. Nested messages the proxy
//! only passes on or refuses whole (LLB definitions, source policies) stay opaque bytes:
//! a message field and a bytes field share the wire format.
//!
//! A gRPC request body is one length-prefixed message; compressed messages are refused.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{Buf, Bytes};
use prost::encoding::{decode_key, skip_field, DecodeContext};
use prost::Message;

/// `moby.buildkit.v1.SolveRequest` (Control/Solve).
#[derive(Clone, PartialEq, Message)]
pub struct SolveRequest {
    #[prost(string, tag = "1")]
    pub r#ref: String,
    /// `pb.Definition`: raw LLB.
    #[prost(bytes = "vec", optional, tag = "2")]
    pub definition: Option<Vec<u8>>,
    #[prost(string, tag = "3")]
    pub exporter_deprecated: String,
    #[prost(btree_map = "string, string", tag = "4")]
    pub exporter_attrs_deprecated: BTreeMap<String, String>,
    #[prost(string, tag = "5")]
    pub session: String,
    #[prost(string, tag = "6")]
    pub frontend: String,
    #[prost(btree_map = "string, string", tag = "7")]
    pub frontend_attrs: BTreeMap<String, String>,
    #[prost(message, optional, tag = "8")]
    pub cache: Option<CacheOptions>,
    #[prost(string, repeated, tag = "9")]
    pub entitlements: Vec<String>,
    /// name -> `pb.Definition`.
    #[prost(btree_map = "string, bytes", tag = "10")]
    pub frontend_inputs: BTreeMap<String, Vec<u8>>,
    #[prost(bool, tag = "11")]
    pub internal: bool,
    /// `moby.buildkit.v1.sourcepolicy.Policy`: it can only narrow or pin the sources.
    #[prost(bytes = "vec", optional, tag = "12")]
    pub source_policy: Option<Vec<u8>>,
    #[prost(message, repeated, tag = "13")]
    pub exporters: Vec<Exporter>,
}

impl SolveRequest {
    pub const FIELDS: &'static [u32] = &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13];
}

/// `moby.buildkit.v1.CacheOptions`.
#[derive(Clone, PartialEq, Message)]
pub struct CacheOptions {
    #[prost(string, tag = "1")]
    pub export_ref_deprecated: String,
    #[prost(string, repeated, tag = "2")]
    pub import_refs_deprecated: Vec<String>,
    #[prost(btree_map = "string, string", tag = "3")]
    pub export_attrs_deprecated: BTreeMap<String, String>,
    #[prost(message, repeated, tag = "4")]
    pub exports: Vec<CacheOptionsEntry>,
    #[prost(message, repeated, tag = "5")]
    pub imports: Vec<CacheOptionsEntry>,
}

/// `moby.buildkit.v1.CacheOptionsEntry`.
#[derive(Clone, PartialEq, Message)]
pub struct CacheOptionsEntry {
    #[prost(string, tag = "1")]
    pub r#type: String,
    #[prost(btree_map = "string, string", tag = "2")]
    pub attrs: BTreeMap<String, String>,
}

/// `moby.buildkit.v1.Exporter`.
#[derive(Clone, PartialEq, Message)]
pub struct Exporter {
    #[prost(string, tag = "1")]
    pub r#type: String,
    #[prost(btree_map = "string, string", tag = "2")]
    pub attrs: BTreeMap<String, String>,
}

/// `moby.buildkit.v1.StatusRequest` (Control/Status).
#[derive(Clone, PartialEq, Message)]
pub struct StatusRequest {
    #[prost(string, tag = "1")]
    pub r#ref: String,
}

/// `moby.buildkit.v1.frontend.SolveRequest` (LLBBridge/Solve): what a client-side
/// frontend (buildx's) asks the daemon to solve within its build.
#[derive(Clone, PartialEq, Message)]
pub struct BridgeSolveRequest {
    #[prost(bytes = "vec", optional, tag = "1")]
    pub definition: Option<Vec<u8>>,
    #[prost(string, tag = "2")]
    pub frontend: String,
    #[prost(btree_map = "string, string", tag = "3")]
    pub frontend_opt: BTreeMap<String, String>,
    #[prost(bool, tag = "5")]
    pub allow_result_return: bool,
    #[prost(bool, tag = "6")]
    pub allow_result_array_ref: bool,
    #[prost(bool, tag = "10")]
    pub r#final: bool,
    #[prost(bytes = "vec", tag = "11")]
    pub exporter_attr: Vec<u8>,
    #[prost(message, repeated, tag = "12")]
    pub cache_imports: Vec<CacheOptionsEntry>,
    #[prost(btree_map = "string, bytes", tag = "13")]
    pub frontend_inputs: BTreeMap<String, Vec<u8>>,
    #[prost(bool, tag = "14")]
    pub evaluate: bool,
    #[prost(bytes = "vec", repeated, tag = "15")]
    pub source_policies: Vec<Vec<u8>>,
}

impl BridgeSolveRequest {
    pub const FIELDS: &'static [u32] = &[1, 2, 3, 5, 6, 10, 11, 12, 13, 14, 15];
}

/// `moby.buildkit.v1.sourcepolicy.Policy`: rules on the sources (images, git, http, local)
/// a build may load; BuildKit applies the build's policy to every source it resolves.
#[derive(Clone, PartialEq, Message)]
pub struct SourcePolicy {
    #[prost(int64, tag = "1")]
    pub version: i64,
    #[prost(message, repeated, tag = "2")]
    pub rules: Vec<SourceRule>,
}

#[derive(Clone, PartialEq, Message)]
pub struct SourceRule {
    /// PolicyAction: 0 allow, 1 deny, 2 convert.
    #[prost(int32, tag = "1")]
    pub action: i32,
    #[prost(message, optional, tag = "2")]
    pub selector: Option<SourceSelector>,
}

#[derive(Clone, PartialEq, Message)]
pub struct SourceSelector {
    #[prost(string, tag = "1")]
    pub identifier: String,
    /// MatchType: 0 wildcard, 1 exact, 2 regex.
    #[prost(int32, tag = "2")]
    pub match_type: i32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("a gRPC request body must be one uncompressed message")]
    Framing,
    #[error("the {0} message does not decode: {1}")]
    Decode(&'static str, String),
    #[error("the {what} message has field {field}, which the labgpu proxy does not know; it refuses what it cannot check")]
    UnknownField { what: &'static str, field: u32 },
}

/// The message of a unary gRPC request body: flag 0 (uncompressed), a 4-byte big-endian
/// length, the message, nothing after it.
pub fn unframe(body: &[u8]) -> Result<&[u8], WireError> {
    let (head, rest) = body.split_at_checked(5).ok_or(WireError::Framing)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if head[0] != 0 || rest.len() != len {
        return Err(WireError::Framing);
    }
    Ok(rest)
}

pub fn frame(message: &impl Message) -> Bytes {
    let mut out = Vec::with_capacity(5 + message.encoded_len());
    out.push(0);
    out.extend_from_slice(&(message.encoded_len() as u32).to_be_bytes());
    message.encode(&mut out).expect("a Vec grows");
    out.into()
}

/// Decodes `bytes` as `M`, refusing field numbers outside `known`: prost would drop them
/// silently, and a field this proxy never checked must not reach BuildKit by omission of a
/// check either (the proxy forwards its own encoding, without them, only after refusing).
pub fn decode<M: Message + Default>(
    what: &'static str,
    known: &[u32],
    bytes: &[u8],
) -> Result<M, WireError> {
    for field in field_numbers(what, bytes)? {
        if !known.contains(&field) {
            return Err(WireError::UnknownField { what, field });
        }
    }
    M::decode(bytes).map_err(|e| WireError::Decode(what, e.to_string()))
}

/// The top-level field numbers present in an encoded message.
fn field_numbers(what: &'static str, mut buf: &[u8]) -> Result<BTreeSet<u32>, WireError> {
    let mut seen = BTreeSet::new();
    while buf.has_remaining() {
        let (tag, wire_type) =
            decode_key(&mut buf).map_err(|e| WireError::Decode(what, e.to_string()))?;
        skip_field(wire_type, tag, &mut buf, DecodeContext::default())
            .map_err(|e| WireError::Decode(what, e.to_string()))?;
        seen.insert(tag);
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_frames_are_refused() {
        let m = StatusRequest { r#ref: "k3".into() };
        let framed = frame(&m);
        let inner = unframe(&framed).unwrap();
        assert_eq!(StatusRequest::decode(inner).unwrap(), m);
        let mut compressed = framed.to_vec();
        compressed[0] = 1;
        assert_eq!(unframe(&compressed), Err(WireError::Framing));
        let mut two = framed.to_vec();
        two.extend_from_slice(&framed);
        assert_eq!(unframe(&two), Err(WireError::Framing));
        assert_eq!(unframe(&[0, 0]), Err(WireError::Framing));
    }

    #[test]
    fn unknown_fields_are_refused_by_number() {
        let mut bytes = SolveRequest {
            r#ref: "r".into(),
            ..Default::default()
        }
        .encode_to_vec();
        // Field 14, a string: what a newer client could add.
        bytes.extend_from_slice(&[14 << 3 | 2, 1, b'x']);
        assert_eq!(
            decode::<SolveRequest>("SolveRequest", SolveRequest::FIELDS, &bytes),
            Err(WireError::UnknownField {
                what: "SolveRequest",
                field: 14
            })
        );
        assert!(decode::<SolveRequest>("SolveRequest", SolveRequest::FIELDS, &[0xff]).is_err());
    }
}
