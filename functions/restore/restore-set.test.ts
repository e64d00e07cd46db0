import { describe, expect, it } from 'vitest';
import { RestoreInputError, chooseDataFile, manifestNameOf, metaNameOf, parseRestoreFile, rawFormatOf, restoredName, setDataFiles } from './restore-set.js';
import type { SetDataFile } from './restore-set.js';

const S = '20240102-030405';

describe('parseRestoreFile', () => {
  it.each([
    [`/b/web1/backup_${S}.xva`, { dir: '/b/web1', kind: 'data', format: 'xva', stamp: S, legacy: false }],
    [`/b/web1/backup_${S}.xva.zst`, { kind: 'data', format: 'xva.zst' }],
    [`/b/web1/backup_xvdb_${S}.vhd`, { kind: 'data', format: 'vhd', disk: 'xvdb' }],
    [`/b/web1/backup_${S}.json`, { kind: 'manifest', stamp: S }],
    ['/b/web1/backup_01022024-030405.xva.gz', { kind: 'data', format: 'xva.gz', legacy: true, stamp: '01022024-030405' }],
  ])('%s', (file, expected) => {
    expect(parseRestoreFile(file)).toMatchObject(expected);
  });

  it.each([
    ['backup_20240102-030405.xva', 'absolute path'],
    ['/b/web1/notes.txt', 'not a file of a backup set'],
    [`/b/web1/backup_${S}.xva.partial`, 'a .partial file is an unfinished backup'],
    [`/b/web1/backup_${S}.meta`, 'a .meta file describes a backup'],
    [`/b/web1/backup_${S}.raw`, 'not a file of a backup set'], // a raw file needs its disk
    ['/b/POOL_DB/metadata_20240102-030405.db', 'not a file of a backup set'],
  ])('refuses %s', (file, message) => {
    expect(() => parseRestoreFile(file)).toThrow(message);
  });
});

describe('setDataFiles', () => {
  it('keeps the data files of one stamp, in name order', () => {
    const names = [
      `backup_xvdb_${S}.raw`,
      `backup_xvda_${S}.raw`,
      `backup_xvda_${S}.meta`,
      `backup_${S}.json`,
      `backup_xvdc_${S}.raw.partial`,
      'backup_xvda_20240101-000000.raw',
      'notes.txt',
    ];
    expect(setDataFiles(names, S)).toEqual([
      { name: `backup_xvda_${S}.raw`, format: 'raw', disk: 'xvda' },
      { name: `backup_xvdb_${S}.raw`, format: 'raw', disk: 'xvdb' },
    ]);
  });
});

describe('chooseDataFile', () => {
  const xva: SetDataFile[] = [{ name: `backup_${S}.xva`, format: 'xva' }];
  const disks: SetDataFile[] = [
    { name: `backup_xvda_${S}.vhd`, format: 'vhd', disk: 'xvda' },
    { name: `backup_xvdb_${S}.vhd`, format: 'vhd', disk: 'xvdb' },
  ];
  const file = (name: string) => parseRestoreFile(`/b/web1/${name}`);

  it.each([
    ['the xva itself', file(`backup_${S}.xva`), xva, undefined, xva[0]],
    ['the manifest of a VM export', file(`backup_${S}.json`), xva, undefined, xva[0]],
    ['a disk file', file(`backup_xvdb_${S}.vhd`), disks, undefined, disks[1]],
    ['a disk file and its own --disk', file(`backup_xvdb_${S}.vhd`), disks, 'xvdb', disks[1]],
    ['the manifest and --disk', file(`backup_${S}.json`), disks, 'xvda', disks[0]],
    ['the manifest of a one-disk set', file(`backup_${S}.json`), disks.slice(1), undefined, disks[1]],
  ])('%s', (_what, f, data, disk, expected) => {
    expect(chooseDataFile(f, data, disk)).toEqual(expected);
  });

  // A missing or wrong --disk is the command line's to fix (RestoreInputError: exit 2); a set
  // without data is a broken backup (exit 1).
  it.each([
    ['--disk on a VM export', file(`backup_${S}.xva`), xva, 'xvda', 'is a VM export (xva); --disk chooses a disk of a vdi-export set', true],
    ['--disk of another disk than FILE', file(`backup_xvda_${S}.vhd`), disks, 'xvdb', 'is the backup of disk xvda', true],
    ['an unknown --disk', file(`backup_${S}.json`), disks, 'xvdz', 'has no such disk (disks: xvda, xvdb)', true],
    ['a manifest of several disks without --disk', file(`backup_${S}.json`), disks, undefined, 'holds 2 disks (xvda, xvdb): choose one with --disk', true],
    ['a set without data', file(`backup_${S}.json`), [], undefined, 'the set has no data file', false],
  ])('refuses %s', (_what, f, data, disk, message, input) => {
    let thrown: unknown;
    try {
      chooseDataFile(f, data, disk);
    } catch (error) {
      thrown = error;
    }
    expect((thrown as Error).message).toContain(message);
    expect(thrown instanceof RestoreInputError).toBe(input);
  });
});

describe('names', () => {
  it.each([
    [{}, 'web1 (restored 20240102-030405)'],
    [{ preserve: true }, 'web1'],
    [{ name: 'web1-copy' }, 'web1-copy'],
    [{ name: 'web1-copy', preserve: true }, 'web1-copy'],
  ])('restoredName %j', (opts, expected) => {
    expect(restoredName('web1', S, opts)).toBe(expected);
  });

  it('metaNameOf, manifestNameOf, rawFormatOf', () => {
    expect(metaNameOf(S)).toBe(`backup_${S}.meta`);
    expect(metaNameOf(S, 'xvdb')).toBe(`backup_xvdb_${S}.meta`);
    expect(manifestNameOf(parseRestoreFile(`/b/x/backup_${S}.xva`))).toBe(`backup_${S}.json`);
    expect(manifestNameOf(parseRestoreFile('/b/x/backup_01022024-030405.xva'))).toBeUndefined();
    expect([rawFormatOf('raw'), rawFormatOf('vhd'), rawFormatOf('xva'), rawFormatOf('xva.gz')]).toEqual(['raw', 'vhd', undefined, undefined]);
  });
});
