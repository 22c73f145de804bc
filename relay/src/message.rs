//! STUN/TURN messages through stun_codec: the attribute set the relay speaks, decoding, and
//! responses signed with the long-term key (MESSAGE-INTEGRITY) and a FINGERPRINT.

use bytecodec::{DecodeExt as _, EncodeExt as _};
use stun_codec::{
    Message, MessageClass, MessageDecoder, MessageEncoder, Method, TransactionId,
    rfc5389::attributes::{
        ErrorCode, Fingerprint, MessageIntegrity, Nonce, Realm, Software, UnknownAttributes,
        Username, XorMappedAddress,
    },
    rfc5766::attributes::{
        Data, DontFragment, EvenPort, Lifetime, RequestedTransport, ReservationToken,
        XorPeerAddress, XorRelayAddress,
    },
    rfc8656::attributes::{AdditionalAddressFamily, AddressFamily, RequestedAddressFamily},
};

stun_codec::define_attribute_enums!(
    Attribute,
    AttributeDecoder,
    AttributeEncoder,
    [
        Username,
        Realm,
        Nonce,
        MessageIntegrity,
        Fingerprint,
        ErrorCode,
        XorMappedAddress,
        Software,
        UnknownAttributes,
        ChannelNumber,
        Lifetime,
        XorPeerAddress,
        Data,
        XorRelayAddress,
        EvenPort,
        RequestedTransport,
        DontFragment,
        ReservationToken,
        RequestedAddressFamily,
        AdditionalAddressFamily,
        AddressErrorCode
    ]
);

pub type Msg = Message<Attribute>;

/// CHANNEL-NUMBER with RFC 5766's range (0x4000–0x7FFF). stun_codec's own type takes RFC 8656's
/// narrower 0x4000–0x4FFF and refuses the rest, but clients of the older RFC (coturn's own
/// turnutils among them) pick numbers up to 0x7FFF; the relay accepts both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelNumber(u16);

impl ChannelNumber {
    pub const CODEPOINT: u16 = 0x000C;
    pub const MIN: u16 = 0x4000;
    pub const MAX: u16 = 0x7FFF;

    pub fn new(n: u16) -> Option<ChannelNumber> {
        (Self::MIN..=Self::MAX)
            .contains(&n)
            .then_some(ChannelNumber(n))
    }

    pub fn value(self) -> u16 {
        self.0
    }
}

impl stun_codec::Attribute for ChannelNumber {
    type Decoder = ChannelNumberDecoder;
    type Encoder = ChannelNumberEncoder;

    fn get_type(&self) -> stun_codec::AttributeType {
        stun_codec::AttributeType::new(Self::CODEPOINT)
    }
}

/// The number in the first two bytes, two reserved bytes after it.
#[derive(Debug, Default)]
pub struct ChannelNumberDecoder(bytecodec::fixnum::U32beDecoder);

impl bytecodec::Decode for ChannelNumberDecoder {
    type Item = ChannelNumber;

    fn decode(&mut self, buf: &[u8], eos: bytecodec::Eos) -> bytecodec::Result<usize> {
        self.0.decode(buf, eos)
    }

    fn finish_decoding(&mut self) -> bytecodec::Result<ChannelNumber> {
        let raw = self.0.finish_decoding()?;
        ChannelNumber::new((raw >> 16) as u16)
            .ok_or_else(|| bytecodec::ErrorKind::InvalidInput.into())
    }

    fn requiring_bytes(&self) -> bytecodec::ByteCount {
        self.0.requiring_bytes()
    }

    fn is_idle(&self) -> bool {
        self.0.is_idle()
    }
}

impl bytecodec::TryTaggedDecode for ChannelNumberDecoder {
    type Tag = stun_codec::AttributeType;

    fn try_start_decoding(&mut self, tag: Self::Tag) -> bytecodec::Result<bool> {
        Ok(tag.as_u16() == ChannelNumber::CODEPOINT)
    }
}

