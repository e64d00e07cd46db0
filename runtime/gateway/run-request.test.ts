import { describe, expect, it } from 'vitest';
import { parseEntry, selectVms } from '../../functions/plan/select.js';
import { RunRequest, exactNameEntry, runOptionsFrom } from './run-request.js';
import { defaultRunOptions } from './test-helpers.js';

describe('exactNameEntry: an entry that selects exactly one VM name', () => {
  const pool = [
    'web1', 'web.1', 'webX1', 'web.10', 'db:2', 'db', 'a+b', 'aab', 'a(b)', 'ab', '[x]', 'x', 'café (old)', 'café',
    ' lead', 'lead', 'trail ', 'trail', 'a\\b', 'a\tb', 'x$', 'x', '.*', 'anything', 'PRD-web', 'PRD-web2', '日本 サーバ', 'a|b', 'a', 'b',
    'back\\1', 'a{2}', 'aa', 'q?', 'q', '^hat', 'hat', '#x', 'x:1:xvda',
  ].map((name, i) => ({ uuid: `u${i}`, name }));

  it.each([
    ['web1', 'web1'],
    ['PRD-web', 'PRD-web'],
    ['web.1', 'web\\.1\\Z'],
    ['db:2', 'db\\:2\\Z'],
    ['café (old)', 'café\\U00000020\\(old\\)\\Z'],
    [' lead', '\\U00000020lead\\Z'],
  ])('%j → %j', (name, entry) => {
    expect(exactNameEntry(name)).toBe(entry);
  });

  it.each(pool.map((vm) => vm.name))('%j selects that VM and no other', (name) => {
    const entry = exactNameEntry(name);
    const parsed = parseEntry(entry); // never throws: every name makes a valid entry
    expect(parsed.maxBackups).toBeNull();
    expect(parsed.disks).toBeNull();
    const selection = selectVms(pool, { excludes: [], vdiExports: [], vmExports: [entry], maxBackups: 4 });
    expect(selection.vmExports.map((s) => s.vm.name)).toEqual(pool.filter((vm) => vm.name === name).map((vm) => vm.name));
    expect(selection.warnings.filter((w) => w.code !== 'duplicate-name')).toEqual([]);
  });
});

describe('RunRequest and runOptionsFrom', () => {
  const defaults = defaultRunOptions();

  it.each([
    ['nothing: the settings as they are', {}, {}],
    ['vm_exports alone replaces the selection (vdi_exports emptied)', { vm_exports: ['web1'] }, { vmExports: ['web1'], vdiExports: [] }],
    ['vdi_exports alone: no vm-exports', { vdi_exports: ['web1:-1:xvdb'] }, { vmExports: [], vdiExports: ['web1:-1:xvdb'] }],
    ['delta_exports alone: no vm-exports, no vdi-exports', { delta_exports: ['db.*:14'] }, { vmExports: [], vdiExports: [], deltaExports: ['db.*:14'] }],
    ['excludes replaced only when given', { excludes: [] }, { excludes: [] }],
    ['compress true is gzip', { compress: true }, { compress: 'gzip' }],
    ['verify_after_backup', { verify_after_backup: true }, { verifyAfterBackup: true }],
    ['compress false is none', { compress: false }, { compress: 'none' }],
    ['compress by name', { compress: 'zstd' }, { compress: 'zstd' }],
    ['key names of the config file', { max_backups: 7, vdi_export_format: 'vhd', pool_backup: false, host_backup: true, space_threshold: 10, concurrency: 4, vm_retries: 0, halted_without_snapshot: false, export_idle_timeout: 60 },
      { maxBackups: 7, format: 'vhd', poolBackup: false, hostBackup: true, spaceThreshold: 10, concurrency: 4, vmRetries: 0, haltedWithoutSnapshot: false, idleTimeoutS: 60 }],
  ])('%s', (_name, body, changes) => {
    const req = RunRequest.parse(body);
    const { selection: _s, ...options } = runOptionsFrom(defaults, req);
    const { selection: _d, ...expected } = { ...defaults, ...changes };
    expect(options).toEqual(expected);
  });

  it('the lists a request gives are its own (their export entries must match a VM); the configured export lists still give the MAX', () => {
    const config = [{ list: 'vm_exports' as const, entries: ['web1:7'], where: '/etc/vmbackup.cfg line 3' }];
    const withConfig = { ...defaults, selection: { requested: [], config, maxBackups: '/etc/vmbackup.cfg line 2' } };
    expect(runOptionsFrom(withConfig, RunRequest.parse({})).selection).toEqual({ requested: [], config, maxBackups: '/etc/vmbackup.cfg line 2' });
    expect(runOptionsFrom(withConfig, RunRequest.parse({ vm_exports: ['web1'], excludes: [] })).selection).toEqual({
      requested: [
        { list: 'excludes', where: 'request (excludes)' },
        { list: 'vdi_exports', where: 'request (vdi_exports)' },
        { list: 'delta_exports', where: 'request (delta_exports)' },
        { list: 'vm_exports', where: 'request (vm_exports)' },
      ],
      config,
      maxBackups: '/etc/vmbackup.cfg line 2',
    });
    expect(runOptionsFrom(withConfig, RunRequest.parse({ max_backups: 1 })).selection!.maxBackups).toBe('request (max_backups)');
  });

  it('an invalid regex passes the schema: it is the selection\'s error (422), not a malformed body', () => {
    expect(RunRequest.safeParse({ excludes: ['(unclosed'] }).success).toBe(true);
  });

  it.each([
    ['unknown key (a typo must not back up the pool)', { vm_export: ['web1'] }, 'Unrecognized key: "vm_export"'],
    ['backup_dir is not the caller’s to choose', { backup_dir: '/etc' }, 'Unrecognized key: "backup_dir"'],
    ['wrong type', { max_backups: '4' }, 'expected number'],
    ['out of range', { max_backups: 0 }, 'Too small'],
    ['bad entry', { vm_exports: ['web1:0'] }, 'max_backups must be -1 or a positive integer'],
    ['bad enum', { compress: 'lz4' }, 'Invalid input'],
    ['not an object', ['web1'], 'expected object'],
  ])('refuses %s', (_name, body, message) => {
    const r = RunRequest.safeParse(body);
    expect(r.success).toBe(false);
    expect(r.error!.issues.map((i) => i.message).join('; ')).toContain(message);
  });
});
