//! A small RESP2 client: enough of the protocol for the commands 0-db and
//! redis share (PING, SET, GET, DEL, EXISTS) plus 0-db's `SELECT ns password`.
//! Replies from the server are parsed with hard bounds so a broken or hostile
//! backend cannot make us allocate without limit.

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest bulk reply accepted: 0-db caps values at 8 MiB, redis at 512 MiB;
/// our shards and metadata stay well below this.
pub const MAX_BULK: usize = 64 << 20;
/// Longest status/error/integer line accepted.
const MAX_LINE: usize = 64 << 10;
/// Deepest nesting of arrays accepted.
const MAX_DEPTH: usize = 4;
/// Most elements accepted in one array reply.
const MAX_ARRAY: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// Why a reply could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RespError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed reply: {0}")]
    Malformed(String),
}

/// Encodes one command as an array of bulk strings.
pub fn encode_command(args: &[&[u8]]) -> Vec<u8> {
    let payload: usize = args.iter().map(|a| a.len() + 16).sum();
    let mut out = Vec::with_capacity(payload + 16);
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

pub async fn write_command<W: AsyncWrite + Unpin>(
    writer: &mut W,
    args: &[&[u8]],
) -> Result<(), RespError> {
    // Large values are written in place rather than copied into one buffer.
    let mut head = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        head.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        if arg.len() > 4096 {
            writer.write_all(&head).await?;
            writer.write_all(arg).await?;
            head.clear();
        } else {
            head.extend_from_slice(arg);
        }
        head.extend_from_slice(b"\r\n");
    }
    writer.write_all(&head).await?;
    writer.flush().await?;
    Ok(())
}

async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> Result<String, RespError> {
    let mut line = Vec::new();
    let mut limited = (&mut *reader).take(MAX_LINE as u64 + 2);
    limited.read_until(b'\n', &mut line).await?;
    if line.is_empty() {
        return Err(RespError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "server closed the connection",
        )));
    }
    if !line.ends_with(b"\r\n") {
        return Err(RespError::Malformed(
            "line without CRLF or longer than 64 KiB".into(),
        ));
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|_| RespError::Malformed("line is not UTF-8".into()))
}

fn parse_len(text: &str, what: &str) -> Result<i64, RespError> {
    text.parse::<i64>()
        .map_err(|_| RespError::Malformed(format!("{what} length {text:?} is not a number")))
}

/// Reads one reply.
pub async fn read_reply<R: AsyncBufRead + Unpin + Send>(
    reader: &mut R,
) -> Result<Reply, RespError> {
    read_reply_at(reader, 0).await
}

type ReplyFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Reply, RespError>> + Send + 'a>>;

fn read_reply_at<R: AsyncBufRead + Unpin + Send>(reader: &mut R, depth: usize) -> ReplyFuture<'_> {
    Box::pin(async move {
        let line = read_line(reader).await?;
        let (kind, rest) = match line.char_indices().nth(1) {
            Some((at, _)) => line.split_at(at),
            None if line.len() == 1 => (line.as_str(), ""),
            None => return Err(RespError::Malformed("empty reply line".into())),
        };
        match kind {
            "+" => Ok(Reply::Status(rest.to_string())),
            "-" => Ok(Reply::Error(rest.to_string())),
            ":" => Ok(Reply::Integer(parse_len(rest, "integer")?)),
            "$" => {
                let len = parse_len(rest, "bulk")?;
                if len < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let len = usize::try_from(len)
                    .ok()
                    .filter(|l| *l <= MAX_BULK)
                    .ok_or_else(|| {
                        RespError::Malformed(format!("bulk of {len} bytes is too large"))
                    })?;
                let mut data = vec![0u8; len + 2];
                reader.read_exact(&mut data).await?;
                if &data[len..] != b"\r\n" {
                    return Err(RespError::Malformed("bulk not followed by CRLF".into()));
                }
                data.truncate(len);
                Ok(Reply::Bulk(Some(data)))
            }
            "*" => {
                let len = parse_len(rest, "array")?;
                if len < 0 {
                    return Ok(Reply::Array(None));
                }
                if depth >= MAX_DEPTH || len as usize > MAX_ARRAY {
                    return Err(RespError::Malformed("array too large or too deep".into()));
                }
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(read_reply_at(reader, depth + 1).await?);
                }
                Ok(Reply::Array(Some(items)))
            }
            other => Err(RespError::Malformed(format!(
                "unknown reply type {other:?}"
            ))),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> Result<Reply, RespError> {
        let mut reader = tokio::io::BufReader::new(bytes);
        read_reply(&mut reader).await
    }

    #[tokio::test]
    async fn replies_parse() {
        assert_eq!(parse(b"+OK\r\n").await.unwrap(), Reply::Status("OK".into()));
        assert_eq!(
            parse(b"-ERR no\r\n").await.unwrap(),
            Reply::Error("ERR no".into())
        );
        assert_eq!(parse(b":42\r\n").await.unwrap(), Reply::Integer(42));
        assert_eq!(parse(b"$-1\r\n").await.unwrap(), Reply::Bulk(None));
        assert_eq!(
            parse(b"$3\r\na\r\n\r\n").await.unwrap(),
            Reply::Bulk(Some(b"a\r\n".to_vec()))
        );
        assert_eq!(
            parse(b"*2\r\n:1\r\n$0\r\n\r\n").await.unwrap(),
            Reply::Array(Some(vec![Reply::Integer(1), Reply::Bulk(Some(vec![]))]))
        );
    }

    #[tokio::test]
    async fn malformed_replies_are_errors() {
        for bad in [
            &b""[..],
            b"\r\n",
            b"?x\r\n",
            b"$5\r\nab\r\n",
            b"$99999999999\r\n",
            b"$abc\r\n",
            b"+OK\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
        ] {
            assert!(parse(bad).await.is_err(), "{bad:?}");
        }
    }

    #[test]
    fn commands_encode_as_bulk_arrays() {
        assert_eq!(
            encode_command(&[b"SELECT", b"ns", b"pw"]),
            b"*3\r\n$6\r\nSELECT\r\n$2\r\nns\r\n$2\r\npw\r\n".to_vec()
        );
    }

    #[tokio::test]
    async fn write_command_matches_encode() {
        let big = vec![7u8; 10_000];
        let args: [&[u8]; 3] = [b"SET", b"k", &big];
        let mut out = Vec::new();
        write_command(&mut out, &args).await.unwrap();
        assert_eq!(out, encode_command(&args));
    }

    proptest::proptest! {
        #[test]
        fn no_panic_on_any_reply_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let _ = rt.block_on(parse(&bytes));
        }
    }
}
