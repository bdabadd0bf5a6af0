// The core's HTTP server: Hono on node:http with the timeouts its routes need.
//
// Node ends a request whose body has not fully arrived 300 s after it began (requestTimeout).
// An import reads its body only as fast as the core stores it (POST /api/v1/import: weeks of
// history take longer than 5 minutes), and was cut with a bare 408. Here no request has a
// deadline of its own; a connection with no traffic either way for socketIdleMs is closed
// instead (a client that went away, or a slow one holding a body buffer: core/buffers.ts bounds
// what those hold). Live streams send a keep-alive every 15 s; an import waiting on a busy
// core waits at most 120 s between reads.

import { serve } from '@hono/node-server';
import type { Server } from 'node:http';

export const httpServerLimits = {
  /** A connection silent this long both ways is closed (headers must still come within Node's 60 s). */
  socketIdleMs: 300_000,
};

/** Serves `fetch` on host:port; resolves with the server and its port, rejects when it cannot listen. */
export function serveHttp(fetch: (req: Request) => Response | Promise<Response>, host: string, port: number, socketIdleMs: number = httpServerLimits.socketIdleMs): Promise<{ server: Server; port: number }> {
  return new Promise((resolve, reject) => {
    const server = serve({ fetch, hostname: host, port, serverOptions: { requestTimeout: 0 } }, (info) => resolve({ server, port: info.port })) as Server;
    // Without a 'timeout' listener, node:http destroys a socket idle this long.
    server.setTimeout(socketIdleMs);
    server.once('error', reject);
  });
}
