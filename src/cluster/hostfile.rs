//! The processes' addresses: the hostfile (one `host:port` per process, in
//! process order) or the default `127.0.0.1:2101+i`, checked before anything
//! listens or connects.

use std::io::Read;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;

use crate::error::{Error, Result};

/// The most bytes of a hostfile that are read; a larger file is refused.
pub const MAX_HOSTFILE_BYTES: u64 = 1 << 20;

/// The port of process 0 when there is no hostfile (process `i` gets
/// `DEFAULT_PORT + i`).
pub const DEFAULT_PORT: u16 = 2101;

/// One process's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// `host:port` as written.
    pub text: String,
    /// What it resolves to (never empty).
    pub resolved: Vec<SocketAddr>,
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// The default addresses `127.0.0.1:2101+i` of `processes` processes.
pub fn defaults(processes: usize) -> Result<Vec<Address>> {
    (0..processes)
        .map(|i| {
            let port = u16::try_from(usize::from(DEFAULT_PORT) + i).map_err(|_| Error::Usage {
                option: "--processes".into(),
                message: format!(
                    "{processes} processes do not fit the default ports from {DEFAULT_PORT}; give a --hostfile"
                ),
            })?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            Ok(Address {
                text: addr.to_string(),
                resolved: vec![addr],
            })
        })
        .collect()
}

/// Reads a hostfile and checks the addresses of the first `processes`
/// entries: every entry `host:port` with a port in 1..=65535, the used
/// ones resolving, none repeated. Blank lines and `#` comments are skipped.
pub fn read(path: &Path, processes: usize) -> Result<Vec<Address>> {
    let fail = |line: Option<usize>, message: String| Error::Hostfile {
        path: path.to_path_buf(),
        line,
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_HOSTFILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > MAX_HOSTFILE_BYTES {
        return Err(fail(
            None,
            format!("larger than {MAX_HOSTFILE_BYTES} bytes; is this a hostfile?"),
        ));
    }
    let text = String::from_utf8(bytes).map_err(|_| fail(None, "not UTF-8 text".into()))?;
    let entries: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(n, l)| (n + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for &(line, entry) in &entries {
        split(entry).map_err(|m| fail(Some(line), m))?;
    }
    if entries.len() < processes {
        return Err(fail(
            None,
            format!(
                "{} address(es) for {processes} processes: one host:port line per process",
                entries.len()
            ),
        ));
    }
    let mut addresses: Vec<Address> = Vec::with_capacity(processes);
    let mut lines = Vec::with_capacity(processes);
    for &(line, entry) in entries.iter().take(processes) {
        let address = resolve(entry).map_err(|m| fail(Some(line), m))?;
        let repeat = addresses.iter().zip(&lines).find(|(a, _)| {
            a.text == address.text || a.resolved.iter().any(|r| address.resolved.contains(r))
        });
        if let Some((earlier, earlier_line)) = repeat {
            return Err(fail(
                Some(line),
                format!(
                    "'{entry}' is the same address as '{earlier}' on line {earlier_line}: every process needs its own"
                ),
            ));
        }
        addresses.push(address);
        lines.push(line);
    }
    Ok(addresses)
}

/// Splits `host:port`, checking both parts.
fn split(entry: &str) -> std::result::Result<(&str, u16), String> {
    if entry.split_whitespace().nth(1).is_some() {
        return Err(format!("'{entry}': one host:port per line"));
    }
    let Some((host, port)) = entry.rsplit_once(':') else {
        return Err(format!("'{entry}' is not host:port (no port)"));
    };
    if host.is_empty() {
        return Err(format!("'{entry}' is not host:port (no host)"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!(
            "'{entry}': an IPv6 host is written in brackets, e.g. [::1]:2101"
        ));
    }
    let port: u64 = port
        .parse()
        .map_err(|_| format!("'{entry}': the port '{port}' is not a number"))?;
    match u16::try_from(port) {
        Ok(p) if p > 0 => Ok((host, p)),
        _ => Err(format!("'{entry}': the port {port} is not in 1..=65535")),
    }
}

/// Checks and resolves one entry.
fn resolve(entry: &str) -> std::result::Result<Address, String> {
    let (host, _) = split(entry)?;
    let resolved: Vec<SocketAddr> = entry
        .to_socket_addrs()
        .map_err(|e| format!("the host '{host}' does not resolve: {e}"))?
        .collect();
    if resolved.is_empty() {
        return Err(format!("the host '{host}' resolves to no address"));
    }
    Ok(Address {
        text: entry.to_string(),
        resolved,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_checked() {
        assert!(split("127.0.0.1:2101").is_ok());
        assert!(split("[::1]:2101").is_ok());
        assert!(split("localhost:1").is_ok());
        for (bad, why) in [
            ("127.0.0.1", "no port"),
            (":2101", "no host"),
            ("127.0.0.1:99999", "not in 1..=65535"),
            ("127.0.0.1:0", "not in 1..=65535"),
            ("127.0.0.1:http", "not a number"),
            ("::1:2101", "brackets"),
            ("a:1 b:2", "one host:port per line"),
        ] {
            let err = split(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn repeated_and_missing_addresses_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        std::fs::write(&path, "# cluster\n127.0.0.1:2101\n\n127.0.0.1:2101\n").unwrap();
        let err = read(&path, 2).unwrap_err().to_string();
        assert!(
            err.contains("line 4") && err.contains("same address"),
            "{err}"
        );
        let err = read(&path, 3).unwrap_err().to_string();
        assert!(err.contains("2 address(es) for 3 processes"), "{err}");
        std::fs::write(&path, "127.0.0.1:2101\n127.0.0.1:2102\nnot an entry\n").unwrap();
        let err = read(&path, 2).unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
        std::fs::write(&path, "127.0.0.1:2101\n127.0.0.1:2102\n").unwrap();
        let ok = read(&path, 2).unwrap();
        assert_eq!(ok[1].text, "127.0.0.1:2102");
        assert_eq!(defaults(2).unwrap()[1].text, "127.0.0.1:2102");
    }
}
