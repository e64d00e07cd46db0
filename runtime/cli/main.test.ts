import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { COMMAND_SPECS } from '../config/commands.js';
import type { Io } from './io.js';
import { COMMANDS, main } from './main.js';

const base = mkdtempSync(path.join(os.tmpdir(), 'vmb-cli-main-'));
afterAll(() => rmSync(base, { recursive: true, force: true }));

/** Runs `vmbackup ARGV` in this process; base_dir is a temp folder without config files. */
async function vmbackup(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = '';
  let err = '';
  stdout.on('data', (d: Buffer) => (out += d.toString()));
  stderr.on('data', (d: Buffer) => (err += d.toString()));
  const io: Io = { stdout, stderr, env: {}, home: base, cwd: base };
  const code = await main(argv, io);
  return { code, out, err };
}

/** The options a usage text offers: `-c`, `--preview` … */
function offered(text: string): Set<string> {
  return new Set(text.match(/(?<![\w-])--?[A-Za-z][\w-]*/g) ?? []);
}

describe('vmbackup --help', () => {
  it('lists every command, each with its arguments', async () => {
    const r = await vmbackup('--help');
    expect(r.code).toBe(0);
    const section = r.out.slice(r.out.indexOf('commands (vmbackup COMMAND --help describes each):'));
    const commands: [string, string][] = [['verify', '[VM…|PATH…]'], ['list', '[VM]'], ['restore', 'FILE'], ['worker', ''], ['run', ''], ['status', '[RUN]'], ['invoke', 'NAME'], ['gateway', '']];
    for (const [name, args] of commands) {
      expect(section).toMatch(new RegExp(`^  ${name}${args !== '' ? ` ${args.replace(/[[\]|.]/g, '\\$&')}` : ''}\\s`, 'm'));
    }
  });

  it('says --json prints the run summary, not only the preview', async () => {
    const r = await vmbackup('--help');
    const json = r.out.slice(r.out.indexOf('  --json'), r.out.indexOf('\n\n', r.out.indexOf('  --json')));
    expect(json.replace(/\s+/g, ' ')).toContain('the run summary');
    expect(json).not.toContain('(with --preview)');
  });

  it('describes exactly the commands main dispatches', () => {
    expect(COMMAND_SPECS.map((c) => c.name).sort()).toEqual(Object.keys(COMMANDS).sort());
  });
});

describe('vmbackup COMMAND --help describes that command', () => {
  it.each([
    ['status', '[RUN]', ['--limit', '--json', '--nats', '-c', '-b', '-l'], ['--preview', '-C', '-F', '-e', '--xapi']],
    ['list', '[VM]', ['--json', '-d', '-c', '-b'], ['--preview', '-C', '-e', '--xapi', '--nats']],
    ['invoke', 'NAME', ['--input', '--no-wait', '--timeout', '--nats', '-c'], ['--preview', '-C', '-F', '-e', '--xapi']],
    ['run', '', ['--trigger-id', '--timeout', '--wait-timeout', '--json', '-e', '-E', '-x', '-p', '-H', '-C', '-F', '--nats', '-c'], ['--preview', '--xapi', '--listen']],
    ['worker', '', ['--functions', '--no-coordinator', '--ack-wait', '--drain-timeout', '--replicas', '--nats', '--xapi', '--password-file', '-c'], ['--preview', '-C', '-F', '-e', '--listen']],
    ['gateway', '', ['--listen', '--no-auth', '--nats', '-c', '-e'], ['--preview', '--xapi', '--functions']],
  ])('%s', async (name, args, has, hasNot) => {
    for (const help of ['--help', '-h']) {
      const r = await vmbackup(name, help, '-b', base);
      expect(r.code).toBe(0);
      expect(r.err).toBe('');
      const usage = r.out.slice(0, r.out.indexOf('\n\n'));
      expect(usage.startsWith(`usage: vmbackup ${name} ${args}`.trimEnd())).toBe(true);
      const options = offered(r.out);
      for (const o of has) expect(options, `${name} --help offers ${o}`).toContain(o);
      for (const o of hasNot) expect(options, `${name} --help does not offer ${o}`).not.toContain(o);
      // Its own options first, then the shared connection and config options.
      expect(r.out.indexOf('\noptions:\n')).toBeGreaterThan(0);
      expect(r.out.search(/\n(connection and )?config options:\n/)).toBeGreaterThan(r.out.indexOf('\noptions:\n'));
      expect(r.out.split('\n').filter((l) => l.length > 79)).toEqual([]);
    }
  });

  it('status: its RUN argument is explained', async () => {
    const r = await vmbackup('status', '--help');
    expect(r.out).toMatch(/^arguments:\n {2}RUN {19}a run id/m);
  });
});

