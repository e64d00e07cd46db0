import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { serve } from '@hono/node-server';
import type { Hono } from 'hono';
import { ConfigError } from '../errors.js';

/** A gateway listening on a socket. */
export interface ListeningGateway {
  /** `http://127.0.0.1:41234` (the real port when asked for port 0). */
  url: string;
  port: number;
  /** Stops accepting connections, lets requests in progress finish (at most `graceMs`), then closes. */
  close(graceMs?: number): Promise<void>;
}

/**
 * Parses `gateway_listen`: `HOST:PORT`, `[IPv6]:PORT`, or `:PORT` (all interfaces).
 *
 * @example parseListen('127.0.0.1:8080') // { host: '127.0.0.1', port: 8080 }
 * @example parseListen('[::1]:0')        // { host: '::1', port: 0 }
 */
export function parseListen(value: string): { host: string; port: number } {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]\s]*)):(\d{1,5})$/.exec(value.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) {
    throw new ConfigError(`gateway_listen = ${value}: must be HOST:PORT (e.g. 127.0.0.1:8080, [::1]:8080, :8080)`, { key: 'gateway_listen' });
  }
  return { host: m[1] ?? (m[2] === '' ? '0.0.0.0' : m[2]!), port };
}

/** True for addresses only this machine can reach. */
export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/**
 * Serves a gateway app on `host:port` with @hono/node-server; resolves once it listens.
 *
 * @example const gw = await listen(app, { host: '127.0.0.1', port: 0 }); … await gw.close();
 */
export function listen(app: Pick<Hono, 'fetch'>, at: { host: string; port: number }): Promise<ListeningGateway> {
  return new Promise((resolve, reject) => {
    const server = serve({ fetch: app.fetch, hostname: at.host, port: at.port }, (info: AddressInfo) => {
      server.off('error', reject);
      const host = info.family === 'IPv6' ? `[${info.address}]` : info.address;
      resolve({
        url: `http://${host}:${info.port}`,
        port: info.port,
        close: (graceMs = 10_000) =>
          new Promise<void>((done) => {
            const timer = setTimeout(() => server.closeAllConnections(), graceMs);
            server.close(() => {
              clearTimeout(timer);
              done();
            });
            server.closeIdleConnections();
          }),
      });
    }) as Server;
    server.once('error', reject);
  });
}