#[derive(Debug, Default)]
pub struct ChannelNumberEncoder(bytecodec::fixnum::U32beEncoder);

impl bytecodec::Encode for ChannelNumberEncoder {
    type Item = ChannelNumber;

    fn encode(&mut self, buf: &mut [u8], eos: bytecodec::Eos) -> bytecodec::Result<usize> {
        self.0.encode(buf, eos)
    }

    fn start_encoding(&mut self, item: ChannelNumber) -> bytecodec::Result<()> {
        self.0.start_encoding(u32::from(item.0) << 16)
    }

    fn requiring_bytes(&self) -> bytecodec::ByteCount {
        self.0.requiring_bytes()
    }

    fn is_idle(&self) -> bool {
        self.0.is_idle()
    }
}

impl bytecodec::SizedEncode for ChannelNumberEncoder {
    fn exact_requiring_bytes(&self) -> u64 {
        self.0.exact_requiring_bytes()
    }
}

/// ADDRESS-ERROR-CODE (RFC 8656 §18.11): in a successful dual-stack Allocate, why the second
/// family got no relayed address. stun_codec has no type for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AddressErrorCode {
    pub family: AddressFamily,
    pub code: u16,
    pub reason: String,
}

impl AddressErrorCode {
    pub const CODEPOINT: u16 = 0x8001;

    fn to_bytes(&self) -> Vec<u8> {
        let family = match self.family {
            AddressFamily::V4 => 1,
            AddressFamily::V6 => 2,
        };
        let mut b = vec![family, 0, (self.code / 100) as u8, (self.code % 100) as u8];
        b.extend_from_slice(self.reason.as_bytes());
        b
    }

    fn from_bytes(b: &[u8]) -> Option<AddressErrorCode> {
        let family = match b.first()? {
            1 => AddressFamily::V4,
            2 => AddressFamily::V6,
            _ => return None,
        };
        let (class, number) = (*b.get(2)? & 0x07, *b.get(3)?);
        Some(AddressErrorCode {
            family,
            code: u16::from(class) * 100 + u16::from(number),
            reason: String::from_utf8(b[4..].to_vec()).ok()?,
        })
    }
}

impl stun_codec::Attribute for AddressErrorCode {
    type Decoder = AddressErrorCodeDecoder;
    type Encoder = AddressErrorCodeEncoder;

    fn get_type(&self) -> stun_codec::AttributeType {
        stun_codec::AttributeType::new(Self::CODEPOINT)
    }
}

#[derive(Debug, Default)]
pub struct AddressErrorCodeDecoder(bytecodec::bytes::RemainingBytesDecoder);

impl bytecodec::Decode for AddressErrorCodeDecoder {
    type Item = AddressErrorCode;

    fn decode(&mut self, buf: &[u8], eos: bytecodec::Eos) -> bytecodec::Result<usize> {
        self.0.decode(buf, eos)
    }

    fn finish_decoding(&mut self) -> bytecodec::Result<AddressErrorCode> {
        let raw = self.0.finish_decoding()?;
        AddressErrorCode::from_bytes(&raw).ok_or_else(|| bytecodec::ErrorKind::InvalidInput.into())
    }

    fn requiring_bytes(&self) -> bytecodec::ByteCount {
        self.0.requiring_bytes()
    }

    fn is_idle(&self) -> bool {
        self.0.is_idle()
    }
}

impl bytecodec::TryTaggedDecode for AddressErrorCodeDecoder {
    type Tag = stun_codec::AttributeType;

    fn try_start_decoding(&mut self, tag: Self::Tag) -> bytecodec::Result<bool> {
        Ok(tag.as_u16() == AddressErrorCode::CODEPOINT)
    }
}

#[derive(Debug, Default)]
pub struct AddressErrorCodeEncoder(bytecodec::bytes::BytesEncoder<Vec<u8>>);

impl bytecodec::Encode for AddressErrorCodeEncoder {
    type Item = AddressErrorCode;

    fn encode(&mut self, buf: &mut [u8], eos: bytecodec::Eos) -> bytecodec::Result<usize> {
        self.0.encode(buf, eos)
    }

