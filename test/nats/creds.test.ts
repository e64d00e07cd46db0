import { access, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import type { Socket } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createAccount } from '@nats-io/jwt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLAIMS_BUCKET, EVENTS_STREAM, JOBS_STREAM, RUNS_BUCKET } from '../../infra/nats/jetstream.js';
import { openNats } from '../../runtime/bus/nats-connect.js';
import type { NatsSettings } from '../../runtime/bus/nats-connect.js';
import { ConfigError, ConnectionError } from '../../runtime/errors.js';
import { silentLogger } from '../../runtime/log.js';
import type { RunSummary } from '../../runtime/run/summary.js';
import { httpsSim, vmbackup, workspace } from '../helpers/cli.js';
import type { CliResult, Workspace } from '../helpers/cli.js';
import { natsOperator, writeCreds } from '../helpers/nats-operator.js';
import type { NatsOperator } from '../helpers/nats-operator.js';
import { startNatsServer } from '../helpers/nats-server.js';
import type { NatsServer } from '../helpers/nats-server.js';
import type { Simulator } from '../sim/server.js';
import { pool, vm } from '../sim/fixtures.js';
import { startWorker } from './workers.js';
import type { WorkerProcess } from './workers.js';

/**
 * `nats_creds_file` (a user JWT + nkey seed, as `nsc` writes it) against a real nats-server
 * in operator mode: an operator JWT, a MEMORY resolver preloaded with the accounts, JetStream
 * enabled for the vmbackup account by its JWT's limits. Workers, `run` and `invoke` connect
 * with the file, create vmbackup's streams in that account and do a backup; a wrong, absent
 * or unusable creds file ends the command by itself with exit 2 and a message naming it (a
 * hang would run into the test's timeout, not pass slowly); a creds file that cannot be used
 * fails before the command opens any connection.
 */
let op: NatsOperator;
let nats: NatsServer;
let sim: Simulator;
let ws: Workspace;
let dir: string;
/** The vmbackup account's worker user. */
let creds: string;
let credsText: string;
const workers: WorkerProcess[] = [];

beforeAll(async () => {
  op = await natsOperator({ accounts: { vmbackup: { jetstream: true }, 'no-jetstream': { jetstream: false } } });
  [nats, sim, ws, dir] = await Promise.all([startNatsServer({ config: op.config }), httpsSim(pool([vm('web1')])), workspace(), mkdtemp(path.join(os.tmpdir(), 'vmb-creds-'))]);
  credsText = await op.creds('vmbackup', 'vmbackup-worker');
  creds = await writeCreds(path.join(dir, 'vmbackup-worker.creds'), credsText);
});
afterAll(async () => {
  await Promise.all(workers.map((w) => w.stop(10_000)));
  await nats?.stop();
  await sim?.close();
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  if (ws !== undefined) await rm(ws.base, { recursive: true, force: true });
});

const settings = (extra: Partial<NatsSettings> = {}): NatsSettings => ({ nats_url: nats.url, concurrency: 2, ...extra }) as NatsSettings;

/** The user's JWT and seed, which no message may show. */
function secretsOf(text: string): string[] {
  const blocks = [...text.matchAll(/-{3,}[^\n]*-{3,}\n(.+)\n/g)].map((m) => m[1]!.trim());
  expect(blocks).toHaveLength(2);
  return blocks;
}

/** A command's failure as an operator reads it: exit 2 (it gave up by itself: not retried for ever), one line naming the problem, no stack trace, no secret. */
function expectCleanFailure(r: CliResult, secrets: string[] = []): void {
  expect(r.code, `exit code; stderr:\n${r.stderr}`).toBe(2);
  expect(r.stderr).not.toMatch(/^\s+at /m);
  for (const s of secrets) {
    expect(r.stderr).not.toContain(s);
    expect(r.stdout).not.toContain(s);
  }
}

/**
 * A NATS address that accepts TCP connections, counts them and never says a word: a command
 * that connected to it would wait for the server's INFO, so exit 2 with `accepted` 0 proves
 * it failed before connecting.
 */
