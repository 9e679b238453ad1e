package io.mqvirtio.virtio;

import static io.mqvirtio.virtio.SplitRing.*;
import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import io.mqvirtio.linux.MemFd;
import io.mqvirtio.linux.Mmap;
import io.mqvirtio.memory.GuestMemory;
import io.mqvirtio.memory.GuestMemoryException;
import io.mqvirtio.memory.MemoryRegion;
import java.lang.foreign.MemorySegment;
import java.util.List;
import java.util.Random;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * Each forbidden ring state a driver could write, fed to the device side: each must be a clear
 * {@link VirtqueueException} that breaks the queue, never another exception, a hang or an access outside guest
 * memory.
 */
class HostileRingTest {
    static final int SIZE = 256;
    static final long ALL = VirtioFeatures.bit(VirtioFeatures.F_INDIRECT_DESC) | VirtioFeatures.bit(VirtioFeatures.F_EVENT_IDX);

    TwoViewMemory mem;
    long descOff;
    long availOff;
    long dataOff;
    MemorySegment d;

    @BeforeEach
    void setUp() {
        mem = new TwoViewMemory(1 << 20);
        d = mem.driver();
        SplitRing.Layout l = SplitRing.Layout.contiguous(SIZE);
        long base = mem.alloc(l.totalBytes(), 4096);
        descOff = base + l.descOffset();
        availOff = base + l.availOffset();
        dataOff = mem.alloc(64 * 1024, 4096);
    }

    @AfterEach
    void tearDown() {
        mem.close();
    }

    SplitDeviceRing device(long features) {
        SplitRing.Layout l = SplitRing.Layout.contiguous(SIZE);
        long base = descOff - l.descOffset();
        return new SplitDeviceRing(mem.guest, SIZE, mem.guest.uva(mem.uva(base + l.descOffset()), descTableBytes(SIZE)),
                mem.guest.uva(mem.uva(base + l.availOffset()), availBytes(SIZE)),
                mem.guest.uva(mem.uva(base + l.usedOffset()), usedBytes(SIZE)), features, 0, 0);
    }

    void desc(int i, long gpa, int len, int flags, int next) {
        desc(d, descOff, i, gpa, len, flags, next);
    }

    static void desc(MemorySegment s, long tableOff, int i, long gpa, int len, int flags, int next) {
        long b = tableOff + 16L * i;
        s.set(U64, b, gpa);
        s.set(U32, b + 8, len);
        s.set(U16, b + 12, (short) flags);
        s.set(U16, b + 14, (short) next);
    }

    void offer(int... heads) {
        for (int i = 0; i < heads.length; i++) {
            d.set(U16, availOff + AVAIL_RING + 2L * i, (short) heads[i]);
        }
        d.set(U16, availOff + AVAIL_IDX, (short) heads.length);
    }

    long buf(int off) {
        return mem.gpa(dataOff + off);
    }

    void assertBroken(SplitDeviceRing q, String message) {
        DescriptorChain c = new DescriptorChain(SIZE);
        assertThatThrownBy(() -> q.pop(c)).isInstanceOf(VirtqueueException.class).hasMessageContaining(message);
        assertThat(q.isBroken()).isTrue();
        assertThat(q.brokenReason()).contains(message);
        // a broken queue refuses further work, it does not carry on with a half-understood ring
        assertThatThrownBy(() -> q.pop(c)).isInstanceOf(VirtqueueException.class).hasMessageContaining("broken");
    }

    @Test
    void wellFormedChainPops() {
        desc(0, buf(0), 100, DESC_F_NEXT, 5);
        desc(5, buf(100), 200, DESC_F_WRITE, 0);
        offer(0);
        SplitDeviceRing q = device(ALL);
        DescriptorChain c = new DescriptorChain(SIZE);
        assertThat(q.pop(c)).isTrue();
        assertThat(c.head()).isZero();
        assertThat(c.readableBytes()).isEqualTo(100);
        assertThat(c.writableBytes()).isEqualTo(200);
        assertThat(c.hostAddress(1)).isEqualTo(mem.deviceMap.segment().address() + dataOff + 100);
        assertThat(q.pop(c)).isFalse();
        assertThat(q.lastAvailIndex()).isEqualTo(1);
    }

