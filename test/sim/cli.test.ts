import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { connect, createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { smallPool } from './fixtures.js';
import { jsonCall } from './test-helpers.js';

const BIN = join(process.cwd(), 'bin/vmbackup-sim.js');
const children: ChildProcess[] = [];

afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null) c.kill('SIGKILL');
});

interface Started {
  child: ChildProcess;
  url: string;
  stdout: () => string;
}

/** Starts the CLI and resolves with the URL of its "listening on" line. */
function start(args: string[]): Promise<Started> {
  const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let out = '';
  let err = '';
  return new Promise((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /listening on (\S+)/.exec(out);
      if (m !== null) resolve({ child, url: m[1]!, stdout: () => out });
    });
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.on('exit', (code) => reject(new Error(`exited ${code}: ${err}`)));
  });
}

/** Runs the CLI to completion. */
function runToEnd(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve) => child.on('exit', (code) => resolve({ code, stdout, stderr })));
}

async function poolFile(content: unknown): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'sim-cli-'));
  const file = join(dir, 'pool.json');
  await writeFile(file, typeof content === 'string' ? content : JSON.stringify(content));
  return file;
}

describe('vmbackup-sim', () => {
  it('prints "listening on <url>", serves the pool, and stops cleanly on SIGTERM', async () => {
    const { child, url } = await start(['--pool', await poolFile(smallPool()), '--port', '0']);
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const login = await jsonCall(url, 'session.login_with_password', ['root', 'secret']);
    expect((login.value as { result: string }).result).toMatch(/^OpaqueRef:/);
    const state = (await (await fetch(`${url}/_sim/state`)).json()) as { vms: { name_label: string }[] };
    expect(state.vms.map((v) => v.name_label)).toContain('web1');
    child.kill('SIGTERM');
    const code = await new Promise((r) => child.on('exit', r));
    expect(code).toBe(0);
  });

  it('serves NBD on --nbd-port, and says where', async () => {
    const free = await new Promise<number>((resolve) => {
      const probe = createServer().listen(0, '127.0.0.1', () => {
        const port = (probe.address() as AddressInfo).port;
        probe.close(() => resolve(port));
      });
    });
    const pool = { ...smallPool(), networks: [{ name_label: 'Storage', purpose: ['insecure_nbd'] }] };
    const { stdout } = await start(['--pool', await poolFile(pool), '--nbd-port', String(free)]);
    expect(stdout()).toContain(`NBD on port ${free} of every host address`);
    // A real NBD server answers there: its greeting starts with NBDMAGIC.
    const greeting = await new Promise<Buffer>((resolve, reject) => {
      const socket = connect(free, '127.0.0.1');
      socket.once('data', (d: Buffer) => {
        socket.destroy();
        resolve(d);
      });
      socket.once('error', reject);
    });
    expect(greeting.subarray(0, 8).toString('latin1')).toBe('NBDMAGIC');
    expect((await runToEnd(['--generate', '1', '--nbd-port', '70000'])).stderr).toMatch(/--nbd-port: 70000 is not a port number/);
  });

  it('serves TLS with --https and prints where the CA certificate is', async () => {
    const { url, stdout } = await start(['--generate', '2', '--https']);
    expect(url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    const ca = /CA certificate: (\S+)/.exec(stdout())?.[1];
    expect(ca).toBeDefined();
    expect(existsSync(ca!)).toBe(true);
  });

  it.each(['SIGTERM', 'SIGINT'] as const)('removes its temporary CA and keys when stopped with %s', async (signal) => {
    const { child, stdout } = await start(['--generate', '1', '--https']);
    const ca = /CA certificate: (\S+)/.exec(stdout())![1]!;
    expect(existsSync(join(ca, '..', 'ca.key'))).toBe(true);
    child.kill(signal);
    expect(await new Promise((r) => child.on('exit', (code, sig) => r([code, sig])))).toEqual([0, null]);
    expect(existsSync(join(ca, '..'))).toBe(false);
  });

  it('keeps a --tls-dir it was given', async () => {
    const dir = join(await mkdtemp(join(tmpdir(), 'sim-cli-')), 'tls');
    const { child } = await start(['--generate', '1', '--https', '--tls-dir', dir]);
    child.kill('SIGTERM');
    expect(await new Promise((r) => child.on('exit', r))).toBe(0);
    expect(existsSync(join(dir, 'ca.crt'))).toBe(true);
  });

  it('--generate N makes N small VMs (added to a pool file when given)', async () => {
    const { url } = await start(['--generate', '4']);
    const state = (await (await fetch(`${url}/_sim/state`)).json()) as { vms: { name_label: string; is_control_domain: boolean; is_a_template: boolean }[] };
    expect(state.vms.filter((v) => !v.is_control_domain && !v.is_a_template).map((v) => v.name_label)).toEqual(['vm-001', 'vm-002', 'vm-003', 'vm-004']);
    const both = await start(['--pool', await poolFile(smallPool()), '--generate', '2']);
    const s2 = (await (await fetch(`${both.url}/_sim/state`)).json()) as { vms: { name_label: string }[] };
    expect(s2.vms.map((v) => v.name_label)).toEqual(expect.arrayContaining(['web1', 'vm-001', 'vm-002']));
  });

  it.each([
    ['a missing key', { ...smallPool(), credentials: { user: 'root' } }, /credentials\.password/],
    ['a bad enum', { ...smallPool(), vms: [{ name_label: 'x', power_state: 'On', disks: [], vifs: [] }] }, /vms\[0\]\.power_state: .*"Halted"/],
    ['a bad fill', { ...smallPool(), vms: [{ name_label: 'x', power_state: 'Halted', disks: [{ device: 'xvda', size_mib: 1, fill: 'random' }], vifs: [] }] }, /vms\[0\]\.disks\[0\]\.fill/],
    ['an unknown key', { ...smallPool(), hosst: [] }, /hosst/],
    ['a dangling SR name', { ...smallPool(), vms: [{ name_label: 'x', power_state: 'Halted', disks: [{ device: 'xvda', size_mib: 1, fill: 'zero', sr: 'nope' }], vifs: [] }] }, /vms\[0\]\.disks\[0\]\.sr: no SR named "nope"/],
    ['broken JSON', '{"credentials":', /not valid JSON/],
  ])('exits 2 with a message naming the problem for %s', async (_label, content, message) => {
    const file = await poolFile(content);
    const r = await runToEnd(['--pool', file]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(message);
    expect(r.stderr).toContain(file);
  });

  it('exits 2 on bad usage and 0 on --help', async () => {
    expect((await runToEnd(['--port', 'x', '--generate', '1'])).code).toBe(2);
    expect((await runToEnd([])).stderr).toMatch(/give --pool FILE or --generate N/);
    expect((await runToEnd(['--pool', '/nonexistent/pool.json'])).stderr).toMatch(/cannot be read \(ENOENT\)/);
    const help = await runToEnd(['--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^Usage: vmbackup-sim/);
  });
});
