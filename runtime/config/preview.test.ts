import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadSettings, type LoadedSettings } from './load.js';
import { formatPreview, previewJson, previewText, type PreviewSelection } from './preview.js';

const root = mkdtempSync(join(tmpdir(), 'vmbackup-preview-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const passwordFile = join(root, 'password');
writeFileSync(passwordFile, 'hunter2\n');
chmodSync(passwordFile, 0o600);

function load(argv: string[], env: Record<string, string> = {}): LoadedSettings {
  return loadSettings({ argv, env, home: join(root, 'home'), cwd: root, systemConfig: join(root, 'etc', 'vmbackup.cfg'), defaultBaseDir: join(root, 'vb') });
}

const selection: PreviewSelection = {
  excludes: [{ name: 'DEV-phishing-test' }, { name: 'PRD-PRINTER1' }],
  vdiExports: [{ vm: { name: 'DEV-web3' }, maxBackups: 7, disks: ['xvda', 'xvdb'] }],
  vmExports: [
    { vm: { name: 'PRD-print4' }, maxBackups: 5 },
    { vm: { name: 'web, old' }, maxBackups: 4 },
    { vm: { name: ' padded ' }, maxBackups: 4 },
  ],
  warnings: [{ entry: 'NOPE-.*', list: 'vm_exports', message: 'entry "NOPE-.*" matches no VM of the pool' }],
};

const empty: PreviewSelection = { excludes: [], vdiExports: [], vmExports: [], warnings: [] };

describe('previewText', () => {
  it("prints VmBackup's settings block, the added settings and the three lists with counts", () => {
    const loaded = load(['-b', '/mnt/VmBackup', '-C', '-p', '--password-file', passwordFile, '--xapi', 'master:8443']);
    expect(previewText(loaded, selection)).toBe(
      [
        'vmbackup running with these settings:',
        '  backup_dir        = /mnt/VmBackup/exports',
        '  space_threshold   = 20',
        '  share_type        = nfs',
        '  compress          = gzip',
        '  max_backups       = 4',
        '  vdi_export_format = raw',
        '  pool_backup       = true',
        '  host_backup       = false',
        '  xapi_url          = https://master:8443',
        '  username          = root',
        `  password          = (set from file ${passwordFile})`,
        '  concurrency       = 2',
        '  config files      = (none)',
        '  excludes (cnt) = 2',
        '    DEV-phishing-test',
        '    PRD-PRINTER1',
        '  vdi-exports (cnt) = 1',
        '    DEV-web3  (max_backups 7, disks xvda;xvdb)',
        '  vm-exports (cnt) = 3',
        '    PRD-print4  (max_backups 5)',
        '    web, old  (max_backups 4)',
        '    " padded "  (max_backups 4)',
        '  warnings (cnt) = 1',
        '    vm_exports: entry "NOPE-.*" matches no VM of the pool',
        '',
      ].join('\n'),
    );
  });

  it('shows where the password comes from, or that it is not set, never the password', () => {
    const fromEnv = load([], { VMBACKUP_PASSWORD: 'swordfish' });
    const text = previewText(fromEnv, empty);
    expect(text).toContain('  password          = (set from environment VMBACKUP_PASSWORD)\n');
    expect(text).not.toContain('swordfish');
    expect(previewText(load([]), empty)).toContain('  password          = (not set)\n');
  });

  it('lists zero counts and the config warnings it is given', () => {
    const loaded = { ...load(['--xapi', 'http://m']), files: ['/etc/vmbackup.cfg', '/root/vmbackup.cfg'] };
    const text = previewText(loaded, empty);
    expect(text).toContain('  config files      = /etc/vmbackup.cfg, /root/vmbackup.cfg\n');
    expect(text).toContain('  excludes (cnt) = 0\n  vdi-exports (cnt) = 0\n  vm-exports (cnt) = 0\n');
    expect(text).toContain('  warnings (cnt) = 1\n    xapi_url = http://m on the command line (--xapi): http sends the password in cleartext; use https\n');
  });
});

describe('where each VM goes', () => {
  const u1 = '15f0961c-0000-4000-8000-000000000001';
  const u2 = 'a524e889-0000-4000-8000-000000000002';
  const dup: PreviewSelection = {
    excludes: [],
    vdiExports: [{ vm: { name: '../x', uuid: u1, folder: '_._x~d6b96a97' }, maxBackups: 2, disks: ['xvda'] }],
    vmExports: [
      { vm: { name: 'dup', uuid: u1, folder: 'dup~15f0961c' }, maxBackups: 4 },
      { vm: { name: 'dup', uuid: u2, folder: 'dup~a524e889' }, maxBackups: 4 },
      { vm: { name: 'web1', uuid: u2, folder: 'web1' }, maxBackups: 4 },
    ],
    warnings: [],
  };

  it('the text names the folder, and the VM, where the folder is not the name', () => {
    const text = previewText(load([]), dup);
    expect(text).toContain(`    ../x  (max_backups 2, disks xvda, folder _._x~d6b96a97 (VM ${u1}))\n`);
    expect(text).toContain(`    dup  (max_backups 4, folder dup~15f0961c (VM ${u1}))\n    dup  (max_backups 4, folder dup~a524e889 (VM ${u2}))\n`);
    expect(text).toContain('    web1  (max_backups 4)\n');
  });

  it('the JSON gives every VM its uuid and folder', () => {
    const json = previewJson(load([]), dup);
    expect(json.vm_exports).toEqual([
      { vm: 'dup', max_backups: 4, uuid: u1, folder: 'dup~15f0961c' },
      { vm: 'dup', max_backups: 4, uuid: u2, folder: 'dup~a524e889' },
      { vm: 'web1', max_backups: 4, uuid: u2, folder: 'web1' },
    ]);
    expect(json.vdi_exports[0]).toEqual({ vm: '../x', max_backups: 2, disks: ['xvda'], uuid: u1, folder: '_._x~d6b96a97' });
  });
});

describe('previewJson', () => {
  it('has exactly settings, excludes, vdi_exports, vm_exports, warnings and errors', () => {
    const loaded = load(['-b', '/mnt/VmBackup', '--password-file', passwordFile, '-F', 'vhd']);
    const json = previewJson(loaded, selection);
    expect(Object.keys(json)).toEqual(['settings', 'excludes', 'vdi_exports', 'vm_exports', 'warnings', 'errors']);
    expect(json.errors).toEqual([]);
    expect(json.excludes).toEqual(['DEV-phishing-test', 'PRD-PRINTER1']);
    expect(json.vdi_exports).toEqual([{ vm: 'DEV-web3', max_backups: 7, disks: ['xvda', 'xvdb'] }]);
    expect(json.vm_exports).toEqual([
      { vm: 'PRD-print4', max_backups: 5 },
      { vm: 'web, old', max_backups: 4 },
      { vm: ' padded ', max_backups: 4 },
    ]);
    expect(json.warnings).toEqual(['vm_exports: entry "NOPE-.*" matches no VM of the pool']);
    expect(json.settings).toEqual({
      base_dir: '/mnt/VmBackup',
      backup_dir: '/mnt/VmBackup/exports',
      share_type: 'nfs',
      mount_check: false,
      space_threshold: 20,
      max_backups: 4,
      compress: 'none',
      vdi_export_format: 'vhd',
      pool_backup: false,
      host_backup: false,
      log_level: 'info',
      vm_exports: ['.*'],
      vdi_exports: [],
      excludes: [],
      xapi_url: 'https://localhost',
      username: 'root',
      password_file: passwordFile,
      password: `(set from file ${passwordFile})`,
      tls_ca_file: null,
      insecure: false,
      concurrency: 2,
      halted_without_snapshot: true,
      vm_retries: 1,
      export_idle_timeout: 300,
      lock_stale_hours: 24,
      verify_after_backup: null,
      failed_keep_days: 30,
      nats_url: null,
      nats_token_file: null,
      nats_user: null,
      nats_password_file: null,
      nats_creds_file: null,
      nats_tls_ca_file: null,
      nats_tls_cert_file: null,
      nats_tls_key_file: null,
      worker_functions: [],
      gateway_listen: '127.0.0.1:8080',
      gateway_tokens_file: null,
      webhook_secret_file: null,
      gateway_body_limit: 1048576,
      alertmanager_label: 'vm',
      max_age_hours: 26,
      metrics_tokens_file: null,
      metrics_listen: null,
      metrics_textfile: null,
      report_url: null,
      report_url_file: null,
      report_email: null,
      report_on: 'failure',
      report_timeout: 30,
      hook_command_pre_vm: null,
      hook_command_post_vm: null,
      hook_command_run_start: null,
      hook_command_run_end: null,
      hook_url_pre_vm: null,
      hook_url_post_vm: null,
      hook_url_run_start: null,
      hook_url_run_end: null,
      hook_secret_file: null,
      hooks_nats: false,
      hook_nats_replies: 1,
      hook_timeout: 60,
      hooks_on_timeout: 'continue',
      hooks_on_failure: 'continue',
    });
  });

  it('formatPreview prints JSON with --json and text without, never the password', () => {
    const loaded = load(['--password-file', passwordFile]);
    const json = formatPreview(loaded, selection, { json: true });
    expect(JSON.parse(json)).toEqual(previewJson(loaded, selection));
    expect(json.endsWith('}\n')).toBe(true);
    expect(formatPreview(loaded, selection)).toBe(previewText(loaded, selection));
    for (const out of [json, formatPreview(loaded, selection)]) expect(out).not.toContain('hunter2');
    expect(JSON.parse(formatPreview(load([]), empty, { json: true })).settings.password).toBeNull();
  });
});