    @Test
    void descriptorLoop() {
        desc(0, buf(0), 10, DESC_F_NEXT, 1);
        desc(1, buf(10), 10, DESC_F_NEXT, 2);
        desc(2, buf(20), 10, DESC_F_NEXT, 0);
        offer(0);
        assertBroken(device(ALL), "loops");
    }

    @Test
    void selfLoop() {
        desc(7, buf(0), 10, DESC_F_NEXT | DESC_F_WRITE, 7);
        offer(7);
        assertBroken(device(ALL), "loops");
    }

    @Test
    void chainLongerThanTheQueueWithoutALoopIsImpossibleButAFullLengthChainIsFine() {
        for (int i = 0; i < SIZE; i++) {
            desc(i, buf(i), 1, i + 1 < SIZE ? DESC_F_NEXT : 0, i + 1);
        }
        offer(0);
        DescriptorChain c = new DescriptorChain(SIZE);
        assertThat(device(ALL).pop(c)).isTrue();
        assertThat(c.count()).isEqualTo(SIZE);
        // one buffer more than the chain object holds is refused, not overflowed
        DescriptorChain small = new DescriptorChain(16);
        SplitDeviceRing q = device(ALL);
        assertThatThrownBy(() -> q.pop(small)).isInstanceOf(VirtqueueException.class).hasMessageContaining("more than 16");
    }

    @Test
    void headOutOfRange() {
        offer(SIZE);
        assertBroken(device(ALL), "names head 256");
    }

    @Test
    void nextOutOfRange() {
        desc(0, buf(0), 10, DESC_F_NEXT, 0xffff);
        offer(0);
        assertBroken(device(ALL), "has next 65535");
    }

    @Test
    void availIndexJumpsTooFar() {
        d.set(U16, availOff + AVAIL_IDX, (short) (SIZE + 1));
        assertBroken(device(ALL), "jumped");
    }

    @Test
    void writableBeforeReadable() {
        desc(0, buf(0), 10, DESC_F_NEXT | DESC_F_WRITE, 1);
        desc(1, buf(10), 10, 0, 0);
        offer(0);
        assertBroken(device(ALL), "readable descriptor 1 after a writable one");
    }

    @Test
    void addressOutsideGuestMemory() {
        desc(0, 0x1000, 10, 0, 0); // below the region
        offer(0);
        assertBroken(device(ALL), "outside guest memory");
    }

    @Test
    void bufferCrossingTheRegionEnd() {
        desc(0, mem.gpa(mem.driverMap.size() - 8), 16, DESC_F_WRITE, 0);
        offer(0);
        assertBroken(device(ALL), "outside guest memory");
    }

    @Test
    void addressThatWrapsAround() {
        desc(0, -8L, 16, 0, 0);
        offer(0);
        assertBroken(device(ALL), "outside guest memory");
    }

    @Test
    void indirectWithoutTheFeature() {
        desc(0, buf(0), 32, DESC_F_INDIRECT, 0);
        offer(0);
        assertBroken(device(0), "not negotiated");
    }

    @Test
    void indirectInsideIndirect() {
        long table = dataOff + 4096;
        desc(d, table, 0, buf(0), 32, DESC_F_INDIRECT, 0);
        desc(0, mem.gpa(table), 32, DESC_F_INDIRECT, 0);
        offer(0);
        assertBroken(device(ALL), "inside an indirect table");
    }

    @Test
    void indirectLengthZero() {
        desc(0, buf(4096), 0, DESC_F_INDIRECT, 0);
        offer(0);
        assertBroken(device(ALL), "not a non-zero multiple of 16");
    }

    @Test
    void indirectLengthNotAMultipleOf16() {
        desc(0, buf(4096), 24, DESC_F_INDIRECT, 0);
        offer(0);
        assertBroken(device(ALL), "not a non-zero multiple of 16");
    }

