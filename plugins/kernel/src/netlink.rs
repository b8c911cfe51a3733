//! A blocking rtnetlink socket: one request, then its acknowledgement or its
//! dump. A plugin makes a handful of requests per run, so a synchronous
//! exchange is all it needs, and it keeps plugin code top to bottom.

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::error::{KernelError, Result};

pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    /// Open a socket in the calling thread's network namespace.
    pub fn open() -> Result<Netlink> {
        let io = |source| KernelError::Netlink { op: "open", source };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(io)?;
        socket.bind_auto().map_err(io)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(io)?;
        // Extended acks make the kernel say what it disliked; best effort.
        let _ = socket.set_ext_ack(true);
        Ok(Netlink { socket, seq: 0 })
    }

    /// Send a request that changes state and wait for its acknowledgement.
    pub fn execute(
        &mut self,
        op: &'static str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<()> {
        self.exchange(op, msg, NLM_F_REQUEST | NLM_F_ACK | flags)
            .map(|_| ())
    }

    /// Send a dump request and collect every reply.
    pub fn dump(
        &mut self,
        op: &'static str,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.exchange(op, msg, NLM_F_REQUEST | NLM_F_DUMP)
    }

    /// Send a request that answers with one object (a GET by name or index).
    pub fn get(
        &mut self,
        op: &'static str,
        msg: RouteNetlinkMessage,
    ) -> Result<Option<RouteNetlinkMessage>> {
        Ok(self.exchange(op, msg, NLM_F_REQUEST)?.into_iter().next())
    }

    fn exchange(
        &mut self,
        op: &'static str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        let io = |source| KernelError::Netlink { op, source };
        self.socket.send(&buf, 0).map_err(io)?;

        let is_dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full().map_err(io)?;
            let mut offset = 0;
            while offset < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| KernelError::Decode {
                        op,
                        detail: e.to_string(),
                    })?;
                let len = reply.header.length as usize;
                if len == 0 {
                    break;
                }
                offset += (len + 3) & !3;
                if reply.header.sequence_number != self.seq {
                    continue; // a late reply to an earlier request
                }
                match reply.payload {
                    NetlinkPayload::Error(e) if e.code.is_some() => {
                        return Err(KernelError::Netlink {
                            op,
                            source: e.to_io(),
                        });
                    }
                    // An ack (error code 0) or the end of a dump.
                    NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(m) => {
                        replies.push(m);
                        if !is_dump && flags & NLM_F_ACK == 0 {
                            return Ok(replies);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}
