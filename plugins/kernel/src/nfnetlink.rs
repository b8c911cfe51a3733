//! The nfnetlink socket (NETLINK_NETFILTER): nf_tables batches, GETs and
//! dumps, and conntrack (ctnetlink) dumps and deletions, all as
//! `netlink-packet-netfilter` messages over the generic socket of
//! [`crate::netlink`].

use std::io;

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_netfilter::conntrack::{ConntrackAttribute, ConntrackMessage};
use netlink_packet_netfilter::nftables::NfTablesMessage;
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::protocols::NETLINK_NETFILTER;

use crate::error::{KernelError, Result};
use crate::netlink::{Failure, Socket};
use crate::nftables::{Batch, Family};

/// NFNL_SUBSYS_NFTABLES: a batch names the subsystem it is for in the
/// `res_id` of its begin and end messages.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// A dump interrupted by concurrent changes is retried this many times.
const DUMP_ATTEMPTS: usize = 5;

/// A NETLINK_NETFILTER socket in the calling thread's network namespace.
pub struct NfSocket {
    socket: Socket<NetfilterMessage>,
    op: &'static str,
}

/// How the kernel answered an nf_tables request: its errno when it
/// refused, else the transport's error is a [`KernelError`].
pub type Answer<T> = std::result::Result<T, io::Error>;

impl NfSocket {
    pub fn open(op: &'static str) -> Result<NfSocket> {
        let socket = Socket::open(NETLINK_NETFILTER)
            .map_err(|source| KernelError::Netlink { op, source })?;
        Ok(NfSocket { socket, op })
    }

    fn fail(&self, f: Failure) -> KernelError {
        f.into_kernel(self.op)
    }

    /// Commit `batch` as one transaction: Ok, or the kernel's refusal
    /// naming the message it refused (the whole batch was then aborted:
    /// nothing of it is installed).
    pub fn commit(&mut self, batch: &Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let n = batch.len() as u32;
        let begin = self.socket.reserve_seq(n + 2);
        let control = |m| {
            NetfilterMessage::new(
                NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES),
                m,
            )
        };
        let mut buf = Vec::new();
        Socket::encode(
            &mut buf,
            control(ControlMessage::BatchBegin),
            NLM_F_REQUEST,
            begin,
        );
        for (i, m) in batch.messages().iter().enumerate() {
            // Only the last message asks for an ack: the kernel answers
            // every refused message anyway, and thousands of acks would
            // not fit the receive buffer.
            let ack = if i + 1 == batch.len() { NLM_F_ACK } else { 0 };
            let seq = begin + 1 + i as u32;
            Socket::encode(
                &mut buf,
                m.message.clone(),
                NLM_F_REQUEST | ack | m.flags,
                seq,
            );
        }
        Socket::encode(
            &mut buf,
            control(ControlMessage::BatchEnd),
            NLM_F_REQUEST,
            begin + n + 1,
        );
        self.socket.size_for(buf.len(), batch.len() + 2);
        match self.socket.send_batch(&buf, begin, begin + n) {
            Ok(()) => Ok(()),
            Err(Failure::Refused { errno, seq }) => {
                let object = seq
                    .checked_sub(begin + 1)
                    .and_then(|i| batch.messages().get(i as usize))
                    .map_or_else(|| "batch".to_owned(), |m| m.what.clone());
                Err(KernelError::Nftables {
                    op: self.op,
                    object,
                    source: errno,
                })
            }
            Err(f) => Err(self.fail(f)),
        }
    }

    /// A GET for one object (REQUEST|ACK): its reply, or the kernel's errno
    /// (ENOENT when the object does not exist).
    pub fn get(
        &mut self,
        family: Family,
        msg: NfTablesMessage,
    ) -> Result<Answer<Option<NfTablesMessage>>> {
        let msg = NetfilterMessage::new(family.header(), msg);
        match self.socket.request(msg, NLM_F_REQUEST | NLM_F_ACK) {
            Ok(r) => Ok(Ok(r.messages.into_iter().find_map(nftables))),
            Err(Failure::Refused { errno, .. }) => Ok(Err(errno)),
            Err(f) => Err(self.fail(f)),
        }
    }

    /// A dump of the objects `msg` asks for: every reply, or the kernel's
    /// errno. A dump the kernel marks as interrupted by a concurrent change
    /// is done again.
    pub fn dump(
        &mut self,
        family: Family,
        msg: NfTablesMessage,
    ) -> Result<Answer<Vec<NfTablesMessage>>> {
        let msg = NetfilterMessage::new(family.header(), msg);
        for _ in 0..DUMP_ATTEMPTS {
            match self.socket.request(msg.clone(), NLM_F_REQUEST | NLM_F_DUMP) {
                Ok(r) if r.interrupted => continue,
                Ok(r) => return Ok(Ok(r.messages.into_iter().filter_map(nftables).collect())),
                Err(Failure::Refused { errno, .. }) => return Ok(Err(errno)),
                Err(f) => return Err(self.fail(f)),
            }
        }
        Ok(Err(io::Error::from_raw_os_error(nix::libc::EINTR)))
    }

    /// A dump of the conntrack entries of address family `af`: each
    /// entry's attributes, and whether the kernel marked the dump as
    /// interrupted by a concurrent change; or the kernel's errno.
    pub fn conntrack_dump(
        &mut self,
        af: u8,
    ) -> Result<Answer<(Vec<Vec<ConntrackAttribute>>, bool)>> {
        let header = NetfilterHeader::new(NetfilterProtoFamily::from(af), 0, 0);
        let msg = NetfilterMessage::new(header, ConntrackMessage::Get(Vec::new()));
        match self.socket.request(msg, NLM_F_REQUEST | NLM_F_DUMP) {
            Ok(r) => {
                let entries = r
                    .messages
                    .into_iter()
                    .filter(|m| u8::from(m.header.family) == af)
                    .filter_map(|m| match m.inner {
                        NetfilterMessageInner::Conntrack(ConntrackMessage::New(a)) => Some(a),
                        _ => None,
                    })
                    .collect();
                Ok(Ok((entries, r.interrupted)))
            }
            Err(Failure::Refused { errno, .. }) => Ok(Err(errno)),
            Err(f) => Err(self.fail(f)),
        }
    }

    /// Delete the conntrack entry of address family `af` that `attrs`
    /// names (its original tuple, and its zone): Ok once acknowledged, or
    /// the kernel's errno.
    pub fn conntrack_delete(
        &mut self,
        af: u8,
        attrs: Vec<ConntrackAttribute>,
    ) -> Result<Answer<()>> {
        let header = NetfilterHeader::new(NetfilterProtoFamily::from(af), 0, 0);
        let msg = NetfilterMessage::new(header, ConntrackMessage::Delete(attrs));
        match self.socket.request(msg, NLM_F_REQUEST | NLM_F_ACK) {
            Ok(_) => Ok(Ok(())),
            Err(Failure::Refused { errno, .. }) => Ok(Err(errno)),
            Err(f) => Err(self.fail(f)),
        }
    }
}

/// The nf_tables message a netfilter message carries, if it is one.
pub fn nftables(m: NetfilterMessage) -> Option<NfTablesMessage> {
    match m.inner {
        NetfilterMessageInner::NfTables(m) => Some(m),
        _ => None,
    }
}