    @Test
    void indirectTableOutsideGuestMemory() {
        desc(0, 0x10, 64, DESC_F_INDIRECT, 0);
        offer(0);
        assertBroken(device(ALL), "indirect table at head 0");
    }

    @Test
    void indirectAndNextTogether() {
        desc(0, buf(4096), 32, DESC_F_INDIRECT | DESC_F_NEXT, 1);
        offer(0);
        assertBroken(device(ALL), "both INDIRECT and NEXT");
    }

    @Test
    void indirectLoop() {
        long table = dataOff + 4096;
        desc(d, table, 0, buf(0), 8, DESC_F_NEXT, 1);
        desc(d, table, 1, buf(8), 8, DESC_F_NEXT, 0);
        desc(0, mem.gpa(table), 32, DESC_F_INDIRECT, 0);
        offer(0);
        assertBroken(device(ALL), "loops");
    }

    @Test
    void indirectNextBeyondItsTable() {
        long table = dataOff + 4096;
        desc(d, table, 0, buf(0), 8, DESC_F_NEXT, 2); // table has 2 entries
        desc(0, mem.gpa(table), 32, DESC_F_INDIRECT, 0);
        offer(0);
        assertBroken(device(ALL), "table size is 2");
    }

    @Test
    void lengthOverflowingThirtyTwoBits() {
        // A sparse 2 GiB memfd: descriptors of 2 GiB each lie inside guest memory, yet their total overflows.
        long big = 1L << 31;
        try (MemFd fd = MemFd.create("big", big); Mmap m = Mmap.shared(fd, 0, big)) {
            GuestMemory g = GuestMemory.of(List.of(
                    new MemoryRegion(1L << 40, big, 0x10_0000_0000L, 0, m.segment()),
                    mem.guest.regions().get(0)));
            desc(0, 1L << 40, (int) big, DESC_F_NEXT, 1);
            desc(1, 1L << 40, (int) big, DESC_F_NEXT, 2);
            desc(2, 1L << 40, 1, 0, 0);
            offer(0);
            SplitRing.Layout l = SplitRing.Layout.contiguous(SIZE);
            long base = descOff - l.descOffset();
            SplitDeviceRing q = new SplitDeviceRing(g, SIZE, g.uva(mem.uva(base), descTableBytes(SIZE)),
                    g.uva(mem.uva(base + l.availOffset()), availBytes(SIZE)),
                    g.uva(mem.uva(base + l.usedOffset()), usedBytes(SIZE)), ALL, 0, 0);
            assertBroken(q, "longer than 2^32-1 bytes");
        }
    }

    @Test
    void ringPartsMustBeInsideMemoryAndAligned() {
        assertThatThrownBy(() -> mem.guest.uva(mem.uva(mem.driverMap.size() - 100), descTableBytes(SIZE)))
                .isInstanceOf(GuestMemoryException.class);
        MemorySegment misaligned = mem.guest.uva(mem.uva(descOff + 8), descTableBytes(SIZE));
        assertThatThrownBy(() -> new SplitDeviceRing(mem.guest, SIZE, misaligned, misaligned, misaligned, ALL, 0, 0))
                .isInstanceOf(VirtqueueException.class).hasMessageContaining("aligned");
        MemorySegment small = mem.guest.uva(mem.uva(descOff), 64);
        assertThatThrownBy(() -> new SplitDeviceRing(mem.guest, SIZE, small, small, small, ALL, 0, 0))
                .isInstanceOf(VirtqueueException.class).hasMessageContaining("needs");
        for (int bad : new int[] {0, 3, 65536, -1}) {
            assertThatThrownBy(() -> new SplitDeviceRing(mem.guest, bad, small, small, small, ALL, 0, 0))
                    .isInstanceOf(VirtqueueException.class).hasMessageContaining("power of two");
        }
    }

