// A mesh agent in JavaScript driving `natrelay serve`: Node.js 20, no npm packages.
//
// It runs a small mesh on a toy data plane in simulated time: four peers, one
// relay; handshakes answer on some endpoints, others time out; a peer's
// candidates change (it upgrades from the relay to direct); a peer is removed.
// Ticks are driven by the next deadline the service returns.
//
//   node client.mjs --socket PATH --node NAME --relay RELAY
//   node client.mjs --node NAME --relay RELAY -- natrelay serve --stdio --log LOG
//
// Prints one JSON line: the node's peers as its decisions left them.
import net from "node:net";
import { spawn } from "node:child_process";

const args = process.argv.slice(2);
const opt = (name) => { const i = args.indexOf(name); return i >= 0 ? args[i + 1] : undefined; };
const NODE = opt("--node"), RELAY = opt("--relay"), SOCKET = opt("--socket");
const SPAWN = args.includes("--") ? args.slice(args.indexOf("--") + 1) : null;
const END = 60_000;

const key = (b) => Buffer.alloc(32, b).toString("base64");
const PEERS = {
  [key(1)]: { name: "server", candidates: ["198.51.100.7:51820", "10.0.0.7:51820"] },
  [key(2)]: { name: "phone", candidates: ["203.0.113.9:40000"] },
  [key(3)]: { name: "nas", candidates: ["192.0.2.4:51820", "10.0.0.4:51820"] },
  [key(4)]: { name: "tv", candidates: ["203.0.113.77:40000"] },
};
// endpoint -> handshake latency (ms); every other endpoint stays silent
const ANSWERS = { "198.51.100.7:51820": 15, "10.0.0.4:51820": 5, "203.0.113.10:40001": 20 };

// ---- the connection: one JSON object per line, answers in request order
class Conn {
  constructor(input, output) {
    this.output = output; this.buffer = ""; this.lines = []; this.waiters = [];
    input.setEncoding("utf8");
    input.on("data", (chunk) => {
      this.buffer += chunk;
      let i;
      while ((i = this.buffer.indexOf("\n")) >= 0) {
        const line = this.buffer.slice(0, i); this.buffer = this.buffer.slice(i + 1);
        const waiter = this.waiters.shift();
        if (waiter) waiter(line); else this.lines.push(line);
      }
    });
    input.on("end", () => { for (const w of this.waiters.splice(0)) w(null); });
  }
  next() { return this.lines.length ? Promise.resolve(this.lines.shift()) : new Promise((r) => this.waiters.push(r)); }
  async request(message, onPush) {
    this.output.write(JSON.stringify(message) + "\n");
    for (;;) {
      const line = await this.next();
      if (line === null) throw new Error("the service closed the connection");
      const answer = JSON.parse(line);
      if (answer.type === "push") { onPush(answer); continue; }
      if (answer.type === "error") throw new Error(`${answer.code} ${answer.field}: ${answer.message}`);
      return answer;
    }
  }
}

async function connect() {
  if (SPAWN) {
    const child = spawn(SPAWN[0], SPAWN.slice(1), { stdio: ["pipe", "pipe", "inherit"] });
    const exited = new Promise((r) => child.on("exit", (code) => r(code)));
    const close = async () => {
      child.stdin.end(); // the service answers what it read, then exits 0
      const code = await exited;
      if (code !== 0) throw new Error(`natrelay serve exited with ${code}`);
    };
    return { conn: new Conn(child.stdout, child.stdin), close };
  }
  const socket = net.createConnection({ path: SOCKET });
  await new Promise((resolve, reject) => { socket.once("connect", resolve); socket.once("error", reject); });
  return { conn: new Conn(socket, socket), close: async () => socket.end() };
}

// ---- the agent
let now = 0, nextDeadline = null, sessions = 0, sent = 0, decided = 0, id = 0;
const queue = []; // observations the toy data plane will report: {at, event}
const paths = {}; // peer -> "direct:<endpoint>" | "relay:<relay>" | null
const removed = new Set();
const later = (at, event) => queue.push({ at, event: { at, ...event } });

function execute(command) {
  const { type, peer } = command;
  if (type === "try_direct_endpoint") {
    const latency = ANSWERS[command.endpoint];
    if (latency !== undefined) later(now + latency, { type: "handshake_observed", peer, endpoint: command.endpoint });
    else later(command.deadline, { type: "direct_attempt_timed_out", peer, endpoint: command.endpoint, attempt: command.attempt });
  } else if (type === "connect_via_relay") {
    later(now + 40, { type: "relay_session_established", peer, relay: command.relay, session: `s${++sessions}` });
  } else if (type === "forget_peer") {
    removed.add(peer);
  } // switch_path and close_relay_session: nothing to report back in this toy data plane
}

function react(answer) {
  nextDeadline = answer.next_deadline;
  decided += answer.decisions.length;
  for (const d of answer.decisions) {
    if (d.type === "direct_path_selected" || d.type === "path_upgraded") paths[d.peer] = `direct:${d.endpoint}`;
    else if (d.type === "relay_path_selected") paths[d.peer] = `relay:${d.relay}`;
    else if (d.type === "path_lost") paths[d.peer] = null;
  }
  for (const c of answer.commands) execute(c);
}

const { conn, close } = await connect();
const observe = async (event) => { sent++; react(await conn.request({ type: "observe", id: ++id, event }, react)); };
const welcome = await conn.request(
  { type: "hello", id: 0, protocol: 1, node: NODE, client: "client.mjs", policy: { name: "js", mode: "direct_first", min_direct_attempts: 2 } },
  react,
);
nextDeadline = welcome.next_deadline;
await observe({ type: "relay_announced", at: 0, relay: RELAY, region: "eu", capacity: 50 });
for (const [peer, p] of Object.entries(PEERS)) await observe({ type: "peer_added", at: 0, peer, name: p.name, candidates: p.candidates });
later(20_000, { type: "candidates_updated", peer: key(2), candidates: ["203.0.113.10:40001"] });
later(25_000, { type: "peer_removed", peer: key(3) });

for (;;) {
  const due = Math.min(...queue.map((q) => q.at), nextDeadline ?? Infinity);
  if (due === Infinity || due > END) break;
  now = Math.max(now, due);
  queue.sort((a, b) => a.at - b.at);
  while (queue.length && queue[0].at <= now) await observe({ ...queue.shift().event, at: now });
  if (nextDeadline !== null && nextDeadline <= now) await observe({ type: "tick", at: now });
}
await close();

const peers = {};
for (const [peer, p] of Object.entries(PEERS)) if (!removed.has(peer)) peers[p.name] = paths[peer] ?? null;
let agree = null;
if (!SPAWN) { // ask the service where the peers stand: it must agree with what the decisions said
  const again = await connect();
  const view = await again.conn.request({ type: "hello", protocol: 1, node: NODE }, () => {});
  agree = view.peers.length === Object.keys(peers).length && view.peers.every((p) =>
    peers[p.name] === (p.path === null ? null : `${p.state === "relay_connected" ? "relay" : "direct"}:${p.path}`));
  await again.close();
}
console.log(JSON.stringify({ node: NODE, observations: sent, decisions: decided, now, peers, agree }));
