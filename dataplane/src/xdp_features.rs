//! What an interface takes redirected in XDP, as the kernel says: the `netdev` generic netlink
//! family's `xdp-features` of the interface (Linux 6.3 and later).
//!
//! XDP forwarding asks one thing of it: whether a multi-buffer frame (a jumbo MTU's, larger
//! than a page) may be redirected to the interface. The kernel drops such a redirect after the
//! program has returned, where the program cannot see it: before 6.3 every one of them
//! (`xdp_do_redirect` takes multi-buffer frames only to a CPU map), from 6.3 on those to an
//! interface whose driver does not say NETDEV_XDP_ACT_NDO_XMIT_SG. So the program must know
//! beforehand, and hands such frames to the kernel stack where the answer is no.

use anyhow::{Context, anyhow, bail};
use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, ErrorContext, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
    Nla, NlaBuffer, NlasIterator, Parseable, ParseableParametrized, emit_u32, parse_u32, parse_u64,
};
use netlink_packet_generic::{
    GenlFamily, GenlHeader, GenlMessage,
    ctrl::{GenlCtrl, GenlCtrlCmd, nlas::GenlCtrlAttrs},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};

/// include/uapi/linux/netdev.h.
const NETDEV_FAMILY_VERSION: u8 = 1;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
/// The driver has an `ndo_xdp_xmit`: frames redirected to it in XDP reach it.
pub const NETDEV_XDP_ACT_NDO_XMIT: u64 = 4;
/// The driver's `ndo_xdp_xmit` takes non-linear (multi-buffer) frames.
pub const NETDEV_XDP_ACT_NDO_XMIT_SG: u64 = 64;

/// Whether multi-buffer frames redirected in XDP to interface `ifindex` reach it: its
/// xdp-features include NETDEV_XDP_ACT_NDO_XMIT_SG. A kernel without the `netdev` family
/// (before 6.3) redirects no multi-buffer frame to any interface: false.
///
/// A veth says so only while its peer can receive XDP frames (an XDP program there, or GRO
/// on), and the answer is read once, when forwarding is set up.
pub fn takes_multi_buffer_redirects(ifindex: u32) -> anyhow::Result<bool> {
    Ok(features(ifindex)?.is_some_and(|f| f & NETDEV_XDP_ACT_NDO_XMIT_SG != 0))
}

/// Whether frames redirected in XDP to interface `ifindex` reach it at all: its xdp-features
/// include NETDEV_XDP_ACT_NDO_XMIT, which the kernel checks from 6.3 on before it takes a
/// redirect (a NIC's driver with XDP says so; kernel WireGuard, without an `ndo_xdp_xmit`,
/// does not, and neither does a TUN, which has one: xdp_forward.rs tests it). None where the
/// kernel has no `netdev` family (before 6.3): it cannot say.
pub fn takes_redirects(ifindex: u32) -> anyhow::Result<Option<bool>> {
    Ok(features(ifindex)?.map(|f| f & NETDEV_XDP_ACT_NDO_XMIT != 0))
}

/// The interface's xdp-features bits, or None where the kernel has no `netdev` family.
fn features(ifindex: u32) -> anyhow::Result<Option<u64>> {
    let mut socket = Socket::new(NETLINK_GENERIC).context("generic netlink socket")?;
    socket
        .bind_auto()
        .context("binding the generic netlink socket")?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .context("connecting the generic netlink socket")?;
    let Some(family) = netdev_family(&socket)? else {
        return Ok(None);
    };
    Ok(Some(xdp_features(&socket, family, ifindex)?))
}

/// The `netdev` family's id, or None where the kernel has no such family.
fn netdev_family(socket: &Socket) -> anyhow::Result<Option<u16>> {
    let request = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(Netdev::family_name().into())],
    });
    match ask(socket, request)? {
        Answer::Payload(reply) => reply
            .payload
            .nlas
            .iter()
            .find_map(|a| match a {
                GenlCtrlAttrs::FamilyId(id) => Some(Some(*id)),
                _ => None,
            })
            .context("the generic netlink controller named no id for `netdev`"),
        Answer::Errno(libc::ENOENT) => Ok(None),
        Answer::Errno(e) => Err(std::io::Error::from_raw_os_error(e))
            .context("asking the generic netlink controller for the `netdev` family"),
    }
}

/// The interface's xdp-features bitmask (`enum netdev_xdp_act`).
fn xdp_features(socket: &Socket, family: u16, ifindex: u32) -> anyhow::Result<u64> {
    let mut request = GenlMessage::from_payload(Netdev {
        cmd: NETDEV_CMD_DEV_GET,
        attrs: vec![NetdevAttr::Ifindex(ifindex)],
    });
    request.set_resolved_family_id(family);
    match ask(socket, request)? {
        Answer::Payload(reply) => reply
            .payload
            .attrs
            .iter()
            .find_map(|a| match a {
                NetdevAttr::XdpFeatures(f) => Some(*f),
                _ => None,
            })
            .with_context(|| format!("netdev dev-get of ifindex {ifindex} has no xdp-features")),
        Answer::Errno(e) => Err(std::io::Error::from_raw_os_error(e))
            .with_context(|| format!("netdev dev-get of ifindex {ifindex}")),
    }
}

