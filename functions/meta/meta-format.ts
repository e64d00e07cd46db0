import { z } from 'zod';

/**
 * VmBackup's `.meta` file: what it records of a VM, its disks and its VIFs, next to each
 * backup, for restores by hand. Pure: `formatMeta` returns the text, which the caller writes as
 * UTF-8 (VmBackup crashed on non-ASCII names).
 *
 * ```
 * ******* VM *******
 * name_label=DEV-web3
 * name_description=Web server
 * memory_dynamic_max=4294967296
 * VCPUs_max=2
 * VCPUs_at_startup=2
 * base_template_name=Debian Bookworm 12        (only when set)
 * os_version=Debian GNU/Linux 12 (bookworm)    (the `name` entry of the guest metrics; None without)
 * orig_uuid=<VM uuid>
 *
 * ******* DISK *******                          (per disk VBD)
 * device=xvda
 * userdevice=0
 * bootable=True
 * mode=RW
 * type=Disk
 * unpluggable=False
 * empty=False
 * orig_uuid=<VBD uuid>
 * ---- VDI ----
 * name_label=root
 * name_description=
 * virtual_size=21474836480
 * type=system
 * sharable=False
 * read_only=False
 * orig_uuid=<VDI uuid>
 * orig_sr_uuid=<SR uuid>
 *
 * ******* VIF *******                           (per VIF)
 * device=0
 * network_name_label=Pool-wide network associated with eth0
 * MTU=1500
 * MAC=aa:bb:cc:dd:ee:ff
 * other_config={'ethtool-tx': 'off'}
 * orig_uuid=<VIF uuid>
 *
 * ```
 *
 * Choices:
 * - Integers (memory, VCPUs, sizes, MTU) are kept as decimal strings, XAPI's int64 wire form
 *   in XML-RPC: exact beyond 2^53. The schema also accepts JSON-RPC numbers and turns them into
 *   strings.
 * - Booleans print as Python's `True`/`False`; `other_config` as a Python 3 dict repr
 *   (`{'k': 'v'}`, insertion order); the parser also reads Python 2's `u'…'`.
 * - `os_version` is written as the `name` entry of the guest metrics' os_version map (what
 *   VmBackup's `xe` output gave), `None` when absent; the parser returns `{ name }` or nothing.
 * - Each value is one line: a line break or other control character inside a value (possible
 *   in descriptions) is written as a space; VmBackup wrote it raw and broke the layout. The
 *   parser still reads VmBackup's broken files: a line without `=` continues the value above.
 * - Disks: pass only the VM's disk VBDs that have a VDI (VmBackup skipped CD drives).
 */

/** An XAPI integer: a decimal string (XML-RPC) or a number (JSON-RPC), kept as the string. */
export const XapiInt = z
  .union([z.string().regex(/^-?\d+$/, 'a decimal integer'), z.number().int()])
  .transform((v) => String(v));

export const MetaVm = z.object({
  uuid: z.string(),
  name_label: z.string(),
  name_description: z.string(),
  memory_dynamic_max: XapiInt,
  VCPUs_max: XapiInt,
  VCPUs_at_startup: XapiInt,
  /** `other_config.base_template_name`, when the VM has one. */
  base_template_name: z.string().optional(),
  /** The guest metrics' `os_version` map (`name`, `uname`, `distro`, …). */
  os_version: z.record(z.string(), z.string()).optional(),
});

export const MetaVbd = z.object({
  uuid: z.string(),
  device: z.string(),
  userdevice: z.string(),
  bootable: z.boolean(),
  mode: z.string(),
  type: z.string(),
  unpluggable: z.boolean(),
  empty: z.boolean(),
});

export const MetaVdi = z.object({
  uuid: z.string(),
  name_label: z.string(),
  name_description: z.string(),
  virtual_size: XapiInt,
  type: z.string(),
  sharable: z.boolean(),
  read_only: z.boolean(),
  sr_uuid: z.string(),
});

export const MetaVif = z.object({
  uuid: z.string(),
  device: z.string(),
  network_name_label: z.string(),
  MTU: XapiInt,
  MAC: z.string(),
  other_config: z.record(z.string(), z.string()),
});

/**
 * Everything a `.meta` file records; travels in job messages.
 *
 * @example
 *   MetaRecords.parse({
 *     vm: { uuid, name_label: 'DEV-web3', name_description: '', memory_dynamic_max: 4294967296,
 *           VCPUs_max: '2', VCPUs_at_startup: '2', os_version: { name: 'Debian 12' } },
 *     disks: [{ vbd: { uuid, device: 'xvda', userdevice: '0', bootable: true, mode: 'RW', type: 'Disk', unpluggable: false, empty: false },
 *               vdi: { uuid, name_label: 'root', name_description: '', virtual_size: '21474836480', type: 'system', sharable: false, read_only: false, sr_uuid } }],
 *     vifs: [{ uuid, device: '0', network_name_label: 'eth0', MTU: '1500', MAC: 'aa:bb:cc:dd:ee:ff', other_config: {} }],
 *   })
 */
