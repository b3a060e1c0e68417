// An independent Sparkplug B edge node for the interop tests of
// adapters/sparkplug: payloads are encoded by Eclipse Tahu's npm
// sparkplug-payload (protobufjs), sent by MQTT.js. It knows nothing of the
// Go code under test.
//
// It reads one JSON command per line on stdin and answers each with one
// JSON line on stdout ({"ok":true,...} or {"ok":false,"error":...}); NCMD
// messages it receives are reported as {"event":"ncmd",...} lines, and with
// autoRebirth it answers "Node Control/Rebirth" by publishing its births
// again, as a Sparkplug edge node must.
//
// Commands:
//   {"cmd":"connect","url":U,"group":G,"node":N,"bdSeq":B,"autoRebirth":true}
//   {"cmd":"birth","device":D|null,"metrics":[M...]}   NBIRTH (device null) or DBIRTH; remembered for rebirths
//   {"cmd":"data","device":D|null,"metrics":[M...]}    NDATA or DDATA
//   {"cmd":"ddeath","device":D}
//   {"cmd":"ndeath"}                                   publish the NDEATH explicitly
//   {"cmd":"skip","n":K}                               drop K sequence numbers (a lost message)
//   {"cmd":"raw","topic":T,"hex":H}                    publish arbitrary bytes
//   {"cmd":"kill"}                                     drop the TCP connection: the broker sends the will (NDEATH)
//   {"cmd":"end"}                                      disconnect cleanly and exit
//
// A metric M is {"name","alias","type","value","timestamp","isHistorical",
// "properties"} as sparkplug-payload takes it. 64-bit values may be given as
// decimal strings. Array types (Int8Array ... DateTimeArray), which this
// version of sparkplug-payload does not know, are packed here as
// Sparkplug 3.0 prescribes and patched into the protobuf message.
"use strict";

const readline = require("readline");
const mqtt = require("mqtt");
const Long = require("long");
const sparkplug = require("sparkplug-payload").get("spBv1.0");
const ProtoRoot = require("sparkplug-payload/lib/sparkplugPayloadProto");
const Payload = ProtoRoot.org.eclipse.tahu.protobuf.Payload;

const arrayTypes = {
  Int8Array: 22, Int16Array: 23, Int32Array: 24, Int64Array: 25,
  UInt8Array: 26, UInt16Array: 27, UInt32Array: 28, UInt64Array: 29,
  FloatArray: 30, DoubleArray: 31, BooleanArray: 32, StringArray: 33, DateTimeArray: 34,
};

let client = null;
let group, node, bdSeq = 0, seq = 0, autoRebirth = false;
let nodeBirth = null;
const deviceBirths = new Map(); // device -> metrics, in birth order

function reply(obj) { process.stdout.write(JSON.stringify(obj) + "\n"); }

function packArray(type, values) {
  const n = values.length;
  let buf;
  switch (type) {
    case "Int8Array": buf = Buffer.alloc(n); values.forEach((v, i) => buf.writeInt8(v, i)); break;
    case "UInt8Array": buf = Buffer.alloc(n); values.forEach((v, i) => buf.writeUInt8(v, i)); break;
    case "Int16Array": buf = Buffer.alloc(2 * n); values.forEach((v, i) => buf.writeInt16LE(v, 2 * i)); break;
    case "UInt16Array": buf = Buffer.alloc(2 * n); values.forEach((v, i) => buf.writeUInt16LE(v, 2 * i)); break;
    case "Int32Array": buf = Buffer.alloc(4 * n); values.forEach((v, i) => buf.writeInt32LE(v, 4 * i)); break;
    case "UInt32Array": buf = Buffer.alloc(4 * n); values.forEach((v, i) => buf.writeUInt32LE(v, 4 * i)); break;
    case "Int64Array": case "DateTimeArray": buf = Buffer.alloc(8 * n); values.forEach((v, i) => buf.writeBigInt64LE(BigInt(v), 8 * i)); break;
    case "UInt64Array": buf = Buffer.alloc(8 * n); values.forEach((v, i) => buf.writeBigUInt64LE(BigInt(v), 8 * i)); break;
    case "FloatArray": buf = Buffer.alloc(4 * n); values.forEach((v, i) => buf.writeFloatLE(v, 4 * i)); break;
    case "DoubleArray": buf = Buffer.alloc(8 * n); values.forEach((v, i) => buf.writeDoubleLE(v, 8 * i)); break;
    case "BooleanArray": {
      buf = Buffer.alloc(4 + Math.ceil(n / 8));
      buf.writeUInt32LE(n, 0);
      values.forEach((v, i) => { if (v) buf[4 + (i >> 3)] |= 0x80 >> (i % 8); });
      break;
    }
    case "StringArray": buf = Buffer.from(values.map((s) => s + "\0").join(""), "utf8"); break;
    default: throw new Error("unknown array type " + type);
  }
  return buf;
}

const longTypes = new Set(["Int64", "UInt64", "DateTime", "LONG"]);

// toLib turns a JSON metric into what sparkplug-payload encodes; arrays go
// as Bytes and are retyped after encoding.
function toLib(m) {
  const out = Object.assign({}, m);
  if (arrayTypes[m.type] !== undefined) {
    out.type = "Bytes";
    out.value = packArray(m.type, m.value);
  } else if (longTypes.has(m.type) && typeof m.value === "string") {
    out.value = Long.fromString(m.value, m.type === "UInt64");
  }
  if (typeof m.timestamp === "string") out.timestamp = Long.fromString(m.timestamp, true);
  return out;
}

