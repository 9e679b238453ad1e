package io.mqvirtio.net;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/** A flow's hash from its Ethernet frame: IPv4/IPv6 addresses and TCP/UDP ports (VLAN tags skipped). */
final class FlowHash {
    private static final ValueLayout.OfShort BE16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(java.nio.ByteOrder.BIG_ENDIAN);
    private static final ValueLayout.OfInt BE32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(java.nio.ByteOrder.BIG_ENDIAN);

    private FlowHash() {}

    /** A non-negative hash; 0 for frames that are not IPv4/IPv6. */
    static int of(MemorySegment f) {
        long n = f.byteSize();
        int off = 12;
        if (n < 14) {
            return 0;
        }
        int type = Short.toUnsignedInt(f.get(BE16, off));
        while ((type == 0x8100 || type == 0x88a8) && n >= off + 6) {
            off += 4;
            type = Short.toUnsignedInt(f.get(BE16, off));
        }
        off += 2;
        int h;
        int proto;
        int l4;
        if (type == 0x0800 && n >= off + 20) {
            int ihl = (f.get(ValueLayout.JAVA_BYTE, off) & 0xf) * 4;
            proto = f.get(ValueLayout.JAVA_BYTE, off + 9) & 0xff;
            h = mix(f.get(BE32, off + 12), f.get(BE32, off + 16));
            boolean fragment = (f.get(BE16, off + 6) & 0x3fff) != 0;
            l4 = fragment ? -1 : off + ihl;
        } else if (type == 0x86dd && n >= off + 40) {
            proto = f.get(ValueLayout.JAVA_BYTE, off + 6) & 0xff;
            h = 0;
            for (int i = 0; i < 8; i++) {
                h = mix(h, f.get(BE32, off + 8 + 4L * i));
            }
            l4 = off + 40;
        } else {
            return 0;
        }
        h = mix(h, proto);
        if ((proto == 6 || proto == 17) && l4 > 0 && n >= l4 + 4) {
            h = mix(h, f.get(BE32, l4));
        }
        return (h ^ (h >>> 16)) & 0x7fffffff;
    }

    private static int mix(int h, int v) {
        return (h ^ v) * 0x9e3779b1 + 0x7f4a7c15;
    }
}
