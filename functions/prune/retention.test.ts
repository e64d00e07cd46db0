import { describe, expect, it } from 'vitest';
import type { Manifest } from '../../runtime/storage/manifest.js';
import { LEGACY_HOSTS_SERIES, manifestCheck, planPointRetention, planRetention, planSeriesRetention, type FileEntry, type ManifestCheck, type RetentionPlan } from './retention.js';

const HOUR = 3_600_000;
const NOW = Date.parse('2024-03-10T12:00:00Z');
const OLD = NOW - 48 * HOUR; // untouched for two days: stale
const RECENT = NOW - 2 * HOUR; // idle, but not stale
const ACTIVE = NOW - 60_000; // being written

/** Stamp of day `d` of March 2024 at 01:00 UTC, new form. */
const day = (d: number) => `202403${String(d).padStart(2, '0')}-010000`;
/** The same instant, VmBackup's form (UTC dom0). */
const legacyDay = (d: number, month = 3) => `${String(month).padStart(2, '0')}${String(d).padStart(2, '0')}2024-010000`;

const f = (name: string, size = 100, mtimeMs = OLD): FileEntry => ({ name, size, mtimeMs });

/** A complete new-style vm-export set. */
const vmSet = (stamp: string, mtimeMs = OLD): FileEntry[] => [
  f(`backup_${stamp}.xva.zst`, 1000, mtimeMs),
  f(`backup_${stamp}.meta`, 200, mtimeMs),
  f(`backup_${stamp}.json`, 300, mtimeMs),
];
/** A complete new-style vdi-export set of two disks. */
const vdiSet = (stamp: string, mtimeMs = OLD): FileEntry[] => [
  f(`backup_xvda_${stamp}.raw`, 1000, mtimeMs),
  f(`backup_xvda_${stamp}.meta`, 200, mtimeMs),
  f(`backup_xvdb_${stamp}.raw`, 1000, mtimeMs),
  f(`backup_xvdb_${stamp}.meta`, 200, mtimeMs),
  f(`backup_${stamp}.json`, 300, mtimeMs),
];
/** A VmBackup vm-export. */
const legacySet = (stamp: string, size = 1000): FileEntry[] => [f(`backup_${stamp}.xva`, size), f(`backup_${stamp}.meta`, 200)];

const valid = (...stamps: string[]) => new Map<string, ManifestCheck>(stamps.map((s) => [s, { valid: true, runId: `run-${s}` }]));

const kept = (p: RetentionPlan) => p.keep.map((s) => s.stamp);
const deleted = (p: RetentionPlan) => p.delete.map((d) => `${d.stamp} ${d.reason}`);
const deletedFiles = (p: RetentionPlan) => p.delete.flatMap((d) => d.files).sort();

