// Wire-level limits shared by every tier (STYLE "Put a limit on everything"). Each bound is
// what a decoder enforces before it loops over anything a peer sent.

/** Largest UDP payload over IPv4; a datagram can never be larger. */
export const udpPayloadBytesMax = 65_507;
/** Smallest datagram an edge may be configured with: headers, one distribution with its name, and a useful sketch. */
export const datagramBytesMin = 1024;
/** Default edge datagram size: 1500 MTU minus IPv4/UDP headers minus a margin for tunnels (DESIGN §6). */
export const datagramBytesDefault = 1432;
/** A rack batch over HTTP: 40 servers × 2,000 series × ~40 B, with room for distributions. */
export const batchBytesMax = 64 * 1024 * 1024;
/**
 * Gauge and counter points one section may hold: as many as the largest frame held unpacked (a
 * uint16 and a double each). Packed points (schema/pointpack.ts) take as little as no byte each
 * (a value every server shares), so the receiver bounds the columns it makes by this, not by the
 * frame's bytes: a hostile section of a few bytes cannot make it allocate more than a frame's
 * bound. Racks cut sections well within it (SectionCutter reserves 10 bytes a point).
 */
export const sectionPointsMax = Math.floor(batchBytesMax / 10);
/** Server ids: DESIGN §3 `[A-Za-z0-9._-]{1,64}`. */
export const serverIdBytesMax = 64;
/** Metric names: DESIGN §3 `[A-Za-z0-9_.:-]{1,128}`. */
export const metricNameBytesMax = 128;
/** Rack ids follow the server id syntax. */
export const rackIdBytesMax = 64;
/** Parts of one server-second: 2,000 series at 1432 B need ~30; 10,000 distributions need more. */
export const partsMax = 4096;
/** Servers in one rack batch: 40 per rack by design, with room for racks configured larger. */
export const batchServersMax = 1024;
/** Parts named in one NACK: bounds the edge's work per NACK. */
export const nackPartsMax = 512;
/** Unknown metric hashes asked for in one NACK. */
export const nackHashesMax = 1024;
/** Wire format version; decoders reject others (a rolling upgrade bumps both sides in order). */
export const wireVersion = 2;
/**
 * The largest count a summary carries, and so any sketch bin: counts and bins are 32-bit on the
 * wire. The edge does not send a second past it, the rack leaves out a rollup past it, the core
 * refuses a merge past it (a sampled StatsD value weighs 1 / rate, so a count can get there).
 */
export const summaryCountMax = 0xffffffff;
/** Relative accuracy of every sketch (DESIGN §2). */
export const sketchRelativeAccuracy = 0.01;
/** Seconds since the epoch accepted on the wire: 2001-09-09 .. 2106 (uint32). */
export const secondMin = 1_000_000_000;
/** Keys in one key file: the signing key and the one being rotated out, with room for a spare. */
export const authKeysMax = 4;
/** Shortest HMAC secret accepted: 128 bits, the MAC's own strength (truncated to 16 bytes). */
export const authSecretBytesMin = 16;
/** Shards of a core (DESIGN §9): a power of two fixed when a data directory is created. 4,096
 * is far past any node count we plan (2 owners × 1,000 nodes), and bounds a request's sections. */
export const shardsMax = 4096;
/** DESIGN §9's default S: 64 shards spread over up to 32 nodes with 2 owners each. */
export const shardsDefault = 64;
/**
 * Bytes of one server's second a rack holds (its datagrams as received): an edge packs each
 * second within it (deferring names first), a rack refuses parts beyond it (server_second_full).
 * A 10,000-series edge's second is ~400 KB, ~600 KB–1.8 MB with every name (names of 30–128
 * characters): names past it wait for the rack to ask.
 */
export const serverSecondBytesMax = 1024 * 1024;
/** Servers one section names: a rack's servers (batchServersMax); 0xffff marks the rollup. */
export const rollupServer = 0xffff;
/**
 * Names one ShardSection carries: a rack sends a name beside its hash only for a series the
 * core may not know (new, refreshed, asked for), so a second of a whole rack starting at once
 * names ~2,000; each name costs a SHA-256 to verify (~2 µs), and 64 MiB of one-byte names
 * would have held a worker ~8 s.
 */
export const sectionNamesMax = 65_536;
