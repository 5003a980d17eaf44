//! The smux frame codec, alone so it can be tested and fuzzed without a [`Mux`](super::Mux).
//!
//! Header layout (8 bytes), as xtaci/smux writes it:
//!
//! | offset | len | field |
//! |---|---|---|
//! | 0 | 1 | version (1 here; 2 adds flow control) |
//! | 1 | 1 | command: SYN 0, FIN 1, PSH 2, NOP 3, UPD 4 |
//! | 2 | 2 | data length, u16 **little-endian** |
//! | 4 | 4 | stream id, u32 **little-endian** |
//!
//! How many data bytes follow depends on the command, exactly as xtaci's reader decides it: only
//! PSH carries `length` bytes; UPD carries a fixed 8 bytes whatever its length field says; SYN, FIN
//! and NOP carry none, and a non-zero length on them is ignored (the next header starts right
//! after). Matching this keeps our parser in step with the peer's on any input it accepts.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Size of every frame header.
pub const HEADER_LEN: usize = 8;
/// Data bytes that follow a UPD header (consumed count and window, both u32 LE).
pub const UPD_DATA_LEN: usize = 8;
/// The largest data a single frame can carry: the length field is a u16.
pub const MAX_DATA_LEN: usize = u16::MAX as usize;
/// The largest frame a peer can send (header plus `u16::MAX` data bytes).
pub const MAX_FRAME_LEN: usize = HEADER_LEN + MAX_DATA_LEN;

/// An smux command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cmd {
    /// Opens a stream.
    Syn,
    /// Half-closes a stream: the sender will send no more data on it.
    Fin,
    /// Carries stream data.
    Psh,
    /// Keep-alive; carries nothing and may use any stream id (xtaci sends 0).
    Nop,
    /// Window update; protocol version 2 only.
    Upd,
}

impl Cmd {
    /// The command byte on the wire.
    pub fn to_u8(self) -> u8 {
        match self {
            Cmd::Syn => 0,
            Cmd::Fin => 1,
            Cmd::Psh => 2,
            Cmd::Nop => 3,
            Cmd::Upd => 4,
        }
    }

    /// The command for a wire byte, `None` for bytes no smux version defines.
    pub fn from_u8(b: u8) -> Option<Cmd> {
        Some(match b {
            0 => Cmd::Syn,
            1 => Cmd::Fin,
            2 => Cmd::Psh,
            3 => Cmd::Nop,
            4 => Cmd::Upd,
            _ => return None,
        })
    }
}

/// One smux frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Protocol version byte; the Mux only accepts 1.
    pub version: u8,
    /// The command.
    pub cmd: Cmd,
    /// The stream the frame belongs to.
    pub stream_id: u32,
    /// PSH data, or the 8 UPD bytes; empty for the other commands.
    pub data: Bytes,
}

impl Frame {
    /// A frame without data (SYN, FIN, NOP).
    pub fn control(version: u8, cmd: Cmd, stream_id: u32) -> Self {
        Frame {
            version,
            cmd,
            stream_id,
            data: Bytes::new(),
        }
    }

    /// Bytes this frame occupies once encoded.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.data.len()
    }
}

/// Why bytes are not a valid smux frame, or a frame cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The command byte is not one smux defines; the byte stream cannot be followed any further.
    #[error("smux frame has unknown command byte {0}; the peer does not speak smux, or the byte stream is corrupted")]
    UnknownCommand(u8),
    /// A frame to encode carries more data than the u16 length field can express (caller bug).
    #[error("smux frame data of {0} bytes exceeds the 65535-byte limit; split the write into smaller frames")]
    DataTooLong(usize),
}

/// How many data bytes follow a header with this command and length field, the way xtaci reads.
fn data_len(cmd: Cmd, length_field: u16) -> usize {
    match cmd {
        Cmd::Psh => length_field as usize,
        Cmd::Upd => UPD_DATA_LEN,
        Cmd::Syn | Cmd::Fin | Cmd::Nop => 0,
    }
}

/// The total size of the frame starting at `buf[0]`, once its header is complete.
///
/// `Ok(None)` means fewer than [`HEADER_LEN`] bytes are available. Lets a caller buffer exactly
/// one frame at a time instead of everything it was handed.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let cmd = Cmd::from_u8(buf[1]).ok_or(FrameError::UnknownCommand(buf[1]))?;
    let length = u16::from_le_bytes([buf[2], buf[3]]);
    Ok(Some(HEADER_LEN + data_len(cmd, length)))
}

/// Decodes one frame from the front of `buf`.
///
/// Returns `Ok(None)` and consumes nothing while the frame is incomplete; on success consumes
/// exactly the frame. The version byte is not checked here (that is the session's business, as
/// in xtaci); an unknown command is an error and consumes nothing.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    let Some(total) = frame_len(buf)? else {
        return Ok(None);
    };
    if buf.len() < total {
        return Ok(None);
    }
    let version = buf[0];
    // frame_len succeeded, so the command byte is a known one.
    let cmd = Cmd::from_u8(buf[1]).ok_or(FrameError::UnknownCommand(buf[1]))?;
    let stream_id = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    buf.advance(HEADER_LEN);
    let data = buf.split_to(total - HEADER_LEN).freeze();
    Ok(Some(Frame {
        version,
        cmd,
        stream_id,
        data,
    }))
}

