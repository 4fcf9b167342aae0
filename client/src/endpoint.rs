//! Where a client connects: `host:port` or `tcp://host:port` for TCP, `tls://host:port` for TLS
//! over TCP, `quic://host:port` for QUIC, a socket path for the local path.

use std::fmt;

use crate::error::ClientError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    /// TCP with TLS (the server's `--tls-cert`), trusting `tls_ca`.
    Tls,
    Quic,
    /// A Unix socket of a co-located server: the shared-memory path.
    Local,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub transport: Transport,
    /// `host:port`.
    pub address: String,
}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Endpoint, ClientError> {
        let err = |reason: &str| ClientError::Endpoint {
            endpoint: s.to_string(),
            reason: reason.into(),
        };
        if let Some(path) = s
            .strip_prefix("unix://")
            .or_else(|| (s.starts_with('/') || s.starts_with("./")).then_some(s))
        {
            if path.is_empty() {
                return Err(err("empty socket path"));
            }
            return Ok(Endpoint {
                transport: Transport::Local,
                address: path.to_string(),
            });
        }
        let (transport, address) = if let Some(rest) = s.strip_prefix("quic://") {
            (Transport::Quic, rest)
        } else if let Some(rest) = s.strip_prefix("tcp://") {
            (Transport::Tcp, rest)
        } else if let Some(rest) = s.strip_prefix("tls://") {
            (Transport::Tls, rest)
        } else if s.contains("://") {
            return Err(err(
                "unknown scheme; use host:port, tcp://host:port, tls://host:port, quic://host:port or a socket path",
            ));
        } else {
            (Transport::Tcp, s)
        };
        let address = address.trim_end_matches('/');
        match address.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
            _ => return Err(err("expected host:port")),
        }
        Ok(Endpoint {
            transport,
            address: address.to_string(),
        })
    }

    /// The host part, without brackets, for TLS server names.
    pub fn host(&self) -> &str {
        let host = self
            .address
            .rsplit_once(':')
            .map_or(self.address.as_str(), |(h, _)| h);
        host.trim_start_matches('[').trim_end_matches(']')
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.transport {
            Transport::Tcp => write!(f, "tcp://{}", self.address),
            Transport::Tls => write!(f, "tls://{}", self.address),
            Transport::Quic => write!(f, "quic://{}", self.address),
            Transport::Local => write!(f, "unix://{}", self.address),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_transports() {
        let e = Endpoint::parse("127.0.0.1:7070").unwrap();
        assert_eq!(
            (e.transport, e.address.as_str()),
            (Transport::Tcp, "127.0.0.1:7070")
        );
        let e = Endpoint::parse("tls://cache-0.ml:7070").unwrap();
        assert_eq!((e.transport, e.host()), (Transport::Tls, "cache-0.ml"));
        assert_eq!(e.to_string(), "tls://cache-0.ml:7070");
        let e = Endpoint::parse("quic://[::1]:7071").unwrap();
        assert_eq!((e.transport, e.host()), (Transport::Quic, "::1"));
        assert_eq!(
            Endpoint::parse("tcp://localhost:1").unwrap().host(),
            "localhost"
        );
        for bad in ["", "host", "host:", ":80", "http://x:1", "x:notaport"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
