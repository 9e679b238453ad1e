package io.mqvirtio.virtio;

import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.memory.GuestMemory;
import io.mqvirtio.memory.MemoryRegion;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;

/**
 * popBurst held against pop on hostile rings: two device rings over the same driver-written memory (three regions,
 * two of them adjacent, one apart; random and bad flags, ids out of range or repeated, buffers across region ends,
 * lengths 0, 1 and 2^32-1, addresses that wrap; packed rings of 1 to 20 entries from any position and wrap counter,
 * split avail indices that jump past the ring), one taking bursts and the other only pops, with give-backs between.
 * Every chain a burst takes must be the chain pop takes there; where a burst stops before a chain, pop must then do on
 * both rings what it does without bursts (the same chain of another shape, or the same break); where it stops
 * saying nothing was there, pop finds nothing.
 */
class BurstDifferentialTest {
    static final ValueLayout.OfLong U64 = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final ValueLayout.OfInt U32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final ValueLayout.OfShort U16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final long MEM = 1 << 20;
    static final long A = 0x4000_0000L, A_SIZE = 512 * 1024, B = A + A_SIZE, B_SIZE = 256 * 1024, C = 0x9000_0000L,
            C_SIZE = 256 * 1024;

    @Test
    void burstAgreesWithPop() {
        try (TwoViewMemory mem = new TwoViewMemory(MEM)) {
            MemorySegment dev = mem.deviceMap.segment();
            long uva = mem.driver().address();
            GuestMemory g = GuestMemory.of(List.of(
                    new MemoryRegion(A, A_SIZE, uva, 0, dev.asSlice(0, A_SIZE)),
                    new MemoryRegion(B, B_SIZE, uva + A_SIZE, A_SIZE, dev.asSlice(A_SIZE, B_SIZE)),
                    new MemoryRegion(C, C_SIZE, uva + A_SIZE + B_SIZE, A_SIZE + B_SIZE, dev.asSlice(A_SIZE + B_SIZE, C_SIZE))));
            for (int seed = 0; seed < 50000; seed++) {
                run(mem, g, seed, seed % 2 == 0);
            }
        }
    }

    static long addr(SplittableRandom r) {
        return switch (r.nextInt(10)) {
            case 0 -> A + 4096 + r.nextLong(A_SIZE - 4096);
            case 1 -> B - r.nextInt(64);
            case 2 -> B;
            case 3 -> B + B_SIZE - r.nextInt(64);
            case 4 -> C + r.nextLong(C_SIZE);
            case 5 -> C + C_SIZE - r.nextInt(64);
            case 6 -> -r.nextInt(64);
            case 7 -> r.nextLong();
            case 8 -> C - r.nextInt(64);
            default -> A + A_SIZE - r.nextInt(2000);
        };
    }

    static int len(SplittableRandom r) {
        return switch (r.nextInt(8)) {
            case 0 -> 0;
            case 1 -> 1;
            case 2 -> -1;
            case 3 -> r.nextInt(64);
            case 4 -> r.nextInt(1 << 19);
            case 5 -> 1500;
            case 6 -> r.nextInt();
            default -> 12;
        };
    }

