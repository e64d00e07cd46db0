import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { formatMeta, MetaRecords, parseMeta, parsePyDict, pyDictRepr, pyRepr, type MetaRecordsInput } from './meta-format.js';

const VM_UUID = '5f2c4b1e-0d7a-4e2b-9a51-6c3d2e1f0a9b';
const VBD_UUID = 'a1b2c3d4-0000-4000-8000-00000000000a';
const VDI_UUID = 'b1b2c3d4-0000-4000-8000-00000000000b';
const VBD2_UUID = 'a1b2c3d4-0000-4000-8000-00000000001a';
const VDI2_UUID = 'b1b2c3d4-0000-4000-8000-00000000001b';
const SR_UUID = 'c1b2c3d4-0000-4000-8000-00000000000c';
const VIF_UUID = 'd1b2c3d4-0000-4000-8000-00000000000d';

const records: MetaRecordsInput = {
  vm: {
    uuid: VM_UUID,
    name_label: 'Überwachung-01',
    name_description: 'Zabbix — prod',
    memory_dynamic_max: 4294967296, // JSON-RPC gives numbers
    VCPUs_max: '4',
    VCPUs_at_startup: 2,
    base_template_name: 'Debian Bookworm 12',
    os_version: { name: 'Debian GNU/Linux 12 (bookworm)', uname: '6.1.0-18-amd64', distro: 'debian' },
  },
  disks: [
    {
      vbd: { uuid: VBD_UUID, device: 'xvda', userdevice: '0', bootable: true, mode: 'RW', type: 'Disk', unpluggable: false, empty: false },
      vdi: { uuid: VDI_UUID, name_label: 'root', name_description: '', virtual_size: '21474836480', type: 'system', sharable: false, read_only: false, sr_uuid: SR_UUID },
    },
    {
      vbd: { uuid: VBD2_UUID, device: 'xvdb', userdevice: '1', bootable: false, mode: 'RW', type: 'Disk', unpluggable: true, empty: false },
      vdi: { uuid: VDI2_UUID, name_label: 'données', name_description: 'data', virtual_size: 107374182400, type: 'user', sharable: false, read_only: true, sr_uuid: SR_UUID },
    },
  ],
  vifs: [
    { uuid: VIF_UUID, device: '0', network_name_label: 'Pool-wide network associated with eth0', MTU: 1500, MAC: 'aa:bb:cc:dd:ee:ff', other_config: { 'ethtool-tx': 'off', "it's": 'a "quote"' } },
  ],
};

const EXPECTED = `******* VM *******
name_label=Überwachung-01
name_description=Zabbix — prod
memory_dynamic_max=4294967296
VCPUs_max=4
VCPUs_at_startup=2
base_template_name=Debian Bookworm 12
os_version=Debian GNU/Linux 12 (bookworm)
orig_uuid=${VM_UUID}

******* DISK *******
device=xvda
userdevice=0
bootable=True
mode=RW
type=Disk
unpluggable=False
empty=False
orig_uuid=${VBD_UUID}
---- VDI ----
name_label=root
name_description=
virtual_size=21474836480
type=system
sharable=False
read_only=False
orig_uuid=${VDI_UUID}
orig_sr_uuid=${SR_UUID}

******* DISK *******
device=xvdb
userdevice=1
bootable=False
mode=RW
type=Disk
unpluggable=True
empty=False
orig_uuid=${VBD2_UUID}
---- VDI ----
name_label=données
name_description=data
virtual_size=107374182400
type=user
sharable=False
read_only=True
orig_uuid=${VDI2_UUID}
orig_sr_uuid=${SR_UUID}

******* VIF *******
device=0
network_name_label=Pool-wide network associated with eth0
MTU=1500
MAC=aa:bb:cc:dd:ee:ff
other_config={'ethtool-tx': 'off', "it's": 'a "quote"'}
orig_uuid=${VIF_UUID}

`;

