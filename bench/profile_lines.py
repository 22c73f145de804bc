#!/usr/bin/env python3
"""Where a loaded BPF program spends its time, by source line.

bpftool here has no libbfd, so it cannot dump JIT images; this reads the program's JIT line
info itself (BPF_OBJ_GET_INFO_BY_FD: each line-info record's address in the JIT image) and maps
`perf` samples onto the source lines `bpftool prog dump xlated linum` names.

    # while a benchmark holds the program under load (see README: --only, --pace):
    profile_lines.py capture OUT PROGNAME      # the program's line info, xlated dump, 3 s of perf on CPU 1
    profile_lines.py report OUT [LINES [INSNS]]  # samples by source line, and the hottest instructions

PROGNAME is matched against `bpftool prog show` names (truncated to 15 characters by the
kernel); of several programs of that name, the one whose JIT image holds the samples is used.
Samples skid: a long-latency load is usually charged to the instruction after it.
"""
import bisect
import collections
import ctypes
import os
import re
import struct
import subprocess
import sys

NR_BPF = 321  # x86-64
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
INFO_LEN = 232  # struct bpf_prog_info up to attach_btf_id, as of 6.x

libc = ctypes.CDLL(None, use_errno=True)


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    if libc.syscall(NR_BPF, cmd, buf, 128) < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return buf


def line_addresses(prog_id):
    """[(jit address, xlated instruction)] of the program's line-info records, and the
    [start, end) of each of its JIT images (the program's and its BPF-to-BPF functions')."""
    fd = libc.syscall(NR_BPF, BPF_PROG_GET_FD_BY_ID,
                      ctypes.create_string_buffer(struct.pack("III", prog_id, 0, 0), 128), 128)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "program %d" % prog_id)

    def info(req):
        b = ctypes.create_string_buffer(bytes(req), INFO_LEN)
        bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("IIQ", fd, INFO_LEN, ctypes.addressof(b)))
        return b

    first = info(bytearray(INFO_LEN))
    (n_lines,) = struct.unpack_from("I", first, 148)
    (n_jit,) = struct.unpack_from("I", first, 168)
    (n_funcs,) = struct.unpack_from("I", first, 104)
    ksyms = ctypes.create_string_buffer(n_funcs * 8)
    lens = ctypes.create_string_buffer(n_funcs * 4)
    lines = ctypes.create_string_buffer(n_lines * 16)
    jit = ctypes.create_string_buffer(n_jit * 8)
    req = bytearray(INFO_LEN)
    struct.pack_into("I", req, 148, n_lines)
    struct.pack_into("Q", req, 152, ctypes.addressof(lines))
    struct.pack_into("Q", req, 160, ctypes.addressof(jit))
    struct.pack_into("I", req, 168, n_jit)
    struct.pack_into("II", req, 172, 16, 8)
    struct.pack_into("II", req, 104, n_funcs, n_funcs)
    struct.pack_into("QQ", req, 112, ctypes.addressof(ksyms), ctypes.addressof(lens))
    info(req)
    os.close(fd)
    ranges = []
    for k in range(n_funcs):
        start = struct.unpack_from("Q", ksyms, 8 * k)[0]
        ranges.append((start, start + struct.unpack_from("I", lens, 4 * k)[0]))
    return ([(struct.unpack_from("Q", jit, 8 * k)[0], struct.unpack_from("I", lines, 16 * k)[0])
             for k in range(n_jit)], ranges)


def capture(out, name):
    os.makedirs(out, exist_ok=True)
    shown = subprocess.run(["bpftool", "prog", "show"], capture_output=True, text=True).stdout
    # bpftool names a program by its BTF name where it has one, else by the kernel's 15 characters.
    ids = [int(m.group(1)) for m in re.finditer(r"^(\d+): \S+\s+name (\S+)", shown, re.M)
           if m.group(2)[:15] == name[:15]]
    if not ids:
        sys.exit("no loaded program named %s" % name)
    maps = {i: line_addresses(i) for i in ids}
    xlated = {i: subprocess.run(["bpftool", "prog", "dump", "xlated", "id", str(i), "linum"],
                                capture_output=True, text=True).stdout for i in ids}
    subprocess.run(["perf", "record", "-C", "1", "-o", out + "/perf.data", "--", "sleep", "3"],
                   capture_output=True)
    ips = [int(l, 16) for l in subprocess.run(
        ["perf", "script", "-i", out + "/perf.data", "-F", "ip"],
        capture_output=True, text=True).stdout.split()]

    def held(i):
        return sum(1 for ip in ips if any(a <= ip < b for a, b in maps[i][1]))

    best = max(ids, key=held)
    with open(out + "/lines.txt", "w") as f:
        f.writelines("%x %d\n" % p for p in maps[best][0])
    with open(out + "/ranges.txt", "w") as f:
        f.writelines("%x %x\n" % r for r in maps[best][1])
    with open(out + "/xlated.txt", "w") as f:
        f.write(xlated[best])
    print("program %d: %d of %d samples" % (best, held(best), len(ips)))


def report(out, top_lines=40, top_insns=0):
    label, text, cur = {}, {}, "?"
    for ln in open(out + "/xlated.txt"):
        if ln.startswith(";"):
            m = re.search(r"\[file:(\S+) line_num:(\d+)", ln)
            src = ln[1:ln.find("[file:")].strip()
            cur = "%s:%s  %s" % (m.group(1).split("/")[-1], m.group(2), src[:70]) if m else ln.strip()[:80]
        else:
            m = re.match(r"\s*(\d+): (.*)", ln)
            if m:
                label[int(m.group(1))] = cur
                text[int(m.group(1))] = m.group(2)
    jl = sorted((int(a, 16), int(i)) for a, i in (l.split() for l in open(out + "/lines.txt")))
    ranges = [tuple(int(x, 16) for x in l.split()) for l in open(out + "/ranges.txt")]
    addrs = [a for a, _ in jl]
    ips = subprocess.run(["perf", "script", "-i", out + "/perf.data", "-F", "ip"],
                         capture_output=True, text=True).stdout.split()
    by_line, by_insn, inside = collections.Counter(), collections.Counter(), 0
    for s in ips:
        ip = int(s, 16)
        k = bisect.bisect_right(addrs, ip) - 1
        if k < 0 or not any(a <= ip < b for a, b in ranges):
            continue
        inside += 1
        by_line[label.get(jl[k][1], "?")] += 1
        by_insn[jl[k][1]] += 1
    print("samples %d, in the program %d (%.1f%% of CPU 1)" % (len(ips), inside, 100.0 * inside / max(len(ips), 1)))
    for s, n in by_line.most_common(top_lines):
        print("%5d %5.1f%%  %s" % (n, 100.0 * n / inside, s))
    starts = sorted(set(i for _, i in jl))
    for insn, n in by_insn.most_common(top_insns):
        end = starts[bisect.bisect_right(starts, insn)] if bisect.bisect_right(starts, insn) < len(starts) else insn + 3
        print("%4d %4.1f%% @%d %s" % (n, 100.0 * n / inside, insn, label.get(insn, "?")[:60]))
        for j in range(insn, min(end, insn + 6)):
            if j in text:
                print("          %d: %s" % (j, text[j][:90]))


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "capture":
        capture(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 3 and sys.argv[1] == "report":
        report(sys.argv[2], *(int(a) for a in sys.argv[3:5]))
    else:
        sys.exit(__doc__)
