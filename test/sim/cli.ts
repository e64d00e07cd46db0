/**
 * `vmbackup-sim`: serves a simulated XenServer/XCP-ng pool until interrupted.
 *
 * @example
 *   vmbackup-sim --pool pool.json --port 0 --https
 *   # vmbackup-sim: pool "lab" (2 hosts, 5 VMs), user root
 *   # CA certificate: /tmp/vmbackup-sim-tls-x/ca.crt
 *   # listening on https://127.0.0.1:44321
 */
import { parseArgs } from 'node:util';
import { PoolSpecError, generatePoolSpec, loadPoolSpec, type PoolSpec } from './pool-spec.js';
import { startSimulator } from './server.js';

const USAGE = `Usage: vmbackup-sim (--pool FILE | --generate N) [options]

Serves a simulated XenServer/XCP-ng pool (XML-RPC, JSON-RPC, export/import handlers) for tests.

Options:
  --pool FILE       pool description (JSON; see test/sim/README.md)
  --generate N      add N generated VMs (small disks); alone, a one-host pool with N VMs
  --port N          port shared by every host address (default 0: a free port)
  --nbd-port N      port of the NBD server on every host address (default 0: a free port;
                    XAPI's is 10809); served once a network has purpose nbd or insecure_nbd
  --https           serve TLS with a generated CA; its certificate path is printed
  --tls-dir DIR     where to write the CA and server certificate (default a temp dir)
  --bind A,B,...    listen addresses of the hosts, in order (default 127.0.0.1, 127.0.0.2, ...)
  -h, --help        this help

Prints "listening on <url>" once connections are accepted. Control endpoints:
GET /_sim/state, GET|POST|DELETE /_sim/faults, POST /_sim/sessions/invalidate.
`;

class UsageError extends Error {}

function integer(name: string, value: string | undefined, min: number): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value) || Number(value) < min) throw new UsageError(`--${name}: expected an integer >= ${min}, got ${JSON.stringify(value)}`);
  return Number(value);
}

export async function main(argv: string[]): Promise<number> {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        pool: { type: 'string' },
        generate: { type: 'string' },
        port: { type: 'string' },
        'nbd-port': { type: 'string' },
        https: { type: 'boolean' },
        'tls-dir': { type: 'string' },
        bind: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (error) {
    process.stderr.write(`vmbackup-sim: ${(error as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (values.help === true) {
    process.stdout.write(USAGE);
    return 0;
  }
  let spec: PoolSpec;
  let port: number | undefined;
  let nbdPort: number | undefined;
  try {
    port = integer('port', values.port as string | undefined, 0);
    if (port !== undefined && port > 65535) throw new UsageError(`--port: ${port} is not a port number`);
    nbdPort = integer('nbd-port', values['nbd-port'] as string | undefined, 0);
    if (nbdPort !== undefined && nbdPort > 65535) throw new UsageError(`--nbd-port: ${nbdPort} is not a port number`);
    const generate = integer('generate', values.generate as string | undefined, 1);
    if (values.pool === undefined && generate === undefined) throw new UsageError('give --pool FILE or --generate N');
    if (values.pool !== undefined) {
      spec = await loadPoolSpec(values.pool as string);
      if (generate !== undefined) spec = generatePoolSpec(generate, spec);
    } else {
      spec = generatePoolSpec(generate!);
    }
  } catch (error) {
    if (error instanceof UsageError) {
      process.stderr.write(`vmbackup-sim: ${error.message}\n\n${USAGE}`);
      return 2;
    }
    if (error instanceof PoolSpecError) {
      process.stderr.write(`vmbackup-sim: ${error.message}\n`);
      return 2;
    }
    throw error;
  }

  // Listen for the stop signals before anything is started or printed: a supervisor (or a
  // test) may signal as soon as it reads "listening on".
  const stopped = new Promise<void>((resolve) => {
    process.once('SIGINT', () => resolve());
    process.once('SIGTERM', () => resolve());
  });
  const bind = typeof values.bind === 'string' ? values.bind.split(',').map((s) => s.trim()) : undefined;
  const sim = await startSimulator({
    pool: spec,
    ...(port === undefined ? {} : { port }),
    ...(nbdPort === undefined ? {} : { nbdPort }),
    https: values.https === true,
    ...(bind === undefined ? {} : { bind }),
    ...(typeof values['tls-dir'] === 'string' ? { tlsDir: values['tls-dir'] } : {}),
  });
  const plainVms = spec.vms.length;
  process.stdout.write(`vmbackup-sim: pool "${spec.name_label}" (${spec.hosts.length} host${spec.hosts.length === 1 ? '' : 's'}, ${plainVms} VMs), user ${spec.credentials.user}\n`);
  for (const h of sim.hosts.slice(1)) process.stdout.write(`vmbackup-sim: member ${h.name} at ${h.url}\n`);
  if (sim.caFile !== undefined) process.stdout.write(`CA certificate: ${sim.caFile}\n`);
  process.stdout.write(`vmbackup-sim: NBD on port ${sim.nbdPort} of every host address\n`);
  process.stdout.write(`vmbackup-sim: master ${sim.hosts[0]!.name} listening on ${sim.url}\n`);

  await stopped;
  await sim.close();
  return 0;
}

process.exitCode = await main(process.argv.slice(2));