describe('planRetention', () => {
  it('keeps the newest max_backups complete sets and deletes the older ones, all their files', () => {
    const files = [1, 2, 3, 4, 5, 6].flatMap((d) => vmSet(day(d)));
    const p = planRetention({ files, manifests: valid(...[1, 2, 3, 4, 5, 6].map(day)), maxBackups: 4, now: NOW });
    expect(kept(p)).toEqual([day(6), day(5), day(4), day(3)]);
    expect(p.keep.every((s) => s.reason === 'within-max-backups' && s.complete)).toBe(true);
    expect(p.keep[0]!.runId).toBe(`run-${day(6)}`);
    expect(deleted(p)).toEqual([`${day(1)} over-max-backups`, `${day(2)} over-max-backups`]);
    expect(p.delete[0]!.files).toEqual([`backup_${day(1)}.json`, `backup_${day(1)}.meta`, `backup_${day(1)}.xva.zst`]);
    expect(p.incomplete).toEqual([]);
  });

  it('odd file counts do not stop pruning (VmBackup defect 9)', () => {
    const files = [
      ...legacySet(legacyDay(1)),
      f(`backup_${legacyDay(2)}.xva`, 500, RECENT), // failed export: VmBackup removed the .meta, left this
      ...legacySet(legacyDay(3)),
      ...legacySet(legacyDay(4)),
      f('backup_notes.txt'),
    ];
    const p = planRetention({ files, manifests: new Map(), maxBackups: 1, now: NOW });
    expect(kept(p)).toEqual([legacyDay(4)]);
    expect(deleted(p)).toEqual([
      `${legacyDay(1)} over-max-backups`,
      `${legacyDay(2)} incomplete-older-than-newest-complete`,
      `${legacyDay(3)} over-max-backups`,
    ]);
    expect(p.incomplete).toMatchObject([{ set: { stamp: legacyDay(2), incompleteReason: 'no-meta' }, action: 'delete' }]);
    expect(p.ignored).toEqual(['backup_notes.txt']);
  });

  it('legacy and new sets interleave by date, whatever their stamp form', () => {
    // Legacy stamps sort wrongly as text (MMDDYYYY): 12/2023 must still be older than 01/2024.
    const files = [...legacySet('12302023-010000'), ...legacySet('01022024-010000'), ...vmSet('20240101-010000'), ...vmSet('20240103-010000')];
    const p = planRetention({ files, manifests: valid('20240101-010000', '20240103-010000'), maxBackups: 3, now: NOW });
    expect(kept(p)).toEqual(['20240103-010000', '01022024-010000', '20240101-010000']);
    expect(p.keep.map((s) => s.legacy)).toEqual([false, true, false]);
    expect(deleted(p)).toEqual(['12302023-010000 over-max-backups']);
  });

  it('reads legacy stamps in the dom0 time zone', () => {
    // 01:30 in Paris on 2 January is 00:30 UTC: older than the new set of 00:45 UTC.
    const files = [...legacySet('01022024-013000'), ...vmSet('20240102-004500')];
    const input = { files, manifests: valid('20240102-004500'), maxBackups: 1, now: NOW };
    expect(kept(planRetention({ ...input, legacyTimeZone: 'Europe/Paris' }))).toEqual(['20240102-004500']);
    expect(kept(planRetention(input))).toEqual(['01022024-013000']); // read as UTC: 01:30 is newer
  });

  it('a vdi-export set with 2 disks counts once (VmBackup defect 13)', () => {
    const files = [1, 2, 3].flatMap((d) => vdiSet(day(d)));
    const p = planRetention({ files, manifests: valid(day(1), day(2), day(3)), maxBackups: 2, now: NOW });
    expect(kept(p)).toEqual([day(3), day(2)]);
    expect(p.keep[0]!.disks).toEqual(['xvda', 'xvdb']);
    expect(deleted(p)).toEqual([`${day(1)} over-max-backups`]);
    expect(p.delete[0]!.files).toHaveLength(5);
  });

  it('VmBackup vdi disks carry their own stamps: each counts as a set, as VmBackup counted them', () => {
    const files = [
      f(`backup_xvda_${legacyDay(1)}.raw`), f(`backup_xvda_${legacyDay(1)}.meta`),
      f('backup_xvdb_03012024-020000.raw'), f('backup_xvdb_03012024-020000.meta'),
      ...vdiSet(day(2)),
    ];
    const p = planRetention({ files, manifests: valid(day(2)), maxBackups: 2, now: NOW });
    expect(kept(p)).toEqual([day(2), '03012024-020000']);
    expect(p.keep[1]!.disks).toEqual(['xvdb']);
    expect(deleted(p)).toEqual([`${legacyDay(1)} over-max-backups`]);
  });

  it('0-byte files never push good backups out', () => {
    const files = [
      ...vmSet(day(1)),
      ...vmSet(day(2)),
      // newer runs that hit a full disk: empty data, no manifest / an invalid one
      f(`backup_${day(3)}.xva.zst`, 0), f(`backup_${day(3)}.meta`, 200),
      f(`backup_${day(4)}.xva.zst`, 0), f(`backup_${day(4)}.meta`, 200), f(`backup_${day(4)}.json`, 300),
      // and VmBackup runs that left empty files
      ...legacySet(legacyDay(5), 0),
      f(`backup_${legacyDay(6)}.xva`, 1000), f(`backup_${legacyDay(6)}.meta`, 0),
    ];
    const manifests = new Map<string, ManifestCheck>([...valid(day(1), day(2)), [day(4), { valid: false, reason: 'size mismatch' }]]);
    const p = planRetention({ files, manifests, maxBackups: 2, now: NOW, staleAfterMs: 1000 * HOUR });
    expect(kept(p)).toEqual([day(2), day(1)]);
    expect(p.incomplete.map((i) => [i.set.stamp, i.set.incompleteReason, i.action, i.reason])).toEqual([
      [day(3), 'no-manifest', 'keep', 'may-be-in-progress'],
      [day(4), 'invalid-manifest', 'keep', 'may-be-in-progress'],
      [legacyDay(5), 'empty-data', 'keep', 'may-be-in-progress'],
      [legacyDay(6), 'no-meta', 'keep', 'may-be-in-progress'],
    ]);
    expect(p.delete).toEqual([]);
  });

  it('with max_backups=1 the newest complete set is kept even when newer incomplete sets exist', () => {
    const files = [
      ...vmSet(day(1)),
      ...vmSet(day(2)),
      f(`backup_${day(3)}.xva.zst.partial`, 5000, ACTIVE), // running now
      f(`backup_${day(4)}.xva.zst`, 1000, OLD), // crashed before its manifest, long ago
    ];
    const p = planRetention({ files, manifests: valid(day(1), day(2)), maxBackups: 1, now: NOW });
    expect(kept(p)).toEqual([day(2)]);
    expect(deleted(p)).toEqual([`${day(1)} over-max-backups`, `${day(4)} incomplete-stale`]);
    expect(p.incomplete.find((i) => i.set.stamp === day(3))).toMatchObject({ action: 'keep', reason: 'may-be-in-progress', set: { incompleteReason: 'partial' } });
  });

  it('incomplete sets: deleted when stale, or older than the newest complete set and idle; else kept', () => {
    const files = [
      f(`backup_${day(1)}.xva.zst.partial`, 10, RECENT), // older than newest complete, idle for 2 h
      f(`backup_${day(2)}.xva.zst.partial`, 10, ACTIVE), // older than newest complete, but written a minute ago
      ...vmSet(day(3)),
      f(`backup_${day(4)}.xva.zst.partial`, 10, RECENT), // newer than the newest complete, not stale
      f(`backup_${day(5)}.xva.zst`, 10, OLD), // newer, but stale
    ];
    const p = planRetention({ files, manifests: valid(day(3)), maxBackups: 3, now: NOW });
    expect(p.incomplete.map((i) => `${i.set.stamp} ${i.action} ${i.reason}`)).toEqual([
      `${day(1)} delete incomplete-older-than-newest-complete`,
      `${day(2)} keep may-be-in-progress`,
      `${day(4)} keep may-be-in-progress`,
      `${day(5)} delete incomplete-stale`,
    ]);
    expect(deletedFiles(p)).toEqual([`backup_${day(1)}.xva.zst.partial`, `backup_${day(5)}.xva.zst`]);
    // the guards are parameters
    const q = planRetention({ files, manifests: valid(day(3)), maxBackups: 3, now: NOW, staleAfterMs: HOUR, activeWithinMs: 0 });
    expect(q.incomplete.every((i) => i.action === 'delete')).toBe(true);
  });

  it('sets that failed verification never count, and go only once a newer complete set exists', () => {
    const bad = (d: number) => [day(d), { valid: false, failedVerification: true, reason: 'failed verification' }] as const;
    const cases: { name: string; files: FileEntry[]; manifests: Map<string, ManifestCheck>; kept: string[]; deleted: string[]; incomplete: string[] }[] = [
      {
        // A bad newest set does not push the older good one out (max_backups 1).
        name: 'bad newest set',
        files: [...vmSet(day(1)), ...vmSet(day(2))],
        manifests: new Map([...valid(day(1)), bad(2)]),
        kept: [day(1)],
        deleted: [],
        incomplete: [`${day(2)} keep failed-verification`],
      },
      {
        // Older than a good set: superseded, deleted once idle.
        name: 'bad set older than a good one',
        files: [...vmSet(day(1)), ...vmSet(day(2))],
        manifests: new Map([bad(1), ...valid(day(2))]),
        kept: [day(2)],
        deleted: [`${day(1)} incomplete-older-than-newest-complete`],
        incomplete: [`${day(1)} delete incomplete-older-than-newest-complete`],
      },
      {
        // Every set bad and old: all kept (an invalid manifest this old would be deleted).
        name: 'only bad sets',
        files: [...vmSet(day(1)), ...vmSet(day(2))],
        manifests: new Map([bad(1), bad(2)]),
        kept: [],
        deleted: [],
        incomplete: [`${day(1)} keep failed-verification`, `${day(2)} keep failed-verification`],
      },
      {
        name: 'an invalid manifest, for contrast',
        files: [...vmSet(day(1))],
        manifests: new Map([[day(1), { valid: false, reason: 'size mismatch' }]]),
        kept: [],
        deleted: [`${day(1)} incomplete-stale`],
        incomplete: [`${day(1)} delete incomplete-stale`],
      },
    ];
    for (const c of cases) {
      const p = planRetention({ files: c.files, manifests: c.manifests, maxBackups: 1, now: NOW });
      expect(kept(p), c.name).toEqual(c.kept);
      expect(deleted(p), c.name).toEqual(c.deleted);
      expect(p.incomplete.map((i) => `${i.set.stamp} ${i.action} ${i.reason}`), c.name).toEqual(c.incomplete);
    }
  });

  it('with no complete set at all, only stale leftovers go', () => {
    const files = [f(`backup_${day(1)}.xva.zst.partial`, 10, OLD), f(`backup_${day(2)}.xva.zst.partial`, 10, RECENT)];
    const p = planRetention({ files, manifests: new Map(), maxBackups: 2, now: NOW });
    expect(p.keep).toEqual([]);
    expect(deleted(p)).toEqual([`${day(1)} incomplete-stale`]);
  });

  it('partial leftovers of a complete set go once idle; the set stays', () => {
    const files = [...vmSet(day(1)), f(`backup_${day(1)}.xva.zst.partial`, 10, RECENT), ...vmSet(day(2)), f(`backup_${day(2)}.meta.partial`, 10, ACTIVE)];
    const p = planRetention({ files, manifests: valid(day(1), day(2)), maxBackups: 2, now: NOW });
    expect(kept(p)).toEqual([day(2), day(1)]);
    expect(p.delete).toEqual([{ stamp: day(1), files: [`backup_${day(1)}.xva.zst.partial`], reason: 'partial-leftover' }]);
  });

  it('protected stamps are never deleted, complete or not', () => {
    const files = [...[1, 2, 3].flatMap((d) => vmSet(day(d))), f(`backup_${day(4)}.xva.zst`, 0, OLD), f(`backup_${day(4)}.json`, 300, OLD)];
    const manifests = new Map<string, ManifestCheck>([...valid(day(1), day(2), day(3)), [day(4), { valid: false }]]);
    const p = planRetention({ files, manifests, maxBackups: 1, now: NOW, protect: [day(1), day(4)] });
    expect(p.keep.map((s) => `${s.stamp} ${s.reason}`)).toEqual([`${day(3)} within-max-backups`, `${day(1)} protected`]);
    expect(deleted(p)).toEqual([`${day(2)} over-max-backups`]);
    expect(p.incomplete).toMatchObject([{ set: { stamp: day(4) }, action: 'keep', reason: 'protected' }]);
  });

  it('never touches files that are not ours', () => {
    const files = [
      ...vmSet(day(1)), ...vmSet(day(2)),
      f('README'), f('backup_01022024-010000.json'), f('metadata_20240301-010000.db'), f('hosts_h_20240301-010000.xbk'),
      f('backup_20240301-010000.xva~'), f('.backup_20240301-010000.xva.partial'),
    ];
    const p = planRetention({ files, manifests: valid(day(1), day(2)), maxBackups: 1, now: NOW });
    expect(deletedFiles(p)).toEqual([`backup_${day(1)}.json`, `backup_${day(1)}.meta`, `backup_${day(1)}.xva.zst`]);
    expect(p.ignored).toEqual([
      '.backup_20240301-010000.xva.partial', 'README', 'backup_01022024-010000.json', 'backup_20240301-010000.xva~',
      'hosts_h_20240301-010000.xbk', 'metadata_20240301-010000.db',
    ]);
  });

  it('refuses max_backups < 1 and unchecked manifests', () => {
    const files = vmSet(day(1));
    expect(() => planRetention({ files, manifests: valid(day(1)), maxBackups: 0, now: NOW })).toThrow(/max_backups must be an integer >= 1, got 0: refusing to prune/);
    expect(() => planRetention({ files, manifests: valid(day(1)), maxBackups: -1, now: NOW })).toThrow(/refusing to prune/);
    expect(() => planRetention({ files, manifests: valid(day(1)), maxBackups: 1.5, now: NOW })).toThrow(/refusing to prune/);
    expect(() => planRetention({ files, manifests: new Map(), maxBackups: 1, now: NOW })).toThrow(/manifest backup_20240301-010000.json was listed but not checked/);
  });

  it('an empty folder is an empty plan', () => {
    expect(planRetention({ files: [], manifests: new Map(), maxBackups: 1, now: NOW })).toEqual({ keep: [], delete: [], incomplete: [], ignored: [] });
  });

  it('never deletes the newest complete set, for any max_backups and any mix', () => {
    const mixes: FileEntry[][] = [
      [...vmSet(day(1)), f(`backup_${day(2)}.xva.zst`, 0)],
      [...legacySet(legacyDay(1)), ...vmSet(day(2)), f(`backup_${day(3)}.xva.zst.partial`, 1, OLD)],
      [...vdiSet(day(5)), ...legacySet(legacyDay(6)), ...vmSet(day(7)), ...legacySet(legacyDay(8), 0)],
    ];
    const manifests = valid(day(1), day(2), day(5), day(7));
    for (const files of mixes) {
      for (const maxBackups of [1, 2, 3, 10]) {
        const p = planRetention({ files, manifests, maxBackups, now: NOW, staleAfterMs: 0, activeWithinMs: 0 });
        const newest = p.keep[0]!;
        expect(newest).toBeDefined();
        expect(p.delete.some((d) => d.stamp === newest.stamp)).toBe(false);
        expect(p.keep.length).toBeLessThanOrEqual(maxBackups);
        // no file is deleted twice, and no kept file is deleted
        const deletedNames = deletedFiles(p);
        expect(new Set(deletedNames).size).toBe(deletedNames.length);
        for (const s of p.keep) for (const name of s.files) expect(deletedNames).not.toContain(name);
      }
    }
  });
});

