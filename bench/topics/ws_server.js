// Peer of bench/topics.sh: the chat protocol of examples/ws_chat (`/join ROOM` answered
// `joined ROOM`, any other text to every member of the sender's rooms, the sender included) on
// Node's `ws`, with the usual broadcast loop (`for (const c of room) c.send(text)`).
// Run: node bench/topics/ws_server.js PORT      (after `npm install --prefix bench/topics`)
"use strict";
const { WebSocketServer } = require("ws");
const port = Number(process.argv[2]);
const rooms = new Map();
const wss = new WebSocketServer({ host: "127.0.0.1", port, perMessageDeflate: false });
wss.on("connection", (ws) => {
  const mine = new Set();
  ws.on("message", (data, isBinary) => {
    if (isBinary) return;
    const text = data.toString();
    if (text.startsWith("/join ")) {
      const room = text.slice(6);
      if (!rooms.has(room)) rooms.set(room, new Set());
      rooms.get(room).add(ws);
      mine.add(room);
      ws.send("joined " + room);
      return;
    }
    for (const room of mine) for (const c of rooms.get(room)) c.send(text);
  });
  ws.on("close", () => {
    for (const room of mine) rooms.get(room).delete(ws);
  });
});
wss.on("listening", () => console.log("listening on " + port));
