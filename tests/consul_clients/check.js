// Drives a 3-node pika cluster through the npm `consul` package, unmodified.
//
// Run by tests/consul_api.rs with PIKA_NODES=host:port,host:port,host:port,
// PIKA_TOKEN (may do anything) and PIKA_NARROW_TOKEN (may read nothing under
// PIKA_PREFIX). Prints one line per check; exits 1 at the first that fails.
"use strict";

const { EventEmitter } = require("node:events");
const Consul = require("consul");

const nodes = process.env.PIKA_NODES.split(",").map((n) => {
  const at = n.lastIndexOf(":");
  return { host: n.slice(0, at), port: Number(n.slice(at + 1)) };
});
const prefix = process.env.PIKA_PREFIX || "js";
const client = (node, token) => new Consul({ host: node.host, port: node.port, defaults: { token } });
const c = nodes.map((n) => client(n, process.env.PIKA_TOKEN));
const key = (name) => `${prefix}/${name}`;

function check(condition, what) {
  if (!condition) {
    console.log(`FAIL: ${what}`);
    process.exit(1);
  }
  console.log(`ok: ${what}`);
}

// A read with the response, for X-Consul-Index: the library hands the
// response out when the request's context (an EventEmitter) asks for it.
async function getWithIndex(consul, opts) {
  const ctx = new EventEmitter();
  ctx.includeResponse = true;
  const [res, body] = await consul.kv.get({ ...opts, ctx });
  return { index: Number(res.headers["x-consul-index"]), body };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function main() {
  // put on node 1, get on node 3 right after the answer
  check((await c[0].kv.set(key("app/a"), "one")) === true, "set answers true");
  let item = await c[2].kv.get(key("app/a"));
  check(item && item.Value === "one", "a set on node 1 is read on node 3");
  const created = item.CreateIndex;

  // flags
  check((await c[1].kv.set({ key: key("app/flagged"), value: "x", flags: 7 })) === true, "set with flags");
  item = await c[2].kv.get(key("app/flagged"));
  check(item.Flags === 7, "flags are kept");

  // recurse and keys with a separator
  await c[1].kv.set(key("app/sub/b"), "two");
  const items = await c[0].kv.get({ key: key("app/"), recurse: true });
  check(
    JSON.stringify(items.map((i) => i.Key)) === JSON.stringify([key("app/a"), key("app/flagged"), key("app/sub/b")]),
    "recurse lists every key under the prefix",
  );
  const keys = await c[2].kv.keys({ key: key("app/"), separator: "/" });
  check(
    JSON.stringify(keys) === JSON.stringify([key("app/a"), key("app/flagged"), key("app/sub/")]),
    "keys roll up at the separator",
  );

  // check-and-set. The library resolves Consul's `false` answer as
  // undefined (papi drops a falsy body), so a failed cas is "not true".
  item = await c[0].kv.get(key("app/a"));
  const index = item.ModifyIndex;
  check((await c[1].kv.set({ key: key("app/a"), value: "two", cas: index })) === true, "cas at the current index succeeds");
  check((await c[2].kv.set({ key: key("app/a"), value: "three", cas: index })) !== true, "cas at an old index fails");
  check((await c[0].kv.set({ key: key("app/a"), value: "four", cas: 0 })) !== true, "cas=0 on an existing key fails");
  item = await c[2].kv.get(key("app/a"));
  check(item.Value === "two" && item.CreateIndex === created && item.ModifyIndex > index, "CreateIndex stays, ModifyIndex moves");

  // binary values round-trip byte for byte
  const blob = Buffer.alloc(1024);
  for (let i = 0; i < blob.length; i++) blob[i] = (i * 7) % 256;
  check((await c[0].kv.set(key("blob"), blob)) === true, "set of binary data");
  item = await c[2].kv.get({ key: key("blob"), buffer: true });
  check(Buffer.isBuffer(item.Value) && item.Value.equals(blob), "binary data round-trips byte for byte");

  // a blocking query on node 3 returns soon after a write on node 1
  const delays = [];
  for (let attempt = 0; attempt < 3; attempt++) {
    const before = await getWithIndex(c[2], { key: key("watched") });
    let answeredAt = 0;
    const writer = (async () => {
      await sleep(300);
      await c[0].kv.set(key("watched"), `v${attempt}`);
      answeredAt = performance.now();
    })();
    const after = await getWithIndex(c[2], { key: key("watched"), index: before.index, wait: "10s" });
    const returnedAt = performance.now();
    await writer;
    check(after.index > before.index && after.body.Value === `v${attempt}`, "a blocking query sees the write");
    delays.push(returnedAt - answeredAt);
  }
  console.log(`blocking query returned ${delays.map((d) => d.toFixed(1)).join(", ")} ms after the write's answer`);
  // The machine is shared and noisy: the best of three must be within
  // 100 ms, and none may be late by more than a second.
  check(Math.min(...delays) < 100 && Math.max(...delays) < 1000, "a blocking query returns within 100 ms of a write on another node");

  // a blocking query that times out keeps its index
  const before = await getWithIndex(c[1], { key: key("app/a") });
  const started = performance.now();
  const same = await getWithIndex(c[1], { key: key("app/a"), index: before.index, wait: "1s" });
  const took = performance.now() - started;
  check(same.index === before.index && took >= 900 && took < 5000, `a blocking query times out after its wait with the same index (${took.toFixed(0)} ms)`);

  // delete recurse
  await c[1].kv.del({ key: key("app/"), recurse: true });
  check((await c[2].kv.get({ key: key("app/"), recurse: true })) === undefined, "nothing is left under the prefix after delete recurse");
  check((await c[0].kv.get(key("blob"))) !== undefined, "keys outside the prefix stay");

  // a token without scope is refused
  const narrow = client(nodes[1], process.env.PIKA_NARROW_TOKEN);
  let status = 0;
  try {
    await narrow.kv.get(key("blob"));
  } catch (e) {
    status = e.statusCode || (e.response && e.response.statusCode) || 0;
  }
  check(status === 403, `a token without read scope is refused (status ${status})`);
  status = 0;
  try {
    await narrow.kv.set(key("blob"), "overwritten");
  } catch (e) {
    status = e.statusCode || (e.response && e.response.statusCode) || 0;
  }
  check(status === 403, `a token without write scope is refused (status ${status})`);
  item = await c[0].kv.get({ key: key("blob"), buffer: true });
  check(item.Value.equals(blob), "the refused write changed nothing");
  console.log("all checks passed");
}

main().catch((e) => {
  console.log(`FAIL: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
