// node-opcua server for the opcua adapter's interop tests: an OPC UA
// implementation shopfloor did not write.
//
//   node server.js --port 4840 --pki /tmp/pki
//       [--secure | --policy Basic256Sha256|Aes128_Sha256_RsaOaep|Aes256_Sha256_RsaPss[,...]]
//       [--modes Sign,SignAndEncrypt] [--user u --password p]
//       [--certlogin cert.pem,cert.der,...] [--history] [--limits N]
//   node server.js --port 4840 --pki /tmp/pki --machines 100 [--vars 100] [--rate 1000]
//
// It serves Objects/Machines/<machine>/<variable> like `shopfloor
// simulate`, plus Objects/Machines/types-01 with one variable per
// built-in type, and Objects/Restricted/WriteOnly (node id
// s=Restricted.WriteOnly in the server's namespace), whose access level
// does not allow reading. SpindleSpeed changes every 100 ms; Temperature
// is an AnalogItem in degrees Fahrenheit. --secure is --policy
// Basic256Sha256: an endpoint for each policy named, with SignAndEncrypt
// (or each of --modes) and user/password or certificate login only.
//
// --certlogin makes certificate (X509 user token) login check the user
// certificate against this server's own user trust list, <pki>/user,
// which trusts exactly the certificates named (PEM or DER files); any
// other is refused with BadIdentityTokenRejected and saved to
// <pki>/user/rejected. Without --certlogin that list accepts every user
// certificate, as node-opcua's default one does.
//
// --limits N publishes (and enforces, with BadTooManyOperations) N as
// the operation limits MaxMonitoredItemsPerCall, MaxNodesPerRead and
// MaxNodesPerBrowse, instead of node-opcua's 10,000.
//
// --history adds Objects/Machines/hist-01/Counter, a UInt32 that
// counts up every 100 ms and whose every value the server keeps in its
// in-memory history for HistoryRead, and hist-01/NoHistory, which says
// it is historizing but has no history.
//
// --machines N is the load for the scale benchmark instead: only
// Objects/Machines/m-000 .. m-<N-1>, each with --vars Double variables
// v-000 .. (default 100), every one of which changes every --rate ms
// (default 1000). Nothing else is under Machines, so the pattern
// Objects/Machines/*/* resolves to exactly N x vars items.
//
// It prints "READY <port>" once it listens and stops on SIGTERM.
"use strict";
const fs = require("fs");
const path = require("path");
const {
  OPCUAServer, OPCUACertificateManager, Variant, DataType, StatusCodes,
  MessageSecurityMode, SecurityPolicy, nodesets, coerceNodeId, VariantArrayType,
  standardUnits,
} = require("node-opcua");

function arg(name, def) {
  const i = process.argv.indexOf("--" + name);
  if (i < 0) return def;
  const v = process.argv[i + 1];
  return v === undefined || v.startsWith("--") ? true : v;
}

