import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  dataFileName,
  formatLegacyStamp,
  formatStamp,
  hostBackupFileName,
  hostFileComponent,
  manifestFileName,
  MAX_COMPONENT_BYTES,
  metaFileName,
  parseBackupFileName,
  parseHostBackupFileName,
  parsePoolDbFileName,
  parseStamp,
  partialFileName,
  poolDbFileName,
  vmFolderName,
} from './naming.js';

const h = (name: string) => createHash('sha256').update(name, 'utf8').digest('hex').slice(0, 8);
const UUID = '1A2B3C4D-0000-4000-8000-000000000001';
const bytes = (s: string) => Buffer.byteLength(s, 'utf8');

describe('stamps', () => {
  it('formats UTC, to the second', () => {
    expect(formatStamp(new Date('2024-01-02T03:04:05.999Z'))).toBe('20240102-030405');
    expect(formatStamp(new Date('1999-12-31T23:59:59Z'))).toBe('19991231-235959');
    expect(() => formatStamp(new Date('nope'))).toThrow(/invalid date/);
  });

  it('round-trips new stamps', () => {
    for (const iso of ['2024-01-02T03:04:05Z', '2024-02-29T00:00:00Z', '2038-01-19T03:14:08Z']) {
      const s = formatStamp(new Date(iso));
      expect(parseStamp(s)).toEqual({ date: new Date(iso), legacy: false });
    }
  });

  it('formats and reads legacy stamps in a time zone', () => {
    const d = new Date('2024-07-02T03:04:05Z');
    expect(formatLegacyStamp(d)).toBe('07022024-030405');
    expect(formatLegacyStamp(d, 'Europe/Paris')).toBe('07022024-050405');
    expect(parseStamp('07022024-050405', { legacyTimeZone: 'Europe/Paris' })).toEqual({ date: d, legacy: true });
    // winter: +01:00
    expect(parseStamp('01022024-040405', { legacyTimeZone: 'Europe/Paris' })?.date).toEqual(new Date('2024-01-02T03:04:05Z'));
    expect(parseStamp('01022024-030405')?.date).toEqual(new Date('2024-01-02T03:04:05Z'));
    expect(() => parseStamp('01022024-030405', { legacyTimeZone: 'Mars/Olympus' })).toThrow(/unknown time zone "Mars\/Olympus"/);
  });

  // One table for the forms that look alike: the first reading is decided by validity only.
  it.each([
    ['20240102-030405', { legacy: false, iso: '2024-01-02T03:04:05Z' }],
    ['01022024-030405', { legacy: true, iso: '2024-01-02T03:04:05Z' }],
    ['12312023-235959', { legacy: true, iso: '2023-12-31T23:59:59Z' }],
    ['20231231-235959', { legacy: false, iso: '2023-12-31T23:59:59Z' }],
    ['10102010-101010', { legacy: true, iso: '2010-10-10T10:10:10Z' }], // new reading: year 1010
    ['12121970-000000', { legacy: true, iso: '1970-12-12T00:00:00Z' }], // new reading: year 1212
    ['19700101-000000', { legacy: false, iso: '1970-01-01T00:00:00Z' }], // legacy reading: month 19
    ['02292024-000000', { legacy: true, iso: '2024-02-29T00:00:00Z' }],
    ['20240229-000000', { legacy: false, iso: '2024-02-29T00:00:00Z' }],
    ['20241301-000000', null], // month 13 / month 20
    ['02302024-000000', null], // 30 February
    ['02292023-000000', null], // not a leap year
    ['20230229-000000', null],
    ['00012024-000000', null], // month 0
    ['01002024-000000', null], // day 0
    ['01011969-000000', null], // before 1970
    ['20240102-240000', null],
    ['20240102-236000', null],
    ['20240102-235960', null],
    ['2024010-2030405', null],
    ['20240102030405', null],
    ['20240102-03040', null],
    [' 20240102-030405', null],
  ])('parseStamp(%s)', (s, expected) => {
    const p = parseStamp(s);
    if (expected === null) expect(p).toBeNull();
    else expect(p).toEqual({ date: new Date(expected.iso), legacy: expected.legacy });
  });
});