    fn start_encoding(&mut self, item: AddressErrorCode) -> bytecodec::Result<()> {
        self.0.start_encoding(item.to_bytes())
    }

    fn requiring_bytes(&self) -> bytecodec::ByteCount {
        self.0.requiring_bytes()
    }

    fn is_idle(&self) -> bool {
        self.0.is_idle()
    }
}

impl bytecodec::SizedEncode for AddressErrorCodeEncoder {
    fn exact_requiring_bytes(&self) -> u64 {
        self.0.exact_requiring_bytes()
    }
}

/// Decodes one datagram as a STUN message; `None` for anything that is not one.
pub fn decode(bytes: &[u8]) -> Option<Msg> {
    match MessageDecoder::<Attribute>::new().decode_from_bytes(bytes) {
        Ok(Ok(m)) => Some(m),
        Ok(Err(broken)) => {
            tracing::debug!(method = ?broken.method(), error = %broken.error(), "STUN message with an attribute that does not decode");
            None
        }
        Err(e) => {
            tracing::debug!(error = %e, "not a STUN message");
            None
        }
    }
}

/// The signing key of a response: the request's user, realm and password.
pub struct Key<'a> {
    pub username: &'a Username,
    pub realm: &'a Realm,
    pub password: &'a str,
}

/// Encodes `message`, signed when a key is given, with a FINGERPRINT last.
pub fn encode(mut message: Msg, key: Option<Key<'_>>) -> Vec<u8> {
    if let Some(k) = key
        && let Ok(mi) =
            MessageIntegrity::new_long_term_credential(&message, k.username, k.realm, k.password)
    {
        message.add_attribute(mi);
    }
    if let Ok(fp) = Fingerprint::new(&message) {
        message.add_attribute(fp);
    }
    MessageEncoder::new()
        .encode_into_bytes(message)
        .unwrap_or_default()
}

pub fn response(class: MessageClass, method: Method, id: TransactionId) -> Msg {
    Message::new(class, method, id)
}

/// An error response with a code and its reason phrase.
pub fn error(method: Method, id: TransactionId, code: u16, reason: &str) -> Msg {
    let mut m = Message::new(MessageClass::ErrorResponse, method, id);
    if let Ok(e) = ErrorCode::new(code, reason.to_string()) {
        m.add_attribute(e);
    }
    m
}

