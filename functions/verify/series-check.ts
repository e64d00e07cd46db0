import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Writable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { listFileNames } from '../../runtime/storage/files.js';
import { HOSTS_FOLDER, POOL_DB_FOLDER, parseHostBackupFileName, parsePoolDbFileName } from '../../runtime/storage/naming.js';

/**
 * The checks of POOL_DB and HOSTS backups, streamed (flat memory whatever their size):
 *
 * | file | checks |
 * |------|--------|
 * | `POOL_DB/metadata_<stamp>.db` | not empty; XAPI's database dump: `<?xml …?>` then `<database>`, a `<manifest>`, ending with `</database>` |
 * | `HOSTS/hosts_<host>_<stamp>.xbk` | not empty; a gzip stream whole to its end (its CRC-32 and length), holding a tar (a valid first header block) |
 *
 * Partial files are not backups and are not checked.
 */
export interface SeriesFileResult {
  /** `POOL_DB/metadata_….db`, `HOSTS/hosts_….xbk`. */
  file: string;
  ok: boolean;
  bytes: number;
  error?: string;
}

/** Checks every complete file of `<backupDir>/POOL_DB` and `<backupDir>/HOSTS`. */
export async function verifySeries(backupDir: string): Promise<SeriesFileResult[]> {
  const out: SeriesFileResult[] = [];
  for (const name of (await listFileNames(path.join(backupDir, POOL_DB_FOLDER))).sort()) {
    const info = parsePoolDbFileName(name);
    if (info === null || info.partial) continue;
    out.push(await checkPoolDb(path.join(backupDir, POOL_DB_FOLDER, name), `${POOL_DB_FOLDER}/${name}`));
  }
  for (const name of (await listFileNames(path.join(backupDir, HOSTS_FOLDER))).sort()) {
    const info = parseHostBackupFileName(name);
    if (info === null || info.partial) continue;
    out.push(await checkHostBackup(path.join(backupDir, HOSTS_FOLDER, name), `${HOSTS_FOLDER}/${name}`));
  }
  return out;
}

async function checkPoolDb(full: string, file: string): Promise<SeriesFileResult> {
  const { size } = await stat(full);
  if (size === 0) return { file, ok: false, bytes: 0, error: `${file}: empty` };
  let head = '';
  let tail = Buffer.alloc(0);
  await pipeline(
    createReadStream(full),
    new Writable({
      write(chunk: Buffer, _e, cb) {
        if (head.length < 512) head += chunk.subarray(0, 512).toString('latin1');
        tail = Buffer.concat([tail, chunk]).subarray(-64);
        cb();
      },
    }),
  );
  const start = head.replace(/^\uFEFF/, '').replace(/^<\?xml[^>]*\?>\s*/, '');
  if (!start.startsWith('<database>') && !start.startsWith('<database ')) return { file, ok: false, bytes: size, error: `${file}: not a XAPI database dump (it does not start with <database>)` };
  if (!/<manifest>/.test(start)) return { file, ok: false, bytes: size, error: `${file}: not a XAPI database dump (no <manifest> after <database>)` };
  if (!tail.toString('latin1').trimEnd().endsWith('</database>')) return { file, ok: false, bytes: size, error: `${file}: truncated: it does not end with </database>` };
  return { file, ok: true, bytes: size };
}

async function checkHostBackup(full: string, file: string): Promise<SeriesFileResult> {
  const { size } = await stat(full);
  if (size === 0) return { file, ok: false, bytes: 0, error: `${file}: empty` };
  let first = Buffer.alloc(0);
  try {
    await pipeline(
      createReadStream(full),
      createGunzip(),
      new Writable({
        write(chunk: Buffer, _e, cb) {
          if (first.length < 512) first = Buffer.concat([first, chunk]).subarray(0, 512);
          cb();
        },
      }),
    );
  } catch (error) {
    return { file, ok: false, bytes: size, error: `${file}: not a whole gzip stream (${(error as Error).message})` };
  }
  if (first.length < 512 || !tarHeaderValid(first)) return { file, ok: false, bytes: size, error: `${file}: the gzip stream does not hold a tar archive` };
  return { file, ok: true, bytes: size };
}

/** A tar header block: its checksum (the sum of its bytes, the checksum field read as spaces) matches. */
function tarHeaderValid(block: Buffer): boolean {
  const recorded = parseInt(block.subarray(148, 156).toString('latin1').replace(/\0.*$/, '').trim(), 8);
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 32 : block[i]!;
  return Number.isFinite(recorded) && recorded === sum;
}