async function main() {
  const port = parseInt(arg("port", "4840"), 10);
  const pki = arg("pki", "./pki");
  const policies = arg("policy", arg("secure", false) === true ? "Basic256Sha256" : "None").split(",");
  for (const p of policies) {
    if (!(p in SecurityPolicy)) throw new Error("unknown --policy " + p);
  }
  const secure = policies[0] !== "None";
  const modes = String(arg("modes", "SignAndEncrypt")).split(",");
  for (const m of modes) {
    if (m !== "Sign" && m !== "SignAndEncrypt") throw new Error("unknown --modes " + m + ": use Sign, SignAndEncrypt or both");
  }
  const certLogin = arg("certlogin", false);
  const userCerts = typeof certLogin === "string" ? certLogin.split(",") : [];
  const user = arg("user", "");
  const password = arg("password", "");
  const history = arg("history", false) === true;
  const limits = parseInt(arg("limits", "0"), 10);
  if (!(limits >= 0)) throw new Error("--limits must be a number");
  const machineCount = parseInt(arg("machines", "0"), 10);
  const varCount = parseInt(arg("vars", "100"), 10);
  const rate = parseInt(arg("rate", "1000"), 10);
  if (!(machineCount >= 0 && varCount > 0 && rate > 0)) {
    throw new Error("--machines must be a number, --vars and --rate positive ones");
  }

  const serverCertificateManager = new OPCUACertificateManager({
    rootFolder: pki,
    automaticallyAcceptUnknownCertificate: true,
  });
  // A user trust list of this server's own: node-opcua's default one is
  // shared by every server of the user under ~/.config.
  const userCertificateManager = new OPCUACertificateManager({
    rootFolder: path.join(pki, "user"),
    automaticallyAcceptUnknownCertificate: certLogin === false,
  });
  const server = new OPCUAServer({
    port,
    hostname: "127.0.0.1",
    nodeset_filename: [nodesets.standard],
    serverCertificateManager,
    userCertificateManager,
    securityModes: secure ? modes.map((m) => MessageSecurityMode[m]) : [MessageSecurityMode.None],
    securityPolicies: policies.map((p) => SecurityPolicy[p]),
    allowAnonymous: !secure,
    userManager: {
      isValidUser: (u, p) => user !== "" && u === user && p === password,
    },
    serverInfo: { applicationUri: "urn:shopfloor:interop:node-opcua" },
    serverCapabilities: limits > 0
      ? { operationLimits: { maxMonitoredItemsPerCall: limits, maxNodesPerRead: limits, maxNodesPerBrowse: limits } }
      : undefined,
  });
  await server.initialize();
  for (const file of userCerts) {
    await userCertificateManager.trustCertificate(readDER(file));
  }
  const as = server.engine.addressSpace;
  const ns = as.getOwnNamespace();
  const machines = ns.addFolder(as.rootFolder.objects, { browseName: "Machines" });
  if (machineCount > 0) {
    await serve(server, port, scaleMachines(ns, machines, machineCount, varCount, rate));
    return;
  }

  function variable(parent, name, dataType, value, status) {
    const v = ns.addVariable({ componentOf: parent, browseName: name, dataType });
    v.setValueFromSource(new Variant(value), status || StatusCodes.Good);
    return v;
  }

  // The simulator's shape.
  const cnc = ns.addFolder(machines, { browseName: "cnc-01" });
  ns.addMultiStateDiscrete({
    componentOf: cnc, browseName: "State",
    enumStrings: ["Stopped", "Running", "Idle", "Setup", "Alarm"], value: 1,
  });
  const speed = variable(cnc, "SpindleSpeed", "Double", { dataType: DataType.Double, value: 12000 });
  variable(cnc, "SpindleLoad", "Double", { dataType: DataType.Double, value: 41.5 });
  variable(cnc, "FeedOverride", "Double", { dataType: DataType.Double, value: 100 });
  variable(cnc, "PartCountGood", "UInt32", { dataType: DataType.UInt32, value: 1834 });
  variable(cnc, "PartCountReject", "UInt32", { dataType: DataType.UInt32, value: 3 });
  variable(cnc, "PowerActive", "Double", { dataType: DataType.Double, value: 5400 });
  variable(cnc, "EnergyTotal", "Double", { dataType: DataType.Double, value: 123456.5 });
  variable(cnc, "ProgramName", "String", { dataType: DataType.String, value: "O1234" });
  variable(cnc, "LastCycleTime", "Double", { dataType: DataType.Double, value: 42.5 });
  // An AnalogItem: its EngineeringUnits property says °F, which the
  // agent converts to the canonical temperature_c (212 °F = 100 °C).
  ns.addAnalogDataItem({
    componentOf: cnc, browseName: "Temperature", dataType: "Double",
    engineeringUnitsRange: { low: -40, high: 500 },
    engineeringUnits: standardUnits.degree_fahrenheit,
    value: new Variant({ dataType: DataType.Double, value: 212 }),
  });
  const robot = ns.addFolder(machines, { browseName: "robot-01" });
  variable(robot, "TcpSpeed", "Double", { dataType: DataType.Double, value: 250 });
  variable(robot, "JointTorques", "Double", {
    dataType: DataType.Double, arrayType: VariantArrayType.Array,
    value: new Float64Array([1.5, 2.5, 3.5, 4.5, 5.5, 6.5]),
  }).valueRank = 1;
  variable(robot, "CycleCount", "UInt64", { dataType: DataType.UInt64, arrayType: VariantArrayType.Scalar, value: [0, 42] });

  // One variable per built-in type, and a Bad one.
  const types = ns.addFolder(machines, { browseName: "types-01" });
  variable(types, "Boolean", "Boolean", { dataType: DataType.Boolean, value: true });
  variable(types, "SByte", "SByte", { dataType: DataType.SByte, value: -8 });
  variable(types, "Byte", "Byte", { dataType: DataType.Byte, value: 200 });
  variable(types, "Int16", "Int16", { dataType: DataType.Int16, value: -1600 });
  variable(types, "UInt16", "UInt16", { dataType: DataType.UInt16, value: 61000 });
  variable(types, "Int32", "Int32", { dataType: DataType.Int32, value: -320000 });
  variable(types, "UInt32", "UInt32", { dataType: DataType.UInt32, value: 4000000000 });
  variable(types, "Int64", "Int64", { dataType: DataType.Int64, arrayType: VariantArrayType.Scalar, value: [1, 2] }); // 2^32 + 2
  variable(types, "UInt64", "UInt64", { dataType: DataType.UInt64, arrayType: VariantArrayType.Scalar, value: [0, 7] });
  variable(types, "Float", "Float", { dataType: DataType.Float, value: 1.5 });
  variable(types, "Double", "Double", { dataType: DataType.Double, value: 2.25 });
  variable(types, "String", "String", { dataType: DataType.String, value: "hello" });
  variable(types, "DateTime", "DateTime", { dataType: DataType.DateTime, value: new Date(Date.UTC(2024, 2, 5, 14, 30, 0)) });
  variable(types, "Guid", "Guid", { dataType: DataType.Guid, value: "72962B91-FA75-4AE6-8D28-B404DC7DAF63" });
  variable(types, "ByteString", "ByteString", { dataType: DataType.ByteString, value: Buffer.from([0xca, 0xfe]) });
  variable(types, "NodeId", "NodeId", { dataType: DataType.NodeId, value: coerceNodeId("ns=1;s=x") });
  variable(types, "StatusCode", "StatusCode", { dataType: DataType.StatusCode, value: StatusCodes.BadTimeout });
  variable(types, "QualifiedName", "QualifiedName", { dataType: DataType.QualifiedName, value: { name: "qn", namespaceIndex: 1 } });
  variable(types, "LocalizedText", "LocalizedText", { dataType: DataType.LocalizedText, value: { text: "Hallo", locale: "nl" } });
  ns.addMultiStateValueDiscrete({
    componentOf: types, browseName: "Mode",
    enumValues: { Auto: 1, Manual: 2, Service: 7 }, value: 7,
  });
  variable(types, "Broken", "Double", { dataType: DataType.Double, value: 0 }, StatusCodes.BadDeviceFailure);
  variable(types, "Doubtful", "Double", { dataType: DataType.Double, value: 3.5 }, StatusCodes.UncertainLastUsableValue);

  // A variable that may be written but not read, outside Machines so
  // that no Objects/Machines pattern picks it up: a Read of its value
  // and a monitored item on it get BadNotReadable.
  const restricted = ns.addFolder(as.rootFolder.objects, { browseName: "Restricted" });
  ns.addVariable({
    componentOf: restricted, browseName: "WriteOnly", nodeId: "s=Restricted.WriteOnly", dataType: "Double",
    accessLevel: "CurrentWrite", userAccessLevel: "CurrentWrite",
    value: new Variant({ dataType: DataType.Double, value: 7 }),
  });

  let counter = null;
  if (history) {
    const hist = ns.addFolder(machines, { browseName: "hist-01" });
    counter = variable(hist, "Counter", "UInt32", { dataType: DataType.UInt32, value: 0 });
    // Sets Historizing and the HistoryRead access bit, and records
    // every value set from now on.
    as.installHistoricalDataNode(counter, { maxOnlineValues: 100000 });
    // Claims a history no historian keeps, as servers do whose history
    // is configured elsewhere: HistoryRead answers it per node with
    // BadHistoryOperationUnsupported.
    variable(hist, "NoHistory", "Double", { dataType: DataType.Double, value: 1.5 }).historizing = true;
  }

  let rpm = 12000, count = 0;
  const timer = setInterval(() => {
    rpm = rpm >= 12100 ? 12000 : rpm + 1;
    speed.setValueFromSource(new Variant({ dataType: DataType.Double, value: rpm }));
    if (counter) {
      count++;
      counter.setValueFromSource(new Variant({ dataType: DataType.UInt32, value: count }));
    }
  }, 100);

  await serve(server, port, timer);
}

