import { describe, expect, it } from 'vitest';
import { ConfigError } from '../errors.js';
import { checkShare, mountOf, parseMounts } from './mounts.js';

const table = parseMounts(
  [
    '/dev/vda / ext4 rw,relatime 0 0',
    'nas:/backups /mnt/VmBackup nfs4 rw,relatime 0 0',
    '//nas/share /mnt/smb\\040share cifs rw 0 0',
    'tmpfs /mnt/VmBackup/tmp tmpfs rw 0 0',
  ].join('\n'),
);

describe('mountOf', () => {
  it.each([
    ['/mnt/VmBackup/exports', 'nfs4'],
    ['/mnt/VmBackup', 'nfs4'],
    ['/mnt/VmBackupX/exports', 'ext4'],
    ['/mnt/VmBackup/tmp/x', 'tmpfs'],
    ['/mnt/smb share/exports', 'cifs'],
    ['/srv', 'ext4'],
  ])('%s is on %s', (path, fstype) => {
    expect(mountOf(table, path)?.fstype).toBe(fstype);
  });
});

describe('checkShare', () => {
  it('accepts a backup_dir on the share of its type', () => {
    expect(() => checkShare(table, '/mnt/VmBackup/exports', 'nfs')).not.toThrow();
    expect(() => checkShare(table, '/mnt/smb share/x', 'smb')).not.toThrow();
  });
  it('refuses the local disk under an unmounted mount point, naming what it found', () => {
    expect(() => checkShare(table, '/mnt/VmBackupX/exports', 'nfs')).toThrow(ConfigError);
    expect(() => checkShare(table, '/mnt/VmBackupX/exports', 'nfs')).toThrow(/not on a mounted nfs share \(found ext4 filesystem \/dev\/vda mounted on \/\)/);
    expect(() => checkShare(table, '/mnt/VmBackup/exports', 'smb')).toThrow(/not on a mounted smb share/);
  });
});
