//! AWS event-stream framing (`application/vnd.amazon.eventstream`), the
//! wire format of Bedrock's `invoke-with-response-stream`:
//!
//! ```text
//! total_len:u32 | headers_len:u32 | prelude_crc:u32 | headers | payload | message_crc:u32
//! header: name_len:u8 | name | type:u8 (7 = string) | value_len:u16 | value
//! ```
//! All integers big-endian; both CRCs are CRC-32 (IEEE).

use base64::Engine;
use serde_json::{json, Value};

/// One frame with string headers.
pub fn frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut hdr = Vec::new();
    for (name, value) in headers {
        hdr.push(name.len() as u8);
        hdr.extend_from_slice(name.as_bytes());
        hdr.push(7);
        hdr.extend_from_slice(&(value.len() as u16).to_be_bytes());
        hdr.extend_from_slice(value.as_bytes());
    }
    let total = 12 + hdr.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(hdr.len() as u32).to_be_bytes());
    let prelude_crc = crc32(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&hdr);
    out.extend_from_slice(payload);
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// A Bedrock `chunk` event carrying one Anthropic stream event.
pub fn chunk(event: &Value) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(event.to_string());
    frame(
        &[
            (":event-type", "chunk"),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        json!({ "bytes": b64 }).to_string().as_bytes(),
    )
}

/// One decoded frame: its string headers and its payload.
pub type Frame = (Vec<(String, String)>, Vec<u8>);

/// Splits a buffer into frames, checking both CRCs.
pub fn decode(mut buf: &[u8]) -> Result<Vec<Frame>, String> {
    let mut frames = Vec::new();
    while !buf.is_empty() {
        if buf.len() < 16 {
            return Err("truncated prelude".into());
        }
        let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let total = be(&buf[0..4]) as usize;
        let hlen = be(&buf[4..8]) as usize;
        if total < 16 + hlen || buf.len() < total {
            return Err("bad lengths".into());
        }
        if crc32(&buf[..8]) != be(&buf[8..12])
            || crc32(&buf[..total - 4]) != be(&buf[total - 4..total])
        {
            return Err("bad crc".into());
        }
        let mut h = &buf[12..12 + hlen];
        let mut headers = Vec::new();
        while !h.is_empty() {
            let n = h[0] as usize;
            let name = String::from_utf8_lossy(&h[1..1 + n]).into_owned();
            let vlen = u16::from_be_bytes([h[2 + n], h[3 + n]]) as usize;
            let value = String::from_utf8_lossy(&h[4 + n..4 + n + vlen]).into_owned();
            headers.push((name, value));
            h = &h[4 + n + vlen..];
        }
        frames.push((headers, buf[12 + hlen..total - 4].to_vec()));
        buf = &buf[total..];
    }
    Ok(frames)
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_and_round_trip() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        let ev = json!({"type": "message_stop"});
        let frames = decode(&[chunk(&ev), chunk(&ev)].concat()).unwrap();
        assert_eq!(frames.len(), 2);
        assert!(frames[0]
            .0
            .contains(&(":event-type".into(), "chunk".into())));
        let payload: Value = serde_json::from_slice(&frames[0].1).unwrap();
        let inner = base64::engine::general_purpose::STANDARD
            .decode(payload["bytes"].as_str().unwrap())
            .unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&inner).unwrap(), ev);
    }
}
