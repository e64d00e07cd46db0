import { readFileSync } from 'node:fs';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ABORT_EXIT_CODE, OUTPUT_LIMIT, hookEnv, runCommand } from './command.js';
import type { PostVmEvent, PreVmEvent, RunEndEvent } from './event.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'vmb-hook-cmd-'));
});
afterAll(async () => rm(dir, { recursive: true, force: true }));

/** A shell script in the temp dir, executable. */
async function script(name: string, body: string): Promise<string> {
  const file = path.join(dir, name);
  await writeFile(file, `#!/bin/sh\n${body}\n`);
  await chmod(file, 0o755);
  return file;
}

/** A logger whose records land in `lines`. */
function capture(): { log: pino.Logger; lines: { msg: string; stream?: string }[] } {
  const lines: { msg: string; stream?: string }[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _e, cb) {
      for (const l of chunk.toString().split('\n').filter(Boolean)) lines.push(JSON.parse(l) as { msg: string });
      cb();
    },
  });
  return { log: pino({ level: 'debug' }, sink), lines };
}

const preVm: PreVmEvent = {
  point: 'pre-vm',
  runId: '20261126-083000-7f3a',
  at: '2026-11-26T08:30:02.000Z',
  jobId: 'vm.5c1e',
  try: 1,
  vm: { uuid: '5c1e', name: 'DEV MYSQL' },
  backupDir: '/mnt/VmBackup/exports',
  folder: 'DEV-MYSQL',
  mode: 'vm',
  stamp: '20261126-083000',
};

/** True while a process runs (a zombie left to a PID 1 that does not reap is not running). */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat[stat.lastIndexOf(')') + 2] !== 'Z';
  } catch {
    return false;
  }
}

/** Resolves once `pid` is gone (a killed child may stay a zombie until init reaps it); one that lives on runs into the test's timeout. */
async function dead(pid: number): Promise<void> {
  while (alive(pid)) await new Promise((r) => setTimeout(r, 50));
}

