//! W3C trace context (`traceparent`): which trace a call belongs to, so that
//! one piece of work can be followed across both services' logs.
//!
//! A server takes the trace of an incoming `traceparent` (or starts one)
//! and logs its id with the call; a client puts a `traceparent` on what it
//! sends, naming the trace it works for.

use tonic::metadata::MetadataMap;

/// The header carrying a trace context.
pub const TRACEPARENT: &str = "traceparent";

/// A position in a trace: the trace and the span of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace, shared by every span in it.
    trace_id: [u8; 16],
    /// This span.
    span_id: [u8; 8],
    /// Whether the trace is sampled (`01`) or not (`00`).
    sampled: bool,
}

impl TraceContext {
    /// A new trace.
    pub fn root() -> Self {
        Self {
            trace_id: crate::ids::unique_bytes(),
            span_id: crate::ids::unique_bytes(),
            sampled: true,
        }
    }

    /// A new span in the same trace.
    pub fn child(&self) -> Self {
        Self {
            span_id: crate::ids::unique_bytes(),
            ..*self
        }
    }

    /// Parses a `traceparent` value (version 00); `None` for anything else,
    /// all-zero ids included.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || version != "00" || flags.len() != 2 {
            return None;
        }
        let trace_id: [u8; 16] = hex(trace)?.try_into().ok()?;
        let span_id: [u8; 8] = hex(span)?.try_into().ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The trace's id, as logged: 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        crate::ids::hex(&self.trace_id)
    }

    /// The `traceparent` value naming this span.
    pub fn header(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            crate::ids::hex(&self.trace_id),
            crate::ids::hex(&self.span_id),
            u8::from(self.sampled)
        )
    }

    /// Puts this span's `traceparent` in `metadata`, for a call made on the
    /// trace's behalf.
    pub fn inject(&self, metadata: &mut MetadataMap) {
        if let Ok(value) = self.child().header().parse() {
            metadata.insert(TRACEPARENT, value);
        }
    }
}

fn hex(digits: &str) -> Option<Vec<u8>> {
    if !digits.len().is_multiple_of(2)
        || !digits
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_and_children_share_the_trace() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = TraceContext::parse(value).unwrap();
        assert_eq!(context.header(), value);
        assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let child = context.child();
        assert_eq!(child.trace_id(), context.trace_id());
        assert_ne!(child.header(), context.header());
    }

    #[test]
    fn malformed_or_empty_traceparents_are_ignored() {
        for bad in [
            "",
            "garbage",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f35-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
    }
}