describe('planSeriesRetention', () => {
  it('POOL_DB: one series; empty and partial files never count', () => {
    const files = [
      f('metadata_03012024-010000.db'), // VmBackup's
      f(`metadata_${day(2)}.db`),
      f(`metadata_${day(3)}.db`),
      f(`metadata_${day(4)}.db`, 0), // empty: failed dump
      f(`metadata_${day(5)}.db.partial`, 10, ACTIVE),
      f('backup_20240301-010000.xva'),
    ];
    const p = planSeriesRetention({ kind: 'pool-db', files, maxBackups: 2, now: NOW });
    expect(kept(p)).toEqual([day(3), day(2)]);
    expect(p.keep.every((s) => s.series === 'pool-db')).toBe(true);
    expect(p.delete).toEqual([
      { stamp: '03012024-010000', files: ['metadata_03012024-010000.db'], reason: 'over-max-backups', series: 'pool-db' },
      { stamp: day(4), files: [`metadata_${day(4)}.db`], reason: 'incomplete-stale', series: 'pool-db' },
    ]);
    expect(p.incomplete.find((i) => i.set.stamp === day(5))).toMatchObject({ action: 'keep', reason: 'may-be-in-progress' });
    expect(p.ignored).toEqual(['backup_20240301-010000.xva']);
  });

  it('POOL_DB: a leftover partial beside its final file goes once idle', () => {
    const files = [f(`metadata_${day(1)}.db`), f(`metadata_${day(1)}.db.partial`, 10, RECENT)];
    const p = planSeriesRetention({ kind: 'pool-db', files, maxBackups: 1, now: NOW });
    expect(kept(p)).toEqual([day(1)]);
    expect(p.delete).toEqual([{ stamp: day(1), files: [`metadata_${day(1)}.db.partial`], reason: 'partial-leftover', series: 'pool-db' }]);
  });

  it('HOSTS: one series per host, VmBackup files apart', () => {
    const files = [
      ...[1, 2, 3].map((d) => f(`hosts_xcp-a_${day(d)}.xbk`)),
      ...[2, 3].map((d) => f(`hosts_xcp_b_${day(d)}.xbk`)),
      f(`hosts_xcp-a_${day(4)}.xbk`, 0),
      f(`hosts_${legacyDay(1)}.xbk`),
      f(`hosts_${legacyDay(2)}.xbk`),
    ];
    const p = planSeriesRetention({ kind: 'hosts', files, maxBackups: 1, now: NOW, protect: [day(2)] });
    expect(p.keep.map((s) => `${s.series} ${s.stamp} ${s.reason}`)).toEqual([
      `xcp-a ${day(3)} within-max-backups`,
      `xcp-a ${day(2)} protected`,
      `xcp_b ${day(3)} within-max-backups`,
      `xcp_b ${day(2)} protected`,
    ]);
    expect(p.delete.map((d) => `${d.series} ${d.stamp} ${d.reason}`)).toEqual([
      `${LEGACY_HOSTS_SERIES} ${legacyDay(1)} over-max-backups`,
      `xcp-a ${day(1)} over-max-backups`,
      `xcp-a ${day(4)} incomplete-stale`,
      // Each host has max_backups (1) of its own newer than it: VmBackup's last one goes too.
      `${LEGACY_HOSTS_SERIES} ${legacyDay(2)} over-max-backups`,
    ]);
  });

  it('HOSTS: VmBackup files age out once every host holds max_backups newer files of its own', () => {
    const legacy = [1, 2, 3].map((d) => f(`hosts_${legacyDay(d)}.xbk`));
    const plan = (hostFiles: FileEntry[]) => planSeriesRetention({ kind: 'hosts', files: [...legacy, ...hostFiles], maxBackups: 2, now: NOW });
    const legacyKept = (p: RetentionPlan) => p.keep.filter((s) => s.series === LEGACY_HOSTS_SERIES).map((s) => s.stamp);
    // No backup of vmbackup's yet: VmBackup's are kept by max_backups, as before.
    expect(legacyKept(plan([]))).toEqual([legacyDay(3), legacyDay(2)]);
    // xcp-a has two newer files, xcp-b one: not yet.
    const some = plan([f(`hosts_xcp-a_${day(4)}.xbk`), f(`hosts_xcp-a_${day(5)}.xbk`), f(`hosts_xcp-b_${day(5)}.xbk`)]);
    expect(legacyKept(some)).toEqual([legacyDay(3), legacyDay(2)]);
    // Both have two: VmBackup's go, oldest first.
    const both = plan([f(`hosts_xcp-a_${day(4)}.xbk`), f(`hosts_xcp-a_${day(5)}.xbk`), f(`hosts_xcp-b_${day(4)}.xbk`), f(`hosts_xcp-b_${day(5)}.xbk`)]);
    expect(legacyKept(both)).toEqual([]);
    expect(both.delete.filter((d) => d.series === LEGACY_HOSTS_SERIES).map((d) => d.stamp)).toEqual([legacyDay(1), legacyDay(2), legacyDay(3)]);
    // An empty (failed) host file does not count.
    expect(legacyKept(plan([f(`hosts_xcp-a_${day(4)}.xbk`), f(`hosts_xcp-a_${day(5)}.xbk`, 0)]))).toEqual([legacyDay(3), legacyDay(2)]);
  });

  it('refuses max_backups < 1', () => {
    expect(() => planSeriesRetention({ kind: 'hosts', files: [], maxBackups: 0, now: NOW })).toThrow(/refusing to prune/);
  });
});