describe('runCommand', () => {
  it('exit 0 continues; the event is on stdin and in VMBACKUP_* variables, vmbackup’s own settings are not', async () => {
    const out = path.join(dir, 'seen.json');
    const env = path.join(dir, 'seen.env');
    const cmd = await script('ok.sh', `cat > "$1"; env | grep -E '^(VMBACKUP_|PATH=)' | sort > "$2"; echo "quiesced $VMBACKUP_VM_NAME"`);
    const { log, lines } = capture();
    const r = await runCommand([cmd, out, env], preVm, { timeoutMs: 10_000, env: { PATH: process.env.PATH, VMBACKUP_PASSWORD: 'hunter2', VMBACKUP_BACKUP_DIR: '/elsewhere' }, log });
    expect(r).toEqual({ kind: 'command', outcome: 'continue', reason: '' });
    expect(JSON.parse(await readFile(out, 'utf8'))).toEqual(preVm);
    const vars = Object.fromEntries((await readFile(env, 'utf8')).trim().split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
    expect(vars).toEqual({
      PATH: process.env.PATH,
      VMBACKUP_POINT: 'pre-vm',
      VMBACKUP_PHASE: 'pre',
      VMBACKUP_RUN_ID: '20261126-083000-7f3a',
      VMBACKUP_VM_NAME: 'DEV MYSQL',
      VMBACKUP_VM_UUID: '5c1e',
      VMBACKUP_JOB_ID: 'vm.5c1e',
      VMBACKUP_TRY: '1',
      VMBACKUP_BACKUP_DIR: '/mnt/VmBackup/exports',
      VMBACKUP_FOLDER: 'DEV-MYSQL',
      VMBACKUP_VM_DIR: '/mnt/VmBackup/exports/DEV-MYSQL',
      VMBACKUP_MODE: 'vm',
      VMBACKUP_STAMP: '20261126-083000',
    });
    expect(lines.map((l) => l.msg)).toContain('DEV MYSQL: pre-vm hook ok.sh: quiesced DEV MYSQL');
  });

  it(`exit ${ABORT_EXIT_CODE} aborts, the last line of stdout being the reason`, async () => {
    const cmd = await script('abort.sh', `echo checking; echo "replica is 300 s behind"; echo; exit ${ABORT_EXIT_CODE}`);
    expect(await runCommand([cmd], preVm, { timeoutMs: 10_000, env: {}, log: capture().log })).toEqual({ kind: 'command', outcome: 'abort', reason: 'replica is 300 s behind' });
    const silent = await script('abort-silent.sh', `exit ${ABORT_EXIT_CODE}`);
    expect(await runCommand([silent], preVm, { timeoutMs: 10_000, env: {}, log: capture().log })).toMatchObject({ outcome: 'abort', reason: `abort-silent.sh exited with ${ABORT_EXIT_CODE}` });
  });

  it('any other exit fails, with the last line of stderr; a program that cannot run fails', async () => {
    const cmd = await script('fail.sh', 'echo "mysql: access denied" >&2; exit 1');
    const { log, lines } = capture();
    expect(await runCommand([cmd], preVm, { timeoutMs: 10_000, env: {}, log })).toEqual({ kind: 'command', outcome: 'failed', reason: 'fail.sh exited with 1: mysql: access denied' });
    expect(lines.find((l) => l.stream === 'stderr')!.msg).toBe('DEV MYSQL: pre-vm hook fail.sh (stderr): mysql: access denied');
    expect(await runCommand([path.join(dir, 'nope')], preVm, { timeoutMs: 10_000, env: {}, log })).toMatchObject({ outcome: 'failed', reason: expect.stringMatching(/cannot run .*nope: ENOENT/) });
    const notExec = path.join(dir, 'plain.txt');
    await writeFile(notExec, 'x');
    expect(await runCommand([notExec], preVm, { timeoutMs: 10_000, env: {}, log })).toMatchObject({ outcome: 'failed', reason: expect.stringMatching(/EACCES/) });
    const killed = await script('self-kill.sh', 'kill -9 $$');
    expect(await runCommand([killed], preVm, { timeoutMs: 10_000, env: {}, log })).toMatchObject({ outcome: 'failed', reason: 'self-kill.sh was killed by SIGKILL' });
  });

  it('a command past its timeout is killed with its process group, even one that ignores SIGTERM', async () => {
    const pids = path.join(dir, 'pids');
    // It never ends by itself and its sleep outlives the test: both gone proves the kill.
    const cmd = await script('hang.sh', `trap '' TERM; sleep 3600 & echo $! > "$1"; echo $$ >> "$1"; while :; do sleep 1; done`);
    const r = await runCommand([cmd, pids], preVm, { timeoutMs: 700, env: { PATH: process.env.PATH }, log: capture().log, killGraceMs: 300 });
    expect(r).toEqual({ kind: 'command', outcome: 'timeout', reason: 'hang.sh did not finish within 0.7 s: killed' });
    const [child, shell] = (await readFile(pids, 'utf8')).trim().split('\n').map(Number) as [number, number];
    await dead(shell);
    await dead(child); // the sleep it started is gone too
  });

  it('does not wait for a process the command left running', async () => {
    const pidFile = path.join(dir, 'bg.pid');
    // The quiesce pattern: hold a lock in the background until post-vm releases it.
    // The background sleep and the timeout both outlast the test: waiting for either would be
    // the test's timeout, so `continue` here proves the command's own exit was enough.
    const cmd = await script('bg.sh', `sleep 3600 & echo $! > "$1"; echo started`);
    const r = await runCommand([cmd, pidFile], preVm, { timeoutMs: 3_600_000, env: { PATH: process.env.PATH }, log: capture().log });
    expect(r.outcome).toBe('continue');
    const pid = Number((await readFile(pidFile, 'utf8')).trim());
    expect(alive(pid)).toBe(true); // left alone: post-vm's business
    process.kill(pid, 'SIGKILL');
  });

  it('logs at most OUTPUT_LIMIT bytes of output, and still finds the reason at the end', async () => {
    const cmd = await script('chatty.sh', `i=0; while [ $i -lt 3000 ]; do echo "line $i of a chatty hook"; i=$((i+1)); done; echo "too chatty"; exit ${ABORT_EXIT_CODE}`);
    const { log, lines } = capture();
    const r = await runCommand([cmd], preVm, { timeoutMs: 20_000, env: { PATH: process.env.PATH }, log });
    expect(r).toMatchObject({ outcome: 'abort', reason: 'too chatty' });
    const logged = lines.filter((l) => l.stream === 'stdout');
    expect(logged.reduce((n, l) => n + l.msg.length, 0)).toBeLessThan(OUTPUT_LIMIT + logged.length * 40);
    expect(logged.length).toBeLessThan(3000);
    expect(logged.at(-1)!.msg).toMatch(/more output not logged/);
  });

  it('shutdown kills the command at once', async () => {
    // The command and the timeout both outlast the test: returning, with the shutdown's reason, proves the kill.
    const cmd = await script('long.sh', 'sleep 3600');
    const abort = new AbortController();
    setTimeout(() => abort.abort(), 200);
    const r = await runCommand([cmd], preVm, { timeoutMs: 3_600_000, env: { PATH: process.env.PATH }, log: capture().log, signal: abort.signal, killGraceMs: 200 });
    expect(r).toMatchObject({ outcome: 'failed', reason: 'interrupted by shutdown' });
  });
});

describe('hookEnv', () => {
  it('gives post-vm the outcome, and run-end the run’s counts', () => {
    const post: PostVmEvent = {
      ...preVm,
      point: 'post-vm',
      outcome: {
        status: 'failed',
        files: [
          { path: '/b/DEV-MYSQL/backup_1.xva', size: 10, format: 'xva' },
          { path: '/b/DEV-MYSQL/backup_1.meta', size: 1, format: 'meta' },
        ],
        bytes: 11,
        warnings: ['w'],
        error: { phase: 'export', code: 'ECONNRESET', message: 'reset by peer' },
        retrying: false,
      },
    };
    expect(hookEnv(post, { HOME: '/root', VMBACKUP_PASSWORD_FILE: '/etc/pw' })).toEqual({
      HOME: '/root',
      VMBACKUP_POINT: 'post-vm',
      VMBACKUP_PHASE: 'post',
      VMBACKUP_RUN_ID: preVm.runId,
      VMBACKUP_VM_NAME: 'DEV MYSQL',
      VMBACKUP_VM_UUID: '5c1e',
      VMBACKUP_JOB_ID: 'vm.5c1e',
      VMBACKUP_TRY: '1',
      VMBACKUP_BACKUP_DIR: '/mnt/VmBackup/exports',
      VMBACKUP_FOLDER: 'DEV-MYSQL',
      VMBACKUP_VM_DIR: '/mnt/VmBackup/exports/DEV-MYSQL',
      VMBACKUP_MODE: 'vm',
      VMBACKUP_STAMP: '20261126-083000',
      VMBACKUP_STATUS: 'failed',
      VMBACKUP_FILES: '/b/DEV-MYSQL/backup_1.xva /b/DEV-MYSQL/backup_1.meta',
      VMBACKUP_BYTES: '11',
      VMBACKUP_WARNINGS: '1',
      VMBACKUP_FAILED_PHASE: 'export',
      VMBACKUP_ERROR_CODE: 'ECONNRESET',
      VMBACKUP_ERROR: 'reset by peer',
      VMBACKUP_RETRYING: '0',
    });
    const end: RunEndEvent = {
      point: 'run-end',
      runId: 'r',
      at: 'now',
      summary: {
        runId: 'r',
        status: 'warning',
        exitCode: 0,
        startedAt: 's',
        backupDir: '/b',
        categories: {},
        jobs: [
          { jobId: 'a', category: 'vm-export', name: 'a', status: 'success', tries: 1, files: [], bytes: 0, warnings: [] },
          { jobId: 'b', category: 'vm-export', name: 'b', status: 'warning', tries: 1, files: [], bytes: 0, warnings: ['x'] },
          { jobId: 'c', category: 'vm-export', name: 'c', status: 'skipped', tries: 1, files: [], bytes: 0, warnings: [], skipped: { reason: 'r' } },
        ],
        excludes: [],
        warnings: [],
        cleaned: [],
      },
    };
    expect(hookEnv(end, {})).toEqual({
      VMBACKUP_POINT: 'run-end',
      VMBACKUP_PHASE: 'post',
      VMBACKUP_RUN_ID: 'r',
      VMBACKUP_STATUS: 'warning',
      VMBACKUP_EXIT_CODE: '0',
      VMBACKUP_BACKUP_DIR: '/b',
      VMBACKUP_SUCCEEDED: '2',
      VMBACKUP_FAILED: '0',
      VMBACKUP_SKIPPED: '1',
    });
  });
});
