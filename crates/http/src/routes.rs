//! Go's `/debug/pprof` routes and their parameters, read from a path and a query string into a
//! [`Route`] (pure), and what each route answers when a parameter is wrong.

/// The CPU profile's default length, as Go's.
pub const DEFAULT_SECONDS: u64 = 30;
/// The longest CPU profile served.
pub const MAX_SECONDS: u64 = 60;
/// The prefix Go serves the routes under. Requests may carry it or not (a framework that nests
/// a service under a prefix usually strips it).
pub const PREFIX: &str = "/debug/pprof";

/// A route, with its parameters checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/debug/pprof/`: the HTML index.
    Index,
    /// `heap`: the live heap.
    Heap,
    /// `allocs`: the heap profile with `alloc_space` shown by default, as Go's.
    Allocs,
    /// `profile?seconds=N`: a CPU profile of the next N seconds.
    Cpu {
        /// How long to sample.
        seconds: u64,
    },
    /// `goroutine?debug=N&runtime=M` (alias `tasks`): tokio tasks as Go's goroutine profile.
    Tasks {
        /// 0: pprof protobuf; 1: Go's legacy text, counts per stack; 2: Go's goroutine dump,
        /// one entry per task.
        debug: u8,
        /// `runtime=1`: the text forms show the runtime's frames too (tokio's, the standard
        /// library's, the tracer's), which they hide by default as Go hides its runtime's.
        runtime: bool,
    },
    /// `cmdline`: the process's arguments, NUL-separated.
    Cmdline,
    /// `symbol`: `num_symbols: 1`, or the names of the addresses in the query (`0x1a2b+0x3c4d`).
    Symbol {
        /// The addresses asked for, in order.
        addresses: Vec<u64>,
    },
}

/// A request that names no route or a bad parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRoute {
    /// 404 or 400.
    pub status: u16,
    /// What was wrong.
    pub error: String,
    /// What would have been valid.
    pub valid: &'static str,
}

/// The routes, for `Allow`-style listings and 404 bodies.
pub const ROUTES: &str = "/debug/pprof/: heap, profile, goroutine, tasks, allocs, cmdline, symbol";

impl Route {
    /// The route `path` (with or without the `/debug/pprof` prefix) and `query` name.
    pub fn parse(path: &str, query: Option<&str>) -> Result<Self, BadRoute> {
        let name = path.strip_prefix(PREFIX).unwrap_or(path);
        let name = name.trim_start_matches('/');
        let query = query.unwrap_or_default();
        match name {
            "" => Ok(Self::Index),
            "heap" => Ok(Self::Heap),
            "allocs" => Ok(Self::Allocs),
            "profile" => {
                let seconds = param(query, "seconds");
                bounded(seconds.as_deref(), DEFAULT_SECONDS, 1, MAX_SECONDS)
                    .map(|seconds| Self::Cpu { seconds })
                    .ok_or_else(|| {
                        bad_request(
                            format!("invalid seconds: {:?}", seconds.unwrap_or_default()),
                            "seconds is a whole number from 1 to 60 (default 30)",
                        )
                    })
            }
            "goroutine" | "tasks" => {
                let debug = param(query, "debug");
                let debug = bounded(debug.as_deref(), 0, 0, 2).ok_or_else(|| {
                    bad_request(
                        format!("invalid debug: {:?}", debug.unwrap_or_default()),
                        "debug is 0 (pprof protobuf, default), 1 (Go's text, counts per stack) \
                         or 2 (Go's goroutine dump, every task)",
                    )
                })?;
                let runtime = param(query, "runtime");
                let runtime = bounded(runtime.as_deref(), 0, 0, 1).ok_or_else(|| {
                    bad_request(
                        format!("invalid runtime: {:?}", runtime.unwrap_or_default()),
                        "runtime is 0 (hide tokio's and std's frames, as Go hides its runtime's; \
                         default) or 1 (show them)",
                    )
                })?;
                Ok(Self::Tasks {
                    debug: debug as u8,
                    runtime: runtime == 1,
                })
            }
            "cmdline" => Ok(Self::Cmdline),
            "symbol" => symbol_addresses(query).map(|addresses| Self::Symbol { addresses }),
            _ => Err(BadRoute {
                status: 404,
                error: format!("no profile named {name:?}"),
                valid: ROUTES,
            }),
        }
    }
}

fn bad_request(error: String, valid: &'static str) -> BadRoute {
    BadRoute {
        status: 400,
        error,
        valid,
    }
}

/// The most addresses one `symbol` request may ask for.
const MAX_SYMBOLS: usize = 4096;

