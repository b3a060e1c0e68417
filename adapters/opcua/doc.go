// Package opcua reads machine data from OPC UA servers (through
// github.com/gopcua/opcua) and hands it to the collector.
//
// A Source connects to one endpoint, resolves the configured nodes
// (explicit node ids, and browse-path patterns such as
// "Objects/Machines/*/SpindleSpeed" walked from a start node), and
// creates one subscription whose monitored items it adds in batches no
// larger than the server's MaxMonitoredItemsPerCall. Servers without
// subscriptions are read in polling mode instead.
//
// Every notification set becomes collector.Batches, one per folder:
// Batch.Origin is the browse path of the folder that holds the variable
// ("Objects/Machines/cnc-01"), so asset templates like
// "Objects/Machines/{machine}" work as they do on MQTT topics, and
// Sample.Signal is the variable's browse name (or the per-node signal
// override). Arrays expand into one sample per element, named
// <name>_<i> with i counting from 1, which matches the collector's
// per-axis names (joint_torque_nm_1 ...). Enumerations arrive as the
// name from EnumStrings or EnumValues, ready for a states map. A
// variable's EngineeringUnits (an AnalogItem) becomes Sample.Unit, which
// normalisation converts to the canonical unit. Status codes become the
// sample's quality; a Bad value becomes a quality-only sample so it is
// never mistaken for the last good one.
//
// A node that does not exist or may not be read never stops the others:
// it is counted through Output.Bad, listed by Source.BadNodes, and
// retried on a slow schedule.
//
// Reconnecting belongs to the collector's supervisor: Run returns when
// the connection breaks, and the next Run connects, resolves the browse
// paths again, takes over and deletes the subscription a half-dead
// earlier session may have left (TransferSubscriptions), and creates the
// monitored items afresh, whose first notifications re-read every value
// after the gap. Nodes that keep a history (Historizing, or the
// HistoryRead access bit) are then back-filled: HistoryRead reads what
// the server recorded since the newest value emitted for each, up to
// backfill_max back; a value already emitted is not emitted again. A
// server or node without history is skipped and not asked again. On
// shutdown Run deletes its subscription and closes the session, within
// two seconds, so no orphans pile up on a PLC.
//
// Security: policies None, Basic256Sha256, Aes128_Sha256_RsaOaep and
// Aes256_Sha256_RsaPss (Basic128Rsa15 and Basic256 only with
// allow_deprecated), modes Sign and SignAndEncrypt, and anonymous,
// username/password or certificate login. The application certificate is
// generated once under <data_dir>/opcua/own and reused; server
// certificates are checked against <data_dir>/opcua/trusted, and an
// unknown one is saved to <data_dir>/opcua/rejected with a log line that
// says how to trust it.
//
// Browse walks a server's address space for the `shopfloor browse`
// command and writes a ready-to-use source snippet.
package opcua
