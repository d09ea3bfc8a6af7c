//! Fuzz target: arbitrary bytes from an agent or a hub.
//!
//! Checks that the decoder never panics, that every frame it returns re-encodes to exactly the
//! bytes it was decoded from (the encoding is canonical), and that feeding the frames to a
//! session never panics either.
//!
//! Run (nightly): `cd wire/fuzz && cargo +nightly fuzz run decode corpus/decode`.
#![no_main]

use bytes::BytesMut;
use kubehub_wire::{
    encode, Capabilities, Decoder, Role, Session, Settings, DEFAULT_MAX_FRAME_SIZE,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let mut dec = Decoder::new(DEFAULT_MAX_FRAME_SIZE);
    let settings = Settings {
        max_concurrent_streams: 8,
        ..Settings::default()
    };
    // CACHE_SYNC agreed, so the sync-request rules are exercised too.
    let caps = Capabilities::CACHE_SYNC;
    let mut hub = Session::new(Role::Hub, settings, settings, caps);
    let mut agent = Session::new(Role::Agent, settings, settings, caps);
    let mut offset = 0;
    while let Ok(Some(frame)) = dec.decode(&mut buf) {
        let used = data.len() - offset - buf.len();
        let mut again = BytesMut::new();
        encode(&frame, &mut again);
        assert_eq!(
            &again[..],
            &data[offset..offset + used],
            "non-canonical decode"
        );
        offset += used;
        let _ = hub.recv(&frame);
        let _ = agent.recv(&frame);
        let _ = hub.send(&frame);
    }
});
