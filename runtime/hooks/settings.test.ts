import { chmod, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryBus } from '../bus/memory.js';
import { loadSettings } from '../config/load.js';
import type { LoadedSettings } from '../config/load.js';
import { ConfigError } from '../errors.js';
import { silentLogger } from '../log.js';
import { noHooks } from './runner.js';
import { hookConfigFromSettings, hooksFromSettings, programProblem } from './settings.js';

let root: string;
/** An executable hook program in root. */
let quiesce: string;
beforeAll(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'vmb-hook-settings-'));
  quiesce = path.join(root, 'quiesce');
  await writeFile(quiesce, '#!/bin/sh\nexit 0\n');
  await chmod(quiesce, 0o755);
});

/** The ConfigError `f` throws. */
function configError(f: () => unknown): ConfigError {
  try {
    f();
  } catch (error) {
    if (error instanceof ConfigError) return error;
    throw error;
  }
  throw new Error('expected a ConfigError');
}
afterAll(async () => rm(root, { recursive: true, force: true }));

/** Settings from a real config file (`-c`), as the command loads them. */
async function load(lines: string[], env: Record<string, string> = {}): Promise<LoadedSettings & { file: string }> {
  const file = path.join(root, `vmbackup-${Math.random().toString(16).slice(2)}.cfg`);
  await writeFile(file, ['[vmbackup]', ...lines, ''].join('\n'));
  const loaded = loadSettings({ argv: ['-c', file], env, home: path.join(root, 'home'), cwd: root, systemConfig: path.join(root, 'none.cfg'), defaultBaseDir: root });
  return { ...loaded, file };
}

