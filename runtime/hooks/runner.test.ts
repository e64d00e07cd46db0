import { appendFileSync, readFileSync } from 'node:fs';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { MemoryBus } from '../bus/memory.js';
import { silentLogger } from '../log.js';
import type { PostVmEvent, PreVmEvent, RunStartEvent } from './event.js';
import { createHookRunner, noHooks } from './runner.js';
import type { HookConfig } from './runner.js';

let dir: string;
let server: Server;
let url: string;
/** What the HTTP receiver answers next: status and body. */
let httpAnswer: { status: number; body: string } = { status: 204, body: '' };
let order: string;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'vmb-hook-runner-'));
  server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      appendFileSync(order, 'http\n');
      res.writeHead(httpAnswer.status).end(httpAnswer.body);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
});
afterAll(async () => {
  await new Promise((r) => server.close(r));
  await rm(dir, { recursive: true, force: true });
});

let bus: MemoryBus;
let n = 0;
beforeEach(() => {
  bus = new MemoryBus();
  order = path.join(dir, `order-${++n}`);
  httpAnswer = { status: 204, body: '' };
});
afterEach(async () => bus.close());

/** A command hook: appends `command` to the order file, then runs `body`. */
async function command(body: string): Promise<string[]> {
  const file = path.join(dir, `cmd-${n}-${Math.random().toString(16).slice(2)}.sh`);
  await writeFile(file, `#!/bin/sh\necho command >> "${order}"\n${body}\n`);
  await chmod(file, 0o755);
  return [file];
}

async function natsReplies(answer: () => Promise<unknown>): Promise<void> {
  await bus.reply('vmbackup.hooks.pre-vm', async () => {
    appendFileSync(order, 'nats\n');
    return answer();
  });
  await bus.reply('vmbackup.hooks.post-vm', async () => {
    appendFileSync(order, 'nats\n');
    return answer();
  });
}

function ran(): string[] {
  try {
    return readFileSync(order, 'utf8').trim().split('\n').filter(Boolean);
  } catch {
    return [];
  }
}

/**
 * Hooks on a budget no test waits out: a test of hook_timeout sets its own `timeoutMs`; the
 * others must not see a timeout warning because the machine is busy.
 */
function config(extra: Partial<HookConfig>): HookConfig {
  return { commands: {}, urls: {}, secret: 's', nats: false, natsReplies: 1, timeoutMs: 30_000, onTimeout: 'continue', onFailure: 'continue', ...extra };
}

const pre: PreVmEvent = {
  point: 'pre-vm',
  runId: 'r1',
  at: '2026-11-26T08:30:02.000Z',
  jobId: 'vm.u1',
  try: 1,
  vm: { uuid: 'u1', name: 'db1' },
  backupDir: '/b',
  folder: 'db1',
  mode: 'vm',
  stamp: '20261126-083000',
};
const post: PostVmEvent = { ...pre, point: 'post-vm', outcome: { status: 'success', files: [], bytes: 0, warnings: [] } };

const deps = () => ({ log: silentLogger(), env: { PATH: process.env.PATH }, bus, killGraceMs: 200 });

