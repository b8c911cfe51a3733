//! `resolvConf`: nameserver, domain, search and options lines into a result's dns.

use cni_types::Dns;

pub fn parse(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(key), rest) = (fields.next(), fields.collect::<Vec<_>>()) else {
            continue;
        };
        if rest.is_empty() {
            continue;
        }
        match key {
            "nameserver" => dns.nameservers.push(rest[0].to_owned()),
            "domain" => dns.domain = Some(rest[0].to_owned()),
            "search" => dns.search.extend(rest.iter().map(|s| s.to_string())),
            "options" => dns.options.extend(rest.iter().map(|s| s.to_string())),
            _ => {}
        }
    }
    dns
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_resolv_conf() {
        let d = super::parse(
            "# comment\n; also\nnameserver 10.0.0.1\nnameserver fd00::1\ndomain example.com\n\
             search a.example b.example\noptions ndots:5 edns0\nsortlist x\nnameserver\n",
        );
        assert_eq!(d.nameservers, ["10.0.0.1", "fd00::1"]);
        assert_eq!(d.domain.as_deref(), Some("example.com"));
        assert_eq!(d.search, ["a.example", "b.example"]);
        assert_eq!(d.options, ["ndots:5", "edns0"]);
    }
}