    void run(TwoViewMemory mem, GuestMemory g, int seed, boolean packed) {
        SplittableRandom r = new SplittableRandom(seed);
        MemorySegment d = mem.driver();
        d.asSlice(0, 4096 * 8).fill((byte) 0);
        long features = VirtioFeatures.bit(VirtioFeatures.F_INDIRECT_DESC)
                | (packed ? VirtioFeatures.bit(VirtioFeatures.F_RING_PACKED) : 0);
        int size = packed ? 1 + r.nextInt(20) : 1 << r.nextInt(6);
        boolean dir = r.nextBoolean();
        DeviceRing x;
        DeviceRing y;
        if (packed) {
            int pos = r.nextInt(size);
            boolean w = r.nextBoolean();
            boolean good = r.nextBoolean();
            for (int i = 0; i < size; i++) {
                long b = 16L * i;
                if (good && r.nextInt(8) != 0) {
                    boolean wrap = i >= pos ? w : !w;
                    d.set(U64, b, r.nextInt(10) == 0 ? addr(r) : A + 4096 + r.nextInt(100000));
                    d.set(U32, b + 8, r.nextInt(10) == 0 ? len(r) : r.nextInt(2000));
                    d.set(U16, b + 12, (short) (r.nextInt(10) == 0 ? r.nextInt(size + 2) : i));
                    d.set(U16, b + 14, (short) (PackedRing.availFlags(wrap) | (dir ? PackedRing.F_WRITE : 0)));
                    continue;
                }
                d.set(U64, b, addr(r));
                d.set(U32, b + 8, len(r));
                d.set(U16, b + 12, (short) (r.nextInt(4) == 0 ? r.nextInt(1 << 16) : r.nextInt(size + 1)));
                boolean wrap = i >= pos ? w : !w; // available in this lap from pos on, and the next lap before it
                int fl = r.nextInt(5) == 0 ? r.nextInt(1 << 16)
                        : (r.nextInt(6) == 0 ? 0 : PackedRing.availFlags(wrap)) | (r.nextInt(4) == 0 ? PackedRing.F_NEXT : 0)
                        | (r.nextBoolean() ? PackedRing.F_WRITE : 0) | (r.nextInt(8) == 0 ? PackedRing.F_INDIRECT : 0);
                d.set(U16, b + 14, (short) fl);
            }
            RingBase base = new RingBase(pos, w, pos, w);
            MemorySegment ring = g.uva(mem.uva(0), 16L * size);
            x = new PackedDeviceRing(g, size, ring, g.uva(mem.uva(4096 * 4), 4), g.uva(mem.uva(4096 * 4 + 64), 4), features, base);
            y = new PackedDeviceRing(g, size, ring, g.uva(mem.uva(4096 * 4), 4), g.uva(mem.uva(4096 * 4 + 64), 4), features, base);
        } else {
            Rings.Layout l = Rings.layout(size, features);
            boolean good = r.nextBoolean();
            for (int i = 0; i < size; i++) {
                long b = l.descOffset() + 16L * i;
                if (good && r.nextInt(8) != 0) {
                    d.set(U64, b, r.nextInt(10) == 0 ? addr(r) : A + 4096 + r.nextInt(100000));
                    d.set(U32, b + 8, r.nextInt(10) == 0 ? len(r) : r.nextInt(2000));
                    d.set(U16, b + 12, (short) (dir ? SplitRing.DESC_F_WRITE : 0));
                    continue;
                }
                d.set(U64, b, addr(r));
                d.set(U32, b + 8, len(r));
                int fl = r.nextInt(5) == 0 ? r.nextInt(1 << 16)
                        : (r.nextInt(4) == 0 ? SplitRing.DESC_F_NEXT : 0) | (r.nextBoolean() ? SplitRing.DESC_F_WRITE : 0)
                        | (r.nextInt(8) == 0 ? SplitRing.DESC_F_INDIRECT : 0);
                d.set(U16, b + 12, (short) fl);
                d.set(U16, b + 14, (short) r.nextInt(size + 1));
            }
            int last = r.nextInt(1 << 16);
            int avail = last + (r.nextInt(10) == 0 ? r.nextInt(1 << 16) : r.nextInt(size + 1));
            for (int i = 0; i < size; i++) {
                d.set(U16, l.availOffset() + SplitRing.AVAIL_RING + 2L * i, (short) (r.nextInt(6) == 0 ? r.nextInt(1 << 16) : r.nextInt(size)));
            }
            d.set(U16, l.availOffset() + SplitRing.AVAIL_IDX, (short) avail);
            MemorySegment desc = g.uva(mem.uva(l.descOffset()), SplitRing.descTableBytes(size));
            MemorySegment av = g.uva(mem.uva(l.availOffset()), SplitRing.availBytes(size));
            MemorySegment us = g.uva(mem.uva(l.usedOffset()), SplitRing.usedBytes(size));
            x = new SplitDeviceRing(g, size, desc, av, us, features, last, last);
            y = new SplitDeviceRing(g, size, desc, av, us, features, last, last);
        }
        ChainBurst burst = new ChainBurst();
        DescriptorChain cx = new DescriptorChain(64);
        DescriptorChain cy = new DescriptorChain(64);
        int outstanding = 0;
        String ctx = "seed " + seed + (packed ? " packed" : " split") + " size " + size;
        for (int step = 0; step < 12 && !x.isBroken(); step++) {
            if (outstanding > 0 && r.nextInt(4) == 0) {
                int n = 1 + r.nextInt(outstanding);
                x.giveBack(n);
                y.giveBack(n);
                outstanding -= n;
                continue;
            }
            int max = 1 + r.nextInt(70);
            boolean writable = r.nextInt(4) == 0 ? !dir : dir;
            int k;
            try {
                k = x.popBurst(burst, max, writable);
            } catch (VirtqueueException e) {
                // only where pop throws before reading a chain
                String ey = popOutcome(y, cy);
                assertThat(ey).as(ctx + ": burst threw " + e.getMessage()).startsWith("throw");
                return;
            }
            assertThat(k).as(ctx).isEqualTo(burst.count());
            for (int i = 0; i < k; i++) {
                assertThat(y.pop(cy)).as(ctx + " chain " + i).isTrue();
                assertThat(cy.count()).as(ctx).isEqualTo(1);
                assertThat(cy.isIndirect()).as(ctx).isFalse();
                assertThat(cy.isWritable(0)).as(ctx).isEqualTo(writable);
                assertThat(cy.guestAddress(0)).as(ctx).isEqualTo(burst.guestAddress(i));
                assertThat(cy.hostAddress(0)).as(ctx).isEqualTo(burst.hostAddress(i));
                assertThat(cy.length(0)).as(ctx).isEqualTo(burst.length(i));
                assertThat(packed ? cy.id() : cy.head()).as(ctx).isEqualTo(burst.id(i));
            }
            outstanding += k;
            int limit = Math.min(Math.min(max, ChainBurst.MAX), size);
            String oy = popOutcome(y, cy);
            String ox = popOutcome(x, cx);
            assertThat(ox).as(ctx + " after burst k=" + k + " other=" + burst.stoppedAtOther()).isEqualTo(oy);
            if (burst.stoppedAtOther()) {
                boolean sameShape = oy.startsWith("chain 1 false " + writable + " ");
                assertThat(sameShape).as(ctx + ": stopped at a chain pop takes as the burst's shape: " + oy).isFalse();
                assertThat(oy).as(ctx).isNotEqualTo("none");
            } else if (k < limit) {
                assertThat(oy).as(ctx + ": burst said nothing available (k=" + k + ")").isIn("none", "throwq");
            }
            if (oy.startsWith("chain")) {
                outstanding++;
            }
            if (oy.startsWith("throw")) {
                return;
            }
        }
    }

    static String popOutcome(DeviceRing q, DescriptorChain c) {
        try {
            if (!q.pop(c)) {
                return "none";
            }
        } catch (VirtqueueException e) {
            return e.getMessage().startsWith("queue is broken") ? "throwq" : "throw " + e.getMessage();
        }
        StringBuilder s = new StringBuilder("chain " + c.count() + " " + c.isIndirect() + " " + (c.count() > 0 && c.isWritable(0)) + " ");
        for (int i = 0; i < c.count(); i++) {
            s.append(Long.toHexString(c.guestAddress(i))).append('+').append(c.length(i)).append(' ');
        }
        return s.append("id ").append(c.id()).toString();
    }
}
