import { describe, expect, it } from 'vitest';
import { closest, parseIni, splitList, splitTopLevel } from './ini.js';

const F = '/etc/vmbackup.cfg';
const KNOWN = ['max_backups', 'excludes', 'vm_exports', 'vdi_exports', 'compress', 'backup_dir', 'pool_backup'];

function values(text: string) {
  return parseIni(text, F, { knownKeys: KNOWN }).entries.map((e) => [e.key, e.value, e.line]);
}

describe('parseIni: syntax of VmBackup config files (Python 2 ConfigParser)', () => {
  it.each([
    ['key = value', '[vmbackup]\nmax_backups = 4\n', [['max_backups', '4', 2]]],
    ['key: value', '[vmbackup]\nmax_backups: 4\n', [['max_backups', '4', 2]]],
    ['key=value without spaces', '[vmbackup]\nmax_backups=4', [['max_backups', '4', 2]]],
    ['first of = and : separates (value keeps its colons)', '[vmbackup]\nvm_exports = DEV:2\n', [['vm_exports', 'DEV:2', 2]]],
    ['key: value with = inside', '[vmbackup]\nvm_exports: a=b:3\n', [['vm_exports', 'a=b:3', 2]]],
    ['keys are case-insensitive', '[vmbackup]\nMax_Backups = 4\n', [['max_backups', '4', 2]]],
    ['# and ; comment lines, also indented', '[vmbackup]\n# c\n; c\n   # c\nmax_backups = 4\n', [['max_backups', '4', 5]]],
    ['REM comment lines', '[vmbackup]\nREM old style\nmax_backups = 4\n', [['max_backups', '4', 3]]],
    ['blank value', '[vmbackup]\nexcludes =\n', [['excludes', '', 2]]],
    ['blank value with spaces', '[vmbackup]\nexcludes =    \n', [['excludes', '', 2]]],
    ['"" is the empty value', '[vmbackup]\nexcludes = ""\n', [['excludes', '', 2]]],
    ['inline ; comment after whitespace', '[vmbackup]\nmax_backups = 4 ; keep four\n', [['max_backups', '4', 2]]],
    ['; inside a value (disk separator) is kept', '[vmbackup]\nvdi_exports = DEV-web3:-1:xvda;xvdb\n', [['vdi_exports', 'DEV-web3:-1:xvda;xvdb', 2]]],
    ['# inside a value is kept (VM names have it)', '[vmbackup]\nexcludes = web #2\n', [['excludes', 'web #2', 2]]],
    ['indented lines continue the value', '[vmbackup]\nexcludes = a,\n   b,\n\n   c\nmax_backups = 2\n', [['excludes', 'a,\nb,\nc', 2], ['max_backups', '2', 6]]],
    ['CRLF line ends and a BOM', '\uFEFF[vmbackup]\r\nmax_backups = 4\r\n', [['max_backups', '4', 2]]],
    ['keys of other sections are ignored', '[logging]\nmax_backups = 9\n[vmbackup]\nmax_backups = 4\n[other]\nexcludes = x\n', [['max_backups', '4', 4]]],
    ['a section can be reopened', '[vmbackup]\nmax_backups = 4\n[x]\n[vmbackup]\nexcludes = y\n', [['max_backups', '4', 2], ['excludes', 'y', 5]]],
  ])('%s', (_name, text, expected) => {
    const result = parseIni(text, F, { knownKeys: KNOWN });
    expect(result.errors).toEqual([]);
    expect(values(text)).toEqual(expected);
  });

  it('keeps the file and line of each entry', () => {
    const { entries } = parseIni('[vmbackup]\n\n# x\nexcludes = a\n', '/x/y.cfg');
    expect(entries).toEqual([{ key: 'excludes', value: 'a', file: '/x/y.cfg', line: 4 }]);
  });

  it.each([
    ['unknown key, with a suggestion', '[vmbackup]\nmax_backup = 3\n', 'unknown key max_backup in /etc/vmbackup.cfg line 2 is ignored (did you mean max_backups?)'],
    ['unknown key, no suggestion', '[vmbackup]\n\nfrobnicate = 3\n', 'unknown key frobnicate in /etc/vmbackup.cfg line 3 is ignored'],
    ['key before any section', 'max_backups = 3\n[vmbackup]\n', 'max_backups in /etc/vmbackup.cfg line 1 is ignored: it comes before any [section] header (put it under [vmbackup])'],
    ['section spelled with capitals', '[VmBackup]\nmax_backups = 3\n', 'section [VmBackup] in /etc/vmbackup.cfg line 1 is ignored: the section must be spelled [vmbackup]'],
    ['key given twice', '[vmbackup]\nexcludes = a\nexcludes = b\n', 'excludes is set twice in /etc/vmbackup.cfg (line 2 and line 3): line 3 wins; give a list once, comma-separated'],
  ])('warns: %s', (_name, text, warning) => {
    const result = parseIni(text, F, { knownKeys: KNOWN });
    expect(result.warnings).toEqual([warning]);
    expect(result.errors).toEqual([]);
  });

  it('leaves unknown keys and keys outside [vmbackup] out of the entries', () => {
    expect(values('max_backups = 1\n[vmbackup]\nmax_backup = 3\n[VmBackup]\nexcludes = x\n')).toEqual([]);
  });

  it('reports a line that is not INI with its line number, and carries on', () => {
    const result = parseIni('[vmbackup]\nmax_backups = 4\nthis is not ini\nexcludes = a\n', F, { knownKeys: KNOWN });
    expect(result.errors).toEqual([{ file: F, line: 3, message: 'cannot parse "this is not ini": expected "key = value", "[section]" or a # comment' }]);
    expect(result.entries.map((e) => e.key)).toEqual(['max_backups', 'excludes']);
  });
});

