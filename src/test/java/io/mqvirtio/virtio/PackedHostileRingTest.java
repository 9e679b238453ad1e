package io.mqvirtio.virtio;

import static io.mqvirtio.virtio.PackedRing.*;
import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.lang.foreign.MemorySegment;
import java.util.Random;
import java.util.function.Consumer;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * The packed versions of the ring attacks a driver can make, fed to the device side: each forbidden state is a
 * clear {@link VirtqueueException} that breaks the ring, never another exception, a hang or an access outside guest
 * memory; a descriptor whose flags do not say "available" for the device's wrap counter (a wrong wrap bit, a used
 * flag the driver set) is simply not there yet; event structures naming any descriptor only change a decision.
 */
class PackedHostileRingTest {
    static final int SIZE = 64;
    static final long ALL = VirtioFeatures.bit(VirtioFeatures.F_INDIRECT_DESC) | VirtioFeatures.bit(VirtioFeatures.F_EVENT_IDX)
            | VirtioFeatures.bit(VirtioFeatures.F_RING_PACKED);

    TwoViewMemory mem;
    MemorySegment d;
    long ringOff;
    long driverEventOff;
    long deviceEventOff;
    long dataOff;

    @BeforeEach
    void setUp() {
        mem = new TwoViewMemory(1 << 20);
        d = mem.driver();
        Rings.Layout l = Rings.layout(SIZE, ALL);
        long base = mem.alloc(l.totalBytes(), 4096);
        ringOff = base + l.descOffset();
        driverEventOff = base + l.availOffset();
        deviceEventOff = base + l.usedOffset();
        dataOff = mem.alloc(64 * 1024, 4096);
    }

    @AfterEach
    void tearDown() {
        mem.close();
    }

    DeviceRing device(long features) {
        return Rings.device(mem.guest, SIZE, mem.uva(ringOff), mem.uva(driverEventOff), mem.uva(deviceEventOff),
                features | VirtioFeatures.bit(VirtioFeatures.F_RING_PACKED), RingBase.PACKED_START);
    }

    /** Descriptor {@code i}, with the AVAIL/USED bits of a driver whose wrap counter is 1 unless {@code flags} has any. */
    void desc(int i, long gpa, int len, int id, int flags) {
        long b = ringOff + 16L * i;
        d.set(U64, b, gpa);
        d.set(U32, b + 8, len);
        d.set(U16, b + 12, (short) id);
        int wrapBits = (flags & (F_AVAIL | F_USED)) != 0 ? 0 : F_AVAIL;
        d.set(U16, b + 14, (short) (flags | wrapBits));
    }

    long buf(int n) {
        return mem.gpa(dataOff + 1024L * n);
    }

    void expectBroken(DeviceRing q, String message) {
        DescriptorChain c = new DescriptorChain(64);
        assertThatThrownBy(() -> q.pop(c)).isInstanceOf(VirtqueueException.class).hasMessageContaining(message);
        assertThat(q.isBroken()).isTrue();
        assertThatThrownBy(() -> q.pop(c)).isInstanceOf(VirtqueueException.class);
    }

    @Test
    void aWellFormedChainPops() {
        desc(1, buf(1), 100, 9, F_WRITE);
        desc(0, buf(0), 12, 0, F_NEXT); // first flags written last, as a driver does
        DeviceRing q = device(ALL);
        DescriptorChain c = new DescriptorChain(64);
        assertThat(q.pop(c)).isTrue();
        assertThat(c.id()).isEqualTo(9); // from the last descriptor
        assertThat(c.slots()).isEqualTo(2);
        assertThat(c.readableBytes()).isEqualTo(12);
        assertThat(c.writableBytes()).isEqualTo(100);
        assertThat(q.pop(c)).isFalse();
    }

    /**
     * DPDK's virtio PMD sends a frame of several segments on a packed ring as an indirect table whose first
     * descriptor (the header) keeps the WRITE flag its init set, readable segments after it: a ring the device only
     * reads (a TX ring) takes every buffer of the table as readable; any other ring is broken by it.
     */
    @Test
    void aTransmitRingIgnoresWriteFlagsInAnIndirectTable() {
        long table = dataOff + 60 * 1024;
        d.set(U64, table, buf(1));
        d.set(U32, table + 8, 12);
        d.set(U16, table + 14, (short) F_WRITE); // the header, as DPDK leaves it
        d.set(U64, table + 16, buf(2));
        d.set(U32, table + 24, 500);
        d.set(U16, table + 30, (short) (F_NEXT | F_AVAIL)); // what DPDK writes: NEXT and its wrap bits
        d.set(U64, table + 32, buf(3));
        d.set(U32, table + 40, 300);
        d.set(U16, table + 46, (short) F_AVAIL);
        desc(0, mem.gpa(table), 48, 5, F_INDIRECT);
        DeviceRing q = device(ALL);
        q.deviceReadsOnly();
        DescriptorChain c = new DescriptorChain(64);
        assertThat(q.pop(c)).isTrue();
        assertThat(c.id()).isEqualTo(5);
        assertThat(c.readableCount()).isEqualTo(3);
        assertThat(c.readableBytes()).isEqualTo(812);
        assertThat(c.writableBytes()).isZero();
        assertThat(q.isBroken()).isFalse();
        expectBroken(device(ALL), "readable descriptor after a writable one in the indirect table");
    }

