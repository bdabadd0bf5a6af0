// Host collector: once a second, this machine's CPU, load, memory, network and disk from
// /proc as host.* gauges and counters (issue 2). Parsing is pure (tests feed it text);
// HostCollector keeps the previous readings to turn cumulative counters into per-second deltas.

import { readFile } from 'node:fs/promises';
import { KindCode } from '../schema/codec.js';

export type HostSample = { name: string; kind: KindCode; value: number }[];

const cpuModes = ['user', 'nice', 'system', 'idle', 'iowait', 'irq', 'softirq', 'steal'] as const;

/** Cumulative jiffies per mode from the first (aggregate) line of /proc/stat. */
export function parseCpu(stat: string): number[] | null {
  const line = stat.split('\n').find((l) => l.startsWith('cpu '));
  if (line === undefined) return null;
  const nums = line.trim().split(/\s+/).slice(1, 1 + cpuModes.length).map(Number);
  return nums.length === cpuModes.length && nums.every(Number.isFinite) ? nums : null;
}

export function parseLoad(loadavg: string): number[] | null {
  const nums = loadavg.trim().split(/\s+/).slice(0, 3).map(Number);
  return nums.length === 3 && nums.every(Number.isFinite) ? nums : null;
}

/** /proc/meminfo fields in bytes. */
export function parseMeminfo(meminfo: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of meminfo.split('\n')) {
    const m = /^(\w+):\s+(\d+)(?:\s+kB)?/.exec(line);
    if (m !== null) out.set(m[1]!, Number(m[2]) * (line.includes('kB') ? 1024 : 1));
  }
  return out;
}

/** Totals over every interface but loopback: rx/tx bytes, packets, errors, drops. */
export function parseNetDev(netdev: string): Record<string, number> {
  const t = { rx_bytes: 0, rx_packets: 0, rx_errors: 0, rx_dropped: 0, tx_bytes: 0, tx_packets: 0, tx_errors: 0, tx_dropped: 0 };
  for (const line of netdev.split('\n').slice(2)) {
    const [iface, rest] = line.split(':');
    if (rest === undefined || iface!.trim() === 'lo') continue;
    const f = rest.trim().split(/\s+/).map(Number);
    if (f.length < 16) continue;
    t.rx_bytes += f[0]!;
    t.rx_packets += f[1]!;
    t.rx_errors += f[2]!;
    t.rx_dropped += f[3]!;
    t.tx_bytes += f[8]!;
    t.tx_packets += f[9]!;
    t.tx_errors += f[10]!;
    t.tx_dropped += f[11]!;
  }
  return t;
}

/** Totals over whole disks (not partitions, loop or ram devices). */
export function parseDiskstats(diskstats: string): Record<string, number> {
  const t = { reads: 0, read_bytes: 0, writes: 0, write_bytes: 0, io_ms: 0 };
  for (const line of diskstats.split('\n')) {
    const f = line.trim().split(/\s+/);
    const dev = f[2];
    if (dev === undefined || f.length < 14 || /^(loop|ram|dm-|sr)/.test(dev)) continue;
    if (/^(sd[a-z]+|vd[a-z]+|xvd[a-z]+|hd[a-z]+)\d+$/.test(dev) || /^nvme\d+n\d+p\d+$/.test(dev) || /^mmcblk\d+p\d+$/.test(dev)) continue;
    t.reads += Number(f[3]);
    t.read_bytes += Number(f[5]) * 512;
    t.writes += Number(f[7]);
    t.write_bytes += Number(f[9]) * 512;
    t.io_ms += Number(f[12]);
  }
  return t;
}

export class HostCollector {
  private prevCpu: number[] | null = null;
  private prevCounters = new Map<string, number>();
  errors = 0;

  constructor(private readonly procRoot = '/proc') {}

  /** One reading: gauges, and counters as the change since the previous reading. */
  async collect(): Promise<HostSample> {
    const [stat, load, mem, net, disk] = await Promise.all(
      ['stat', 'loadavg', 'meminfo', 'net/dev', 'diskstats'].map((f) => readFile(`${this.procRoot}/${f}`, 'latin1').catch(() => null)),
    );
    const out: HostSample = [];
    if (stat === null || load === null || mem === null || net === null || disk === null) this.errors++;
    if (stat != null) this.cpu(parseCpu(stat), out);
    const l = load == null ? null : parseLoad(load);
    if (l !== null) ['host.load.1', 'host.load.5', 'host.load.15'].forEach((name, i) => out.push({ name, kind: KindCode.Gauge, value: l[i]! }));
    if (mem != null) this.memory(parseMeminfo(mem), out);
    if (net != null) this.counters('host.net.', parseNetDev(net), out);
    if (disk != null) this.counters('host.disk.', parseDiskstats(disk), out);
    return out;
  }

  private cpu(now: number[] | null, out: HostSample): void {
    if (now === null) return;
    const prev = this.prevCpu;
    this.prevCpu = now;
    if (prev === null) return;
    const delta = now.map((v, i) => v - prev[i]!);
    const total = delta.reduce((a, b) => a + b, 0);
    if (total <= 0) return;
    cpuModes.forEach((mode, i) => out.push({ name: `host.cpu.${mode}`, kind: KindCode.Gauge, value: (100 * delta[i]!) / total }));
    const busy = total - delta[3]! - delta[4]!;
    out.push({ name: 'host.cpu.total', kind: KindCode.Gauge, value: (100 * busy) / total });
  }

  private memory(m: Map<string, number>, out: HostSample): void {
    const total = m.get('MemTotal');
    const available = m.get('MemAvailable');
    if (total === undefined || available === undefined) return;
    out.push({ name: 'host.mem.total_bytes', kind: KindCode.Gauge, value: total });
    out.push({ name: 'host.mem.available_bytes', kind: KindCode.Gauge, value: available });
    out.push({ name: 'host.mem.used_bytes', kind: KindCode.Gauge, value: total - available });
    out.push({ name: 'host.mem.used_percent', kind: KindCode.Gauge, value: (100 * (total - available)) / total });
    const swapTotal = m.get('SwapTotal');
    const swapFree = m.get('SwapFree');
    if (swapTotal !== undefined && swapFree !== undefined) out.push({ name: 'host.mem.swap_used_bytes', kind: KindCode.Gauge, value: swapTotal - swapFree });
  }

  private counters(prefix: string, now: Record<string, number>, out: HostSample): void {
    for (const [k, v] of Object.entries(now)) {
      const name = prefix + k;
      const prev = this.prevCounters.get(name);
      this.prevCounters.set(name, v);
      // A counter that went backwards (device reset) restarts from this reading.
      if (prev !== undefined && v >= prev) out.push({ name, kind: KindCode.Counter, value: v - prev });
    }
  }
}
