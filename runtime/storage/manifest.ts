import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { WrittenFile } from '../../functions/job.js';

/**
 * The manifest of a backup set, `backup_<stamp>.json`, written last: it is what makes a set
 * count (data → .meta → manifest, as restic writes data → index → snapshot). A set without a
 * valid manifest is incomplete and never counts toward max_backups.
 *
 * @example
 *   { "kind": "vmbackup-set", "version": 1, "runId": "20261126-083000-7f3a", "jobId": "vm.…",
 *     "vm": {"uuid": "…", "name": "web1"}, "mode": "vm", "stamp": "20261126-083000",
 *     "createdAt": "2026-11-26T08:31:40Z", "bytes": 1073741824,
 *     "files": [{"name": "backup_20261126-083000.xva", "format": "xva", "size": 1073741824,
 *                "xxh64": "9A1B…"}, {"name": "backup_20261126-083000.meta", "format": "meta", …}],
 *     "timings": {"snapshotAt": "…", "exportMs": 41000} }
 */
export const Manifest = z.object({
  kind: z.literal('vmbackup-set'),
  version: z.literal(1),
  runId: z.string(),
  jobId: z.string(),
  try: z.number().int(),
  vm: z.object({ uuid: z.string(), name: z.string() }),
  mode: z.enum(['vm', 'vdi']),
  stamp: z.string(),
  createdAt: z.string(),
  compress: z.string().optional(),
  bytes: z.number().int().min(0),
  files: z.array(WrittenFile).min(1),
  timings: z.object({ snapshotAt: z.string().optional(), exportMs: z.number().optional() }).default({}),
  /** The last verification of this set (issue: verify), when one ran. */
  verify: z.object({ at: z.string(), ok: z.boolean(), error: z.string().optional() }).optional(),
});
export type Manifest = z.infer<typeof Manifest>;

export type ManifestStatus = { valid: true; manifest: Manifest } | { valid: false; reason: string };

/**
 * Reads a set's manifest and checks it against the folder: it parses, and every file it
 * lists exists with the size it records. Cheap (no data is read); `verify` reads the data.
 */
export async function checkManifest(dir: string, manifestName: string): Promise<ManifestStatus> {
  let manifest: Manifest;
  try {
    const parsed = Manifest.safeParse(JSON.parse(await readFile(path.join(dir, manifestName), 'utf8')));
    if (!parsed.success) return { valid: false, reason: `${manifestName}: ${parsed.error.issues[0]?.message ?? 'invalid'}` };
    manifest = parsed.data;
  } catch (error) {
    return { valid: false, reason: `${manifestName}: ${(error as Error).message}` };
  }
  for (const file of manifest.files) {
    if (file.name.includes('/') || file.name.startsWith('.')) return { valid: false, reason: `${manifestName}: bad file name ${file.name}` };
    try {
      const s = await stat(path.join(dir, file.name));
      if (s.size !== file.size) return { valid: false, reason: `${file.name}: ${s.size} bytes, manifest says ${file.size}` };
    } catch {
      return { valid: false, reason: `${file.name}: missing` };
    }
  }
  return { valid: true, manifest };
}
