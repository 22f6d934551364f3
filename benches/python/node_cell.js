// One cell the way a subprocess executor runs it: a fresh `node` process per cell, its
// tools bridged over stdio (a request line out, an answer line in). Used by bench.py.
const readline = require("node:readline");
const lines = readline.createInterface({ input: process.stdin });
const waiting = [];
lines.on("line", (line) => waiting.shift()(JSON.parse(line)));
let next = 0;
const tools = new Proxy({}, {
  get: (_, name) => (args) => new Promise((resolve) => {
    waiting.push(resolve);
    process.stdout.write(JSON.stringify({ call: ++next, tool: name, args }) + "\n");
  }),
});
const output = [];
const text = (value) => output.push(typeof value === "string" ? value : JSON.stringify(value));
const AsyncFunction = async function () {}.constructor;
new AsyncFunction("tools", "text", process.argv[2])(tools, text).then(() => {
  process.stdout.write(JSON.stringify({ done: output }) + "\n");
  process.exit(0);
});
