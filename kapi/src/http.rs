//! HTTP rules both proxies (hub and agent) apply.

/// Hop-by-hop fields a proxy never forwards (RFC 9110 §7.6.1), matched case-insensitively.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 8] = [
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-connection",
    ];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

#[cfg(test)]
mod tests {
    #[test]
    fn hop_by_hop() {
        assert!(super::is_hop_by_hop(b"Transfer-Encoding"));
        assert!(super::is_hop_by_hop(b"CONNECTION"));
        assert!(!super::is_hop_by_hop(b"Content-Length"));
    }
}