describe('positional arguments stand anywhere among the options', () => {
  it.each([
    ['status', ['-b', base, '20261126-121153-292f', 'another-run'], 'unexpected argument "another-run": vmbackup status takes one RUN (see vmbackup status --help)'],
    ['invoke', ['-b', base, 'prune', 'verify', '--input', '{}'], 'unexpected argument "verify": vmbackup invoke takes one NAME (see vmbackup invoke --help)'],
  ])('%s: a second one is refused, naming the command', async (name, argv, message) => {
    const r = await vmbackup(name, ...argv);
    expect(r.code).toBe(2);
    expect(r.err).toBe(`vmbackup: ${message}\n`);
  });

  it('invoke: NAME after the options is the function (not "options only")', async () => {
    // No NATS configured: the command gets as far as needing it, NAME taken.
    const r = await vmbackup('invoke', '-b', base, '--input', '{"backupDir":"/b","folder":"web1"}', 'prune');
    expect(r.err).toContain('invalid input for prune');
    expect(r.err).not.toContain('unexpected argument');
  });
});

describe('mode options a command does not take', () => {
  it.each(['run', 'status', 'invoke', 'worker', 'gateway', 'verify'])('vmbackup %s --preview is refused (exit 2), never ignored', async (command) => {
    const r = await vmbackup(command, '--preview', '--nats', 'nats://127.0.0.1:9');
    expect(r.code).toBe(2);
    expect(r.err).toMatch(new RegExp(`^vmbackup: option --preview does not apply to vmbackup ${command}`));
    expect(r.out).toBe('');
  });

  it('a mode option the command takes is accepted (status --json); settings options are, as config keys are', async () => {
    expect((await vmbackup('status', '--json', '--help')).code).toBe(0);
    expect((await vmbackup('run', '--json', '--help')).code).toBe(0);
    expect((await vmbackup('status', '--xapi', 'https://pool', '-e', 'web1', '--help')).code).toBe(0);
    expect((await vmbackup('worker', '--json', '--help')).err).toMatch(/^vmbackup: option --json does not apply to vmbackup worker/);
  });
});

describe('options before the command', () => {
  it('vmbackup -b DIR verify is vmbackup verify -b DIR', async () => {
    const dir = mkdtempSync(path.join(base, 'b-'));
    mkdirSync(path.join(dir, 'exports'));
    const after = await vmbackup('verify', '-b', dir);
    const before = await vmbackup('-b', dir, 'verify');
    expect(before).toEqual(after);
    expect(before.err).not.toMatch(/unexpected argument/);
    // A switch then the command, and a value that is a command's name (a VM called "status").
    // The same report but for how long each check took.
    const untimed = (out: string) => out.replace(/"ms": \d+/g, '"ms": 0');
    expect(untimed((await vmbackup('--json', '-b', dir, 'verify')).out)).toBe(untimed((await vmbackup('verify', '--json', '-b', dir)).out));
  });

  it('a word that is no command says which word was taken for what', async () => {
    const r = await vmbackup('-p', 'verfy');
    expect(r.code).toBe(2);
    expect(r.err).toBe(
      'vmbackup: "verfy" is not a command (backup, verify, list, restore, gateway, worker, run, status, invoke) (-p takes no value); without a command, vmbackup takes options only (quote a VM name with spaces: -e "DEV MYSQL"; see vmbackup --help)\n',
    );
    const split = await vmbackup('-e', 'DEV', 'MYSQL');
    expect(split.code).toBe(2);
    expect(split.err).toMatch(/^vmbackup: "MYSQL" is not a command .*quote a VM name with spaces: -e "DEV MYSQL"/);
    expect((await vmbackup('verfy')).err).toMatch(/^vmbackup: unknown command "verfy"/);
  });
});
