//! The MQTT endpoint's untrusted-bytes path: framing and decoding (mqttbytes through
//! `service::mqtt::codec`), then what a connection does with a packet's strings — CONNECT
//! usernames and PUBLISH / SUBSCRIBE topics.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mqttbytes::v4::Packet;
use service::mqtt::{codec, dps};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    // Like a connection: packets until more bytes are needed or the stream is refused.
    while let Ok(Some(packet)) = codec::decode(&mut buf) {
        match packet {
            Packet::Connect(c) => {
                if let Some(login) = &c.login {
                    let _ = dps::parse_username(&login.username);
                }
            }
            Packet::Publish(p) => {
                let _ = dps::parse_topic(&p.topic);
            }
            Packet::Subscribe(s) => {
                for f in &s.filters {
                    let _ = dps::may_subscribe(&f.path);
                }
            }
            _ => {}
        }
        let mut out = BytesMut::new();
        let _ = codec::encode(&Packet::PingResp, &mut out);
    }
});
