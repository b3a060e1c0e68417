// Writes the golden payloads of the unit tests, encoded by npm
// sparkplug-payload (the independent encoder), so `go test` without
// services still decodes bytes our code did not produce:
//
//   node encode-golden.js    (in this folder, after npm ci)
//
// It reads ../payloads/every-type.json (the metrics of a DBIRTH) and
// writes ../payloads/every-type.dbirth.bin with timestamp 1764412800000
// and seq 1.
"use strict";
const fs = require("fs");
const path = require("path");
const { encodeFixed } = require("./edgenode.js");

const dir = path.join(__dirname, "..", "payloads");
const metrics = JSON.parse(fs.readFileSync(path.join(dir, "every-type.json"), "utf8"));
fs.writeFileSync(path.join(dir, "every-type.dbirth.bin"), encodeFixed(metrics, 1764412800000, 1));