describe('manifestCheck: which manifests make their set count (prune, the gateway)', () => {
  const manifest = (verify?: Manifest['verify']): Manifest => ({
    kind: 'vmbackup-set', version: 1, runId: 'r1', jobId: 'vm.u', try: 1, vm: { uuid: 'u', name: 'web1' }, mode: 'vm', stamp: '20261126-083000',
    createdAt: '2026-11-26T08:31:00Z', bytes: 1, files: [{ name: 'backup_20261126-083000.xva', format: 'xva', size: 1 }], timings: {}, ...(verify !== undefined ? { verify } : {}),
  });
  it.each<[string, Parameters<typeof manifestCheck>[0], ManifestCheck]>([
    ['valid, never verified', { valid: true, manifest: manifest() }, { valid: true, runId: 'r1' }],
    ['valid, verified OK', { valid: true, manifest: manifest({ at: '2026-11-26T09:00:00Z', ok: true }) }, { valid: true, runId: 'r1' }],
    [
      'valid, failed verification',
      { valid: true, manifest: manifest({ at: '2026-11-26T09:00:00Z', ok: false, error: 'backup_20261126-083000.xva: 4 bytes differ' }) },
      { valid: false, failedVerification: true, runId: 'r1', reason: 'failed verification at 2026-11-26T09:00:00Z: backup_20261126-083000.xva: 4 bytes differ' },
    ],
    ['failed verification without detail', { valid: true, manifest: manifest({ at: '2026-11-26T09:00:00Z', ok: false }) }, { valid: false, failedVerification: true, runId: 'r1', reason: 'failed verification at 2026-11-26T09:00:00Z' }],
    ['invalid', { valid: false, reason: 'backup_20261126-083000.xva: missing' }, { valid: false, reason: 'backup_20261126-083000.xva: missing' }],
  ])('%s', (_name, status, check) => {
    expect(manifestCheck(status)).toEqual(check);
  });
});