async function silentNats(): Promise<{ url: string; accepted: () => number; close: () => Promise<void> }> {
  const sockets: Socket[] = [];
  const server = createServer((s) => sockets.push(s));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  return {
    url: `nats://127.0.0.1:${port}`,
    accepted: () => sockets.length,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

describe('nats_creds_file against nats-server in operator mode', () => {
  it('the creds file is in nsc\'s format, owner-only', async () => {
    expect(credsText).toMatch(/^-----BEGIN NATS USER JWT-----\neyJ[\w-]+\.[\w-]+\.[\w-]+\n------END NATS USER JWT------\n/);
    expect(credsText).toMatch(/\n-----BEGIN USER NKEY SEED-----\nSU[A-Z2-7]{56}\n------END USER NKEY SEED------\n$/);
    expect((await stat(creds)).mode & 0o777).toBe(0o600);
  });

  it('openNats connects with nats_creds_file and creates the streams and the buckets in the account; a second start changes nothing', async () => {
    // The server really is in operator mode: without credentials it refuses.
    const anonymous = await openNats(settings(), silentLogger(), { reconnectForever: false }).catch((e: unknown) => e);
    expect(anonymous).toBeInstanceOf(ConnectionError);
    expect((anonymous as ConnectionError).code).toBe('NATS_AUTH');

    const first = await openNats(settings({ nats_creds_file: creds }), silentLogger(), { reconnectForever: false, name: 'creds test' });
    try {
      expect(first.applied).toEqual({ [`stream ${JOBS_STREAM}`]: 'created', [`stream ${EVENTS_STREAM}`]: 'created', [`stream KV_${RUNS_BUCKET}`]: 'created', [`stream KV_${CLAIMS_BUCKET}`]: 'created' });
      expect(first.nc.info?.auth_required).toBe(true);
      const account = await (await first.nc.jetstreamManager()).getAccountInfo();
      expect(account.streams).toBe(4);
    } finally {
      await first.close();
    }
    // Another user of the same account sees the same streams.
    const other = await writeCreds(path.join(dir, 'other.creds'), await op.creds('vmbackup', 'vmbackup-cli'));
    const second = await openNats(settings({ nats_creds_file: other }), silentLogger(), { reconnectForever: false });
    try {
      expect(Object.values(second.applied)).toEqual(['unchanged', 'unchanged', 'unchanged', 'unchanged']);
    } finally {
      await second.close();
    }
  });

  it('a worker (nats_creds_file in its config file) serves jobs; run and invoke (VMBACKUP_NATS_CREDS_FILE) round-trip', async () => {
    const config = path.join(dir, 'vmbackup.cfg');
    await writeFile(config, `[vmbackup]\nnats_creds_file = ${creds}\n`);
    const w = startWorker([...ws.args(sim), '--nats', nats.url, '-c', config]);
    workers.push(w);
    await w.ready;
    expect(w.output()).toMatch(/worker ready: serving .* and the coordinator; NATS nats:\/\/127\.0\.0\.1:\d+;/);
    // The streams were there: the worker created nothing.
    expect(w.output()).not.toMatch(/NATS: stream .* (created|updated)/);

    const env = { VMBACKUP_NATS_CREDS_FILE: creds };
    const r = await vmbackup(['run', ...ws.args(sim), '--nats', nats.url, '-e', 'web1', '--json'], { env });
    expect(r.stderr).not.toMatch(/ERROR/);
    expect(r.code).toBe(0);
    const summary = JSON.parse(r.stdout) as RunSummary;
    expect(summary.categories['vm-export']).toEqual({ S: 1, W: 0, E: 0 });
    expect(summary.jobs.flatMap((j) => j.files.map((f) => f.format)).sort()).toEqual(['manifest', 'meta', 'xva']);
    for (const f of summary.jobs.flatMap((j) => j.files)) await access(f.path);

    const input = { backupDir: ws.exports, stamp: '20261126-083000', maxBackups: 2 };
    const inv = await vmbackup(['invoke', 'pool-db', ...ws.args(sim), '--nats', nats.url, '--input', JSON.stringify(input)], { env });
    expect(inv.stderr).not.toMatch(/ERROR/);
    expect(inv.code).toBe(0);
    const event = JSON.parse(inv.stdout) as { outcome: string; fn: string; output: { files: { name: string; path: string; size: number }[] } };
    expect(event).toMatchObject({ outcome: 'done', fn: 'pool-db' });
    expect(event.output.files.map((f) => f.name)).toEqual(['POOL_DB/metadata_20261126-083000.db']);
    expect((await stat(path.join(ws.exports, 'POOL_DB', 'metadata_20261126-083000.db'))).size).toBe(event.output.files[0]!.size);

    // Neither the JWT nor the seed is ever logged.
    const [jwt, seed] = secretsOf(credsText);
    const logFile = await readFile(path.join(ws.base, 'logs', 'vmbackup.log'), 'utf8');
    expect(logFile).toContain('worker ready');
    for (const text of [w.output(), r.stdout, r.stderr, inv.stdout, inv.stderr, logFile]) {
      expect(text).not.toContain(seed);
      expect(text).not.toContain(jwt);
    }
  });

  it('an absent creds file: exit 2 naming nats_creds_file and the file, before any connection', async () => {
    const absent = path.join(dir, 'no-such.creds');
    const silent = await silentNats();
    const [worker, run] = await Promise.all([
      vmbackup(['worker', ...ws.args(sim), '--nats', silent.url], { env: { VMBACKUP_NATS_CREDS_FILE: absent } }),
      vmbackup(['run', ...ws.args(sim), '--nats', silent.url, '-e', 'web1'], { env: { VMBACKUP_NATS_CREDS_FILE: absent } }),
    ]).finally(() => silent.close());
    for (const r of [worker, run]) expectCleanFailure(r);
    expect(silent.accepted()).toBe(0);
    // `run` reports as VmBackup's log does (ERROR:), the other commands as `vmbackup:`.
    expect(worker.stderr).toContain(`vmbackup: nats_creds_file ${absent} cannot be read (ENOENT)`);
    expect(run.stderr).toContain(`ERROR: nats_creds_file ${absent} cannot be read (ENOENT)`);
    // openNats says the same with a ConfigError carrying the key and the file.
    const error = await openNats(settings({ nats_creds_file: absent }), silentLogger()).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConfigError);
    expect(error).toMatchObject({ data: { key: 'nats_creds_file', file: absent } });
  });

  it('creds the server refuses (unknown account, expired user, none at all): exit 2, NATS refused the credentials', async () => {
    const unknownAccount = await op.creds(createAccount(), 'stranger');
    const expired = await op.creds('vmbackup', 'expired', {}, { exp: Math.floor(Date.now() / 1000) - 60 });
    const cases = [
      { name: 'a user of an account the operator never signed', file: await writeCreds(path.join(dir, 'unknown.creds'), unknownAccount), secrets: secretsOf(unknownAccount) },
      { name: 'an expired user JWT', file: await writeCreds(path.join(dir, 'expired.creds'), expired), secrets: secretsOf(expired) },
      { name: 'no credentials', file: undefined, secrets: [] },
    ];
    const results = await Promise.all(
      cases.map((c) => vmbackup(['worker', ...ws.args(sim), '--nats', nats.url], { env: c.file !== undefined ? { VMBACKUP_NATS_CREDS_FILE: c.file } : {} })),
    );
    results.forEach((r, i) => {
      const c = cases[i]!;
      expectCleanFailure(r, c.secrets);
      // It names the credential in use: the creds file, or that none is set.
      const named = c.file !== undefined ? `nats_creds_file ${c.file} \\(is its user signed by an account the server knows, and not expired\\?\\)` : 'none is set: the server wants nats_token_file, nats_user / nats_password_file or nats_creds_file';
      expect(r.stderr, c.name).toMatch(new RegExp(`^vmbackup: NATS at nats://127\\.0\\.0\\.1:\\d+ refused the credentials \\(AUTHORIZATION_VIOLATION\\): ${named}$`, 'm'));
    });
  });

  it('a file that is not a creds file: exit 2, saying so before any connection', async () => {
    // Only the JWT block (the seed cut off), and a file of something else altogether.
    const jwtOnly = credsText.slice(0, credsText.indexOf('*****'));
    const files = [await writeCreds(path.join(dir, 'jwt-only.creds'), jwtOnly), await writeCreds(path.join(dir, 'token.creds'), 'not-a-creds-file\n')];
    const silent = await silentNats();
    const results = await Promise.all(files.map((f) => vmbackup(['worker', ...ws.args(sim), '--nats', silent.url], { env: { VMBACKUP_NATS_CREDS_FILE: f } }))).finally(() => silent.close());
    expect(silent.accepted()).toBe(0);
    for (const r of results) {
      expectCleanFailure(r, secretsOf(credsText));
      expect(r.stderr).toMatch(/^vmbackup: nats_creds_file \S+ is not a NATS credentials file: it needs the user JWT block and the nkey seed block, as nsc writes them/m);
    }
  });

  it('a user of an account without JetStream: exit 2, NATS_NO_JETSTREAM', async () => {
    const text = await op.creds('no-jetstream', 'vmbackup-worker');
    const file = await writeCreds(path.join(dir, 'no-jetstream.creds'), text);
    const r = await vmbackup(['worker', ...ws.args(sim), '--nats', nats.url], { env: { VMBACKUP_NATS_CREDS_FILE: file } });
    expectCleanFailure(r, secretsOf(text));
    // The server has JetStream; the account's JWT has no JetStream limits: the hint says so.
    expect(r.stderr).toMatch(/^vmbackup: NATS at nats:\/\/127\.0\.0\.1:\d+ has no JetStream for this connection \(503\): the account of nats_creds_file needs JetStream limits in its JWT/m);
  });

  it('a user denied the JetStream API: NATS_NO_JETSTREAM with the permissions violation', async () => {
    const file = await writeCreds(path.join(dir, 'denied.creds'), await op.creds('vmbackup', 'no-js-api', { pub: { deny: ['$JS.API.>'] } }));
    const error = await openNats(settings({ nats_creds_file: file }), silentLogger()).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConnectionError);
    expect((error as ConnectionError).code).toBe('NATS_NO_JETSTREAM');
    expect((error as Error).message).toContain('Permissions Violation for Publish to "$JS.API.INFO"');
  });
});
