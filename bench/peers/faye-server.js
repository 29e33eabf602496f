// The Faye Bayeux server as bench/compare runs it: Faye's own Node adapter with its defaults
// except the connect hold (25 s, Halley's --hold-timeout) and the mount point.
//   node bench/peers/faye-server.js PORT
const http = require('http');
const faye = require('faye');

const port = Number(process.argv[2] || 8030);
const bayeux = new faye.NodeAdapter({ mount: '/faye', timeout: 25 });
const server = http.createServer();
bayeux.attach(server);
server.listen(port, '127.0.0.1', () => console.log(`faye listening on 127.0.0.1:${port}/faye`));
process.on('SIGTERM', () => process.exit(0));