/// The addresses of a `symbol` query: hexadecimal (`0x` optional), separated by `+`, as Go's
/// handler reads them. An empty query asks for none (Go then answers `num_symbols: 1`).
fn symbol_addresses(query: &str) -> Result<Vec<u64>, BadRoute> {
    const VALID: &str = "symbol?0x1a2b+0x3c4d: up to 4096 hexadecimal addresses joined by +";
    let addresses: Vec<&str> = query.split('+').filter(|word| !word.is_empty()).collect();
    if addresses.len() > MAX_SYMBOLS {
        return Err(bad_request(
            format!("{} addresses asked for", addresses.len()),
            VALID,
        ));
    }
    addresses
        .into_iter()
        .map(|word| {
            let digits = word
                .strip_prefix("0x")
                .or_else(|| word.strip_prefix("0X"))
                .unwrap_or(word);
            u64::from_str_radix(digits, 16)
                .map_err(|_| bad_request(format!("invalid address: {word:?}"), VALID))
        })
        .collect()
}

/// The first value of `name` in a query string, percent-decoded.
fn param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| percent_decode(value))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = |at: usize| {
            bytes
                .get(at)
                .and_then(|&byte| (byte as char).to_digit(16))
                .map(|digit| digit as u8)
        };
        match bytes[index] {
            b'%' => match (hex(index + 1), hex(index + 2)) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    index += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            byte => out.push(byte),
        }
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A whole number from `min` to `max`, or the default when absent.
fn bounded(value: Option<&str>, default: u64, min: u64, max: u64) -> Option<u64> {
    match value {
        None => Some(default),
        Some(text) => text.trim().parse().ok().filter(|n| (min..=max).contains(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_read_with_or_without_the_prefix() {
        for (path, route) in [
            ("/debug/pprof/", Route::Index),
            ("/debug/pprof", Route::Index),
            ("/", Route::Index),
            ("", Route::Index),
            ("/heap", Route::Heap),
            ("/debug/pprof/heap", Route::Heap),
            ("/allocs", Route::Allocs),
            ("/cmdline", Route::Cmdline),
            ("/profile", Route::Cpu { seconds: 30 }),
            (
                "/goroutine",
                Route::Tasks {
                    debug: 0,
                    runtime: false,
                },
            ),
            (
                "/tasks",
                Route::Tasks {
                    debug: 0,
                    runtime: false,
                },
            ),
            ("/symbol", Route::Symbol { addresses: vec![] }),
        ] {
            assert_eq!(Route::parse(path, None), Ok(route), "{path}");
        }
        let missing = Route::parse("/debug/pprof/threadcreate", None).unwrap_err();
        assert_eq!(missing.status, 404);
        assert_eq!(missing.error, "no profile named \"threadcreate\"");
    }

    #[test]
    fn seconds_are_bounded_whole_numbers_with_a_default() {
        let seconds = |query: &str| match Route::parse("/profile", Some(query)) {
            Ok(Route::Cpu { seconds }) => Ok(seconds),
            Ok(other) => panic!("{other:?}"),
            Err(error) => Err(error.status),
        };
        assert_eq!(seconds(""), Ok(30));
        assert_eq!(seconds("seconds=1"), Ok(1));
        assert_eq!(seconds("x=2&seconds=60"), Ok(60));
        assert_eq!(seconds("seconds=%35"), Ok(5));
        for bad in ["0", "61", "-1", "1.5", "abc", "", "99999999999999999999999"] {
            assert_eq!(seconds(&format!("seconds={bad}")), Err(400), "{bad}");
        }
        assert_eq!(
            Route::parse("/profile", Some("seconds=abc"))
                .unwrap_err()
                .error,
            "invalid seconds: \"abc\""
        );
    }

    #[test]
    fn debug_is_0_1_or_2_and_runtime_0_or_1() {
        for (query, debug, runtime) in [
            ("debug=0", 0, false),
            ("debug=1", 1, false),
            ("debug=2", 2, false),
            ("", 0, false),
            ("debug=2&runtime=1", 2, true),
            ("runtime=0&debug=1", 1, false),
        ] {
            assert_eq!(
                Route::parse("/goroutine", Some(query)),
                Ok(Route::Tasks { debug, runtime }),
                "{query}"
            );
        }
        for bad in [
            "debug=3",
            "debug=",
            "debug=one",
            "debug=2&runtime=2",
            "runtime=yes",
        ] {
            assert_eq!(
                Route::parse("/goroutine", Some(bad)).unwrap_err().status,
                400,
                "{bad}"
            );
        }
        assert!(
            Route::parse("/goroutine", Some("runtime=2"))
                .unwrap_err()
                .valid
                .contains("runtime is 0")
        );
    }

    #[test]
    fn symbol_queries_are_hex_addresses_joined_by_plus() {
        assert_eq!(
            Route::parse("/symbol", Some("0x1a2b+3c4d+0X10")),
            Ok(Route::Symbol {
                addresses: vec![0x1a2b, 0x3c4d, 0x10]
            })
        );
        assert_eq!(
            Route::parse("/symbol", Some("0x1a2b+zz"))
                .unwrap_err()
                .error,
            "invalid address: \"zz\""
        );
        let many = vec!["0x1"; MAX_SYMBOLS + 1].join("+");
        assert_eq!(
            Route::parse("/symbol", Some(&many)).unwrap_err().status,
            400
        );
    }
}
