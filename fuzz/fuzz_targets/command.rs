//! Any bytes a client or the exchange can send: the command parser and the envelope parser
//! return a value or an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = protocol::Command::parse(data);
    if let Ok(envelope) = protocol::Envelope::parse(data) {
        // Classifying the type is part of every frame's path through the relay.
        let _ = envelope.message_type();
    }
});