describe('partials named after their writer', () => {
  const tag = 'w1a2b3c4d-4242-81234567-9f8e7d6c-1';
  const part = (name: string, mtimeMs = ACTIVE) => f(`${name}.${tag}.partial`, 50, mtimeMs);

  it.each([
    // [writer, mtime, protected, expected]
    ['dead', ACTIVE, false, 'deleted at once'],
    ['dead', ACTIVE, true, 'deleted at once'],
    ['live', OLD, false, 'kept'],
    ['live', RECENT, false, 'kept'],
  ] as const)('a %s writer’s partial (mtime %s, protected %s): %s', (writer, mtime, isProtected, expected) => {
    const files = [...vmSet(day(2)), part(`backup_${day(1)}.xva`, mtime)];
    const name = files.at(-1)!.name;
    const p = planRetention({ files, manifests: valid(day(2)), maxBackups: 2, now: NOW, protect: isProtected ? [day(1)] : [], writers: new Map([[name, writer]]) });
    if (expected === 'deleted at once') {
      expect(p.delete).toEqual([{ stamp: day(1), files: [name], reason: 'dead-writer' }]);
    } else {
      expect(p.delete).toEqual([]);
      expect(p.incomplete.map((i) => `${i.action} ${i.reason}`)).toEqual(['keep writer-alive']);
    }
  });

  it('an untagged partial (earlier versions) keeps the age rules: an hour idle and older than the newest complete set', () => {
    const files = [...vmSet(day(2)), f(`backup_${day(1)}.xva.partial`, 50, ACTIVE), f(`backup_${day(3)}.xva.partial`, 50, RECENT), f(`backup_${day(0 + 1)}.meta`, 10, ACTIVE)];
    const p = planRetention({ files, manifests: valid(day(2)), maxBackups: 2, now: NOW, writers: new Map() });
    expect(p.delete).toEqual([]);
    const later = planRetention({ files: files.map((x) => ({ ...x, mtimeMs: RECENT })), manifests: valid(day(2)), maxBackups: 2, now: NOW, writers: new Map() });
    expect(deleted(later)).toEqual([`${day(1)} incomplete-older-than-newest-complete`]);
  });

  it('series: a dead writer’s partial goes at once, a live one’s stays; the complete files are untouched', () => {
    const files = [
      f(`metadata_${day(1)}.db`, 10),
      f(`metadata_${day(2)}.db.${tag}.partial`, 5, ACTIVE),
      f(`metadata_${day(3)}.db.w00000000-1-1-00000000-1.partial`, 5, ACTIVE),
    ];
    const writers = new Map([[files[1]!.name, 'dead' as const], [files[2]!.name, 'live' as const]]);
    const p = planSeriesRetention({ kind: 'pool-db', files, maxBackups: 1, now: NOW, writers });
    expect(p.delete).toEqual([{ stamp: day(2), files: [files[1]!.name], reason: 'dead-writer', series: 'pool-db' }]);
    expect(kept(p)).toEqual([day(1)]);
    expect(p.incomplete.map((i) => `${i.set.stamp} ${i.reason}`)).toEqual([`${day(3)} writer-alive`]);
  });
});

describe('planPointRetention', () => {
  const s = (d: number) => `202612${String(d).padStart(2, '0')}-080000`;
  it.each<[string, string[], number, string[], string[]]>([
    ['keeps the newest MAX points, removes the older ones', [s(1), s(2), s(3), s(4), s(5)], 3, [], [s(1), s(2)]],
    ['nothing to remove under MAX', [s(1), s(2)], 3, [], []],
    ["never removes the run's own point", [s(1), s(2), s(3)], 1, [s(2)], [s(1)]],
    ['order of the listing does not matter', [s(3), s(1), s(2)], 2, [], [s(1)]],
  ])('%s', (_name, stamps, max, protect, removed) => {
    expect(planPointRetention(stamps, max, protect)).toEqual(removed);
  });
});
