// A mesh agent in Rust driving `natrelay serve`: std only (no serde), JSON parsed by hand.
//
// The same mesh as client.mjs, in simulated time: four peers, one relay;
// handshakes answer on some endpoints, others time out; a peer's candidates
// change (it upgrades from the relay to direct); a peer is removed. Ticks are
// driven by the next deadline the service returns.
//
//   rustc -O -o client client.rs && ./client SOCKET NODE RELAY
//
// Prints one JSON line: the node's peers as its decisions left them.
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;

// ---- a minimal JSON value and parser: enough for the service's answers
#[derive(Debug, Clone)]
#[allow(dead_code)]
enum J { Null, Bool(bool), Num(f64), Str(String), Arr(Vec<J>), Obj(Vec<(String, J)>) }

impl J {
    fn get(&self, k: &str) -> &J {
        if let J::Obj(m) = self { for (key, v) in m { if key == k { return v; } } }
        &J::Null
    }
    fn s(&self) -> &str { if let J::Str(s) = self { s } else { "" } }
    fn i(&self) -> Option<i64> { if let J::Num(n) = self { Some(*n as i64) } else { None } }
    fn arr(&self) -> &[J] { if let J::Arr(a) = self { a } else { &[] } }
}

struct P<'a> { b: &'a [u8], i: usize }

impl<'a> P<'a> {
    fn ws(&mut self) { while self.i < self.b.len() && (self.b[self.i] as char).is_ascii_whitespace() { self.i += 1; } }
    fn value(&mut self) -> J {
        self.ws();
        match self.b[self.i] {
            b'{' => {
                self.i += 1; let mut m = Vec::new();
                loop {
                    self.ws();
                    if self.b[self.i] == b'}' { self.i += 1; return J::Obj(m); }
                    let k = self.string(); self.ws(); self.i += 1; // ':'
                    m.push((k, self.value())); self.ws();
                    if self.b[self.i] == b',' { self.i += 1; }
                }
            }
            b'[' => {
                self.i += 1; let mut a = Vec::new();
                loop {
                    self.ws();
                    if self.b[self.i] == b']' { self.i += 1; return J::Arr(a); }
                    a.push(self.value()); self.ws();
                    if self.b[self.i] == b',' { self.i += 1; }
                }
            }
            b'"' => J::Str(self.string()),
            b't' => { self.i += 4; J::Bool(true) }
            b'f' => { self.i += 5; J::Bool(false) }
            b'n' => { self.i += 4; J::Null }
            _ => {
                let start = self.i;
                while self.i < self.b.len() && b"+-0123456789.eE".contains(&self.b[self.i]) { self.i += 1; }
                J::Num(std::str::from_utf8(&self.b[start..self.i]).unwrap().parse().unwrap())
            }
        }
    }
    fn string(&mut self) -> String {
        self.i += 1; let mut out = String::new();
        loop {
            let c = self.b[self.i]; self.i += 1;
            match c {
                b'"' => return out,
                b'\\' => {
                    let e = self.b[self.i]; self.i += 1;
                    match e {
                        b'n' => out.push('\n'), b't' => out.push('\t'), b'r' => out.push('\r'),
                        b'b' => out.push('\u{8}'), b'f' => out.push('\u{c}'),
                        b'u' => {
                            let hex = std::str::from_utf8(&self.b[self.i..self.i + 4]).unwrap();
                            out.push(char::from_u32(u32::from_str_radix(hex, 16).unwrap()).unwrap_or('\u{fffd}'));
                            self.i += 4;
                        }
                        other => out.push(other as char),
                    }
                }
                _ => {
                    let start = self.i - 1; // copy a UTF-8 run as is
                    while self.i < self.b.len() && self.b[self.i] != b'"' && self.b[self.i] != b'\\' { self.i += 1; }
                    out.push_str(std::str::from_utf8(&self.b[start..self.i]).unwrap());
                }
            }
        }
    }
}

fn parse(line: &str) -> J { P { b: line.as_bytes(), i: 0 }.value() }
fn q(s: &str) -> String { format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")) }

// ---- the agent
fn key(b: u8) -> String {
    // base64 of 32 bytes all equal to b
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = [b; 33];
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16 | (c[1] as u32) << 8 | c[2] as u32;
        for s in [18, 12, 6, 0] { out.push(A[(n >> s & 63) as usize] as char); }
    }
    out.truncate(43);
    out.push('=');
    out
}

struct Agent {
    out: UnixStream, input: BufReader<UnixStream>, now: i64, next_deadline: Option<i64>,
    queue: Vec<(i64, String)>, paths: BTreeMap<String, Option<String>>, removed: HashSet<String>,
    sessions: u32, sent: u32, decided: u32, id: u32,
}

impl Agent {
    fn later(&mut self, at: i64, fields: String) { self.queue.push((at, fields)); }

