// Peer of bench/topics.sh: the chat protocol of examples/ws_chat on Socket.IO 4 (event `chat`:
// "/join ROOM" answered "joined ROOM", any other text to every member of the sender's rooms, the
// sender included), across processes through `@socket.io/redis-adapter` (what Socket.IO
// documents for several nodes). WebSocket transport only, no compression, pings far apart (the
// load client does not answer them), bound to 127.0.0.1.
// Run: node bench/topics/sio_server.js PORT redis://127.0.0.1:6379
//      (after `npm install --prefix bench/topics`)
"use strict";
const http = require("http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const port = Number(process.argv[2]);
const pub = createClient({ url: process.argv[3] });
const sub = pub.duplicate();
Promise.all([pub.connect(), sub.connect()]).then(() => {
  const server = http.createServer();
  const io = new Server(server, {
    transports: ["websocket"],
    perMessageDeflate: false,
    serveClient: false,
    pingInterval: 3600000,
    pingTimeout: 3600000,
  });
  io.adapter(createAdapter(pub, sub));
  io.on("connection", (socket) => {
    socket.on("chat", (text) => {
      if (typeof text !== "string") return;
      if (text.startsWith("/join ")) {
        const room = text.slice(6);
        socket.join(room);
        socket.emit("chat", "joined " + room);
        return;
      }
      for (const room of socket.rooms) if (room !== socket.id) io.to(room).emit("chat", text);
    });
  });
  server.listen(port, "127.0.0.1", () => console.log("listening on " + port));
});
