// The origin behind Pushpin as bench/compare runs it. Pushpin holds no state of its own: each
// subscriber's request is proxied here, and this answers with GRIP instructions telling
// Pushpin to hold the response open as an HTTP stream subscribed to a channel:
//   GET /sub?id=CH  →  200, Content-Type: text/event-stream, Grip-Hold: stream,
//                      Grip-Channel: CH, and an empty body
// Publishing does not come here: bench/compare posts to Pushpin's own publish endpoint
// ({"items":[{"channel":CH,"formats":{"http-stream":{"content":"data: …\n\n"}}}]}).
//   node bench/peers/pushpin-origin.js PORT
const http = require('http');

const port = Number(process.argv[2] || 8061);
const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://localhost');
  const channel = url.searchParams.get('id');
  if (req.method !== 'GET' || url.pathname !== '/sub' || !channel) {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, {
    'Content-Type': 'text/event-stream',
    'Cache-Control': 'no-cache',
    'Grip-Hold': 'stream',
    'Grip-Channel': channel,
    'Content-Length': '0',
  });
  res.end();
});
// Pushpin keeps its connections to the origin alive between requests.
server.keepAliveTimeout = 60000;
server.listen(port, '127.0.0.1', () => console.log(`pushpin origin listening on 127.0.0.1:${port}`));
process.on('SIGTERM', () => process.exit(0));
