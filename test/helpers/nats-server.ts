import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

/** Debian's nats-server (2.9): `npm test` installs the `nats-server` package (test/provision.ts). */
export const NATS_SERVER = process.env.NATS_SERVER ?? (process.platform === 'linux' ? '/usr/sbin/nats-server' : 'nats-server');

export interface NatsServerOptions {
  /** Extra lines for the server's config file (authorization, tls, limits …). */
  config?: string;
  /** The whole config file instead (a cluster node): given the port and store dir to use. */
  template?: (at: { port: number; storeDir: string }) => string;
  /** The client port; default a free one. */
  port?: number;
  /** Client URL scheme; `tls` when the config turns TLS on. Default `nats`. */
  scheme?: 'nats' | 'tls';
}

/**
 * A real `nats-server` with JetStream, on a free port of 127.0.0.1 and a temp store dir, for
 * one test file. `restart()` brings it back on the same port with the same store, as an
 * operator's restart would.
 *
 * @example
 *   const nats = await startNatsServer();
 *   // … nats.url is `nats://127.0.0.1:<port>`
 *   await nats.restart({ downMs: 1000 });
 *   await nats.stop();
 */
export interface NatsServer {
  url: string;
  port: number;
  storeDir: string;
  /** The config file the server runs with. */
  configFile: string;
  /** Stops the server (SIGTERM: a clean shutdown, or SIGKILL), waits `downMs`, starts it again. */
  restart(opts?: { signal?: 'SIGTERM' | 'SIGKILL'; downMs?: number }): Promise<void>;
  /** Stops the server and removes its store. */
  stop(): Promise<void>;
  /** What the server logged (for failure messages). */
  log(): string;
}

export async function startNatsServer(opts: NatsServerOptions = {}): Promise<NatsServer> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vmb-nats-'));
  const storeDir = path.join(dir, 'store');
  const port = opts.port ?? (await freePort());
  const configFile = path.join(dir, 'nats-server.conf');
  await writeFile(
    configFile,
    opts.template?.({ port, storeDir }) ??
      [`listen: 127.0.0.1:${port}`, `server_name: test-${port}`, `jetstream {`, `  store_dir: ${JSON.stringify(storeDir)}`, `  max_memory_store: 256MB`, `  max_file_store: 8GB`, `}`, opts.config ?? '', ''].join('\n'),
  );
  let output = '';
  let child: ChildProcess | undefined;

  const launch = async (): Promise<void> => {
    const c = spawn(NATS_SERVER, ['-c', configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
    child = c;
    const ready = new Promise<void>((resolve, reject) => {
      const onData = (d: Buffer) => {
        output += d.toString();
        if (output.includes('Server is ready')) resolve();
      };
      c.stdout!.on('data', onData);
      c.stderr!.on('data', onData);
      c.once('error', reject);
      c.once('exit', (code) => reject(new Error(`nats-server exited with ${code}:\n${output.slice(-2000)}`)));
    });
    const timer = setTimeout(() => c.kill('SIGKILL'), 20_000);
    try {
      await ready;
      await waitAccepting(port);
    } finally {
      clearTimeout(timer);
    }
  };

  const halt = async (signal: 'SIGTERM' | 'SIGKILL'): Promise<void> => {
    const c = child;
    child = undefined;
    if (c === undefined || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => c.once('exit', () => resolve()));
    c.kill(signal);
    const timer = setTimeout(() => c.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  };

  await launch();
  return {
    url: `${opts.scheme ?? 'nats'}://127.0.0.1:${port}`,
    port,
    storeDir,
    configFile,
    async restart(r = {}) {
      await halt(r.signal ?? 'SIGTERM');
      if (r.downMs !== undefined && r.downMs > 0) await new Promise((res) => setTimeout(res, r.downMs));
      await launch();
    },
    async stop() {
      await halt('SIGTERM');
      await rm(dir, { recursive: true, force: true });
    },
    log: () => output,
  };
}

/** A TCP port nobody listens on right now. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** Resolves once the port answers with the server's INFO line. */
async function waitAccepting(port: number, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const socket = net.connect(port, '127.0.0.1');
      socket.setTimeout(1000);
      socket.once('data', (d) => {
        socket.destroy();
        resolve(d.toString().startsWith('INFO'));
      });
      socket.once('error', () => resolve(false));
      socket.once('timeout', () => {
        socket.destroy();
        resolve(false);
      });
    });
    if (ok) return;
    if (Date.now() > until) throw new Error(`nats-server on port ${port} does not accept connections`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