export const MetaRecords = z.object({
  vm: MetaVm,
  disks: z.array(z.object({ vbd: MetaVbd, vdi: MetaVdi })),
  vifs: z.array(MetaVif),
});
export type MetaRecords = z.infer<typeof MetaRecords>;
export type MetaRecordsInput = z.input<typeof MetaRecords>;

const VM_HEADER = '******* VM *******';
const DISK_HEADER = '******* DISK *******';
const VDI_HEADER = '---- VDI ----';
const VIF_HEADER = '******* VIF *******';

/** A value on one line. */
function oneLine(v: string): string {
  return v.replace(/[\r\n\u2028\u2029\x00-\x08\x0b\x0c\x0e-\x1f\x7f]/g, ' ');
}

function pyBool(b: boolean): string {
  return b ? 'True' : 'False';
}

// Python 3's str.isprintable(): false for Cc, Cf, Cs, Co, Cn, Zl, Zp and Zs other than space.
const NON_PRINTABLE_RE = /[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}]|(?! )\p{Zs}/u;

/** Python 3 `repr()` of a str. @example pyRepr("it's") // `"it's"` */
export function pyRepr(s: string): string {
  const quote = s.includes("'") && !s.includes('"') ? '"' : "'";
  let out = quote;
  for (const ch of s) {
    if (ch === quote || ch === '\\') out += '\\' + ch;
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (NON_PRINTABLE_RE.test(ch)) {
      const cp = ch.codePointAt(0)!;
      out += cp < 0x100 ? '\\x' + cp.toString(16).padStart(2, '0') : cp < 0x10000 ? '\\u' + cp.toString(16).padStart(4, '0') : '\\U' + cp.toString(16).padStart(8, '0');
    } else out += ch;
  }
  return out + quote;
}

/** Python 3 `repr()` of a dict of str. @example pyDictRepr({ a: 'b' }) // "{'a': 'b'}" */
export function pyDictRepr(map: Record<string, string>): string {
  return '{' + Object.entries(map).map(([k, v]) => `${pyRepr(k)}: ${pyRepr(v)}`).join(', ') + '}';
}

/**
 * Reads a Python dict repr of str keys and values, as written by Python 3 or 2.
 * @example parsePyDict("{u'a': 'b'}") // { a: 'b' }
 */
export function parsePyDict(text: string): Record<string, string> {
  let i = 0;
  const fail = (msg: string): never => {
    throw new Error(`not a Python dict of strings (${msg} at ${i}): ${text}`);
  };
  const ws = () => {
    while (i < text.length && /\s/.test(text[i]!)) i++;
  };
  const str = (): string => {
    ws();
    if (text[i] === 'u' || text[i] === 'U') i++;
    const q = text[i];
    if (q !== "'" && q !== '"') fail('expected a string');
    i++;
    let out = '';
    while (true) {
      if (i >= text.length) fail('unterminated string');
      const c = text[i]!;
      if (c === q) {
        i++;
        return out;
      }
      if (c !== '\\') {
        const cp = text.codePointAt(i)!;
        out += String.fromCodePoint(cp);
        i += cp > 0xffff ? 2 : 1;
        continue;
      }
      const e = text[i + 1];
      i += 2;
      const simple: Record<string, string> = { '\\': '\\', "'": "'", '"': '"', n: '\n', r: '\r', t: '\t', a: '\x07', b: '\b', f: '\f', v: '\v', '\n': '' };
      if (e !== undefined && e in simple) {
        out += simple[e];
      } else if (e === 'x' || e === 'u' || e === 'U') {
        const len = e === 'x' ? 2 : e === 'u' ? 4 : 8;
        const h = text.slice(i, i + len);
        if (!new RegExp(`^[0-9a-fA-F]{${len}}$`).test(h)) fail(`bad \\${e} escape`);
        out += String.fromCodePoint(parseInt(h, 16));
        i += len;
      } else if (e !== undefined && /[0-7]/.test(e)) {
        const o = /^[0-7]{0,2}/.exec(text.slice(i))![0];
        out += String.fromCodePoint(parseInt(e + o, 8));
        i += o.length;
      } else {
        out += '\\' + (e ?? '');
      }
    }
  };
  ws();
  if (text[i] !== '{') fail('expected {');
  i++;
  const out: Record<string, string> = {};
  ws();
  if (text[i] === '}') {
    i++;
  } else {
    while (true) {
      const k = str();
      ws();
      if (text[i] !== ':') fail('expected :');
      i++;
      out[k] = str();
      ws();
      if (text[i] === ',') {
        i++;
        ws();
        if (text[i] === '}') {
          i++;
          break;
        }
        continue;
      }
      if (text[i] === '}') {
        i++;
        break;
      }
      fail('expected , or }');
    }
  }
  ws();
  if (i !== text.length) fail('trailing text');
  return out;
}

