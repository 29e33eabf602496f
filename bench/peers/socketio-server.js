// The socket.io server as bench/compare runs it: socket.io's defaults (engine.io v4, ping every
// 25 s with a 20 s timeout, no per-message compression) except that only the WebSocket
// transport is offered, so no client starts with HTTP long-polling and upgrades.
//   node bench/peers/socketio-server.js PORT
//
// A client joins a room with `socket.emit("subscribe", room, ack)`; the room's name is the
// benchmark channel. `POST /publish?room=ROOM` with a JSON body emits that body to the room as
// the event "message" — the server-side publish a Node application does with
// `io.to(room).emit(...)`. The body is parsed and emitted as an object (socket.io's usual
// payload), so it goes out as `42["message",{...}]`.
const http = require('http');
const { Server } = require('socket.io');

const port = Number(process.argv[2] || 8080);
// A publish of the benchmark's sizes is far under this; more is refused.
const MAX_BODY = 1 << 20;

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://localhost');
  if (req.method !== 'POST' || url.pathname !== '/publish' || !url.searchParams.get('room')) {
    res.writeHead(404).end();
    return;
  }
  const chunks = [];
  let size = 0;
  req.on('data', (c) => {
    size += c.length;
    if (size > MAX_BODY) {
      res.writeHead(413).end();
      req.destroy();
      return;
    }
    chunks.push(c);
  });
  req.on('end', () => {
    let data;
    try {
      data = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch (e) {
      res.writeHead(400).end();
      return;
    }
    io.to(url.searchParams.get('room')).emit('message', data);
    res.writeHead(204).end();
  });
});

const io = new Server(server, { transports: ['websocket'], serveClient: false });
io.on('connection', (socket) => {
  socket.on('subscribe', (room, ack) => {
    socket.join(String(room));
    if (typeof ack === 'function') ack('ok');
  });
});

server.listen(port, '127.0.0.1', () => console.log(`socket.io listening on 127.0.0.1:${port}`));
process.on('SIGTERM', () => process.exit(0));
