import { describe, expect, it } from 'vitest';
import { parseEntry, type ListKey } from './entry.js';
import { splitList } from './ini.js';

describe('README examples parse as VmBackup meant', () => {
  // Each line of vmbackup-readme.md's "Examples of configuration file syntax" and of its
  // etc/vmbackup.example, split as a list and parsed entry by entry.
  it.each<[string, ListKey, string, { name: string; maxBackups?: number; disks?: string[] }[]]>([
    ['exclude simple names', 'excludes', 'DEV-phishing-test,PRD-PRINTER1', [{ name: 'DEV-phishing-test' }, { name: 'PRD-PRINTER1' }]],
    ['exclude end-of-string regex', 'excludes', 'PRD-PRINT$', [{ name: 'PRD-PRINT$' }]],
    ['exclude PRD-a.*', 'excludes', 'PRD-a.*', [{ name: 'PRD-a.*' }]],
    ['exclude DEV-V.*TEMP$', 'excludes', 'DEV-V.*TEMP$', [{ name: 'DEV-V.*TEMP$' }]],
    ['root VDI of DEV-web3', 'vdi_exports', 'DEV-web3', [{ name: 'DEV-web3' }]],
    ['retain seven copies', 'vdi_exports', 'DEV-web3:7', [{ name: 'DEV-web3', maxBackups: 7 }]],
    ['default max, first two disks', 'vdi_exports', 'DEV-web3:-1:xvda;xvdb', [{ name: 'DEV-web3', maxBackups: -1, disks: ['xvda', 'xvdb'] }]],
    ['regex group and a name', 'vdi_exports', 'DEV-.*(TEST|test).*,DEV-EUWWW01', [{ name: 'DEV-.*(TEST|test).*' }, { name: 'DEV-EUWWW01' }]],
    ['character class', 'vdi_exports', 'DEV-.*[Tt]est.*', [{ name: 'DEV-.*[Tt]est.*' }]],
    ['ending in SAVE, keep five', 'vm_exports', '.*SAVE$:5', [{ name: '.*SAVE$', maxBackups: 5 }]],
    ['two entries with max', 'vm_exports', 'PRD-.*print[4-5]$:5,DEV-USWWW05:2', [{ name: 'PRD-.*print[4-5]$', maxBackups: 5 }, { name: 'DEV-USWWW05', maxBackups: 2 }]],
    ['print6-8, ten versions', 'vm_exports', 'PRD-.*print[6-8]$:10', [{ name: 'PRD-.*print[6-8]$', maxBackups: 10 }]],
    // VmBackup's own split(',') cut this one in two; the comma is inside {1,}.
    ['comma inside a quantifier', 'vm_exports', 'PRD-.*print[\\d{1,}]$:8', [{ name: 'PRD-.*print[\\d{1,}]$', maxBackups: 8 }]],
    ['example file excludes (space after comma)', 'excludes', 'DEV-.*, TSTVM02', [{ name: 'DEV-.*' }, { name: 'TSTVM02' }]],
    ['example file vdi_exports', 'vdi_exports', 'MYVM01:-1:xvda;xvdb,MySql123:5:xvdb,PRD-LNXVM.*', [{ name: 'MYVM01', maxBackups: -1, disks: ['xvda', 'xvdb'] }, { name: 'MySql123', maxBackups: 5, disks: ['xvdb'] }, { name: 'PRD-LNXVM.*' }]],
    ['example file vm_exports', 'vm_exports', 'MYVM02:2,MySql345,PRD-.*', [{ name: 'MYVM02', maxBackups: 2 }, { name: 'MySql345' }, { name: 'PRD-.*' }]],
    // Command-line examples (one entry per -e/-E).
    ['-e "DEV MYSQL"', 'vm_exports', 'DEV MYSQL', [{ name: 'DEV MYSQL' }]],
    ['-e DEV-MY.*', 'vm_exports', 'DEV-MY.*', [{ name: 'DEV-MY.*' }]],
    ['-e DEV-MYSQL:2', 'vm_exports', 'DEV-MYSQL:2', [{ name: 'DEV-MYSQL', maxBackups: 2 }]],
    ['-E DEV-MYSQL:-1:xvdb', 'vdi_exports', 'DEV-MYSQL:-1:xvdb', [{ name: 'DEV-MYSQL', maxBackups: -1, disks: ['xvdb'] }]],
    ['-E DEV-MYSQL:7:xvda;xvdb', 'vdi_exports', 'DEV-MYSQL:7:xvda;xvdb', [{ name: 'DEV-MYSQL', maxBackups: 7, disks: ['xvda', 'xvdb'] }]],
    ["-x '.*'", 'excludes', '.*', [{ name: '.*' }]],
  ])('%s', (_name, list, value, expected) => {
    const parsed = splitList(value).map((item) => parseEntry(item, list));
    expect(parsed.map((p) => (p.ok ? p.warnings : p.reason))).toEqual(expected.map(() => []));
    expect(parsed.map((p) => (p.ok ? { name: p.entry.name, maxBackups: p.entry.maxBackups, disks: p.entry.disks } : undefined))).toEqual(
      expected.map((e) => ({ name: e.name, maxBackups: e.maxBackups, disks: e.disks })),
    );
  });
});