/// Appends the header for a frame with `data_len` data bytes.
pub fn encode_header(
    version: u8,
    cmd: Cmd,
    stream_id: u32,
    data_len: usize,
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
    let len = u16::try_from(data_len).map_err(|_| FrameError::DataTooLong(data_len))?;
    dst.reserve(HEADER_LEN);
    dst.put_u8(version);
    dst.put_u8(cmd.to_u8());
    dst.put_u16_le(len);
    dst.put_u32_le(stream_id);
    Ok(())
}

/// Appends `frame` to `dst`: header, then data. Writes nothing on error.
pub fn encode(frame: &Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
    encode_header(
        frame.version,
        frame.cmd,
        frame.stream_id,
        frame.data.len(),
        dst,
    )?;
    dst.extend_from_slice(&frame.data);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(f: &Frame) -> Vec<u8> {
        let mut b = BytesMut::new();
        encode(f, &mut b).unwrap();
        b.to_vec()
    }

    #[test]
    fn header_fields_are_little_endian() {
        let f = Frame {
            version: 1,
            cmd: Cmd::Psh,
            stream_id: 0x0403_0201,
            data: Bytes::from(vec![0xAA; 0x0201]),
        };
        let b = enc(&f);
        assert_eq!(&b[..8], &[1, 2, 0x01, 0x02, 0x01, 0x02, 0x03, 0x04]);
        assert_eq!(b.len(), 8 + 0x0201);
    }

    #[test]
    fn captured_headers() {
        // From tests/data/vectors/port_mux.jsonl.
        let syn = enc(&Frame::control(1, Cmd::Syn, 3));
        assert_eq!(hex::encode(syn), "0100000003000000");
        let fin = enc(&Frame::control(1, Cmd::Fin, 3));
        assert_eq!(hex::encode(fin), "0101000003000000");
        let psh = enc(&Frame {
            version: 1,
            cmd: Cmd::Psh,
            stream_id: 3,
            data: Bytes::from(vec![b'x'; 3000]),
        });
        assert_eq!(hex::encode(&psh[..8]), "0102b80b03000000");
    }

    #[test]
    fn round_trip_every_command() {
        for cmd in [Cmd::Syn, Cmd::Fin, Cmd::Psh, Cmd::Nop, Cmd::Upd] {
            let data = match cmd {
                Cmd::Psh => Bytes::from_static(b"hello"),
                Cmd::Upd => Bytes::from_static(&[1, 0, 0, 0, 0, 0, 1, 0]),
                _ => Bytes::new(),
            };
            let f = Frame {
                version: 1,
                cmd,
                stream_id: 7,
                data,
            };
            let mut buf = BytesMut::from(&enc(&f)[..]);
            assert_eq!(decode(&mut buf).unwrap(), Some(f));
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn incomplete_input_consumes_nothing() {
        let f = Frame {
            version: 1,
            cmd: Cmd::Psh,
            stream_id: 5,
            data: Bytes::from_static(b"abcdef"),
        };
        let bytes = enc(&f);
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(decode(&mut buf).unwrap(), None, "cut {cut}");
            assert_eq!(buf.len(), cut);
        }
        let mut buf = BytesMut::from(&bytes[..]);
        buf.extend_from_slice(&[1, 3]); // start of the next frame
        assert_eq!(decode(&mut buf).unwrap(), Some(f));
        assert_eq!(&buf[..], &[1, 3]);
    }

    #[test]
    fn length_ignored_on_control_frames_like_xtaci() {
        // A SYN claiming 5 data bytes is followed directly by the next header.
        let mut buf = BytesMut::from(&[1u8, 0, 5, 0, 3, 0, 0, 0, 1, 3, 0, 0, 0, 0, 0, 0][..]);
        let f = decode(&mut buf).unwrap().unwrap();
        assert_eq!((f.cmd, f.stream_id, f.data.len()), (Cmd::Syn, 3, 0));
        let f = decode(&mut buf).unwrap().unwrap();
        assert_eq!(f.cmd, Cmd::Nop);
        assert!(buf.is_empty());
        // UPD always carries 8 bytes.
        assert_eq!(frame_len(&[1, 4, 0, 0, 3, 0, 0, 0]).unwrap(), Some(16));
    }

    #[test]
    fn unknown_command_is_an_error() {
        let mut buf = BytesMut::from(&[1u8, 5, 0, 0, 3, 0, 0, 0][..]);
        assert_eq!(decode(&mut buf), Err(FrameError::UnknownCommand(5)));
        assert_eq!(buf.len(), 8);
    }

    #[test]
    fn oversized_data_is_refused() {
        let f = Frame {
            version: 1,
            cmd: Cmd::Psh,
            stream_id: 3,
            data: Bytes::from(vec![0; MAX_DATA_LEN + 1]),
        };
        let mut b = BytesMut::new();
        assert_eq!(
            encode(&f, &mut b),
            Err(FrameError::DataTooLong(MAX_DATA_LEN + 1))
        );
        assert!(b.is_empty());
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = decode(&mut buf) {}
        }

        #[test]
        fn psh_round_trips(sid: u32, data in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let f = Frame { version: 1, cmd: Cmd::Psh, stream_id: sid, data: Bytes::from(data) };
            let mut buf = BytesMut::from(&enc(&f)[..]);
            proptest::prop_assert_eq!(decode(&mut buf).unwrap(), Some(f));
        }
    }
}
