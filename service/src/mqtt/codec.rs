//! Framing over `mqttbytes` (MQTT 3.1.1 packets): no packet parsing of our own. This is the
//! whole untrusted-bytes path of the endpoint, kept free of I/O so the fuzz target
//! (`fuzz/fuzz_targets/mqtt_packet.rs`) drives exactly what a connection runs.

use bytes::BytesMut;
use mqttbytes::v4::Packet;

/// Largest packet accepted (fixed header included); a larger one closes the connection.
pub const MAX_PACKET: usize = 64 * 1024;

/// Why the byte stream cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    /// larger than [`MAX_PACKET`]
    TooLarge,
    /// CONNECT with a protocol level other than 4 (MQTT 3.1.1): CONNACK 0x01 is due
    ProtocolLevel,
    /// anything else the codec refuses
    Invalid(String),
}

/// Takes the next complete packet off the front of `buf`: `Ok(None)` = more bytes needed.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Packet>, Malformed> {
    use mqttbytes::Error as E;
    match mqttbytes::v4::read(buf, MAX_PACKET) {
        Ok(Packet::Connect(c)) if c.protocol != mqttbytes::Protocol::V4 => {
            Err(Malformed::ProtocolLevel)
        }
        Ok(p) => Ok(Some(p)),
        Err(E::InsufficientBytes(_)) => Ok(None),
        Err(E::PayloadSizeLimitExceeded(_)) => Err(Malformed::TooLarge),
        Err(E::InvalidProtocolLevel(_) | E::InvalidProtocol) => Err(Malformed::ProtocolLevel),
        Err(e) => Err(Malformed::Invalid(format!("{e:?}"))),
    }
}

/// Encodes `packet` for the wire.
pub fn encode(packet: &Packet, out: &mut BytesMut) -> Result<(), Malformed> {
    let r = match packet {
        Packet::ConnAck(p) => p.write(out),
        Packet::Publish(p) => p.write(out),
        Packet::PubAck(p) => p.write(out),
        Packet::SubAck(p) => p.write(out),
        Packet::UnsubAck(p) => p.write(out),
        Packet::PingResp => mqttbytes::v4::PingResp.write(out),
        _ => return Err(Malformed::Invalid("not a server packet".into())),
    };
    r.map(|_| ()).map_err(|e| Malformed::Invalid(format!("{e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_and_oversize() {
        let mut buf = BytesMut::from(&[0x10u8][..]);
        assert_eq!(decode(&mut buf), Ok(None));
        let mut big = BytesMut::from(&[0x30u8, 0xff, 0xff, 0x7f][..]);
        assert_eq!(decode(&mut big), Err(Malformed::TooLarge));
    }

    #[test]
    fn mqtt5_connect_is_a_protocol_level_error() {
        let mut c = mqttbytes::v4::Connect::new("x");
        c.protocol = mqttbytes::Protocol::V5;
        let mut buf = BytesMut::new();
        c.write(&mut buf).unwrap();
        assert_eq!(decode(&mut buf), Err(Malformed::ProtocolLevel));
    }
}
