//! A minimal blocking TURN client over UDP: allocate with long-term credentials, bind channels,
//! send ChannelData. For the relay's own tests and benchmarks (coturn's turnutils_uclient is the
//! independent client in the namespace tests).

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use anyhow::{Context as _, bail};
use stun_codec::{
    Message, MessageClass, Method, TransactionId,
    rfc5389::attributes::{ErrorCode, MessageIntegrity, Nonce, Realm, Username},
    rfc5766::{
        attributes::{Lifetime, RequestedTransport, XorPeerAddress, XorRelayAddress},
        methods::{ALLOCATE, CHANNEL_BIND, REFRESH},
    },
};

use crate::message::{Attribute, ChannelNumber, Msg, channel_data, decode, encode};

pub struct TurnClient {
    pub sock: UdpSocket,
    server: SocketAddr,
    user: String,
    password: String,
    realm: Option<String>,
    nonce: Option<String>,
}

impl TurnClient {
    pub fn new(
        bind: SocketAddr,
        server: SocketAddr,
        user: &str,
        password: &str,
    ) -> anyhow::Result<TurnClient> {
        let sock = UdpSocket::bind(bind).context("client socket")?;
        sock.set_read_timeout(Some(Duration::from_secs(2)))?;
        Ok(TurnClient {
            sock,
            server,
            user: user.into(),
            password: password.into(),
            realm: None,
            nonce: None,
        })
    }

    /// Sends one message and returns the answer.
    pub fn exchange(&self, m: Msg) -> anyhow::Result<Msg> {
        self.sock.send_to(&encode(m, None), self.server)?;
        let mut buf = vec![0u8; 2048];
        loop {
            let (n, _) = self
                .sock
                .recv_from(&mut buf)
                .context("no answer from the relay")?;
            // Data for this client may arrive in between; answers are STUN responses.
            if let Some(m) = decode(&buf[..n])
                && matches!(
                    m.class(),
                    MessageClass::SuccessResponse | MessageClass::ErrorResponse
                )
            {
                return Ok(m);
            }
        }
    }

    /// A request with long-term credentials; the realm and nonce come from the relay's first
    /// 401 (and a 438 renews the nonce).
    pub fn request(&mut self, method: Method, attrs: Vec<Attribute>) -> anyhow::Result<Msg> {
        for _ in 0..3 {
            let mut m = Message::new(
                MessageClass::Request,
                method,
                TransactionId::new(rand::random()),
            );
            for a in attrs.clone() {
                m.add_attribute(a);
            }
            if let (Some(realm), Some(nonce)) = (&self.realm, &self.nonce) {
                let user = Username::new(self.user.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
                let realm = Realm::new(realm.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
                m.add_attribute(user.clone());
                m.add_attribute(realm.clone());
                m.add_attribute(Nonce::new(nonce.clone()).map_err(|e| anyhow::anyhow!("{e}"))?);
                let mi =
                    MessageIntegrity::new_long_term_credential(&m, &user, &realm, &self.password)
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                m.add_attribute(mi);
            }
            let answer = self.exchange(m)?;
            let code = answer.get_attribute::<ErrorCode>().map(|e| e.code());
            let nonce = answer
                .get_attribute::<Nonce>()
                .map(|n| n.value().to_string());
            if matches!(code, Some(401) | Some(438)) && nonce.is_some() && nonce != self.nonce {
                self.nonce = nonce;
                self.realm = answer
                    .get_attribute::<Realm>()
                    .map(|r| r.text().to_string())
                    .or(self.realm.take());
                continue;
            }
            return Ok(answer);
        }
        bail!("the relay keeps refusing the credentials")
    }

    /// Allocates; returns the relayed address.
    pub fn allocate(&mut self) -> anyhow::Result<SocketAddr> {
        let a = self.request(ALLOCATE, vec![RequestedTransport::new(17).into()])?;
        if let Some(e) = a.get_attribute::<ErrorCode>() {
            bail!("Allocate refused: {} {}", e.code(), e.reason_phrase());
        }
        a.get_attribute::<XorRelayAddress>()
            .map(|r| r.address())
            .context("no relayed address")
    }

    pub fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> anyhow::Result<()> {
        let n = ChannelNumber::new(channel).context("channel number")?;
        let a = self.request(
            CHANNEL_BIND,
            vec![n.into(), XorPeerAddress::new(peer).into()],
        )?;
        if let Some(e) = a.get_attribute::<ErrorCode>() {
            bail!("ChannelBind refused: {} {}", e.code(), e.reason_phrase());
        }
        Ok(())
    }

    /// Refresh with lifetime 0: the allocation ends now, not when it times out.
    pub fn release(&mut self) -> anyhow::Result<()> {
        let zero = Lifetime::new(Duration::ZERO).map_err(|e| anyhow::anyhow!("{e}"))?;
        let a = self.request(REFRESH, vec![zero.into()])?;
        if let Some(e) = a.get_attribute::<ErrorCode>() {
            bail!("Refresh refused: {} {}", e.code(), e.reason_phrase());
        }
        Ok(())
    }

    pub fn send_channel(&self, channel: u16, data: &[u8]) -> std::io::Result<usize> {
        self.sock.send_to(&channel_data(channel, data), self.server)
    }
}
