import { chmod, mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Simulator } from '../sim/server.js';
import { httpsSim, vmbackup, workspace } from '../helpers/cli.js';
import type { Workspace } from '../helpers/cli.js';
import { pool, vm } from '../sim/fixtures.js';

/*
 * Run reports from the real command against the simulator: a JSON POST to a real local HTTP
 * server, and mail through `sendmail` — a program on PATH that records its arguments and
 * stdin, as cron's sendmail would receive them.
 */

interface Received {
  headers: IncomingMessage['headers'];
  url: string;
  body: Record<string, unknown>;
}

/** A local HTTP server: records each POST, answers as `answer` says (`hang`: never). */
async function reportServer(): Promise<{ url: string; received: Received[]; answer: number | 'hang'; close(): Promise<void> }> {
  const state = { received: [] as Received[], answer: 200 as number | 'hang' };
  const hanging: ServerResponse[] = [];
  const server: Server = createServer((req, res) => {
    let body = '';
    req.on('data', (d: Buffer) => (body += d.toString()));
    req.on('end', () => {
      state.received.push({ headers: req.headers, url: req.url ?? '', body: JSON.parse(body) as Record<string, unknown> });
      if (state.answer === 'hang') hanging.push(res);
      else res.writeHead(state.answer).end('ok');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    get received() {
      return state.received;
    },
    get answer() {
      return state.answer;
    },
    set answer(a) {
      state.answer = a;
    },
    close: async () => {
      for (const r of hanging) r.destroy();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

describe('run reports: report_url and report_email', () => {
  let sim: Simulator;
  let ws: Workspace;
  let server: Awaited<ReturnType<typeof reportServer>>;
  let bin: string;
  let mailLog: string;

  beforeAll(async () => {
    sim = await httpsSim(pool([vm('web1', 'Halted', 1), vm('db1', 'Halted', 1)]));
    ws = await workspace();
    server = await reportServer();
    bin = await mkdtemp(path.join(os.tmpdir(), 'vmb-fake-sendmail-'));
    mailLog = path.join(bin, 'mail.log');
    // What cron's sendmail gets: its arguments, then the message on stdin.
    await writeFile(path.join(bin, 'sendmail'), `#!/bin/sh\n{ echo "ARGS: $*"; cat; echo "--END--"; } >> ${JSON.stringify(mailLog)}\n`);
    await chmod(path.join(bin, 'sendmail'), 0o755);
  }, 60_000);
  afterAll(async () => {
    await server?.close();
    await sim?.close();
  });

  const run = (env: Record<string, string>, ...extra: string[]) =>
    vmbackup([...ws.args(sim), '-e', 'web1', '-e', 'db1', ...extra], { env: { PATH: `${bin}:${process.env.PATH ?? '/usr/bin:/bin'}`, VMBACKUP_VM_RETRIES: '0', ...env } });

  it('a failed run: the URL gets JSON with a text field and the failed VM first, sendmail gets the same text; exit 1 as without reports', async () => {
    sim.faults.add({ http: 'export', vm: 'db1', always: true, action: { kind: 'http-500' } });
    const r = await run({ VMBACKUP_REPORT_URL: `${server.url}/hooks/abc`, VMBACKUP_REPORT_EMAIL: 'ops@example.org, backup@example.org' });
    sim.faults.clear();
    expect(r.code, r.stderr).toBe(1);
    expect(server.received).toHaveLength(1);
    const post = server.received[0]!;
    expect(post.url).toBe('/hooks/abc');
    expect(post.headers['content-type']).toBe('application/json');
    const body = post.body as { text: string; status: string; exitCode: number; failed: { vm: string; error: string }[]; vms: { total: number; failed: number }; runId: string };
    expect(body.status).toBe('error');
    expect(body.exitCode).toBe(1);
    expect(body.vms).toMatchObject({ total: 2, failed: 1 });
    expect(body.failed.map((f) => f.vm)).toEqual(['db1']);
    const lines = body.text.split('\n');
    expect(lines[0]).toMatch(new RegExp(`^vmbackup run ${body.runId}( of pool \\S+)?: error, 1 of 2 VMs failed$`));
    // VmBackup's wording, as cron mail prints it, the failed VM before the others.
    const errorLine = lines.findIndex((l) => l.startsWith('ERROR: vm-export db1: '));
    expect(errorLine).toBeGreaterThan(0);
    expect(body.text).toContain('VmBackup vm-export Summary - S:1 W:0 E:1');
    expect(body.text).toContain('>> Success with Errors <<');
    expect(r.stdout).toContain(lines.slice(errorLine).join('\n').split('\nVmBackup')[0]!);
    // Long headers are folded (RFC 5322): unfolded to compare.
    const mail = (await readFile(mailLog, 'utf8')).replace(/\n /g, ' ');
    expect(mail).toMatch(/^ARGS: -i -f vmbackup@\S+ ops@example\.org backup@example\.org$/m);
    expect(mail).toContain(`Subject: ${lines[0]}`);
    expect(mail).toMatch(/^To: ops@example\.org, backup@example\.org$/m);
    expect(mail).toContain('ERROR: vm-export db1: ');
    expect(mail).toContain('VmBackup vm-export Summary - S:1 W:0 E:1');
  }, 120_000);

  it('report_on = failure sends nothing after a good run; always does', async () => {
    const before = server.received.length;
    const quiet = await run({ VMBACKUP_REPORT_URL: server.url, VMBACKUP_REPORT_ON: 'failure' });
    expect(quiet.code, quiet.stderr).toBe(0);
    expect(server.received.length).toBe(before);
    const always = await run({ VMBACKUP_REPORT_URL: server.url, VMBACKUP_REPORT_ON: 'always' });
    expect(always.code, always.stderr).toBe(0);
    expect(server.received.length).toBe(before + 1);
    expect(server.received.at(-1)!.body).toMatchObject({ status: 'success', exitCode: 0, failed: [], vms: { total: 2, failed: 0 } });
  }, 120_000);

  it('a report URL answering 500, or not at all: a warning says so, the exit code is the run\'s; the URL (with its token) from report_url_file is never printed', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'vmb-report-url-'));
    const urlFile = path.join(dir, 'report-url');
    await writeFile(urlFile, `${server.url}/hooks/T0KEN-s3cret-value\n`);
    await chmod(urlFile, 0o600);
    server.answer = 500;
    const failed = await run({ VMBACKUP_REPORT_URL_FILE: urlFile, VMBACKUP_REPORT_ON: 'always' });
    expect(failed.code, failed.stderr).toBe(0);
    expect(server.received.at(-1)!.url).toBe('/hooks/T0KEN-s3cret-value');
    expect(failed.stderr + failed.stdout).toContain(`report_url (${server.url}): the run's report was not delivered: it answered HTTP 500`);
    expect(failed.stderr + failed.stdout).not.toContain('T0KEN');
    server.answer = 'hang';
    const hung = await run({ VMBACKUP_REPORT_URL_FILE: urlFile, VMBACKUP_REPORT_ON: 'always', VMBACKUP_REPORT_TIMEOUT: '2' });
    expect(hung.code, hung.stderr).toBe(0);
    expect(hung.stderr + hung.stdout).toContain(`report_url (${server.url}): the run's report was not delivered: no answer within 2 s`);
    server.answer = 200;
    // A file that is not there is a config error before anything runs.
    const missing = await run({ VMBACKUP_REPORT_URL_FILE: path.join(dir, 'nope') });
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain(`report_url_file ${path.join(dir, 'nope')} cannot be read (ENOENT)`);
  }, 120_000);

  it('a run that cannot start (the pool refuses the password) is reported too: status fatal, exit 2', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'vmb-report-fatal-'));
    const wrong = path.join(dir, 'password');
    await writeFile(wrong, 'not-the-password\n', { mode: 0o600 });
    const args = ws.args(sim);
    args[args.indexOf('--password-file') + 1] = wrong;
    const before = server.received.length;
    const r = await vmbackup([...args, '-e', 'web1'], { env: { PATH: `${bin}:${process.env.PATH ?? '/usr/bin:/bin'}`, VMBACKUP_REPORT_URL: server.url } });
    expect(r.code, r.stderr).toBe(2);
    expect(server.received.length).toBe(before + 1);
    const body = server.received.at(-1)!.body as { status: string; exitCode: number; text: string; fatal: string };
    expect(body).toMatchObject({ status: 'fatal', exitCode: 2 });
    expect(body.text.split('\n')[0]).toMatch(/^vmbackup run \S+: fatal, the run could not start$/);
    expect(body.text).toContain(`ERROR: the run could not start: ${body.fatal}`);
    expect(r.stderr).toContain(body.fatal);
  }, 60_000);

  it('sendmail missing: a warning names it, the exit code is the run\'s', async () => {
    const empty = await mkdtemp(path.join(os.tmpdir(), 'vmb-no-sendmail-'));
    await mkdir(empty, { recursive: true });
    sim.faults.add({ http: 'export', vm: 'db1', always: true, action: { kind: 'http-500' } });
    const r = await vmbackup([...ws.args(sim), '-e', 'web1', '-e', 'db1'], { env: { PATH: empty, VMBACKUP_VM_RETRIES: '0', VMBACKUP_REPORT_EMAIL: 'ops@example.org' } });
    sim.faults.clear();
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr + r.stdout).toContain("report_email: the run's report was not mailed: no sendmail program on PATH");
  }, 120_000);
});