/**
 * The `.meta` text for `records` (VmBackup's layout, see the module comment). Write it as UTF-8.
 *
 * @example formatMeta(records).startsWith('******* VM *******\nname_label=DEV-web3\n') // true
 */
export function formatMeta(input: MetaRecordsInput): string {
  const r = MetaRecords.parse(input);
  const lines: string[] = [];
  const kv = (k: string, v: string) => lines.push(`${k}=${oneLine(v)}`);
  lines.push(VM_HEADER);
  kv('name_label', r.vm.name_label);
  kv('name_description', r.vm.name_description);
  kv('memory_dynamic_max', r.vm.memory_dynamic_max);
  kv('VCPUs_max', r.vm.VCPUs_max);
  kv('VCPUs_at_startup', r.vm.VCPUs_at_startup);
  if (r.vm.base_template_name) kv('base_template_name', r.vm.base_template_name);
  kv('os_version', r.vm.os_version?.name || 'None');
  kv('orig_uuid', r.vm.uuid);
  lines.push('');
  for (const { vbd, vdi } of r.disks) {
    lines.push(DISK_HEADER);
    kv('device', vbd.device);
    kv('userdevice', vbd.userdevice);
    kv('bootable', pyBool(vbd.bootable));
    kv('mode', vbd.mode);
    kv('type', vbd.type);
    kv('unpluggable', pyBool(vbd.unpluggable));
    kv('empty', pyBool(vbd.empty));
    kv('orig_uuid', vbd.uuid);
    lines.push(VDI_HEADER);
    kv('name_label', vdi.name_label);
    kv('name_description', vdi.name_description);
    kv('virtual_size', vdi.virtual_size);
    kv('type', vdi.type);
    kv('sharable', pyBool(vdi.sharable));
    kv('read_only', pyBool(vdi.read_only));
    kv('orig_uuid', vdi.uuid);
    kv('orig_sr_uuid', vdi.sr_uuid);
    lines.push('');
  }
  for (const vif of r.vifs) {
    lines.push(VIF_HEADER);
    kv('device', vif.device);
    kv('network_name_label', vif.network_name_label);
    kv('MTU', vif.MTU);
    kv('MAC', vif.MAC);
    kv('other_config', pyDictRepr(vif.other_config));
    kv('orig_uuid', vif.uuid);
    lines.push('');
  }
  return lines.join('\n') + '\n';
}

type Section = 'vm' | 'vbd' | 'vdi' | 'vif';
type Fields = Map<string, string>;

const KEYS: Record<Section, ReadonlySet<string>> = {
  vm: new Set(['name_label', 'name_description', 'memory_dynamic_max', 'VCPUs_max', 'VCPUs_at_startup', 'base_template_name', 'os_version', 'orig_uuid']),
  vbd: new Set(['device', 'userdevice', 'bootable', 'mode', 'type', 'unpluggable', 'empty', 'orig_uuid']),
  vdi: new Set(['name_label', 'name_description', 'virtual_size', 'type', 'sharable', 'read_only', 'orig_uuid', 'orig_sr_uuid']),
  vif: new Set(['device', 'network_name_label', 'MTU', 'MAC', 'other_config', 'orig_uuid']),
};

/**
 * Reads a `.meta` file written by vmbackup or VmBackup. Throws an Error naming the line when
 * the layout is broken or a field is missing or malformed.
 *
 * @example parseMeta(formatMeta(records)) // deep-equals MetaRecords.parse(records), os_version reduced to { name }
 */