    @Test
    void wrongWrapBitsAndUsedFlagsAreNotAvailable() {
        DeviceRing q = device(ALL);
        DescriptorChain c = new DescriptorChain(64);
        desc(0, buf(0), 64, 0, F_AVAIL | F_USED); // looks used
        assertThat(q.pop(c)).isFalse();
        desc(0, buf(0), 64, 0, F_USED); // available for wrap counter 0, not for the device's 1
        assertThat(q.pop(c)).isFalse();
        assertThat(q.isBroken()).isFalse();
        assertThat(q.enableKicks()).isFalse();
    }

    @Test
    void aChainWithoutEndBreaksTheRing() {
        for (int i = 0; i < SIZE; i++) {
            desc(i, buf(i % 60), 16, i, F_NEXT);
        }
        expectBroken(device(ALL), "longer than the ring");
    }

    @Test
    void anIdOutOfRangeBreaksTheRing() {
        desc(0, buf(0), 64, SIZE + 3, 0);
        expectBroken(device(ALL), "buffer id " + (SIZE + 3));
    }

    @Test
    void anIdInFlightTwiceBreaksTheRing() {
        desc(0, buf(0), 64, 5, 0);
        desc(1, buf(1), 64, 5, 0);
        DeviceRing q = device(ALL);
        DescriptorChain c = new DescriptorChain(64);
        assertThat(q.pop(c)).isTrue();
        expectBroken(q, "already in flight");
    }

    @Test
    void anIdUsedAndMadeAvailableAgainIsFine() {
        desc(0, buf(0), 64, 5, 0);
        desc(1, buf(1), 64, 5, 0);
        DeviceRing q = device(ALL);
        DescriptorChain c = new DescriptorChain(64);
        assertThat(q.pop(c)).isTrue();
        q.complete(c, 0);
        q.publish();
        assertThat(q.pop(c)).isTrue();
        assertThat(c.id()).isEqualTo(5);
    }

    /**
     * Buffers read and given back stay the device's: a driver that rewrites one as not available (taken back) breaks
     * the ring at the next pop there, whether a burst or a pop comes to it (a burst leaves it to pop); before, pop
     * found "nothing yet" while a wait for more (enableKicksForMore) saw the buffers beyond it, and a worker waiting
     * for RX buffers went round for good. A descriptor never read is simply not there yet, as before.
     */
    @Test
    void aBufferGivenBackAndTakenBackBreaksTheRing() {
        for (boolean burst : new boolean[] {false, true}) {
            for (int i = 0; i < 5; i++) {
                desc(i, buf(i), 1024, i, F_WRITE);
            }
            DeviceRing q = device(ALL);
            ChainBurst b = new ChainBurst();
            assertThat(q.popBurst(b, 4, true)).isEqualTo(4);
            q.completeBurst(b, 0, 1, 100);
            q.giveBack(3);
            desc(2, buf(2), 1024, 2, F_WRITE | F_USED); // taken back
            if (burst) {
                assertThat(q.popBurst(b, 4, true)).isEqualTo(1); // slot 1 again, then it stops before slot 2
                assertThat(b.stoppedAtOther()).isTrue();
            } else {
                DescriptorChain c = new DescriptorChain(64);
                assertThat(q.pop(c)).isTrue();
                assertThat(c.id()).isEqualTo(1);
            }
            assertThat(q.enableKicksForMore()).as("slot 4, beyond those given back, is there").isTrue();
            expectBroken(q, "descriptor at 2 was made available, read and given back");
            tearDown();
            setUp();
        }
        // a descriptor never read is only not there yet
        desc(0, buf(0), 1024, 0, F_WRITE);
        DeviceRing q = device(ALL);
        ChainBurst b = new ChainBurst();
        assertThat(q.popBurst(b, 4, true)).isEqualTo(1);
        assertThat(b.stoppedAtOther()).isFalse();
        DescriptorChain c = new DescriptorChain(64);
        assertThat(q.pop(c)).isFalse();
        q.giveBack(1);
        assertThat(q.pop(c)).isTrue();
        assertThat(q.isBroken()).isFalse();
    }