describe('file names', () => {
  const S = '20240102-030405';
  const L = '01022024-030405';

  it('builds every kind', () => {
    expect(dataFileName(S, 'xva')).toBe('backup_20240102-030405.xva');
    expect(dataFileName(S, 'xva.gz')).toBe('backup_20240102-030405.xva.gz');
    expect(dataFileName(S, 'xva.zst')).toBe('backup_20240102-030405.xva.zst');
    expect(dataFileName(S, 'raw', 'xvda')).toBe('backup_xvda_20240102-030405.raw');
    expect(dataFileName(S, 'vhd', 'xvdb')).toBe('backup_xvdb_20240102-030405.vhd');
    expect(metaFileName(S)).toBe('backup_20240102-030405.meta');
    expect(metaFileName(S, 'xvdb')).toBe('backup_xvdb_20240102-030405.meta');
    expect(manifestFileName(S)).toBe('backup_20240102-030405.json');
    expect(partialFileName(dataFileName(S, 'xva'))).toBe('backup_20240102-030405.xva.partial');
    expect(poolDbFileName(S)).toBe('metadata_20240102-030405.db');
    expect(hostBackupFileName('xcp-host1', S)).toBe('hosts_xcp-host1_20240102-030405.xbk');
  });

  it('refuses what it must not write', () => {
    expect(() => dataFileName(L, 'xva')).toThrow(/not a YYYYMMDD-HHMMSS stamp/);
    expect(() => dataFileName(S, 'raw')).toThrow(/needs a disk/);
    expect(() => dataFileName(S, 'xva', 'xvda')).toThrow(/takes no disk/);
    expect(() => dataFileName(S, 'raw', 'xv/da')).toThrow(/invalid disk name/);
    expect(() => metaFileName(S, 'a_b')).toThrow(/invalid disk name/);
    expect(() => manifestFileName('yesterday')).toThrow(/not a YYYYMMDD-HHMMSS stamp/);
  });

  it.each([
    ['backup_20240102-030405.xva', { kind: 'data', format: 'xva', legacy: false }],
    ['backup_20240102-030405.xva.gz', { kind: 'data', format: 'xva.gz', legacy: false }],
    ['backup_20240102-030405.xva.zst', { kind: 'data', format: 'xva.zst', legacy: false }],
    ['backup_xvda_20240102-030405.raw', { kind: 'data', format: 'raw', disk: 'xvda', legacy: false }],
    ['backup_xvdb_20240102-030405.vhd', { kind: 'data', format: 'vhd', disk: 'xvdb', legacy: false }],
    ['backup_20240102-030405.meta', { kind: 'meta', legacy: false }],
    ['backup_xvdb_20240102-030405.meta', { kind: 'meta', disk: 'xvdb', legacy: false }],
    ['backup_20240102-030405.json', { kind: 'manifest', legacy: false }],
    ['backup_20240102-030405.xva.zst.partial', { kind: 'partial', partialOf: 'data', format: 'xva.zst', legacy: false }],
    ['backup_xvdb_20240102-030405.vhd.partial', { kind: 'partial', partialOf: 'data', format: 'vhd', disk: 'xvdb', legacy: false }],
    ['backup_20240102-030405.json.partial', { kind: 'partial', partialOf: 'manifest', legacy: false }],
    ['backup_20240102-030405.meta.partial', { kind: 'partial', partialOf: 'meta', legacy: false }],
    // VmBackup's names
    ['backup_01022024-030405.xva', { kind: 'data', format: 'xva', legacy: true }],
    ['backup_01022024-030405.xva.gz', { kind: 'data', format: 'xva.gz', legacy: true }],
    ['backup_01022024-030405.meta', { kind: 'meta', legacy: true }],
    ['backup_xvda_01022024-030405.raw', { kind: 'data', format: 'raw', disk: 'xvda', legacy: true }],
    ['backup_xvda_01022024-030405.meta', { kind: 'meta', disk: 'xvda', legacy: true }],
  ])('parses %s', (name, expected) => {
    const info = parseBackupFileName(name);
    expect(info).toMatchObject({ name, ...expected });
    expect(info?.stamp).toMatch(/^\d{8}-\d{6}$/);
    for (const key of ['format', 'disk', 'partialOf'] as const) if (!(key in expected)) expect(info).not.toHaveProperty(key);
  });

  it.each([
    'notes.txt',
    'backup_20240102-030405.tar',
    'backup_20240102-030405.xva.bak',
    'backup_20241302-030405.xva', // invalid stamp
    'backup_xvda_20240102-030405.xva', // vm format with a disk
    'backup_20240102-030405.raw', // vdi format without a disk
    'backup_xvda_20240102-030405.json', // manifest with a disk
    'backup_01022024-030405.json', // VmBackup wrote no manifest
    'backup_01022024-030405.xva.partial', // nor partials
    'backup_01022024-030405.xva.zst', // nor zstd
    'backup_x_y_20240102-030405.raw', // disk names are letters and digits
    'Backup_20240102-030405.xva',
    'backup_20240102-030405.xva ',
    '.backup_20240102-030405.xva',
    'backup_20240102-030405.partial',
    'metadata_20240102-030405.db',
    'hosts_h_20240102-030405.xbk',
  ])('ignores %s', (name) => {
    expect(parseBackupFileName(name)).toBeNull();
  });

  it('reads pool DB names', () => {
    expect(parsePoolDbFileName('metadata_20240102-030405.db')).toMatchObject({ stamp: '20240102-030405', legacy: false, partial: false });
    expect(parsePoolDbFileName('metadata_20240102-030405.db.partial')).toMatchObject({ legacy: false, partial: true });
    expect(parsePoolDbFileName('metadata_01022024-030405.db')).toMatchObject({ legacy: true, partial: false });
    expect(parsePoolDbFileName('metadata_01022024-030405.db.partial')).toBeNull();
    expect(parsePoolDbFileName('metadata_20240102-030405.xbk')).toBeNull();
    expect(parsePoolDbFileName('backup_20240102-030405.xva')).toBeNull();
  });

  it('reads host backup names', () => {
    expect(parseHostBackupFileName('hosts_xcp-host1_20240102-030405.xbk')).toMatchObject({ host: 'xcp-host1', legacy: false, partial: false });
    expect(parseHostBackupFileName('hosts_my_host_20240102-030405.xbk.partial')).toMatchObject({ host: 'my_host', partial: true });
    expect(parseHostBackupFileName('hosts_01022024-030405.xbk')).toMatchObject({ host: null, legacy: true });
    expect(parseHostBackupFileName('hosts_20240102-030405.xbk')).toBeNull(); // new stamps always name the host
    expect(parseHostBackupFileName('hosts_h_01022024-030405.xbk')).toBeNull(); // VmBackup named no host
    expect(parseHostBackupFileName('hosts_01022024-030405.xbk.partial')).toBeNull();
    expect(parseHostBackupFileName('hosts_h_20240102-030405.db')).toBeNull();
  });

  it('maps host names into the file name, bounded to 255 bytes with .partial', () => {
    expect(hostFileComponent('a/b')).toBe(`a_b~${h('a/b')}`);
    const long = 'h'.repeat(400);
    const name = partialFileName(hostBackupFileName(long, '20240102-030405'));
    expect(bytes(name)).toBeLessThanOrEqual(MAX_COMPONENT_BYTES);
    expect(parseHostBackupFileName(name)).toMatchObject({ host: hostFileComponent(long), partial: true });
  });
});