describe('parseEntry', () => {
  it('defect 5: NAME:-1 on a vm-export keeps -1 (the global max_backups) for the selection to resolve', () => {
    const parsed = parseEntry('DEV-MYSQL:-1', 'vm_exports');
    expect(parsed).toEqual({ ok: true, entry: { raw: 'DEV-MYSQL:-1', name: 'DEV-MYSQL', maxBackups: -1 }, warnings: [] });
  });

  it.each([
    ['regex with (?:…) and a max', '(?:web|db)-.*:5', { name: '(?:web|db)-.*', maxBackups: 5 }],
    ['escaped colon in a name', 'web\\:8080:3', { name: 'web:8080', maxBackups: 3 }],
    ['spaces around fields', 'DEV :  7 : xvda ; xvdb ', { name: 'DEV', maxBackups: 7, disks: ['xvda', 'xvdb'] }],
    ['+5 is 5 (Python int)', 'DEV:+5', { name: 'DEV', maxBackups: 5 }],
    ['empty disk list means the default disk', 'DEV:-1:', { name: 'DEV', maxBackups: -1 }],
  ])('%s', (_name, raw, expected) => {
    const parsed = parseEntry(raw, 'vdi_exports');
    expect(parsed.ok && { name: parsed.entry.name, maxBackups: parsed.entry.maxBackups, ...(parsed.entry.disks ? { disks: parsed.entry.disks } : {}) }).toEqual(expected);
  });

  it.each([
    ['DEV:0', 'max_backups 0 must be -1 (the global max_backups) or an integer >= 1'],
    ['DEV:-2', 'max_backups -2 must be -1 (the global max_backups) or an integer >= 1'],
    ['DEV:abc', 'max_backups "abc" is not an integer (use -1 for the global max_backups)'],
    ['DEV:1.5', 'max_backups "1.5" is not an integer (use -1 for the global max_backups)'],
    ['DEV::xvdb', 'max_backups "" is not an integer (use -1 for the global max_backups)'],
    [':5', 'the VM name or regex before ":" is empty'],
    ['a:1:xvda:more', 'too many ":" fields (NAME[:MAX[:DISK;DISK]]; write a ":" inside a name as "\\:")'],
    ['DEV:2:xv da', 'disk "xv da" is not a device name such as xvda (disks are separated by ";")'],
  ])('refuses %s', (raw, reason) => {
    expect(parseEntry(raw, 'vdi_exports')).toEqual({ ok: false, reason });
  });

  it.each<[ListKey, string, string]>([
    ['excludes', 'DEV:5', 'excludes entry "DEV:5": only the name is used, ":5" is ignored'],
    ['vm_exports', 'DEV:5:xvdb', 'vm_exports entry "DEV:5:xvdb": disks are ignored (a vm-export saves the whole VM; use vdi_exports for single disks)'],
  ])('warns about fields that mean nothing in %s', (list, raw, warning) => {
    const parsed = parseEntry(raw, list);
    expect(parsed.ok && parsed.warnings).toEqual([warning]);
  });
});