    fn execute(&mut self, c: &J) {
        let peer = c.get("peer").s().to_string();
        match c.get("type").s() {
            "try_direct_endpoint" => {
                let ep = c.get("endpoint").s();
                let latency = match ep { "198.51.100.7:51820" => Some(15), "10.0.0.4:51820" => Some(5), "203.0.113.10:40001" => Some(20), _ => None };
                match latency {
                    Some(ms) => self.later(self.now + ms, format!("\"type\":\"handshake_observed\",\"peer\":{},\"endpoint\":{}", q(&peer), q(ep))),
                    None => self.later(c.get("deadline").i().unwrap(), format!(
                        "\"type\":\"direct_attempt_timed_out\",\"peer\":{},\"endpoint\":{},\"attempt\":{}",
                        q(&peer), q(ep), c.get("attempt").i().unwrap())),
                }
            }
            "connect_via_relay" => {
                self.sessions += 1;
                let fields = format!("\"type\":\"relay_session_established\",\"peer\":{},\"relay\":{},\"session\":\"s{}\"",
                    q(&peer), q(c.get("relay").s()), self.sessions);
                self.later(self.now + 40, fields);
            }
            "forget_peer" => { self.removed.insert(peer); }
            _ => {} // switch_path, close_relay_session: nothing to report back here
        }
    }

    fn react(&mut self, a: &J) {
        self.next_deadline = a.get("next_deadline").i();
        for d in a.get("decisions").arr() {
            self.decided += 1;
            let peer = d.get("peer").s().to_string();
            match d.get("type").s() {
                "direct_path_selected" | "path_upgraded" => { self.paths.insert(peer, Some(format!("direct:{}", d.get("endpoint").s()))); }
                "relay_path_selected" => { self.paths.insert(peer, Some(format!("relay:{}", d.get("relay").s()))); }
                "path_lost" => { self.paths.insert(peer, None); }
                _ => {}
            }
        }
        for c in a.get("commands").arr() { self.execute(c); }
    }

    fn request(&mut self, line: String) -> J {
        self.out.write_all(line.as_bytes()).unwrap();
        self.out.write_all(b"\n").unwrap();
        loop {
            let mut buf = String::new();
            if self.input.read_line(&mut buf).unwrap() == 0 { panic!("the service closed the connection"); }
            let a = parse(&buf);
            match a.get("type").s() {
                "push" => self.react(&a),
                "error" => panic!("{} {}: {}", a.get("code").s(), a.get("field").s(), a.get("message").s()),
                _ => return a,
            }
        }
    }

    fn observe(&mut self, at: i64, fields: &str) {
        self.sent += 1; self.id += 1;
        let a = self.request(format!("{{\"type\":\"observe\",\"id\":{},\"event\":{{\"at\":{},{}}}}}", self.id, at, fields));
        self.react(&a);
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let (socket, node, relay) = (&argv[1], &argv[2], &argv[3]);
    let stream = UnixStream::connect(socket).expect("connect to natrelay serve");
    let mut a = Agent {
        out: stream.try_clone().unwrap(), input: BufReader::new(stream), now: 0, next_deadline: None,
        queue: Vec::new(), paths: BTreeMap::new(), removed: HashSet::new(), sessions: 0, sent: 0, decided: 0, id: 0,
    };
    let welcome = a.request(format!(
        "{{\"type\":\"hello\",\"id\":0,\"protocol\":1,\"node\":{},\"client\":\"client.rs\",\"policy\":{{\"name\":\"rust\",\"mode\":\"direct_first\",\"min_direct_attempts\":2}}}}",
        q(node)));
    a.next_deadline = welcome.get("next_deadline").i();
    a.observe(0, &format!("\"type\":\"relay_announced\",\"relay\":{},\"region\":\"eu\",\"capacity\":50", q(relay)));
    let peers = [(1u8, "server", "\"198.51.100.7:51820\",\"10.0.0.7:51820\""), (2, "phone", "\"203.0.113.9:40000\""),
                 (3, "nas", "\"192.0.2.4:51820\",\"10.0.0.4:51820\""), (4, "tv", "\"203.0.113.77:40000\"")];
    for (b, name, candidates) in peers {
        a.observe(0, &format!("\"type\":\"peer_added\",\"peer\":{},\"name\":{},\"candidates\":[{}]", q(&key(b)), q(name), candidates));
    }
    a.later(20_000, format!("\"type\":\"candidates_updated\",\"peer\":{},\"candidates\":[\"203.0.113.10:40001\"]", q(&key(2))));
    a.later(25_000, format!("\"type\":\"peer_removed\",\"peer\":{}", q(&key(3))));
    loop {
        let queued = a.queue.iter().map(|e| e.0).min();
        let due = match (queued, a.next_deadline) { (Some(x), Some(y)) => x.min(y), (x, y) => match x.or(y) { Some(t) => t, None => break } };
        if due > 60_000 { break; }
        a.now = a.now.max(due);
        a.queue.sort_by_key(|e| e.0);
        while !a.queue.is_empty() && a.queue[0].0 <= a.now {
            let (_, fields) = a.queue.remove(0);
            let now = a.now;
            a.observe(now, &fields);
        }
        if matches!(a.next_deadline, Some(d) if d <= a.now) { let now = a.now; a.observe(now, "\"type\":\"tick\""); }
    }
    let mut out = Vec::new();
    for (b, name, _) in peers {
        let k = key(b);
        if a.removed.contains(&k) { continue; }
        let path = a.paths.get(&k).cloned().flatten().map(|p| q(&p)).unwrap_or("null".into());
        out.push(format!("{}:{}", q(name), path));
    }
    println!("{{\"node\":{},\"observations\":{},\"decisions\":{},\"now\":{},\"peers\":{{{}}}}}", q(node), a.sent, a.decided, a.now, out.join(","));
}