/// ChannelData (RFC 8656 §12.4): the channel number, the data length, the data. Over UDP no
/// padding is needed.
pub fn channel_data(channel: u16, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + data.len());
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// A ChannelData message's channel and data (padding after the data ignored); `None` if the
/// datagram is not one.
pub fn parse_channel_data(bytes: &[u8]) -> Option<(u16, &[u8])> {
    if bytes.len() < 4 || !(0x40..=0x7f).contains(&bytes[0]) {
        return None;
    }
    let channel = u16::from_be_bytes([bytes[0], bytes[1]]);
    let len = u16::from_be_bytes([bytes[2], bytes[3]]) as usize;
    bytes.get(4..4 + len).map(|d| (channel, d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun_codec::rfc5389::methods::BINDING;

    fn bytes(hex: &str) -> Vec<u8> {
        let hex: String = hex.split_whitespace().collect();
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 5769 §2.4: a request with long-term authentication (user "マトリックス", realm
    /// "example.org", password "TheMatrIX"), checked with the key MD5(user:realm:password).
    #[test]
    fn rfc5769_long_term_request_verifies() {
        let m = decode(&bytes(
            "0001 0060 2112a442 78ad3433 c6ad72c0 29da412e
             0006 0012 e3839ee3 8388e383 aae38383 e382afe3 82b90000
             0015 001c 662f2f34 39396b39 35346436 4f4c3334 6f4c3946 53547679 36347341
             0014 000b 6578616d 706c652e 6f726700
             0008 0014 f6702465 6dd64a3e 02b8e071 2e85c9a2 8ca89666",
        ))
        .expect("decodes");
        assert_eq!(m.method(), BINDING);
        let user = m.get_attribute::<Username>().unwrap();
        let realm = m.get_attribute::<Realm>().unwrap();
        assert_eq!(realm.text(), "example.org");
        let mi = m.get_attribute::<MessageIntegrity>().unwrap();
        assert!(
            mi.check_long_term_credential(user, realm, "TheMatrIX")
                .is_ok()
        );
        assert!(
            mi.check_long_term_credential(user, realm, "TheMatrix")
                .is_err()
        );
    }

    /// RFC 5769 §2.2: a response's FINGERPRINT.
    #[test]
    fn rfc5769_fingerprint() {
        let m = decode(&bytes(
            "0101 003c 2112a442 b7e7a701 bc34d686 fa87dfae
             8022 000b 74657374 20766563 746f7220
             0020 0008 0001a147 e112a643
             0008 0014 2b91f599 fd9e90c3 8c7489f9 2af9ba53 f06be7d7
             8028 0004 c07d4c96",
        ))
        .expect("decodes");
        assert_eq!(
            m.get_attribute::<Fingerprint>().unwrap().crc32(),
            0xc07d4c96
        );
        assert_eq!(
            m.get_attribute::<XorMappedAddress>().unwrap().address(),
            "192.0.2.1:32853".parse().unwrap()
        );
    }

    #[test]
    fn channel_numbers_of_both_rfcs_decode() {
        use stun_codec::rfc5766::methods::CHANNEL_BIND;
        for n in [0x4000u16, 0x4fff, 0x612e, 0x7fff] {
            let mut m = Message::new(
                MessageClass::Request,
                CHANNEL_BIND,
                TransactionId::new([7; 12]),
            );
            m.add_attribute(ChannelNumber::new(n).unwrap());
            let back = decode(&encode(m, None)).expect("decodes");
            assert_eq!(
                back.get_attribute::<ChannelNumber>().map(|c| c.value()),
                Some(n)
            );
        }
        assert!(ChannelNumber::new(0x8000).is_none() && ChannelNumber::new(0x3fff).is_none());
    }

    /// ADDRESS-ERROR-CODE as RFC 8656 §18.11 lays it out: family, reserved, class, number,
    /// the reason phrase (padded to four bytes by the attribute framing).
    #[test]
    fn address_error_code_wire_form() {
        let mut m = Message::new(
            MessageClass::SuccessResponse,
            stun_codec::rfc5766::methods::ALLOCATE,
            TransactionId::new([9; 12]),
        );
        m.add_attribute(AddressErrorCode {
            family: AddressFamily::V6,
            code: 440,
            reason: "Address Family not Supported".into(),
        });
        let wire = MessageEncoder::<Attribute>::new()
            .encode_into_bytes(m)
            .unwrap();
        assert_eq!(
            &wire[20..28],
            &[0x80, 0x01, 0x00, 32, 0x02, 0x00, 4, 40],
            "type 0x8001, length 4 + 28, IPv6, class 4, number 40"
        );
        assert_eq!(&wire[28..], b"Address Family not Supported");
        let back = decode(&wire).expect("decodes");
        let e = back.get_attribute::<AddressErrorCode>().unwrap();
        assert_eq!((e.family, e.code), (AddressFamily::V6, 440));
    }

    #[test]
    fn channel_data_round_trips_and_padding_is_ignored() {
        let m = channel_data(0x4001, b"hello");
        assert_eq!(m, [0x40, 0x01, 0, 5, b'h', b'e', b'l', b'l', b'o']);
        let mut padded = m.clone();
        padded.extend_from_slice(&[0, 0, 0]);
        assert_eq!(parse_channel_data(&padded), Some((0x4001, &b"hello"[..])));
        assert_eq!(parse_channel_data(&m[..6]), None, "shorter than it says");
        assert_eq!(
            parse_channel_data(&[0x00, 0x01, 0, 0]),
            None,
            "a STUN message"
        );
    }
}