function encode(metrics, withSeq, extra) {
  const obj = Object.assign({ timestamp: Date.now(), metrics: metrics.map(toLib) }, extra || {});
  if (withSeq) obj.seq = seq;
  let bytes = sparkplug.encodePayload(obj);
  if (metrics.some((m) => arrayTypes[m.type] !== undefined)) {
    const p = Payload.decode(bytes);
    metrics.forEach((m, i) => { if (arrayTypes[m.type] !== undefined) p.metrics[i].datatype = arrayTypes[m.type]; });
    bytes = Payload.encode(p).finish();
  }
  return Buffer.from(bytes);
}

function topic(type, device) {
  return "spBv1.0/" + group + "/" + type + "/" + node + (device ? "/" + device : "");
}

function publish(t, bytes) {
  return new Promise((resolve, reject) => {
    // QoS 0 for births and data, as Sparkplug prescribes; publishAsync
    // resolves once the packet is written.
    client.publish(t, bytes, { qos: 0 }, (err) => (err ? reject(err) : resolve()));
  });
}

function nextSeq() { const s = seq; seq = (seq + 1) % 256; return s; }

async function sendNodeBirth() {
  seq = 0;
  const metrics = [{ name: "bdSeq", type: "Int64", value: bdSeq }, { name: "Node Control/Rebirth", type: "Boolean", value: false }].concat(nodeBirth || []);
  await publish(topic("NBIRTH"), encode(metrics, true));
  nextSeq();
}

async function sendDeviceBirth(device) {
  const bytes = encode(deviceBirths.get(device), true);
  nextSeq();
  await publish(topic("DBIRTH", device), bytes);
}

async function rebirth() {
  await sendNodeBirth();
  for (const d of deviceBirths.keys()) await sendDeviceBirth(d);
}

async function handle(c) {
  switch (c.cmd) {
    case "connect": {
      group = c.group; node = c.node; bdSeq = c.bdSeq || 0; autoRebirth = !!c.autoRebirth;
      const will = { topic: topic("NDEATH"), payload: encode([{ name: "bdSeq", type: "Int64", value: bdSeq }], false), qos: 1, retain: false };
      client = await mqtt.connectAsync(c.url, { clientId: "edge-" + group + "-" + node + "-" + process.pid, clean: true, reconnectPeriod: 0, protocolVersion: 4, will });
      client.on("message", (t, msg) => {
        const p = sparkplug.decodePayload(msg);
        const metrics = (p.metrics || []).map((m) => ({ name: m.name, type: m.type, value: m.value }));
        process.stdout.write(JSON.stringify({ event: "ncmd", topic: t, metrics }) + "\n");
        if (autoRebirth && metrics.some((m) => m.name === "Node Control/Rebirth" && m.value === true)) {
          rebirth().catch((e) => process.stdout.write(JSON.stringify({ event: "error", error: String(e) }) + "\n"));
        }
      });
      await client.subscribeAsync(topic("NCMD"), { qos: 0 });
      return {};
    }
    case "birth":
      if (c.device) {
        deviceBirths.set(c.device, c.metrics);
        await sendDeviceBirth(c.device);
      } else {
        nodeBirth = c.metrics;
        await sendNodeBirth();
      }
      return { seq };
    case "data": {
      const bytes = encode(c.metrics, true);
      nextSeq();
      await publish(topic(c.device ? "DDATA" : "NDATA", c.device), bytes);
      return { seq };
    }
    case "ddeath": {
      const bytes = encode([], true);
      nextSeq();
      await publish(topic("DDEATH", c.device), bytes);
      return {};
    }
    case "ndeath":
      await publish(topic("NDEATH"), encode([{ name: "bdSeq", type: "Int64", value: bdSeq }], false));
      return {};
    case "skip":
      for (let i = 0; i < (c.n || 1); i++) nextSeq();
      return { seq };
    case "raw":
      await publish(c.topic, Buffer.from(c.hex, "hex"));
      return {};
    case "kill":
      client.stream.destroy();
      return {};
    case "end":
      await client.endAsync();
      setImmediate(() => process.exit(0));
      return {};
    default:
      throw new Error("unknown command " + c.cmd);
  }
}

// encodeFixed encodes a payload with a fixed timestamp and seq, for the
// golden files that encode-golden.js writes.
function encodeFixed(metrics, timestamp, s) {
  seq = s;
  return encode(metrics, true, { timestamp });
}
module.exports = { encodeFixed };
if (require.main !== module) return;

// Commands run one at a time, in order.
let chain = Promise.resolve();
readline.createInterface({ input: process.stdin }).on("line", (line) => {
  if (!line.trim()) return;
  chain = chain.then(async () => {
    let c;
    try {
      c = JSON.parse(line);
      const res = await handle(c);
      reply(Object.assign({ ok: true, cmd: c.cmd }, res));
    } catch (e) {
      reply({ ok: false, cmd: c && c.cmd, error: String(e && e.stack || e) });
    }
  });
}).on("close", () => { chain.then(() => process.exit(0)); });