    @Test
    void deviceReturningABogusUsedEntryBreaksTheDriver() {
        try (TwoViewMemory m2 = new TwoViewMemory(1 << 20)) {
            TwoViewMemory.Ring r = m2.ring(8, 0, 0);
            long[] a = {m2.gpa(m2.alloc(64, 8))};
            int head = r.driver().add(a, new int[] {64}, 0, 1);
            r.driver().publish();
            ((SplitDeviceRing) r.device()).push((head + 3) % 8, 10); // never offered
            r.device().publish();
            assertThatThrownBy(() -> r.driver().reap()).isInstanceOf(VirtqueueException.class)
                    .hasMessageContaining("not a chain in flight");
            assertThat(r.driver().isBroken()).isTrue();
        }
    }

    @Test
    void deviceRunningAheadOfTheDriverBreaksIt() {
        try (TwoViewMemory m2 = new TwoViewMemory(1 << 20)) {
            TwoViewMemory.Ring r = m2.ring(8, 0, 0);
            m2.driver().set(U16, r.usedOff() + USED_IDX, (short) 5);
            assertThatThrownBy(() -> r.driver().reap()).isInstanceOf(VirtqueueException.class)
                    .hasMessageContaining("runs ahead");
        }
    }

    /** Sometimes reads ahead first (the worker's hint), which must neither consume, fail nor read outside. */
    static boolean readAheadThenPop(DeviceRing q, DescriptorChain c, Random r) {
        if (r.nextBoolean()) {
            int before = q.base().avail();
            q.available();
            q.readAhead(1 + r.nextInt(64));
            assertThat(q.base().avail()).isEqualTo(before);
        }
        return q.pop(c);
    }

    /**
     * Random garbage in the descriptor table and the avail ring: a pop either yields a chain whose every buffer lies
     * inside guest memory, or a VirtqueueException; nothing else, and it always terminates.
     */
    @Property(tries = 3000)
    void garbageRingsNeverEscape(@ForAll long seed) {
        Random r = new Random(seed);
        try (TwoViewMemory m = new TwoViewMemory(256 * 1024)) {
            int size = 1 << r.nextInt(6);
            TwoViewMemory.Ring ring = m.ring(size, r.nextBoolean() ? ALL : 0, 0);
            MemorySegment s = m.driver();
            long tableOff = m.alloc(16 * 64, 16);
            for (int i = 0; i < size + 64; i++) {
                long off = i < size ? ring.descOff() + 16L * i : tableOff + 16L * (i - size);
                long addr = switch (r.nextInt(4)) {
                    case 0 -> r.nextLong();
                    case 1 -> m.gpa(tableOff + 16L * r.nextInt(64));
                    default -> m.gpa(r.nextInt((int) m.driverMap.size()));
                };
                int len = switch (r.nextInt(4)) {
                    case 0 -> r.nextInt();
                    case 1 -> 16 * r.nextInt(64);
                    default -> r.nextInt(8192);
                };
                s.set(U64, off, addr);
                s.set(U32, off + 8, len);
                s.set(U16, off + 12, (short) r.nextInt(8));
                s.set(U16, off + 14, (short) (r.nextBoolean() ? r.nextInt(size + 2) : r.nextInt(65536)));
            }
            int n = r.nextInt(size * 2 + 1);
            for (int i = 0; i < size; i++) {
                s.set(U16, ring.availOff() + AVAIL_RING + 2L * i, (short) (r.nextInt(8) == 0 ? r.nextInt() : r.nextInt(size)));
            }
            s.set(U16, ring.availOff() + AVAIL_IDX, (short) n);
            DescriptorChain c = new DescriptorChain(128);
            try {
                for (int i = 0; i < n + 1 && readAheadThenPop(ring.device(), c, r); i++) {
                    for (int b = 0; b < c.count(); b++) {
                        MemorySegment seg = c.segment(b); // would throw if outside
                        assertThat(seg.address()).isEqualTo(c.hostAddress(b));
                    }
                    assertThat(c.readableBytes() + c.writableBytes()).isLessThanOrEqualTo(0xffff_ffffL);
                    ring.device().complete(c, 0);
                }
                assertThat(n).isLessThanOrEqualTo(size);
            } catch (VirtqueueException e) {
                assertThat(ring.device().isBroken()).isTrue();
            }
        }
    }
}
