import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadSettings } from '../../runtime/config/load.js';
import { parseArgs } from '../../runtime/config/args.js';
import { ROOT } from '../helpers/cli.js';

describe('infra examples', () => {
  it('the example config parses with no error and means what its comments say', () => {
    const file = path.join(ROOT, 'infra/vmbackup.cfg.example');
    const text = readFileSync(file, 'utf8');
    const { settings, warnings } = loadSettings({
      // The files the example names exist on a configured node; here they are stand-ins.
      readFile: (p) => {
        if (p === file) return text;
        if (p.startsWith('/etc/vmbackup/')) return 'stand-in\n';
        throw Object.assign(new Error(`ENOENT: ${p}`), { code: 'ENOENT' });
      },
      fileMode: (p) => (p.startsWith('/etc/vmbackup/') ? 0o100600 : undefined),
      argv: ['-c', file],
      env: { VMBACKUP_PASSWORD: 'x' },
      home: os.tmpdir(),
      systemConfig: path.join(os.tmpdir(), 'no-such-vmbackup.cfg'),
      defaultBaseDir: path.join(os.tmpdir(), 'no-such-base'),
    });
    expect(warnings.filter((w) => !w.includes('password'))).toEqual([]);
    expect(settings).toMatchObject({
      xapi_url: 'https://xcp-pool-master.example.org',
      backup_dir: '/mnt/VmBackup/exports',
      mount_check: true,
      excludes: ['DEV-phishing-test', 'PRD-PRINT$'],
      vdi_exports: ['DEV-MYSQL:7:xvda;xvdb'],
      vm_exports: ['PRD-.*:7', '.*'],
      compress: 'zstd',
      vdi_export_format: 'vhd',
      pool_backup: true,
    });
  });

  it('the cron lines and systemd units use flags the command accepts', async () => {
    const cron = await readFile(path.join(ROOT, 'infra/cron/vmbackup.cron'), 'utf8');
    const units = await Promise.all(['vmbackup.service', 'vmbackup-worker.service', 'vmbackup-gateway.service'].map((u) => readFile(path.join(ROOT, 'infra/systemd', u), 'utf8')));
    const commands = [
      ...cron.split('\n').filter((l) => /^#? ?\d/.test(l) && l.includes('/vmbackup ')).map((l) => l.slice(l.indexOf('/vmbackup ') + '/vmbackup '.length)),
      ...units.flatMap((u) => u.split('\n').filter((l) => l.startsWith('ExecStart=')).map((l) => l.slice(l.indexOf('vmbackup.js') + 'vmbackup.js'.length))),
    ];
    expect(commands.length).toBeGreaterThanOrEqual(5);
    for (const command of commands) {
      const argv = command.trim().split(/\s+/).map((a) => a.replace(/^'(.*)'$/, '$1'));
      const rest = ['worker', 'run', 'gateway'].includes(argv[0]!) ? argv.slice(1) : argv;
      expect(() => parseArgs(rest), command).not.toThrow();
    }
  });
});