describe('createHookRunner', () => {
  it('with nothing configured is noHooks: continue', async () => {
    const runner = createHookRunner(config({}), deps());
    expect(runner).toBe(noHooks);
    expect(await runner.run('pre-vm', pre)).toEqual({ decision: 'continue', reasons: [], warnings: [] });
  });

  it('runs command, HTTP, NATS at pre-vm, and the reverse at post-vm', async () => {
    await natsReplies(async () => ({ decision: 'continue' }));
    const runner = createHookRunner(config({ commands: { 'pre-vm': await command('exit 0'), 'post-vm': await command('exit 0') }, urls: { 'pre-vm': url, 'post-vm': url }, nats: true }), deps());
    expect(await runner.run('pre-vm', pre)).toEqual({ decision: 'continue', reasons: [], warnings: [] });
    expect(ran()).toEqual(['command', 'http', 'nats']);
    await rm(order);
    expect(await runner.run('post-vm', post)).toEqual({ decision: 'continue', reasons: [], warnings: [] });
    expect(ran()).toEqual(['nats', 'http', 'command']);
  });

  it('at pre-vm the first abort wins and the kinds after it do not run', async () => {
    await natsReplies(async () => ({ decision: 'continue' }));
    const runner = createHookRunner(config({ commands: { 'pre-vm': await command('echo "replica lagging"; exit 3') }, urls: { 'pre-vm': url }, nats: true }), deps());
    expect(await runner.run('pre-vm', pre)).toEqual({ decision: 'abort', reasons: ['pre-vm command hook: replica lagging'], warnings: [] });
    expect(ran()).toEqual(['command']);
  });

  it('at post-vm an abort is a warning and every kind runs', async () => {
    await natsReplies(async () => ({ decision: 'abort', reason: 'too late' }));
    httpAnswer = { status: 409, body: 'no' };
    const runner = createHookRunner(config({ commands: { 'post-vm': await command('exit 3') }, urls: { 'post-vm': url }, nats: true }), deps());
    const r = await runner.run('post-vm', post);
    expect(r.decision).toBe('continue');
    expect(r.reasons).toEqual([]);
    expect(r.warnings).toEqual([
      'post-vm nats hook answered abort (too late): ignored, a post-vm hook cannot abort',
      'post-vm http hook answered abort (no): ignored, a post-vm hook cannot abort',
      expect.stringMatching(/^post-vm command hook answered abort \(cmd-.*exited with 3\): ignored/),
    ]);
    expect(ran()).toEqual(['nats', 'http', 'command']);
  });

  // The policies: [what happens, hooks_on_failure, hooks_on_timeout, decision, reason or warning]
  const policies: [string, 'continue' | 'abort', 'continue' | 'abort', 'continue' | 'abort', () => Promise<Partial<HookConfig>>, RegExp][] = [
    ['a command that fails', 'continue', 'abort', 'continue', async () => ({ commands: { 'pre-vm': await command('exit 1') } }), /^pre-vm command hook failed: cmd-.*exited with 1; going on \(hooks_on_failure = continue\)$/],
    ['a command that fails', 'abort', 'continue', 'abort', async () => ({ commands: { 'pre-vm': await command('exit 1') } }), /^pre-vm command hook: failed \(cmd-.*exited with 1; hooks_on_failure = abort\)$/],
    ['a command that hangs', 'abort', 'continue', 'continue', async () => ({ commands: { 'pre-vm': await command('sleep 30') }, timeoutMs: 400 }), /^pre-vm command hook timed out: .*within 0.4 s: killed; going on \(hooks_on_timeout = continue\)$/],
    ['a command that hangs', 'continue', 'abort', 'abort', async () => ({ commands: { 'pre-vm': await command('sleep 30') }, timeoutMs: 400 }), /^pre-vm command hook: timed out \(.*hooks_on_timeout = abort\)$/],
    ['an HTTP 500', 'abort', 'continue', 'abort', async () => { httpAnswer = { status: 500, body: 'x' }; return { urls: { 'pre-vm': url } }; }, /^pre-vm http hook: failed \(.* answered 500: x; hooks_on_failure = abort\)$/],
    ['a NATS subscriber that does not answer', 'continue', 'abort', 'abort', async () => { await natsReplies(() => new Promise(() => {})); return { nats: true, timeoutMs: 300 }; }, /^pre-vm nats hook: timed out \(no reply on vmbackup.hooks.pre-vm within 0.3 s; hooks_on_timeout = abort\)$/],
    ['no NATS subscriber at all', 'abort', 'abort', 'continue', async () => ({ nats: true }), /^$/],
  ];
  it.each(policies)('%s with hooks_on_failure = %s, hooks_on_timeout = %s → %s', async (_what, onFailure, onTimeout, decision, setup, said) => {
    const runner = createHookRunner(config({ ...(await setup()), onFailure, onTimeout }), deps());
    const r = await runner.run('pre-vm', pre);
    expect(r.decision).toBe(decision);
    const text = decision === 'abort' ? r.reasons : r.warnings;
    expect(text.length).toBeLessThanOrEqual(1);
    expect(text[0] ?? '').toMatch(said);
  });

  it('failures at post-vm never abort, whatever the policy', async () => {
    const runner = createHookRunner(config({ commands: { 'post-vm': await command('exit 1') }, onFailure: 'abort' }), deps());
    const r = await runner.run('post-vm', post);
    expect(r).toMatchObject({ decision: 'continue', reasons: [] });
    expect(r.warnings[0]).toMatch(/^post-vm command hook failed: .*exited with 1/);
  });

  it('beats the job’s heartbeat while a hook runs', async () => {
    // The hook runs until the job's heartbeat has been beaten five times (it waits for the
    // file the fifth beat creates), however slowly the machine schedules the timer; a runner
    // that does not beat leaves it to hook_timeout, and the count below fails.
    const go = path.join(dir, `go-${n}`);
    const runner = createHookRunner(config({ commands: { 'pre-vm': await command(`while [ ! -e '${go}' ]; do sleep 0.05; done`) }, timeoutMs: 20_000 }), { ...deps(), heartbeatMs: 100 });
    let beats = 0;
    await runner.run('pre-vm', pre, {
      heartbeat: () => {
        if (++beats === 5) appendFileSync(go, '');
      },
    });
    expect(beats).toBeGreaterThanOrEqual(5);
    const after = beats;
    await new Promise((r) => setTimeout(r, 300));
    expect(beats).toBe(after); // stopped with the hooks
  });

  it('its progress lines name the VM (pre-vm, post-vm) or the run (run-start, run-end)', async () => {
    const lines: string[] = [];
    const log = pino({}, new Writable({ write: (c: Buffer, _e, cb) => (lines.push((JSON.parse(c.toString()) as { msg: string }).msg), cb()) }));
    const runner = createHookRunner(
      config({
        commands: { 'pre-vm': await command('echo quiesced'), 'post-vm': await command('exit 1'), 'run-start': await command('echo "in maintenance"; exit 3') },
      }),
      { ...deps(), log },
    );
    await runner.run('pre-vm', pre);
    await runner.run('post-vm', post);
    const start: RunStartEvent = { point: 'run-start', runId: 'r1', at: pre.at, startedAt: pre.at, backupDir: '/b' };
    await runner.run('run-start', start);
    expect(lines).toEqual([
      expect.stringMatching(/^db1: pre-vm hook cmd-.*\.sh: quiesced$/),
      expect.stringMatching(/^db1: pre-vm command hook: continue \(\d+\.\d s\)$/),
      expect.stringMatching(/^db1: post-vm command hook failed: cmd-.*\.sh exited with 1$/),
      expect.stringMatching(/^run r1: run-start hook cmd-.*\.sh: in maintenance$/),
      expect.stringMatching(/^run r1: run-start command hook: in maintenance → abort \(\d+\.\d s\)$/),
    ]);
  });

  it('throws on shutdown, so the runtime hands the job back', async () => {
    const runner = createHookRunner(config({ commands: { 'pre-vm': await command('sleep 30') } }), deps());
    const abort = new AbortController();
    setTimeout(() => abort.abort(), 200);
    await expect(runner.run('pre-vm', pre, { signal: abort.signal })).rejects.toThrow(/interrupted by shutdown/);
  });
});
