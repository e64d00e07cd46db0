import { statSync } from 'node:fs';
import { readFile, realpath } from 'node:fs/promises';
import { ConfigError } from '../errors.js';

/**
 * backup_dir must be a directory before anything is written to it (or read from it).
 * @throws ConfigError (key `backup_dir`) asking whether the share is mounted.
 */
export function assertBackupDirExists(backupDir: string): void {
  let isDir = false;
  try {
    isDir = statSync(backupDir).isDirectory();
  } catch {
    isDir = false;
  }
  if (!isDir) {
    throw new ConfigError(`backup_dir ${backupDir} does not exist or is not a directory (is the backup share mounted?)`, { key: 'backup_dir' });
  }
}

/** One line of /proc/self/mounts. */
export interface Mount {
  target: string;
  fstype: string;
  source: string;
}

/** Parses /proc/self/mounts (fields separated by spaces; octal escapes such as `\040`). */
export function parseMounts(text: string): Mount[] {
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
  return text
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => {
      const [source = '', target = '', fstype = ''] = line.split(' ');
      return { source: unescape(source), target: unescape(target), fstype };
    });
}

/** The mount that holds `path` (the longest mount point that is a prefix of it; the last one wins for stacked mounts). */
export function mountOf(mounts: readonly Mount[], path: string): Mount | undefined {
  let best: Mount | undefined;
  for (const m of mounts) {
    const inside = m.target === '/' || path === m.target || path.startsWith(m.target.endsWith('/') ? m.target : m.target + '/');
    if (inside && (best === undefined || m.target.length >= best.target.length)) best = m;
  }
  return best;
}

const SHARE_FSTYPES: Record<'nfs' | 'smb', readonly string[]> = {
  nfs: ['nfs', 'nfs4'],
  smb: ['cifs', 'smb3', 'smbfs'],
};

/**
 * `mount_check`: refuse to write backups onto the local disk when the share is not mounted
 * (VmBackup wrote into the empty mount point and filled dom0's root). Pure.
 */
export function checkShare(mounts: readonly Mount[], backupDir: string, shareType: 'nfs' | 'smb'): void {
  const mount = mountOf(mounts, backupDir);
  if (mount === undefined || !SHARE_FSTYPES[shareType].includes(mount.fstype)) {
    const found = mount === undefined ? 'no mount' : `${mount.fstype} filesystem ${mount.source} mounted on ${mount.target}`;
    throw new ConfigError(`mount_check: backup_dir ${backupDir} is not on a mounted ${shareType} share (found ${found}); is the share mounted?`, {
      key: 'mount_check',
    });
  }
}

/** Reads the mount table and checks the share. */
export async function assertShareMounted(backupDir: string, shareType: 'nfs' | 'smb'): Promise<void> {
  const mounts = parseMounts(await readFile('/proc/self/mounts', 'utf8'));
  checkShare(mounts, await realpath(backupDir), shareType);
}