describe('formatMeta', () => {
  it("writes VmBackup's layout", () => {
    expect(formatMeta(records)).toBe(EXPECTED);
  });

  it('is UTF-8 safe for non-ASCII names', () => {
    const bytes = Buffer.from(formatMeta(records), 'utf8');
    expect(bytes.includes(Buffer.from('name_label=\u00dcberwachung-01\n', 'utf8'))).toBe(true);
    expect(parseMeta(bytes.toString('utf8')).vm.name_label).toBe('Überwachung-01');
  });

  it('omits base_template_name when the VM has none (VmBackup crashed), writes os_version None without a name', () => {
    const text = formatMeta({ ...records, vm: { ...records.vm, base_template_name: undefined, os_version: { distro: 'windows' } } });
    expect(text).not.toContain('base_template_name');
    expect(text).toContain('\nVCPUs_at_startup=2\nos_version=None\norig_uuid=');
    expect(formatMeta({ ...records, vm: { ...records.vm, base_template_name: '', os_version: undefined } })).toContain('\nVCPUs_at_startup=2\nos_version=None\n');
  });

  it('keeps each value on one line', () => {
    const text = formatMeta({ ...records, vm: { ...records.vm, name_description: 'line one\r\nline two\0end' } });
    expect(text).toContain('\nname_description=line one  line two end\n');
  });

  it('writes a VM without disks or VIFs', () => {
    const text = formatMeta({ ...records, disks: [], vifs: [] });
    expect(text.split('\n\n')).toHaveLength(2);
    expect(text.endsWith(`orig_uuid=${VM_UUID}\n\n`)).toBe(true);
  });

  it('refuses malformed records', () => {
    expect(() => formatMeta({ ...records, vm: { ...records.vm, memory_dynamic_max: '4 GiB' } })).toThrow(/memory_dynamic_max/);
    expect(() => formatMeta({ ...records, vm: { ...records.vm, VCPUs_max: 1.5 } })).toThrow(/VCPUs_max/);
    expect(() => formatMeta({ ...records, disks: [{ vbd: { ...records.disks[0]!.vbd, bootable: 'true' as unknown as boolean }, vdi: records.disks[0]!.vdi }] })).toThrow(/bootable/);
  });
});