// scaleMachines adds machineCount machines of varCount Double variables
// and returns the timer that changes them all every rate ms. One timer
// for all and setValueFromSource keep the server's own cost per change
// small: node-opcua samples them with one shared timer per sampling
// interval, so 10,000 items at 1 s are a fraction of a core. A
// bindVariable getter would instead run at every sample and Read.
function scaleMachines(ns, machines, machineCount, varCount, rate) {
  const pad = (n) => String(n).padStart(3, "0");
  const vars = [];
  for (let m = 0; m < machineCount; m++) {
    const machine = ns.addFolder(machines, { browseName: "m-" + pad(m) });
    for (let j = 0; j < varCount; j++) {
      const v = ns.addVariable({ componentOf: machine, browseName: "v-" + pad(j), dataType: "Double" });
      v.setValueFromSource(new Variant({ dataType: DataType.Double, value: vars.length }));
      vars.push(v);
    }
  }
  // Every value differs from its previous one at every tick, so each
  // sample the server takes is a change it reports.
  let tick = 0;
  return setInterval(() => {
    tick++;
    for (let i = 0; i < vars.length; i++) {
      vars[i].setValueFromSource(new Variant({ dataType: DataType.Double, value: tick * vars.length + i }));
    }
  }, rate);
}

// readDER reads a certificate file, PEM or DER, as DER.
function readDER(file) {
  const data = fs.readFileSync(file);
  const pem = /-----BEGIN CERTIFICATE-----([^-]+)-----END CERTIFICATE-----/.exec(data.toString("latin1"));
  return pem ? Buffer.from(pem[1].replace(/\s+/g, ""), "base64") : data;
}

// serve starts the server, says READY and stops it on SIGTERM.
async function serve(server, port, timer) {
  await server.start();
  process.stdout.write("READY " + port + "\n");
  const stop = async () => {
    clearInterval(timer);
    await server.shutdown(0);
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => {
  process.stderr.write("server failed: " + (err && err.stack || err) + "\n");
  process.exit(1);
});
