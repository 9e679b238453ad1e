#!/usr/bin/env python3
"""jit-disasm.py LISTING IPS [N]: the N hottest instructions of JIT-compiled code, each in its context.

LISTING: a JVM's output with -XX:+PrintAssembly (code as hex bytes, as Debian's hsdis-fcml prints it here);
IPS: `perf script -F ip,sym | sort | uniq -c | sort -rn`. Each hot address is decoded with objdump from the listing's
bytes, 48 bytes before it to 16 after, every sampled instruction marked with its share of all samples. A sample lands
on the instruction after the one that waited (skid): a miss shows up just past its load.
"""
import collections, os, re, subprocess, sys, tempfile
log, ipsf = sys.argv[1], sys.argv[2]
topn = int(sys.argv[3]) if len(sys.argv) > 3 else 12
code = {}  # addr -> byte
cur = None
for line in open(log, errors='replace'):
    m = re.match(r'\s+0x([0-9a-f]{16}): ((?:[0-9a-f]{4} ?\|? ?)+)\s*$', line)
    if m:
        a = int(m.group(1), 16)
        hx = re.sub(r'[^0-9a-f]', '', m.group(2))
        for i in range(0, len(hx), 2):
            code[a + i // 2] = int(hx[i:i+2], 16)
ips = []
for line in open(ipsf):
    p = line.split()
    if len(p) >= 2:
        ips.append((int(p[0]), int(p[1], 16), ' '.join(p[2:])[:60]))
tot = sum(c for c, _, _ in ips)
cnt = collections.Counter()
for c, ip, _ in ips: cnt[ip] += c
done = set()
for c, ip, sym in ips[:topn]:
    if ip in done: continue
    start = ip - 48
    bs = bytearray()
    a = start
    while a < ip + 16 and a in code:
        bs.append(code[a]); a += 1
    if not bs:
        # find contiguous from ip backwards
        print(f"{c} {ip:x} {sym}: no code"); continue
    tmp = tempfile.NamedTemporaryFile(suffix='.bin', delete=False)
    tmp.write(bs)
    tmp.close()
    out = subprocess.run(['objdump', '-D', '-b', 'binary', '-mi386:x86-64', '-Mintel', f'--adjust-vma={start:#x}', tmp.name], capture_output=True, text=True).stdout
    os.unlink(tmp.name)
    print(f"=== {100*c/tot:.1f}% at {ip:x} {sym}")
    for l in out.splitlines()[7:]:
        mm = re.match(r'\s*([0-9a-f]+):', l)
        mark = ''
        if mm:
            aa = int(mm.group(1), 16)
            if cnt.get(aa): mark = f'  <<< {100*cnt[aa]/tot:.1f}%'; done.add(aa)
        print(l + mark)