export function parseMeta(text: string): MetaRecords {
  const lines = text.replace(/^\uFEFF/, '').split(/\r?\n/);
  let vm: Fields | undefined;
  const disks: { vbd: Fields; vdi?: Fields }[] = [];
  const vifs: Fields[] = [];
  let current: Fields | undefined;
  let section: Section | undefined;
  let lastKey: string | undefined;
  const fail = (n: number, msg: string): never => {
    throw new Error(`.meta line ${n + 1}: ${msg}`);
  };

  lines.forEach((line, n) => {
    if (line === VM_HEADER) {
      if (vm) fail(n, 'a second VM block');
      current = vm = new Map();
      section = 'vm';
    } else if (line === DISK_HEADER) {
      current = new Map();
      disks.push({ vbd: current });
      section = 'vbd';
    } else if (line === VDI_HEADER) {
      const disk = disks[disks.length - 1];
      if (section !== 'vbd' || !disk) fail(n, `${VDI_HEADER} outside a DISK block`);
      current = disk!.vdi = new Map();
      section = 'vdi';
    } else if (line === VIF_HEADER) {
      current = new Map();
      vifs.push(current);
      section = 'vif';
    } else if (line.trim() === '') {
      current = undefined;
      lastKey = undefined;
    } else {
      const eq = line.indexOf('=');
      const key = eq > 0 ? line.slice(0, eq) : '';
      if (current && section && KEYS[section].has(key) && !current.has(key)) {
        current.set(key, line.slice(eq + 1));
        lastKey = key;
      } else if (current && lastKey !== undefined) {
        // VmBackup wrote line breaks of values raw: a line that is not a new field of the
        // block continues the value above.
        current.set(lastKey, current.get(lastKey) + '\n' + line);
      } else {
        fail(n, `unexpected line ${JSON.stringify(line)} (not a field of this block)`);
      }
    }
  });

  const get = (f: Fields, block: string, key: string): string => {
    const v = f.get(key);
    if (v === undefined) throw new Error(`.meta: ${block} block has no ${key}`);
    return v;
  };
  const bool = (f: Fields, block: string, key: string): boolean => {
    const v = get(f, block, key);
    if (v === 'True' || v === 'true') return true;
    if (v === 'False' || v === 'false') return false;
    throw new Error(`.meta: ${block} ${key}=${v} is not True/False`);
  };
  if (!vm) throw new Error('.meta: no VM block');
  const osVersion = get(vm, 'VM', 'os_version');
  const base = vm.get('base_template_name');
  const records: MetaRecordsInput = {
    vm: {
      uuid: get(vm, 'VM', 'orig_uuid'),
      name_label: get(vm, 'VM', 'name_label'),
      name_description: get(vm, 'VM', 'name_description'),
      memory_dynamic_max: get(vm, 'VM', 'memory_dynamic_max'),
      VCPUs_max: get(vm, 'VM', 'VCPUs_max'),
      VCPUs_at_startup: get(vm, 'VM', 'VCPUs_at_startup'),
      ...(base ? { base_template_name: base } : {}),
      ...(osVersion !== 'None' && osVersion !== '' ? { os_version: { name: osVersion } } : {}),
    },
    disks: disks.map(({ vbd, vdi }) => {
      if (!vdi) throw new Error(`.meta: DISK block ${vbd.get('device') ?? ''} has no VDI section`);
      return {
        vbd: {
          uuid: get(vbd, 'DISK', 'orig_uuid'),
          device: get(vbd, 'DISK', 'device'),
          userdevice: get(vbd, 'DISK', 'userdevice'),
          bootable: bool(vbd, 'DISK', 'bootable'),
          mode: get(vbd, 'DISK', 'mode'),
          type: get(vbd, 'DISK', 'type'),
          unpluggable: bool(vbd, 'DISK', 'unpluggable'),
          empty: bool(vbd, 'DISK', 'empty'),
        },
        vdi: {
          uuid: get(vdi, 'VDI', 'orig_uuid'),
          name_label: get(vdi, 'VDI', 'name_label'),
          name_description: get(vdi, 'VDI', 'name_description'),
          virtual_size: get(vdi, 'VDI', 'virtual_size'),
          type: get(vdi, 'VDI', 'type'),
          sharable: bool(vdi, 'VDI', 'sharable'),
          read_only: bool(vdi, 'VDI', 'read_only'),
          sr_uuid: get(vdi, 'VDI', 'orig_sr_uuid'),
        },
      };
    }),
    vifs: vifs.map((f) => ({
      uuid: get(f, 'VIF', 'orig_uuid'),
      device: get(f, 'VIF', 'device'),
      network_name_label: get(f, 'VIF', 'network_name_label'),
      MTU: get(f, 'VIF', 'MTU'),
      MAC: get(f, 'VIF', 'MAC'),
      other_config: parsePyDict(get(f, 'VIF', 'other_config')),
    })),
  };
  const parsed = MetaRecords.safeParse(records);
  if (!parsed.success) throw new Error(`.meta: ${z.prettifyError(parsed.error)}`);
  return parsed.data;
}
