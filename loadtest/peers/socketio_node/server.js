"use strict";
// Socket.IO on Node.js with @socket.io/redis-adapter: the Node peer of `python -m loadtest`.
//
// Same contract as the Python adapters (loadtest/peers/contract.py): --ready-file PATH gets
// {"node_id", "port", "management_port"} once both servers listen; clients connect over
// WebSocket only and send their HS256 token in the CONNECT auth payload; a socket joins the
// room of its tenant; "echo" is emitted back to the sender; the management server (a second
// port) emits "msg" to a socket id or a tenant room through the adapter, so across nodes.
// Installed on demand by loadtest/targets.py: npm install into loadtest/.npm (git-ignored).

const fs = require("fs");
const http = require("http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");
const jwt = require("jsonwebtoken");

function parseArgs(argv) {
  const out = { host: "127.0.0.1", port: "0", "management-port": "0", "node-id": "n0" };
  for (let i = 2; i < argv.length; i += 2) out[argv[i].replace(/^--/, "")] = argv[i + 1];
  return out;
}

function listen(server, host, port) {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(Number(port), host, () => resolve(server.address().port));
  });
}

function management(io) {
  return http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString();
      let m;
      if (req.method === "POST" && (m = req.url.match(/^\/@connections\/([^/?]+)$/))) {
        io.to(decodeURIComponent(m[1])).emit("msg", body);
        res.writeHead(200).end();
      } else if (req.method === "POST" && (m = req.url.match(/^\/@tenants\/([^/?]+)\/messages$/))) {
        io.to(decodeURIComponent(m[1])).emit("msg", body);
        res.writeHead(200, { "content-type": "application/json" }).end('{"delivered":-1}');
      } else {
        res.writeHead(404).end();
      }
    });
  });
}

async function main() {
  const args = parseArgs(process.argv);
  const secret = args["jwt-secret"] || "";
  const httpServer = http.createServer();
  const io = new Server(httpServer, { transports: ["websocket"], serveClient: false, perMessageDeflate: false });
  if (args["redis-url"]) {
    const pub = createClient({ url: args["redis-url"] });
    const sub = pub.duplicate();
    await Promise.all([pub.connect(), sub.connect()]);
    io.adapter(createAdapter(pub, sub));
  }
  io.use((socket, next) => {
    try {
      const claims = secret ? jwt.verify(String(socket.handshake.auth.token || ""), secret, { algorithms: ["HS256"] }) : {};
      socket.data.tenant = String(claims.tenant || "t0");
      next();
    } catch (err) {
      next(new Error("unauthorized"));
    }
  });
  io.on("connection", (socket) => {
    socket.join(socket.data.tenant);
    socket.on("echo", (data) => socket.emit("echo", data));
  });
  const port = await listen(httpServer, args.host, args.port);
  const mport = await listen(management(io), args.host, args["management-port"]);
  const ready = { node_id: args["node-id"], port, management_port: mport, pid: process.pid };
  fs.writeFileSync(args["ready-file"] + ".tmp", JSON.stringify(ready));
  fs.renameSync(args["ready-file"] + ".tmp", args["ready-file"]);
}

process.on("SIGTERM", () => process.exit(0));
main().catch((err) => {
  console.error(err);
  process.exit(1);
});
