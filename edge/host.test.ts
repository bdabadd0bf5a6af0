import { describe, expect, it } from 'vitest';
import { HostCollector, parseCpu, parseDiskstats, parseLoad, parseMeminfo, parseNetDev } from './host.js';

describe('host /proc parsers', () => {
  it('read the fields they promise', () => {
    expect(parseCpu('cpu  10 1 5 80 2 0 1 1 0 0\ncpu0 1 2 3 4 5 6 7 8\n')).toEqual([10, 1, 5, 80, 2, 0, 1, 1]);
    expect(parseCpu('garbage')).toBeNull();
    expect(parseLoad('0.52 0.40 0.33 1/234 5678\n')).toEqual([0.52, 0.4, 0.33]);
    expect(parseMeminfo('MemTotal:       1000 kB\nMemAvailable:    250 kB\n').get('MemAvailable')).toBe(250 * 1024);
    const net = 'Inter-|   Receive\n face |bytes\n    lo: 999 9 0 0 0 0 0 0 999 9 0 0 0 0 0 0\n  eth0: 100 2 0 1 0 0 0 0 300 4 0 0 0 0 0 0\n';
    expect(parseNetDev(net)).toMatchObject({ rx_bytes: 100, rx_packets: 2, rx_dropped: 1, tx_bytes: 300, tx_packets: 4 });
    const disk = '   8       0 sda 10 0 20 0 30 0 40 0 0 5 0\n   8       1 sda1 99 0 99 0 99 0 99 0 0 99 0\n   7       0 loop0 9 0 9 0 9 0 9 0 0 9 0\n';
    expect(parseDiskstats(disk)).toEqual({ reads: 10, read_bytes: 20 * 512, writes: 30, write_bytes: 40 * 512, io_ms: 5 });
  });

  it('collects real readings from this machine, counters as deltas from the second reading on', async () => {
    const h = new HostCollector();
    const first = await h.collect();
    expect(first.find((s) => s.name === 'host.load.1')).toBeDefined();
    expect(first.find((s) => s.name === 'host.cpu.total')).toBeUndefined();
    await new Promise((r) => setTimeout(r, 200));
    const second = await h.collect();
    const cpu = second.find((s) => s.name === 'host.cpu.total');
    expect(cpu?.value).toBeGreaterThanOrEqual(0);
    expect(cpu?.value).toBeLessThanOrEqual(100);
    expect(second.find((s) => s.name === 'host.mem.used_bytes')!.value).toBeGreaterThan(0);
    expect(second.find((s) => s.name === 'host.net.rx_bytes')!.value).toBeGreaterThanOrEqual(0);
    expect(h.errors).toBe(0);
  });
});
