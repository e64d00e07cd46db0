/**
 * VBD device numbers as XAPI reads them (ocaml/xapi-idl/xen/device_number.ml,
 * xapi_vm_helpers.ml): a device is a bus, a disk number and a partition; a VBD's `userdevice`
 * ("1") and `device` ("xvdb") name the same device. An HVM VM's disks 0-3 are IDE, the rest
 * Xen; a PV VM's are all Xen.
 */

type Bus = 'xen' | 'scsi' | 'floppy' | 'ide';

/** Largest disk and partition number per bus (IDE with the deprecated encoding XAPI uses). */
const MAX: Record<Bus, [number, number]> = { xen: [(1 << 20) - 1, 15], scsi: [15, 15], floppy: [2, 0], ide: [19, 63] };

/** A device as a comparable key (`xen:1:0`), or undefined when out of range. */
function make(bus: Bus, disk: number, partition: number): string | undefined {
  const [dmax, pmax] = MAX[bus];
  return disk >= 0 && disk <= dmax && partition >= 0 && partition <= pmax ? `${bus}:${disk}:${partition}` : undefined;
}

function ofDiskNumber(hvm: boolean, n: number): string | undefined {
  return make(hvm && n < 4 ? 'ide' : 'xen', n, 0);
}

/** `xvdb`, `sdc2`, `hda`, `fd0`… (base-26 letters from `a` = 0), `d1p2`. */
function ofLinuxDevice(name: string): string | undefined {
  const b26 = (letters: string) => [...letters].reduce((acc, c) => acc * 26 + (c.charCodeAt(0) - 96), 0) - 1;
  const lettered = (bus: Bus, rest: string) => {
    const m = /^([a-z]+)(\d+)?$/.exec(rest);
    return m === null ? undefined : make(bus, b26(m[1]!), m[2] === undefined ? 0 : Number(m[2]));
  };
  for (const [prefix, bus] of [['xvd', 'xen'], ['sd', 'scsi'], ['fd', 'floppy'], ['hd', 'ide']] as const) {
    if (name.startsWith(prefix)) return lettered(bus, name.slice(prefix.length));
  }
  const m = /^d(\d+)(?:p(\d+))?$/.exec(name);
  return m === null ? undefined : make('xen', Number(m[1]), m[2] === undefined ? 0 : Number(m[2]));
}

/** Device_number.of_string: a disk number ("1") or a Linux device name. */
function ofString(hvm: boolean, name: string): string | undefined {
  if (/^-?\d+$/.test(name)) {
    const byNumber = ofDiskNumber(hvm, Number(name));
    if (byNumber !== undefined) return byNumber;
  }
  return ofLinuxDevice(name);
}

/** possible_VBD_devices_of_string: every device a `userdevice` or `device` string may mean. */
export function possibleDevices(name: string): string[] {
  return [ofString(true, name), ofString(false, name)].filter((d): d is string => d !== undefined);
}

/** The disk number of a device key. */
function diskOf(key: string): number {
  return Number(key.split(':')[1]);
}

/**
 * VM.get_allowed_VBD_devices: the disk numbers 0-254 (0-255 for a PV control domain) not
 * already named by the `device` or `userdevice` of one of the VM's VBDs.
 */
export function allowedVbdDevices(opts: { hvm: boolean; controlDomain: boolean; used: readonly string[] }): string[] {
  const used = new Set(opts.used.flatMap(possibleDevices));
  const last = !opts.hvm && opts.controlDomain ? 255 : 254;
  const out: string[] = [];
  for (let n = 0; n <= last; n++) {
    const key = ofDiskNumber(opts.hvm, n);
    if (key !== undefined && !used.has(key)) out.push(String(diskOf(key)));
  }
  return out;
}

/** valid_device (xapi_vbd_helpers.ml): `autodetect`, a device name, or any integer. */
export function validDevice(name: string): boolean {
  return name === 'autodetect' || ofString(false, name) !== undefined || /^-?\d+$/.test(name);
}

/** The Linux name of disk `n` on the Xen bus (0 → xvda, 26 → xvdaa), as xenopsd reports it. */
export function xenDeviceName(n: number): string {
  let s = '';
  for (let x = n; x >= 0; x = Math.floor(x / 26) - 1) s = String.fromCharCode(97 + (x % 26)) + s;
  return `xvd${s}`;
}
