//! Choosing a route by the ClientHello's server name (and optionally its ALPN offer).
//!
//! Names compare case-insensitively with a trailing dot ignored. `*.example.com` matches
//! exactly one more label, as a certificate wildcard does (`a.example.com`, not
//! `example.com` nor `a.b.example.com`). An exact name beats any wildcard, a longer
//! wildcard suffix beats a shorter one, and among equals the first route in the file wins.

/// One `sni` entry of a route, normalised (lower case, no trailing dot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SniPattern {
    Exact(String),
    /// `*.example.com`, kept as the suffix `.example.com`.
    Wildcard(String),
}

impl SniPattern {
    /// Parses a configured name; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<SniPattern, String> {
        let name = normalise(text);
        let (wild, rest) = match name.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, name.as_str()),
        };
        if rest.is_empty() || rest.len() > 253 {
            return Err(format!("{text:?} is not a host name"));
        }
        for label in rest.split('.') {
            let ok = !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(format!(
                    "{text:?} is not a host name (a wildcard must be the whole leftmost label, \
                     as in \"*.example.com\")"
                ));
            }
        }
        Ok(if wild {
            SniPattern::Wildcard(format!(".{rest}"))
        } else {
            SniPattern::Exact(name)
        })
    }

    /// How well this pattern matches `name` (already normalised): `None` when it does not;
    /// otherwise higher is more specific.
    fn score(&self, name: &str) -> Option<usize> {
        match self {
            SniPattern::Exact(exact) => (exact == name).then_some(usize::MAX),
            SniPattern::Wildcard(suffix) => {
                let head = name.strip_suffix(suffix.as_str())?;
                (!head.is_empty() && !head.contains('.')).then_some(suffix.len())
            }
        }
    }
}

impl std::fmt::Display for SniPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SniPattern::Exact(n) => f.write_str(n),
            SniPattern::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

fn normalise(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// What a route matches on.
#[derive(Debug, Clone, Copy)]
pub struct Matcher<'a> {
    pub sni: &'a [SniPattern],
    /// The route applies only when the client offers one of these (empty: any client).
    pub alpn: &'a [Vec<u8>],
}

/// The index of the route for a client, or `None` (no SNI, or no route matches).
pub fn choose<'a, 'b>(
    routes: impl IntoIterator<Item = Matcher<'a>>,
    sni: Option<&str>,
    offered_alpn: impl Iterator<Item = &'b [u8]> + Clone,
) -> Option<usize> {
    let name = normalise(sni?);
    let mut best: Option<(usize, usize)> = None;
    for (i, route) in routes.into_iter().enumerate() {
        if !route.alpn.is_empty()
            && !offered_alpn
                .clone()
                .any(|p| route.alpn.iter().any(|a| a.as_slice() == p))
        {
            continue;
        }
        let Some(score) = route.sni.iter().filter_map(|p| p.score(&name)).max() else {
            continue;
        };
        // Strictly better only: an equally good earlier route keeps its place.
        if best.map_or(true, |(s, _)| s < score) {
            best = Some((score, i));
        }
    }
    best.map(|(_, i)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pats(list: &[&str]) -> Vec<SniPattern> {
        list.iter().map(|p| SniPattern::parse(p).unwrap()).collect()
    }

    fn pick(
        routes: &[(Vec<SniPattern>, Vec<Vec<u8>>)],
        sni: &str,
        alpn: &[&[u8]],
    ) -> Option<usize> {
        choose(
            routes.iter().map(|(s, a)| Matcher { sni: s, alpn: a }),
            Some(sni),
            alpn.iter().copied(),
        )
    }

    #[test]
    fn wildcards_match_one_label_and_exact_names_win() {
        let routes = vec![
            (pats(&["*.example.com"]), vec![]),
            (pats(&["db.example.com"]), vec![]),
            (pats(&["*.eu.example.com"]), vec![]),
        ];
        assert_eq!(pick(&routes, "db.example.com", &[]), Some(1));
        assert_eq!(pick(&routes, "DB.Example.COM.", &[]), Some(1));
        assert_eq!(pick(&routes, "web.example.com", &[]), Some(0));
        assert_eq!(pick(&routes, "a.eu.example.com", &[]), Some(2));
        assert_eq!(pick(&routes, "example.com", &[]), None);
        assert_eq!(pick(&routes, "a.b.c.example.com", &[]), None);
        assert_eq!(pick(&routes, "evilexample.com", &[]), None);
        assert_eq!(
            choose(
                routes.iter().map(|(s, a)| Matcher { sni: s, alpn: a }),
                None,
                std::iter::empty()
            ),
            None
        );
    }

    #[test]
    fn alpn_narrows_and_the_first_equal_route_wins() {
        let routes = vec![
            (pats(&["api.test"]), vec![b"h2".to_vec()]),
            (pats(&["api.test"]), vec![]),
            (pats(&["api.test"]), vec![]),
        ];
        assert_eq!(pick(&routes, "api.test", &[b"http/1.1", b"h2"]), Some(0));
        assert_eq!(pick(&routes, "api.test", &[b"http/1.1"]), Some(1));
        assert_eq!(pick(&routes, "api.test", &[]), Some(1));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in [
            "",
            "*",
            "a.*.com",
            "*example.com",
            "a..b",
            "x y",
            "*.",
            "ex*.com",
        ] {
            assert!(SniPattern::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            SniPattern::parse("*.Example.com.").unwrap().to_string(),
            "*.example.com"
        );
    }
}