enum Answer<F> {
    Payload(GenlMessage<F>),
    /// The kernel's error (a positive errno).
    Errno(i32),
}

/// Sends one request and reads its one answer.
fn ask<F>(socket: &Socket, request: GenlMessage<F>) -> anyhow::Result<Answer<F>>
where
    F: GenlFamily + Emitable + ParseableParametrized<[u8], GenlHeader> + std::fmt::Debug,
{
    let mut request = request;
    request.finalize();
    let mut message = NetlinkMessage::from(request);
    message.header.flags = NLM_F_REQUEST;
    message.header.sequence_number = 1;
    message.finalize();
    let mut buf = vec![0u8; message.buffer_len()];
    message.serialize(&mut buf);
    socket
        .send(&buf, 0)
        .context("sending a generic netlink request")?;
    let (reply, _) = socket
        .recv_from_full()
        .context("reading a generic netlink answer")?;
    let answer = NetlinkMessage::<GenlMessage<F>>::deserialize(&reply)
        .map_err(|e| anyhow!("a generic netlink answer that does not parse: {e}"))?;
    match answer.payload {
        NetlinkPayload::InnerMessage(m) => Ok(Answer::Payload(m)),
        NetlinkPayload::Error(e) => match e.code {
            Some(code) => Ok(Answer::Errno(-code.get())),
            None => bail!("a generic netlink acknowledgement where an answer was due"),
        },
        other => bail!("an unexpected generic netlink answer: {other:?}"),
    }
}

/// A message of the `netdev` family: its command and attributes (the ones read here by name).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Netdev {
    cmd: u8,
    attrs: Vec<NetdevAttr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum NetdevAttr {
    Ifindex(u32),
    XdpFeatures(u64),
    Other(DefaultNla),
}

impl GenlFamily for Netdev {
    fn family_name() -> &'static str {
        "netdev"
    }

    fn command(&self) -> u8 {
        self.cmd
    }

    fn version(&self) -> u8 {
        NETDEV_FAMILY_VERSION
    }
}

impl Emitable for Netdev {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for Netdev {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let attrs = NlasIterator::new(buf)
            .map(|nla| nla.and_then(|nla| NetdevAttr::parse(&nla)))
            .collect::<Result<Vec<_>, _>>();
        let attrs = ErrorContext::context(attrs, "netdev message attributes")?;
        Ok(Netdev {
            cmd: header.cmd,
            attrs,
        })
    }
}

impl Nla for NetdevAttr {
    fn value_len(&self) -> usize {
        match self {
            NetdevAttr::Ifindex(_) => 4,
            NetdevAttr::XdpFeatures(_) => 8,
            NetdevAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            NetdevAttr::Ifindex(_) => NETDEV_A_DEV_IFINDEX,
            NetdevAttr::XdpFeatures(_) => NETDEV_A_DEV_XDP_FEATURES,
            NetdevAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            NetdevAttr::Ifindex(i) => emit_u32(buffer, *i).expect("a 4-byte attribute value"),
            NetdevAttr::XdpFeatures(f) => buffer.copy_from_slice(&f.to_ne_bytes()),
            NetdevAttr::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for NetdevAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let value = buf.value();
        Ok(match buf.kind() {
            NETDEV_A_DEV_IFINDEX => {
                NetdevAttr::Ifindex(ErrorContext::context(parse_u32(value), "netdev ifindex")?)
            }
            NETDEV_A_DEV_XDP_FEATURES => NetdevAttr::XdpFeatures(ErrorContext::context(
                parse_u64(value),
                "netdev xdp-features",
            )?),
            _ => NetdevAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dev-get answer as the kernel writes it (attributes: ifindex, xdp-features,
    /// xdp-zc-max-segs), read back; and the request's attribute as the kernel reads it.
    #[test]
    fn netdev_attributes_round_trip_in_the_kernels_layout() {
        let mut raw = Vec::new();
        for (kind, value) in [
            (NETDEV_A_DEV_IFINDEX, 7u32.to_ne_bytes().to_vec()),
            (NETDEV_A_DEV_XDP_FEATURES, 0x7fu64.to_ne_bytes().to_vec()),
            (4, 1u32.to_ne_bytes().to_vec()),
        ] {
            raw.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
            raw.extend_from_slice(&kind.to_ne_bytes());
            raw.extend_from_slice(&value);
        }
        let header = GenlHeader {
            cmd: NETDEV_CMD_DEV_GET,
            version: 1,
        };
        let m = Netdev::parse_with_param(&raw, header).unwrap();
        assert_eq!(m.attrs[0], NetdevAttr::Ifindex(7));
        assert_eq!(m.attrs[1], NetdevAttr::XdpFeatures(0x7f));
        assert!(matches!(m.attrs[2], NetdevAttr::Other(_)));
        let request = Netdev {
            cmd: NETDEV_CMD_DEV_GET,
            attrs: vec![NetdevAttr::Ifindex(7)],
        };
        let mut out = vec![0u8; request.buffer_len()];
        request.emit(&mut out);
        assert_eq!(out, raw[..8]);
    }
}
