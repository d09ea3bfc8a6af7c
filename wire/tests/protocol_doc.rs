//! PROTOCOL.md stays true to the code: every frame type has a section with its type byte, every
//! error code is in the table, and the documented constants match.

use kubehub_wire::*;

fn doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md"))
        .expect("wire/PROTOCOL.md exists")
}

#[test]
fn every_frame_type_has_a_section() {
    let doc = doc();
    for ty in FrameType::ALL {
        let heading = format!("### {} (0x{:02x})", ty.name(), ty as u8);
        assert!(doc.contains(&heading), "PROTOCOL.md lacks `{heading}`");
    }
}

#[test]
fn every_error_code_is_in_the_table() {
    let doc = doc();
    let mut code = 0;
    while let Some(name) = ErrorCode(code).name() {
        let row = format!("| 0x{code:x} | {name} |");
        assert!(doc.contains(&row), "PROTOCOL.md lacks the row `{row}`");
        code += 1;
    }
    assert!(code >= 13);
}

#[test]
fn documented_constants_match() {
    let doc = doc();
    assert_eq!(HEADER_LEN, 10);
    assert!(doc.contains("10-byte header"));
    assert_eq!(HANDSHAKE_MAX_FRAME_SIZE, 16 * 1024);
    assert!(doc.contains("| handshake maximum frame size | 16 KiB (16,384) |"));
    assert_eq!(DEFAULT_MAX_FRAME_SIZE, 2 * 1024 * 1024);
    assert_eq!(MAX_FRAME_SIZE_LIMIT, 16 * 1024 * 1024);
    let s = Settings::default();
    assert!(doc.contains("| `max_frame_size` | 2 MiB |"));
    assert_eq!(s.max_concurrent_streams, 1024);
    assert!(doc.contains("| `max_concurrent_streams` | 1024 |"));
    assert_eq!(s.initial_stream_window, 256 * 1024);
    assert!(doc.contains("| `initial_stream_window` | 256 KiB |"));
    assert_eq!(s.initial_sync_window, 4 * 1024 * 1024);
    assert!(doc.contains("| `initial_sync_window` | 4 MiB |"));
    assert_eq!(s.initial_connection_window, 8 * 1024 * 1024);
    assert!(doc.contains("| `initial_connection_window` | 8 MiB |"));
    assert!(doc.contains(&format!("version {PROTOCOL_VERSION}")));
}
