package io.mqvirtio.net;

import io.mqvirtio.linux.MemFd;
import io.mqvirtio.linux.Mmap;
import io.mqvirtio.virtio.DriverRing;
import io.mqvirtio.virtio.PackedRing;
import io.mqvirtio.virtio.Rings;
import io.mqvirtio.virtio.SplitRing;
import io.mqvirtio.virtio.VirtioFeatures;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.VarHandle;
import java.nio.ByteOrder;

/**
 * A measurement, not a test (docs/performance.md, "Draining a ring of merged frames"): how long our driver's
 * {@code receive} takes to drain an RX ring the device filled with frames of {@code k} merged buffers (MRG_RXBUF,
 * 256-byte buffers), the device played by this class in the same memory. Arguments: {@code packed|split
 * inorder|any SIZE K ROUNDS}; under IN_ORDER the device uses every buffer, so {@code SIZE} must be a multiple of
 * {@code K}. Run with the test classpath:
 * {@code java --enable-native-access=ALL-UNNAMED -cp target/test-classes:target/classes:$(cat cp.txt)
 * io.mqvirtio.net.MergedDrain packed inorder 32768 8 4}.
 */
public final class MergedDrain {
    static final ValueLayout.OfShort LE16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final ValueLayout.OfInt LE32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final ValueLayout.OfLong LE64 = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final VarHandle U16 = ValueLayout.JAVA_SHORT.withOrder(ByteOrder.LITTLE_ENDIAN).varHandle();

    public static void main(String[] a) {
        boolean packed = a[0].equals("packed");
        boolean inOrder = a[1].equals("inorder");
        int size = Integer.parseInt(a[2]);
        int k = Integer.parseInt(a[3]);
        int rounds = Integer.parseInt(a[4]);
        int buf = 256;
        long f = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(io.mqvirtio.net.VirtioNet.F_MRG_RXBUF)
                | (packed ? VirtioFeatures.bit(VirtioFeatures.F_RING_PACKED) : 0)
                | (inOrder ? VirtioFeatures.bit(VirtioFeatures.F_IN_ORDER) : 0);
        Rings.Layout l = Rings.layout(size, f);
        long ringBytes = (l.totalBytes() + 4095) & ~4095L;
        long rxBufs = 2 * ringBytes, txBufs = rxBufs + (long) size * buf, total = txBufs + (long) size * buf;
        long gpa0 = 0x4_0000_0000L;
        try (MemFd m = MemFd.create("drain", total); Mmap dm = Mmap.shared(m, 0, total)) {
            MemorySegment s = dm.segment();
            DriverRing rx = Rings.driver(size, f, s.asSlice(0, l.totalBytes()));
            DriverRing tx = Rings.driver(size, f, s.asSlice(ringBytes, l.totalBytes()));
            NetQueuePair q = FuzzPairs.pair(rx, tx, s.asSlice(rxBufs, (long) size * buf), gpa0 + rxBufs,
                    s.asSlice(txBufs, (long) size * buf), gpa0 + txBufs, buf, true);
            MemorySegment[] dst = new MemorySegment[64];
            for (int i = 0; i < dst.length; i++) {
                dst[i] = java.lang.foreign.Arena.global().allocate(65536);
            }
            int[] lens = new int[64];
            int aPos = 0, uPos = 0, availSeen = 0, usedIdx = 0;
            boolean aWrap = true, uWrap = true;
            for (int r = 0; r < rounds; r++) {
                // the device: read every offer, use them in frames of k buffers
                int frames = 0;
                int[] ids = new int[size];
                long[] addrs = new long[size];
                int n = 0;
                if (packed) {
                    while (true) {
                        long b = l.descOffset() + (long) PackedRing.DESC_SIZE * aPos;
                        int fl = Short.toUnsignedInt((short) U16.getAcquire(s, b + PackedRing.DESC_FLAGS));
                        if (((fl & PackedRing.F_AVAIL) != 0) != aWrap || ((fl & PackedRing.F_USED) != 0) == aWrap) {
                            break;
                        }
                        ids[n] = Short.toUnsignedInt(s.get(LE16, b + PackedRing.DESC_ID));
                        addrs[n++] = s.get(LE64, b + PackedRing.DESC_ADDR);
                        if (++aPos == size) { aPos = 0; aWrap = !aWrap; }
                    }
                } else {
                    int idx = Short.toUnsignedInt((short) U16.getAcquire(s, l.availOffset() + SplitRing.AVAIL_IDX));
                    while (availSeen != idx) {
                        int head = Short.toUnsignedInt(s.get(LE16, l.availOffset() + SplitRing.AVAIL_RING + 2L * (availSeen % size)));
                        ids[n] = head;
                        addrs[n++] = s.get(LE64, l.descOffset() + (long) SplitRing.DESC_SIZE * head + SplitRing.DESC_ADDR);
                        availSeen = (availSeen + 1) & 0xffff;
                    }
                }
                int usable = n - n % k;
                int firstFlagsPos = -1; int firstFlags = 0;
                for (int i = 0; i < usable; i++) {
                    if (i % k == 0) {
                        s.set(LE16, addrs[i] - gpa0 + 10, (short) k);
                        frames++;
                    }
                    int len = i % k == k - 1 ? 100 : buf;
                    if (packed) {
                        long b = l.descOffset() + (long) PackedRing.DESC_SIZE * uPos;
                        s.set(LE32, b + PackedRing.DESC_LEN, len);
                        s.set(LE16, b + PackedRing.DESC_ID, (short) ids[i]);
                        short fl = (short) (uWrap ? PackedRing.F_AVAIL | PackedRing.F_USED : 0);
                        if (i == 0) { firstFlagsPos = uPos; firstFlags = fl; } else { s.set(LE16, b + PackedRing.DESC_FLAGS, fl); }
                        if (++uPos == size) { uPos = 0; uWrap = !uWrap; }
                    } else {
                        long e = l.usedOffset() + SplitRing.USED_RING + 8L * (usedIdx % size);
                        s.set(LE32, e, ids[i]);
                        s.set(LE32, e + 4, len);
                        usedIdx = (usedIdx + 1) & 0xffff;
                    }
                }
                if (packed && firstFlagsPos >= 0) {
                    U16.setRelease(s, l.descOffset() + (long) PackedRing.DESC_SIZE * firstFlagsPos + PackedRing.DESC_FLAGS, (short) firstFlags);
                } else if (!packed) {
                    U16.setRelease(s, l.usedOffset() + SplitRing.USED_IDX, (short) usedIdx);
                }
                long t0 = System.nanoTime();
                int got = 0;
                while (got < frames) {
                    int g = q.receive(dst, lens, 64);
                    if (g == 0) { throw new IllegalStateException("stuck at " + got + " of " + frames); }
                    got += g;
                }
                long t1 = System.nanoTime();
                System.out.printf("round %d: %d frames of %d buffers drained in %.2f ms (%.0f ns/frame)%n", r, frames, k,
                        (t1 - t0) / 1e6, (double) (t1 - t0) / frames);
            }
        }
    }
}