describe('parseMeta', () => {
  it('round-trips (os_version keeps its name only)', () => {
    const parsed = parseMeta(formatMeta(records));
    const expected = MetaRecords.parse(records);
    expected.vm.os_version = { name: 'Debian GNU/Linux 12 (bookworm)' };
    expect(parsed).toEqual(expected);
    expect(formatMeta(parsed)).toBe(EXPECTED);
    const bare = MetaRecords.parse({ ...records, vm: { ...records.vm, base_template_name: undefined, os_version: undefined }, disks: [], vifs: [] });
    expect(parseMeta(formatMeta(bare))).toEqual(bare);
  });

  it("reads a file written by VmBackup under Python 2 (u'' dicts, raw line breaks, CRLF, no template)", () => {
    const legacy = [
      '******* VM *******',
      'name_label=DEV-web3',
      'name_description=first line',
      'second line with key=value inside',
      'memory_dynamic_max=2147483648',
      'VCPUs_max=2',
      'VCPUs_at_startup=2',
      'os_version=CentOS Linux release 7.9.2009 (Core)',
      `orig_uuid=${VM_UUID}`,
      '',
      '******* DISK *******',
      'device=xvda',
      'userdevice=0',
      'bootable=True',
      'mode=RW',
      'type=Disk',
      'unpluggable=False',
      'empty=False',
      `orig_uuid=${VBD_UUID}`,
      '---- VDI ----',
      'name_label=DEV-web3 0',
      'name_description=Created by template provisioner',
      'virtual_size=10737418240',
      'type=system',
      'sharable=False',
      'read_only=False',
      `orig_uuid=${VDI_UUID}`,
      `orig_sr_uuid=${SR_UUID}`,
      '',
      '******* VIF *******',
      'device=0',
      'network_name_label=Pool-wide network associated with eth0',
      'MTU=1500',
      'MAC=de:ad:be:ef:00:01',
      "other_config={u'ethtool-gso': u'off', 'x': u'caf\\xe9'}",
      `orig_uuid=${VIF_UUID}`,
      '',
      '',
    ].join('\r\n');
    const r = parseMeta(legacy);
    expect(r.vm).toEqual({
      uuid: VM_UUID,
      name_label: 'DEV-web3',
      name_description: 'first line\nsecond line with key=value inside',
      memory_dynamic_max: '2147483648',
      VCPUs_max: '2',
      VCPUs_at_startup: '2',
      os_version: { name: 'CentOS Linux release 7.9.2009 (Core)' },
    });
    expect(r.disks).toHaveLength(1);
    expect(r.disks[0]!.vdi).toMatchObject({ name_label: 'DEV-web3 0', virtual_size: '10737418240', sr_uuid: SR_UUID });
    expect(r.vifs[0]!.other_config).toEqual({ 'ethtool-gso': 'off', x: 'café' });
  });

  it.each([
    ['', /no VM block/],
    ['******* VM *******\nname_label=x\n', /VM block has no [a-z_]+$/],
    ['---- VDI ----\n', /line 1: ---- VDI ---- outside a DISK block/],
    ['hello\n', /line 1: unexpected line "hello"/],
    [EXPECTED.replace('bootable=True', 'bootable=yes'), /DISK bootable=yes is not True\/False/],
    [EXPECTED.replace('memory_dynamic_max=4294967296', 'memory_dynamic_max=4G'), /memory_dynamic_max/],
    [EXPECTED.replace(/---- VDI ----[^]*?orig_sr_uuid=\S+\n/, ''), /DISK block xvda has no VDI section/],
    [EXPECTED.replace(`other_config={'ethtool-tx': 'off', "it's": 'a "quote"'}`, 'other_config={1: 2}'), /not a Python dict of strings/],
    [EXPECTED + EXPECTED, /a second VM block/],
  ])('refuses broken files (%#)', (text, message) => {
    expect(() => parseMeta(text)).toThrow(message);
  });
});

describe('Python reprs', () => {
  const samples = ['', 'plain', "it's", 'say "hi"', `both ' and "`, 'back\\slash', 'tab\there', 'nl\ncr\r', '\0\x07\x1b\x7f', 'café', '\u00a0nbsp', '\u00ad', '\u2028', '\u200b', '日本', '😀', '\ud83d', 'e\u0301', '\x85', '\uffff', '\u{e0001}'];

  it('pyRepr is what python3 repr() prints', () => {
    const python: string[] = JSON.parse(
      execFileSync('python3', ['-c', 'import json,sys; print(json.dumps([repr(s) for s in json.load(sys.stdin)]))'], { input: JSON.stringify(samples) }).toString(),
    );
    expect(samples.map(pyRepr)).toEqual(python);
  });

  it('pyDictRepr is what python3 prints for a dict, and parsePyDict reads it back', () => {
    const dict = Object.fromEntries(samples.filter((s) => !/[\ud800-\udfff]/.test(s.replace(/[\ud800-\udbff][\udc00-\udfff]/g, ''))).map((s, i) => [`k${i}${s}`, s]));
    const python = execFileSync('python3', ['-c', 'import json,sys; print(repr(json.load(sys.stdin)), end="")'], { input: JSON.stringify(dict) }).toString();
    expect(pyDictRepr(dict)).toBe(python);
    expect(parsePyDict(python)).toEqual(dict);
    expect(pyDictRepr({})).toBe('{}');
    expect(parsePyDict('{}')).toEqual({});
    expect(parsePyDict("{ 'a' : 'b' , }")).toEqual({ a: 'b' });
  });

  it.each(["{'a': 'b'", "{'a' 'b'}", "{'a': 1}", "['a']", "{'a': 'b'} x", "{'a\\x4': 'b'}"])('parsePyDict refuses %j', (text) => {
    expect(() => parsePyDict(text)).toThrow(/not a Python dict of strings/);
  });
});