describe('splitList: comma-separated lists', () => {
  it.each([
    ['empty value is an empty list (defect 7: `excludes =` excluded every VM)', '', []],
    ['only spaces', '   ', []],
    ['no spaces', 'DEV-phishing-test,PRD-PRINTER1', ['DEV-phishing-test', 'PRD-PRINTER1']],
    ['space after a comma is trimmed (defect 7)', 'DEV-.*, TSTVM02', ['DEV-.*', 'TSTVM02']],
    ['spaces around items', '  a ,  b  ', ['a', 'b']],
    ['empty items are dropped', 'a,,b,', ['a', 'b']],
    ['lone comma', ',', []],
    ['names with spaces keep them inside', 'DEV MYSQL, PRD WEB 1', ['DEV MYSQL', 'PRD WEB 1']],
    ['\\, escapes a comma inside a name', 'web\\, old,db', ['web, old', 'db']],
    ['other escapes are kept for the regex', 'PRD-.*\\d$,x\\.y', ['PRD-.*\\d$', 'x\\.y']],
    ['an escaped backslash before a comma', 'a\\\\,b', ['a\\\\', 'b']],
    ['comma inside {m,n} does not split', 'web{1,3}$,db', ['web{1,3}$', 'db']],
    ['comma inside a group does not split', 'DEV-(a,b).*,x', ['DEV-(a,b).*', 'x']],
    ['comma inside a class does not split', 'x[,;]y,z', ['x[,;]y', 'z']],
    ['] first in a class is literal', 'x[],]y,z', ['x[],]y', 'z']],
    ['unbalanced brackets: every comma splits', 'web (old,db', ['web (old', 'db']],
    ['line breaks (continued values) separate', 'a,\nb\nc', ['a', 'b', 'c']],
  ])('%s', (_name, value, expected) => {
    expect(splitList(value)).toEqual(expected);
  });

  it('splitTopLevel splits fields at top-level separators only', () => {
    expect(splitTopLevel('(?:a|b):5:xvda;xvdb', ':', ':')).toEqual(['(?:a|b)', '5', 'xvda;xvdb']);
    expect(splitTopLevel('web\\:8080:3', ':', ':')).toEqual(['web:8080', '3']);
    expect(splitTopLevel('[a:b]:3', ':', ':')).toEqual(['[a:b]', '3']);
  });
});

describe('closest', () => {
  it.each([
    ['max_backup', 'max_backups'],
    ['exclude', 'excludes'],
    ['vm_export', 'vm_exports'],
    ['pool', 'pool_backup'],
    ['zzzzzz', undefined],
  ])('%s → %s', (word, expected) => {
    expect(closest(word, KNOWN)).toBe(expected);
  });
});