    /**
     * A driver that offers buffers again before their used descriptors are published (ids are free once completed)
     * gets more completions kept than the ring has entries: they are published early, not an out-of-bounds store
     * (found by the packed fuzz target: ArrayIndexOutOfBoundsException in complete).
     */
    @Test
    void moreCompletionsThanTheRingHoldsBeforeAPublish() {
        Rings.Layout l = Rings.layout(1, ALL);
        long base = mem.alloc(l.totalBytes(), 4096);
        DeviceRing q = Rings.device(mem.guest, 1, mem.uva(base + l.descOffset()), mem.uva(base + l.availOffset()),
                mem.uva(base + l.usedOffset()), ALL, RingBase.PACKED_START);
        long desc = base + l.descOffset();
        DescriptorChain c = new DescriptorChain(4);
        boolean wrap = true;
        for (int lap = 0; lap < 5; lap++) {
            d.set(U64, desc, buf(0));
            d.set(U32, desc + 8, 64);
            d.set(U16, desc + 12, (short) 0);
            d.set(U16, desc + 14, (short) (wrap ? F_AVAIL : F_USED)); // available for this lap, nothing published
            assertThat(q.pop(c)).isTrue();
            q.complete(c, 10 + lap);
            wrap = !wrap;
        }
        q.publish();
        assertThat(q.isBroken()).isFalse();
        assertThat(d.get(U32, desc + 8)).isEqualTo(14); // the last completion is what the slot shows
        assertThat(d.get(U16, desc + 14) & (F_AVAIL | F_USED)).isEqualTo(F_AVAIL | F_USED); // used, wrap 1 (fifth lap)
    }

    @Test
    void indirectDescriptorsThatBreakTheRules() {
        long table = dataOff + 60 * 1024;
        d.set(U64, table, buf(1));
        d.set(U32, table + 8, 64);
        d.set(U16, table + 14, (short) F_WRITE);
        long tableGpa = mem.gpa(table);
        check(q -> desc(0, tableGpa, 16, 0, F_INDIRECT | F_NEXT), ALL, "stands alone");
        check(q -> {
            desc(1, tableGpa, 16, 0, F_INDIRECT);
            desc(0, buf(0), 16, 0, F_NEXT);
        }, ALL, "stands alone");
        check(q -> desc(0, tableGpa, 0, 0, F_INDIRECT), ALL, "not a non-zero multiple of 16");
        check(q -> desc(0, tableGpa, 20, 0, F_INDIRECT), ALL, "not a non-zero multiple of 16");
        check(q -> desc(0, 0x10, 16, 0, F_INDIRECT), ALL, "indirect table");
        check(q -> desc(0, tableGpa, 16, 0, F_INDIRECT), VirtioFeatures.bit(VirtioFeatures.F_EVENT_IDX), "INDIRECT_DESC was not negotiated");
        check(q -> desc(0, tableGpa, 16 * 1000, 0, F_INDIRECT), ALL, "indirect table");
    }

    @Test
    void buffersThatBreakTheRules() {
        check(q -> desc(0, 0x10, 64, 0, 0), ALL, "outside guest memory");
        check(q -> desc(0, mem.gpa(mem.driver().byteSize() - 8), 64, 0, 0), ALL, "outside guest memory");
        check(q -> {
            desc(1, buf(1), 64, 0, 0);
            desc(0, buf(0), 64, 0, F_WRITE | F_NEXT);
        }, ALL, "readable descriptor after a writable one");
    }

    /**
     * The read-ahead reads descriptors nobody checked yet: addresses at guest memory's last byte, past its end, at
     * 2^64-1 and below its start must be skipped (no access outside, no exception, the ring still whole); the pop
     * then judges each descriptor as always.
     */
    @Test
    void readAheadOverHostileAddressesTouchesNothingOutsideAndBreaksNothing() {
        long size = mem.driver().byteSize();
        long[] addresses = {buf(0), mem.gpa(size - 1), mem.gpa(size - 64), mem.gpa(size) , -1L, 0x10, buf(1)};
        for (int i = 0; i < addresses.length; i++) {
            desc(i, addresses[i], 64, i, 0);
        }
        DeviceRing q = device(ALL);
        DescriptorChain c = new DescriptorChain(64);
        q.readAhead(64);
        q.readAhead(1);
        assertThat(q.isBroken()).isFalse();
        assertThat(q.pop(c)).isTrue(); // buf(0)
        q.readAhead(64);
        assertThatThrownBy(() -> q.pop(c)).isInstanceOf(VirtqueueException.class).hasMessageContaining("outside guest memory");
        assertThat(q.isBroken()).isTrue();
    }

