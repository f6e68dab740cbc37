// The Socket.IO peer: the chat/broadcast server a user might pick instead of the messenger
// SDK, with the semantics the load generator drives (see examples/loadgen/src/adapter.rs):
//   join(room)          -> joins the room, answers "joined"
//   msg(room, payload)  -> broadcasts payload to every other socket in the room
//   echo(payload)       -> answers payload to the sender
// WebSocket transport only, no per-message compression (the same wire work as the others).
// Started by scripts/socketio.sh; prints "listening on HOST:PORT".
"use strict";
const http = require("http");
const { Server } = require("socket.io");

const port = Number(process.env.PORT || 0);
const host = process.env.HOST || "127.0.0.1";
const httpServer = http.createServer();
const io = new Server(httpServer, {
  transports: ["websocket"],
  perMessageDeflate: false,
  httpCompression: false,
  serveClient: false,
  pingInterval: 25000,
  pingTimeout: 60000,
  maxHttpBufferSize: 1e6,
});

io.on("connection", (socket) => {
  socket.on("join", (room) => {
    socket.join(room);
    socket.emit("joined", room);
  });
  socket.on("msg", (room, payload) => {
    socket.to(room).emit("msg", payload);
  });
  socket.on("echo", (payload) => {
    socket.emit("echo", payload);
  });
});

httpServer.listen(port, host, () => {
  const address = httpServer.address();
  console.log(`listening on ${address.address}:${address.port}`);
});
