// Cost of authentication (issue 8): HMAC-SHA256 signing and checking of a datagram at the sizes
// edges send, and the core's token check with a realistic tokens file. In process, after warm-up.

import { randomBytes } from 'node:crypto';
import { open, parseKeyFile, sign } from '../schema/auth.js';
import { hashToken, parseTokens, TokenSet } from '../core/auth.js';
import type { Figure } from './bench-edge.js';

/** Mean µs per call of `f` over `n` calls, after `n / 10` unmeasured ones. */
function perCallUs(n: number, f: () => void): number {
  for (let i = 0; i < n / 10; i++) f();
  const t = process.hrtime.bigint();
  for (let i = 0; i < n; i++) f();
  return Number(process.hrtime.bigint() - t) / n / 1000;
}

export function authFigures(): Figure[] {
  const keys = parseKeyFile(`1 ${randomBytes(32).toString('hex')} rack=r1\n`, 'bench');
  const out: Figure[] = [];
  for (const bytes of [1400, 8160]) {
    const frame = randomBytes(bytes);
    const signed = sign(keys, frame, Date.now());
    out.push({ name: `datagram HMAC-SHA256 sign, ${bytes} B frame`, value: perCallUs(100_000, () => sign(keys, frame, Date.now())), unit: 'µs' });
    out.push({ name: `datagram HMAC-SHA256 verify, ${bytes} B frame`, value: perCallUs(100_000, () => open(keys, signed)), unit: 'µs' });
  }
  const lines: string[] = [];
  let token = '';
  for (let i = 0; i < 1000; i++) {
    token = `apm_${randomBytes(32).toString('base64url')}`;
    lines.push(`${hashToken(token)} read t${i}`);
  }
  const set = new TokenSet(parseTokens(lines.join('\n'), 'bench'));
  out.push({ name: 'API token check (SHA-256, lookup, constant-time compare), 1,000 tokens', value: perCallUs(200_000, () => set.check(token)), unit: 'µs' });
  return out;
}
