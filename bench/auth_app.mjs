// A stand-in application for measuring `auth-url`: answers every question yes (200, with a user
// and presence info), as fast as Node's own http server can, and prints how many questions it
// got when it stops (SIGTERM/SIGINT). Usage: node bench/auth_app.mjs [port]
import http from "node:http";

const port = Number(process.argv[2] || 8791);
const answer = JSON.stringify({ user: "bench", info: { name: "Bench" } });
let questions = 0;

const server = http.createServer((request, response) => {
  request.resume();
  request.on("end", () => {
    questions++;
    response.writeHead(200, {
      "content-type": "application/json",
      "content-length": Buffer.byteLength(answer),
    });
    response.end(answer);
  });
});
server.keepAliveTimeout = 60_000;
server.listen(port, "127.0.0.1", () => console.log(`auth app on 127.0.0.1:${port}`));

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    console.log(`questions: ${questions}`);
    process.exit(0);
  });
}