    /** The frame half on its own: a burst's addresses in a region smaller than two lines, or in none, touch nothing. */
    @Test
    void readAheadInARegionSmallerThanTwoLines() {
        try (java.lang.foreign.Arena a = java.lang.foreign.Arena.ofConfined()) {
            MemorySegment tiny = a.allocate(64, 64);
            io.mqvirtio.memory.GuestMemory g = io.mqvirtio.memory.GuestMemory.of(java.util.List.of(
                    new io.mqvirtio.memory.MemoryRegion(0x1000, 64, 0x7000_0000L, 0, tiny)));
            ReadAhead ra = new ReadAhead();
            long[] at = ra.addresses();
            at[0] = 0x1000;
            at[1] = 0x1030;
            at[2] = 0x2000;
            ra.touch(g, 3);
            at[0] = 0x2000; // the first address in no region: the burst is skipped
            ra.touch(g, 3);
            ra.touch(io.mqvirtio.memory.GuestMemory.EMPTY, 3);
        }
    }

    /** Three buffers of 2 GiB each, all inside guest memory (a sparse 4 GiB memfd): the total breaks the ring. */
    @Test
    void aChainAbove4GiBBreaksTheRing() {
        mem.close();
        mem = new TwoViewMemory(4L << 30);
        setUp2();
        for (int i = 1; i < 3; i++) {
            desc(i, mem.gpa(1L << 30), 0x7fff_ffff, 0, i < 2 ? F_NEXT : 0);
        }
        desc(0, mem.gpa(1L << 30), 0x7fff_ffff, 0, F_NEXT);
        expectBroken(device(ALL), "2^32-1");
    }

    private void setUp2() {
        d = mem.driver();
        Rings.Layout l = Rings.layout(SIZE, ALL);
        long base = mem.alloc(l.totalBytes(), 4096);
        ringOff = base + l.descOffset();
        driverEventOff = base + l.availOffset();
        deviceEventOff = base + l.usedOffset();
        dataOff = mem.alloc(64 * 1024, 4096);
    }

    /** A fresh ring each time: {@code write} lays out the attack, then the pop must break the ring with {@code message}. */
    private void check(Consumer<DeviceRing> write, long features, String message) {
        d.asSlice(ringOff, 16L * SIZE).fill((byte) 0);
        write.accept(null);
        expectBroken(device(features), message);
    }

    @Test
    void eventStructuresNamingAnyDescriptorOnlyChangeADecision() {
        DeviceRing q = device(ALL);
        DescriptorChain c = new DescriptorChain(64);
        Random r = new Random(7);
        for (int round = 0; round < 200; round++) {
            int pos = round % SIZE;
            desc(pos, buf(pos % 60), 64, pos, (round / SIZE) % 2 == 0 ? 0 : F_USED); // wrap counter flips per lap
            assertThat(q.pop(c)).isTrue();
            q.complete(c, r.nextInt(65));
            q.publish();
            d.set(U16, driverEventOff, (short) r.nextInt(0x10000));     // off_wrap: anything
            d.set(U16, driverEventOff + 2, (short) r.nextInt(0x10000)); // flags: anything, reserved bits too
            q.needsNotification(); // a decision, never an exception
        }
        assertThat(q.isBroken()).isFalse();
    }

    /** Garbage in every descriptor and both event structures: the device pops what it can, or breaks, never more. */
    @Property(tries = 1000)
    void garbageRingsAreRefusedCleanly(@ForAll long seed) {
        setUp(); // jqwik runs no JUnit @BeforeEach
        try {
            garbage(seed);
        } finally {
            tearDown();
        }
    }

    private void garbage(long seed) {
        Random r = new Random(seed);
        for (int i = 0; i < SIZE; i++) {
            long b = ringOff + 16L * i;
            d.set(U64, b, r.nextInt(4) == 0 ? r.nextLong() : buf(r.nextInt(60)) + r.nextInt(1024));
            d.set(U32, b + 8, r.nextInt(4) == 0 ? r.nextInt() : r.nextInt(2048));
            d.set(U16, b + 12, (short) (r.nextInt(4) == 0 ? r.nextInt() : r.nextInt(SIZE)));
            d.set(U16, b + 14, (short) r.nextInt(0x10000));
        }
        d.set(U32, driverEventOff, r.nextInt());
        DeviceRing q = device(ALL);
        DescriptorChain c = new DescriptorChain(128);
        try {
            for (int i = 0; i < 2 * SIZE && q.pop(c); i++) {
                for (int b = 0; b < c.count(); b++) {
                    assertThat(c.segment(b).address()).isEqualTo(c.hostAddress(b)); // inside guest memory
                }
                assertThat(c.readableBytes() + c.writableBytes()).isLessThanOrEqualTo(0xffff_ffffL);
                if (r.nextBoolean()) {
                    q.complete(c, r.nextInt(100));
                    q.publish();
                    q.needsNotification();
                } else if (r.nextInt(4) == 0) {
                    q.giveBack(1);
                    break;
                }
            }
        } catch (VirtqueueException e) {
            assertThat(q.isBroken()).isTrue();
        }
    }
}