describe('hookConfigFromSettings', () => {
  it('reads commands, URLs, the secret, the timeout and the policies', async () => {
    const secret = path.join(root, 'hook-secret');
    await writeFile(secret, 's3cret\nignored\n');
    await chmod(secret, 0o600);
    const { settings, where } = await load(
      [
        `hook_command_pre_vm = ${quiesce} --db "sales db"`,
        `hook_command_run_end = /bin/sh -c 'mail -s done ops'`,
        'hook_url_post_vm = https://ops.example/hooks/vmbackup',
        'hook_secret_file = hook-secret',
        'hooks_on_timeout = abort',
      ],
      { VMBACKUP_HOOK_TIMEOUT: '120' },
    );
    const { config, warnings } = hookConfigFromSettings(settings, { hasBus: false, where });
    expect(config).toEqual({
      commands: { 'pre-vm': [quiesce, '--db', 'sales db'], 'run-end': ['/bin/sh', '-c', 'mail -s done ops'] },
      urls: { 'post-vm': 'https://ops.example/hooks/vmbackup' },
      secret: 's3cret',
      nats: false,
      natsReplies: 1,
      timeoutMs: 120_000,
      onTimeout: 'abort',
      onFailure: 'continue',
    });
    expect(warnings).toEqual([]);
  });

  it('names every bad key, with its value, file and line, in one ConfigError worded as the config loader’s', async () => {
    const { settings, where, file } = await load([
      'hook_command_pre_vm = quiesce --now',
      `hook_command_post_vm = /bin/x "open`,
      'hook_url_run_start = ftp://ops.example/x',
      'hook_url_run_end = https://user:tok@ops.example/x',
      'hooks_nats = yes',
    ]);
    let error: unknown;
    try {
      hookConfigFromSettings(settings, { hasBus: false, where });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const issues = ((error as ConfigError).data.issues as { key: string; message: string }[]).map((i) => i.message);
    expect(issues).toEqual([
      `hook_command_pre_vm = quiesce --now in ${file} line 2: the program must be an absolute path (/usr/local/bin/…), not "quiesce"`,
      `hook_command_post_vm = /bin/x "open in ${file} line 3: unbalanced double quote`,
      `hook_url_run_start = ftp://ops.example/x in ${file} line 4: scheme ftp is not supported (use https:// or http://)`,
      // The token is not repeated in the message.
      `hook_url_run_end = https://***@ops.example/x in ${file} line 5: must not contain a user or password (requests are signed with hook_secret_file)`,
      `hooks_nats = true in ${file} line 6: NATS hooks need a NATS connection, which this command does not have (use command or HTTP hooks, or run on NATS with vmbackup worker)`,
      'hook_url_* is set but hook_secret_file is not: HTTP hooks are always signed (X-Vmbackup-Signature-256), set hook_secret_file',
    ]);
    expect((error as ConfigError).message).toMatch(/^6 configuration errors:\n {2}- hook_command_pre_vm/);
    expect((error as ConfigError).data).toMatchObject({ key: 'hook_command_pre_vm', file, reason: expect.stringMatching(/^the program must be an absolute path/) });
    expect((error as ConfigError).data.issues).toContainEqual({
      key: 'hook_url_run_start',
      file,
      line: 4,
      where: `${file} line 4`,
      reason: 'scheme ftp is not supported (use https:// or http://)',
      message: `hook_url_run_start = ftp://ops.example/x in ${file} line 4: scheme ftp is not supported (use https:// or http://)`,
    });
  });

  it('one bad key: the message is its sentence, as the loader’s (`<key> = <value> in <file> line N: <reason>`); the environment is named', async () => {
    const { settings, where, file } = await load(['hook_timeout = 5', `hook_command_pre_vm = ${root}/nonexistent --freeze`]);
    expect(configError(() => hookConfigFromSettings(settings, { hasBus: false, where })).message).toBe(
      `hook_command_pre_vm = ${root}/nonexistent --freeze in ${file} line 3: the program ${root}/nonexistent does not exist`,
    );
    const fromEnv = await load([], { VMBACKUP_HOOK_COMMAND_POST_VM: `${root}/gone` });
    expect(configError(() => hookConfigFromSettings(fromEnv.settings, { hasBus: false, where: fromEnv.where })).message).toBe(
      `hook_command_post_vm = ${root}/gone in the environment (VMBACKUP_HOOK_COMMAND_POST_VM): the program ${root}/gone does not exist`,
    );
  });

  it('refuses a command whose program does not exist, is a directory, is not a regular file or is not executable — only the program is checked', async () => {
    const dir = path.join(root, 'a-dir');
    await mkdir(dir, { recursive: true });
    const plain = path.join(root, 'plain.sh');
    await writeFile(plain, '#!/bin/sh\n');
    await chmod(plain, 0o644);
    const link = path.join(root, 'quiesce-link');
    await symlink(quiesce, link).catch(() => {});
    const { settings, where, file } = await load([
      `hook_command_pre_vm = ${root}/nonexistent --freeze`,
      `hook_command_post_vm = ${dir}`,
      `hook_command_run_start = ${plain} --check`,
      'hook_command_run_end = /dev/null',
    ]);
    const error = configError(() => hookConfigFromSettings(settings, { hasBus: false, where }));
    expect((error.data.issues as { message: string }[]).map((i) => i.message)).toEqual([
      `hook_command_pre_vm = ${root}/nonexistent --freeze in ${file} line 2: the program ${root}/nonexistent does not exist`,
      `hook_command_post_vm = ${dir} in ${file} line 3: the program ${dir} is a directory`,
      `hook_command_run_start = ${plain} --check in ${file} line 4: the program ${plain} is not executable (mode 0644: chmod +x it)`,
      `hook_command_run_end = /dev/null in ${file} line 5: the program /dev/null is not a regular file`,
    ]);
    expect(error.data).toMatchObject({ key: 'hook_command_pre_vm', file, reason: `the program ${root}/nonexistent does not exist` });
    // A link to an executable is fine; arguments are not checked (they are the program's business).
    const ok = await load([`hook_command_pre_vm = ${link} /nonexistent/arg`, `hook_command_post_vm = /bin/sh ${root}/nonexistent.sh`]);
    expect(hookConfigFromSettings(ok.settings, { hasBus: false, where: ok.where }).config.commands).toEqual({
      'pre-vm': [link, '/nonexistent/arg'],
      'post-vm': ['/bin/sh', `${root}/nonexistent.sh`],
    });
    expect(programProblem(`${plain}/x`)).toBe(`the program ${plain}/x does not exist (a part of its path is not a directory)`);
  });

  it('refuses an unreadable or empty secret file; warns about one others can read', async () => {
    const empty = path.join(root, 'empty-secret');
    await writeFile(empty, '\n');
    const { settings: s1 } = await load(['hook_url_pre_vm = http://127.0.0.1:9/x', `hook_secret_file = ${empty}`]);
    expect(() => hookConfigFromSettings(s1, { hasBus: false })).toThrow(/hook_secret_file = .*empty-secret: its first line \(the secret\) is empty/);
    const { settings: s2 } = await load(['hook_url_pre_vm = http://127.0.0.1:9/x', 'hook_secret_file = /nonexistent/secret']);
    expect(() => hookConfigFromSettings(s2, { hasBus: false })).toThrow('hook_secret_file = /nonexistent/secret: cannot read it: does not exist');
    const open = path.join(root, 'open-secret');
    await writeFile(open, 'x\n');
    await chmod(open, 0o644);
    const { settings: s3 } = await load(['hook_url_pre_vm = http://127.0.0.1:9/x', `hook_secret_file = ${open}`]);
    expect(hookConfigFromSettings(s3, { hasBus: false }).warnings).toEqual([`hook_secret_file ${open} is readable by group or others (mode 0644): chmod 600 ${open}`]);
  });

  it('hooks_nats is fine with a bus', async () => {
    const { settings } = await load(['hooks_nats = true', 'hook_nats_replies = 0']);
    expect(hookConfigFromSettings(settings, { hasBus: true }).config).toMatchObject({ nats: true, natsReplies: 0 });
  });
});

describe('hooksFromSettings', () => {
  it('checks the settings as hookConfigFromSettings does — with a bus too (vmbackup worker)', async () => {
    const bus = new MemoryBus();
    try {
      const { settings, where, file } = await load(['hooks_nats = true', `hook_command_pre_vm = ${root}/nonexistent`]);
      const error = configError(() => hooksFromSettings(settings, { log: silentLogger(), env: {}, bus, where }));
      expect(error.message).toBe(`hook_command_pre_vm = ${root}/nonexistent in ${file} line 3: the program ${root}/nonexistent does not exist`);
    } finally {
      await bus.close();
    }
  });

  it('is noHooks when nothing is configured', async () => {
    const { settings } = await load([]);
    expect(hooksFromSettings(settings, { log: silentLogger(), env: {} })).toBe(noHooks);
  });

  it('builds a runner that runs the configured hooks, and logs the settings’ warnings', async () => {
    const bus = new MemoryBus();
    try {
      await bus.reply('vmbackup.hooks.run-start', async () => ({ decision: 'abort', reason: 'maintenance' }));
      const open = path.join(root, 'open-secret-2');
      await writeFile(open, 'x\n');
      await chmod(open, 0o640);
      const { settings } = await load(['hooks_nats = true', 'hook_url_run_end = http://127.0.0.1:9/x', `hook_secret_file = ${open}`]);
      const logged: string[] = [];
      const log = pino({}, new Writable({ write: (c: Buffer, _e, cb) => (logged.push((JSON.parse(c.toString()) as { msg: string }).msg), cb()) }));
      const hooks = hooksFromSettings(settings, { log, env: {}, bus });
      expect(logged).toEqual([expect.stringMatching(/open-secret-2 is readable by group or others \(mode 0640\)/)]);
      const r = await hooks.run('run-start', { point: 'run-start', runId: 'r', at: 'now', startedAt: 'now', backupDir: '/b' });
      expect(r).toEqual({ decision: 'abort', reasons: ['run-start nats hook: maintenance'], warnings: [] });
    } finally {
      await bus.close();
    }
  });
});
