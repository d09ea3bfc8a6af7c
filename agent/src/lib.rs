//! # kubehub-agent: the edge side of the tunnel
//!
//! One agent runs next to each edge cluster. It dials the hubs over mutual TLS, says HELLO
//! (the [`kubehub_wire`] protocol), reports the cluster's resource types, list-watches the
//! cacheable ones and streams them north, and runs every request the hub forwards against the
//! local API server, streaming the answer back.
//!
//! Status: the tunnel issue (#4) builds this crate; today it holds only the protocol it speaks.

pub use kubehub_wire as wire;