describe('vmFolderName', () => {
  const long300 = 'a'.repeat(300);
  const longE = 'é'.repeat(300); // 600 bytes
  const nfd = 'Cafe\u0301';
  it.each([
    // kept: VmBackup's folder is reused
    ['DEV-web3', false, 'DEV-web3'],
    ['PRD PRINTER 1', false, 'PRD PRINTER 1'],
    ['web (old) #2', false, 'web (old) #2'],
    ['Café', false, 'Café'],
    ['数据库-01', false, '数据库-01'],
    ['-leading-dash', false, '-leading-dash'],
    ['a~b', false, 'a~b'],
    ['POOL_DB', false, 'POOL_DB'],
    ['HOSTS', false, 'HOSTS'],
    // mapped
    ['../x', false, `_._x~${h('../x')}`],
    ['a/b', false, `a_b~${h('a/b')}`],
    ['a\\b', false, `a_b~${h('a\\b')}`],
    ['.', false, `_~${h('.')}`],
    ['..', false, `__~${h('..')}`],
    ['.hidden', false, `_hidden~${h('.hidden')}`],
    ['', false, `_~${h('')}`],
    ['nul\0byte', false, `nul_byte~${h('nul\0byte')}`],
    ['tab\there', false, `tab_here~${h('tab\there')}`],
    ['line\nbreak', false, `line_break~${h('line\nbreak')}`],
    ['del\x7f', false, `del_~${h('del\x7f')}`],
    ['web ', false, `web_~${h('web ')}`],
    ['web.', false, `web_~${h('web.')}`],
    ['web. ', false, `web__~${h('web. ')}`],
    ['a:b*c?d"e<f>g|h', false, `a_b_c_d_e_f_g_h~${h('a:b*c?d"e<f>g|h')}`],
    [nfd, false, `Café~${h(nfd)}`],
    ['lone\ud800', false, `lone_~${h('lone\ud800')}`],
    ['web~0123abcd', false, `web~0123abcd~${h('web~0123abcd')}`],
    // shared names
    ['web', true, 'web~1a2b3c4d'],
    ['a/b', true, `a_b~${h('a/b')}~1a2b3c4d`],
  ])('%j (shared: %s)', (name, shared, folder) => {
    expect(vmFolderName(name, UUID, { shared })).toBe(folder);
  });

  it('bounds the length in UTF-8 bytes, cutting on code points', () => {
    const a = vmFolderName(long300, UUID, { shared: false });
    expect(a).toBe('a'.repeat(255 - 9) + `~${h(long300)}`);
    const e = vmFolderName(longE, UUID, { shared: false });
    expect(bytes(e)).toBeLessThanOrEqual(255);
    expect(e).toBe('é'.repeat(123) + `~${h(longE)}`); // 246 bytes of é, then the suffix
    const s = vmFolderName(long300, UUID, { shared: true });
    expect(bytes(s)).toBe(255);
    expect(s.endsWith(`~${h(long300)}~1a2b3c4d`)).toBe(true);
    // a safe 255-byte name is kept, but needs cutting (and so a hash) once shared
    const exact = 'b'.repeat(255);
    expect(vmFolderName(exact, UUID, { shared: false })).toBe(exact);
    expect(vmFolderName(exact, UUID, { shared: true })).toBe('b'.repeat(255 - 18) + `~${h(exact)}~1a2b3c4d`);
    // 4-byte characters are never split
    const emoji = '😀'.repeat(100);
    const m = vmFolderName(emoji, UUID, { shared: false });
    expect(m).toBe('😀'.repeat(61) + `~${h(emoji)}`);
  });

  it('is one path component, never . or .., for any input', () => {
    const odd = ['/', '//', '\\', '.', '..', '...', ' ', '. .', '\0', '../../etc', 'a/../b', '\u2028', '~', long300, longE];
    for (const name of odd) {
      const f = vmFolderName(name, UUID, { shared: false });
      expect(f).not.toMatch(/[/\\\0]/);
      expect(f).not.toMatch(/^\./);
      expect(['.', '..', '']).not.toContain(f);
      expect(bytes(f)).toBeLessThanOrEqual(255);
      expect(vmFolderName(name, UUID, { shared: false })).toBe(f); // deterministic
    }
  });

  it('never gives two names one folder', () => {
    const names = ['a/b', 'a_b', 'a\\b', 'a:b', 'a_b~' + h('a/b').slice(0, 7) + '0', '.x', '_x', 'x.', 'x_', 'x', 'Café', nfd, '.', '..', '_', '__', '', long300, long300 + 'b'];
    const folders = names.map((n) => vmFolderName(n, UUID, { shared: false }));
    expect(new Set(folders).size).toBe(names.length);
    expect(vmFolderName('a/b', UUID, { shared: false })).not.toBe(vmFolderName('a_b', UUID, { shared: false }));
    // a VM literally named like the mapped folder of another does not get that folder
    const mapped = vmFolderName('a/b', UUID, { shared: false });
    expect(vmFolderName(mapped, UUID, { shared: false })).not.toBe(mapped);
    // shared names: one folder per VM
    const u2 = '9f8e7d6c-0000-4000-8000-000000000002';
    expect(vmFolderName('web', UUID, { shared: true })).not.toBe(vmFolderName('web', u2, { shared: true }));
    expect(vmFolderName('web~1a2b3c4d', u2, { shared: false })).not.toBe(vmFolderName('web', UUID, { shared: true }));
  });

  it('needs a uuid for shared names', () => {
    expect(() => vmFolderName('web', 'OpaqueRef:x', { shared: true })).toThrow(/does not start with 8 hex digits/);
  });
});
