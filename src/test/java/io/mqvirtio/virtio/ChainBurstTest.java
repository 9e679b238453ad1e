package io.mqvirtio.virtio;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * The burst path ({@link DeviceRing#popBurst}, {@link DeviceRing#completeBurst}) against a hostile driver, on both
 * layouts: it takes only well-formed one-buffer chains of the direction asked, in ring order; whatever else comes
 * next (another shape, an id out of range or still in flight, a buffer outside or across the end of guest memory, a
 * length of 2^32-1) is left where it is, unconsumed, and the ring's own {@code pop} then breaks the ring with the
 * reason; a descriptor rewritten after the burst took it changes nothing the burst holds; chains given back come
 * again; completion writes what {@code complete} would.
 */
class ChainBurstTest {
    static final int SIZE = 64;
    static final ValueLayout.OfLong U64 = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final ValueLayout.OfInt U32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final ValueLayout.OfShort U16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final long MEM = 1 << 20;

    TwoViewMemory mem;
    MemorySegment d;
    boolean packed;
    Rings.Layout layout;
    long base;
    long dataOff;
    int offered; // chains made available so far (split: the avail index; packed: descriptors written)

    @BeforeEach
    void setUp() {
        mem = new TwoViewMemory(MEM);
        d = mem.driver();
        dataOff = mem.alloc(256 * 1024, 4096);
    }

    @AfterEach
    void tearDown() {
        mem.close();
    }

    private long features(boolean inOrder) {
        return VirtioFeatures.bit(VirtioFeatures.F_INDIRECT_DESC) | VirtioFeatures.bit(VirtioFeatures.F_EVENT_IDX)
                | (packed ? VirtioFeatures.bit(VirtioFeatures.F_RING_PACKED) : 0)
                | (inOrder ? VirtioFeatures.bit(VirtioFeatures.F_IN_ORDER) : 0);
    }

    private DeviceRing device(boolean isPacked, boolean inOrder) {
        packed = isPacked;
        long f = features(inOrder);
        layout = Rings.layout(SIZE, f);
        base = mem.alloc(layout.totalBytes(), 4096);
        return Rings.device(mem.guest, SIZE, mem.uva(base + layout.descOffset()), mem.uva(base + layout.availOffset()),
                mem.uva(base + layout.usedOffset()), f, packed ? RingBase.PACKED_START : RingBase.split(0, 0));
    }

    long buf(int n) {
        return mem.gpa(dataOff + 1024L * n);
    }

    /**
     * Makes one chain available at the next ring position: descriptors {@code (gpa, len, writable)} in order, with
     * id {@code id} (packed: in the last descriptor; split: the head is the ring position, the id ignored).
     */
    void offer(int id, long[] gpa, int[] len, boolean[] writable) {
        int n = gpa.length;
        long descs = base + layout.descOffset();
        if (packed) {
            int first = offered; // never wraps here: the tests stay within one lap
            for (int i = n - 1; i >= 0; i--) { // the first descriptor's flags last, as a driver writes them
                long b = descs + 16L * (first + i);
                d.set(U64, b, gpa[i]);
                d.set(U32, b + 8, len[i]);
                d.set(U16, b + 12, (short) id);
                int flags = PackedRing.F_AVAIL | (i + 1 < n ? PackedRing.F_NEXT : 0) | (writable[i] ? PackedRing.F_WRITE : 0);
                d.set(U16, b + 14, (short) flags);
            }
            offered += n;
        } else {
            int head = nextHead;
            for (int i = 0; i < n; i++) {
                long b = descs + 16L * (head + i);
                d.set(U64, b, gpa[i]);
                d.set(U32, b + 8, len[i]);
                d.set(U16, b + 12, (short) ((i + 1 < n ? SplitRing.DESC_F_NEXT : 0) | (writable[i] ? SplitRing.DESC_F_WRITE : 0)));
                d.set(U16, b + 14, (short) (head + i + 1));
            }
            nextHead += n;
            long avail = base + layout.availOffset();
            d.set(U16, avail + SplitRing.AVAIL_RING + 2L * (offered & (SIZE - 1)), (short) head); // the slot wraps
            offered++;
            d.set(U16, avail + SplitRing.AVAIL_IDX, (short) offered);
        }
    }

    int nextHead; // split: the next free descriptor

    void one(int id, long gpa, int len, boolean writable) {
        offer(id, new long[] {gpa}, new int[] {len}, new boolean[] {writable});
    }

    /** Split: an avail slot naming {@code head} directly (for heads the driver should not name). */
    void offerHead(int head) {
        long avail = base + layout.availOffset();
        d.set(U16, avail + SplitRing.AVAIL_RING + 2L * (offered & (SIZE - 1)), (short) head); // the slot wraps
        offered++;
        d.set(U16, avail + SplitRing.AVAIL_IDX, (short) offered);
    }

    long host(long gpa) {
        return mem.deviceMap.segment().address() + (gpa - TwoViewMemory.GPA_BASE);
    }

    void expectBrokenByPop(DeviceRing q, String reason) {
        DescriptorChain c = new DescriptorChain(16);
        assertThatThrownBy(() -> q.pop(c)).isInstanceOf(VirtqueueException.class).hasMessageContaining(reason);
        assertThat(q.isBroken()).isTrue();
        ChainBurst b = new ChainBurst();
        assertThatThrownBy(() -> q.popBurst(b, 8, false)).isInstanceOf(VirtqueueException.class);
    }

    @ParameterizedTest
    @ValueSource(booleans = {false, true})
    void takesOneBufferChainsOfItsDirectionAndLeavesTheRestToPop(boolean isPacked) {
        DeviceRing q = device(isPacked, false);
        one(0, buf(0), 76, false);
        one(1, buf(1), 1500, false);
        one(2, buf(2), 12, false);
        offer(3, new long[] {buf(3), buf(4)}, new int[] {12, 64}, new boolean[] {false, false}); // two descriptors
        one(4, buf(5), 100, false);
        one(5, buf(6), 2048, true); // writable
        one(6, buf(7), 60, false);
        ChainBurst b = new ChainBurst();
        assertThat(q.popBurst(b, 64, false)).isEqualTo(3);
        for (int i = 0; i < 3; i++) {
            assertThat(b.guestAddress(i)).isEqualTo(buf(i));
            assertThat(b.hostAddress(i)).isEqualTo(host(buf(i)));
            assertThat(b.id(i)).isEqualTo(i); // split: the head, which is the ring position here
        }
        assertThat(b.length(0)).isEqualTo(76);
        assertThat(b.length(1)).isEqualTo(1500);
        assertThatThrownBy(() -> b.length(3)).isInstanceOf(IndexOutOfBoundsException.class);
        assertThat(b.stoppedAtOther()).as("stopped before the chain of two").isTrue();
        assertThat(q.popBurst(b, 64, false)).isZero(); // the two-descriptor chain is pop's
        assertThat(b.stoppedAtOther()).as("an available chain left to pop").isTrue();
        DescriptorChain c = new DescriptorChain(16);
        assertThat(q.pop(c)).isTrue();
        assertThat(c.count()).isEqualTo(2);
        assertThat(q.popBurst(b, 64, false)).isEqualTo(1);
        assertThat(b.length(0)).isEqualTo(100);
        assertThat(q.popBurst(b, 64, false)).isZero(); // writable: not a TX frame
        assertThat(q.popBurst(b, 64, true)).isEqualTo(1);
        assertThat(b.length(0)).isEqualTo(2048);
        assertThat(q.popBurst(b, 1, false)).isEqualTo(1); // max respected
        assertThat(q.popBurst(b, 64, false)).isZero(); // nothing left
        assertThat(b.count()).isZero();
        assertThat(b.stoppedAtOther()).as("nothing available").isFalse();
        assertThat(q.isBroken()).isFalse();
    }

    @ParameterizedTest
    @ValueSource(booleans = {false, true})
    void aBufferOutsideGuestMemoryIsLeftToPopWhichBreaksTheRing(boolean isPacked) {
        DeviceRing q = device(isPacked, false);
        one(0, buf(0), 64, false);
        one(1, buf(1), 64, false);
        one(2, mem.gpa(MEM - 32), 64, false); // runs past the end of guest memory
        ChainBurst b = new ChainBurst();
        assertThat(q.popBurst(b, 64, false)).isEqualTo(2);
        assertThat(b.stoppedAtOther()).isTrue();
        assertThat(q.popBurst(b, 64, false)).isZero();
        assertThat(b.stoppedAtOther()).isTrue();
        assertThat(q.isBroken()).isFalse();
        expectBrokenByPop(q, "outside guest memory");
    }

    @ParameterizedTest
    @ValueSource(booleans = {false, true})
    void hugeAndWrappingBuffersAreLeftToPop(boolean isPacked) {
        DeviceRing q = device(isPacked, false);
        one(0, buf(0), -1, false); // 2^32-1 bytes: more than guest memory
        ChainBurst b = new ChainBurst();
        assertThat(q.popBurst(b, 64, false)).isZero();
        expectBrokenByPop(q, "outside guest memory");

        DeviceRing r = device(isPacked, false);
        offered = 0;
        nextHead = 0;
        one(0, -16, 64, false); // wraps the address space
        assertThat(r.popBurst(b, 64, false)).isZero();
        expectBrokenByPop(r, "outside guest memory");
    }

    @ParameterizedTest
    @ValueSource(booleans = {false, true})
    void badIdsAndHeadsAreLeftToPop(boolean isPacked) {
        DeviceRing q = device(isPacked, false);
        ChainBurst b = new ChainBurst();
        if (isPacked) {
            one(7, buf(0), 64, false);
            one(7, buf(1), 64, false); // the same id while the first is in flight
            assertThat(q.popBurst(b, 64, false)).isEqualTo(1);
            assertThat(q.popBurst(b, 64, false)).isZero();
            expectBrokenByPop(q, "already in flight");

            DeviceRing r = device(true, false);
            offered = 0;
            one(SIZE + 5, buf(0), 64, false);
            assertThat(r.popBurst(b, 64, false)).isZero();
            expectBrokenByPop(r, "buffer id " + (SIZE + 5));
        } else {
            one(0, buf(0), 64, false);
            offerHead(SIZE + 5);
            assertThat(q.popBurst(b, 64, false)).isEqualTo(1);
            assertThat(q.popBurst(b, 64, false)).isZero();
            expectBrokenByPop(q, "names head " + (SIZE + 5));
        }
    }

    /**
     * Split: the avail index changes after the device read it, to a jump past the ring or back among the chains it
     * read. A burst that wants more than it read, and {@code available()} (the TX path asks it before reading ahead),
     * take or count those chains first, as pop does (pop reads the index again only once they are gone), and the ring
     * breaks when the next read finds the index bad, again as pop's. Before, both read the index at once and broke
     * the ring: the chains read before the jump were never taken, their frames never sent, where chain by chain they
     * were (or, the index moved back, fewer were taken than had been read).
     */
    @ParameterizedTest
    @ValueSource(ints = {3 + SIZE + 1, 0xffff, 1})
    void splitAvailIndexChangedAfterItWasReadLeavesTheChainsReadBeforeIt(int badIndex) {
        for (String mode : new String[] {"pops", "bursts", "available then pops"}) {
            mem.close();
            setUp();
            offered = 0;
            nextHead = 0;
            DeviceRing q = device(false, false);
            for (int i = 0; i < 3; i++) {
                one(0, buf(i), 100 + i, false);
            }
            assertThat(q.available()).isEqualTo(3); // the device read the index
            d.set(U16, base + layout.availOffset() + SplitRing.AVAIL_IDX, (short) badIndex);
            ChainBurst b = new ChainBurst();
            DescriptorChain c = new DescriptorChain(16);
            int taken = 0;
            if (mode.equals("bursts")) {
                taken = q.popBurst(b, 64, false);
                for (int i = 0; i < taken; i++) {
                    assertThat(b.guestAddress(i)).isEqualTo(buf(i));
                    assertThat(b.length(i)).isEqualTo(100 + i);
                }
            } else {
                if (mode.equals("available then pops")) {
                    assertThat(q.available()).as("the chains read before the index changed").isEqualTo(3);
                }
                while (taken < 3 && q.pop(c)) {
                    assertThat(c.guestAddress(0)).isEqualTo(buf(taken));
                    taken++;
                }
            }
            assertThat(taken).as("chains read before the index changed, " + mode).isEqualTo(3);
            assertThat(q.isBroken()).isFalse();
            if (mode.equals("bursts")) {
                assertThatThrownBy(() -> q.popBurst(b, 64, false)).isInstanceOf(VirtqueueException.class)
                        .hasMessageContaining("avail index jumped");
            } else {
                assertThatThrownBy(() -> q.pop(c)).isInstanceOf(VirtqueueException.class)
                        .hasMessageContaining("avail index jumped");
            }
            assertThat(q.isBroken()).isTrue();
        }
    }

    @ParameterizedTest
    @ValueSource(booleans = {false, true})
    void aDescriptorRewrittenAfterTheBurstChangesNothingItHolds(boolean isPacked) {
        DeviceRing q = device(isPacked, true);
        one(0, buf(0), 76, false);
        one(1, buf(1), 76, false);
        ChainBurst b = new ChainBurst();
        assertThat(q.popBurst(b, 64, false)).isEqualTo(2);
        // the driver rewrites both descriptors: outside memory, another length, another id
        long descs = base + layout.descOffset();
        for (int i = 0; i < 2; i++) {
            d.set(U64, descs + 16L * i, -4096L);
            d.set(U32, descs + 16L * i + 8, 99999);
            d.set(U16, descs + 16L * i + 12, (short) 33);
        }
        assertThat(b.guestAddress(1)).isEqualTo(buf(1));
        assertThat(b.hostAddress(1)).isEqualTo(host(buf(1)));
        assertThat(b.length(1)).isEqualTo(76);
        q.completeBurst(b, 0, 2, 0);
        q.publish();
        long used = isPacked ? descs : base + layout.usedOffset();
        if (isPacked) {
            // IN_ORDER: one used descriptor where the run began, naming the run's last id (1, as popped)
            assertThat(d.get(U16, used + 12)).isEqualTo((short) 1);
            assertThat(d.get(U16, used + 14) & (PackedRing.F_AVAIL | PackedRing.F_USED))
                    .isEqualTo(PackedRing.F_AVAIL | PackedRing.F_USED);
        } else {
            // IN_ORDER: one used entry in the run's first slot, naming its last head (1, as popped); the index moves by 2
            assertThat(d.get(U32, used + SplitRing.USED_RING)).isEqualTo(1);
            assertThat(d.get(U32, used + SplitRing.USED_RING + 4)).isEqualTo(0);
            assertThat(d.get(U16, used + SplitRing.USED_IDX)).isEqualTo((short) 2);
        }
        assertThat(q.isBroken()).isFalse();
    }

    /**
     * VIRTIO 1.3, 2.7.9: with IN_ORDER a split ring returns a TX burst of N chains as one used entry, in the slot of
     * the burst's first chain and naming its last, with the used index moved on by N (DPDK's split in-order driver
     * frees as many chains as the index moved). Chains popped one by one join the batch the same way; an RX
     * completion (a length) or a chain with writable bytes completed with 0 ends it and keeps its own entry (a chain a
     * batch entry skips counts as fully written); the next TX run starts a new batch where the index stands.
     */
    @org.junit.jupiter.api.Test
    void aSplitInOrderTxBurstIsOneUsedEntryAndMovesTheIndexByItsSize() {
        DeviceRing q = device(false, true);
        long used = base + layout.usedOffset();
        for (int i = 0; i < 5; i++) {
            one(i, buf(i), 60 + i, false); // heads 0..4: a TX burst
        }
        one(5, buf(5), 60, false);  // head 5: a TX chain popped on its own
        one(6, buf(6), 1500, true); // head 6: an RX buffer, 80 bytes written
        one(7, buf(7), 1500, true); // head 7: writable, completed with 0
        one(8, buf(8), 60, false);  // heads 8, 9: the next TX run
        one(9, buf(9), 60, false);
        ChainBurst b = new ChainBurst();
        assertThat(q.popBurst(b, 5, false)).isEqualTo(5);
        q.completeBurst(b, 0, 5, 0);
        DescriptorChain c = new DescriptorChain(4);
        assertThat(q.pop(c)).isTrue();
        q.complete(c, 0);
        q.publish();
        assertThat(d.get(U16, used + SplitRing.USED_IDX)).isEqualTo((short) 6);
        assertThat(d.get(U32, used + SplitRing.USED_RING)).isEqualTo(5); // slot 0 names the batch's last head
        assertThat(d.get(U32, used + SplitRing.USED_RING + 4)).isEqualTo(0);
        for (int slot = 1; slot < 6; slot++) { // the slots the batch skips are not written
            assertThat(d.get(U32, used + SplitRing.USED_RING + 8L * slot)).isEqualTo(0);
        }
        ChainBurst rx = new ChainBurst();
        assertThat(q.popBurst(rx, 1, true)).isEqualTo(1);
        q.completeBurst(rx, 0, 1, 80);
        assertThat(q.popBurst(rx, 1, true)).isEqualTo(1);
        q.completeBurst(rx, 0, 1, 0);
        assertThat(q.popBurst(b, 8, false)).isEqualTo(2);
        q.completeBurst(b, 0, 1, 0);
        q.completeBurst(b, 1, 1, 0);
        q.publish();
        assertThat(d.get(U16, used + SplitRing.USED_IDX)).isEqualTo((short) 10);
        assertThat(d.get(U32, used + SplitRing.USED_RING + 8L * 6)).isEqualTo(6);
        assertThat(d.get(U32, used + SplitRing.USED_RING + 8L * 6 + 4)).isEqualTo(80);
        assertThat(d.get(U32, used + SplitRing.USED_RING + 8L * 7)).isEqualTo(7);
        assertThat(d.get(U32, used + SplitRing.USED_RING + 8L * 8)).isEqualTo(9);
        assertThat(d.get(U32, used + SplitRing.USED_RING + 8L * 9)).isEqualTo(0);
        assertThat(q.isBroken()).isFalse();
    }

    /**
     * A driver that makes its chains available again before their used entries are visible (split rings do not track
     * which heads are in flight) can have the device complete more chains in one IN_ORDER run than the ring holds:
     * the run is published when it would exceed the ring, so no single used entry moves the index by more than the
     * ring's size (a driver could not tell such a move from a lap).
     */
    @org.junit.jupiter.api.Test
    void aSplitInOrderRunLongerThanTheRingIsPublishedBeforeItExceedsIt() {
        DeviceRing q = device(false, true);
        long used = base + layout.usedOffset();
        for (int i = 0; i < SIZE; i++) {
            one(i, buf(i), 60, false);
        }
        ChainBurst b = new ChainBurst();
        assertThat(q.popBurst(b, SIZE, false)).isEqualTo(SIZE);
        long avail = base + layout.availOffset();
        d.set(U16, avail + SplitRing.AVAIL_RING, (short) 5); // the next lap's first slot: head 5 again, still in flight
        d.set(U16, avail + SplitRing.AVAIL_IDX, (short) (SIZE + 1));
        ChainBurst again = new ChainBurst();
        assertThat(q.popBurst(again, 1, false)).isEqualTo(1);
        q.completeBurst(b, 0, SIZE, 0);
        assertThat(d.get(U16, used + SplitRing.USED_IDX)).isZero(); // kept until publish
        q.completeBurst(again, 0, 1, 0);
        assertThat(d.get(U16, used + SplitRing.USED_IDX)).as("the run of the ring's size, published first")
                .isEqualTo((short) SIZE);
        assertThat(d.get(U32, used + SplitRing.USED_RING)).isEqualTo(SIZE - 1);
        q.publish();
        assertThat(d.get(U16, used + SplitRing.USED_IDX)).isEqualTo((short) (SIZE + 1));
        assertThat(d.get(U32, used + SplitRing.USED_RING)).isEqualTo(5);
        assertThat(q.isBroken()).isFalse();
    }

    /**
     * A chain an IN_ORDER batch entry skips counts as fully written (2.7.9, 2.8.18: our drivers, and Linux's, reap it
     * with the bytes its writable buffers offer), so a chain that offers writable bytes and is completed with 0 keeps
     * an entry of its own, on both layouts, in a burst or chain by chain; before, the packed ring folded any
     * zero-length completion into one used descriptor, and the driver took those buffers for frames of stale bytes.
     */
    @ParameterizedTest
    @ValueSource(booleans = {false, true})
    void aWritableChainCompletedWithNothingKeepsItsOwnUsedEntry(boolean isPacked) {
        DeviceRing q = device(isPacked, true);
        one(0, buf(0), 1500, true);
        one(1, buf(1), 1500, true);
        one(2, buf(2), 1500, true);
        one(3, buf(3), 60, false);
        ChainBurst b = new ChainBurst();
        assertThat(q.popBurst(b, 2, true)).isEqualTo(2);
        q.completeBurst(b, 0, 2, 0);
        DescriptorChain c = new DescriptorChain(4);
        assertThat(q.pop(c)).isTrue();
        q.complete(c, 0);
        assertThat(q.pop(c)).isTrue(); // a readable chain after them joins none of their entries
        q.complete(c, 0);
        q.publish();
        for (int i = 0; i < 4; i++) {
            if (isPacked) {
                long e = base + layout.descOffset() + 16L * i;
                assertThat(d.get(U16, e + 12)).as("used descriptor %d's id", i).isEqualTo((short) i);
                assertThat(d.get(U32, e + 8)).as("used descriptor %d's length", i).isZero();
                assertThat(d.get(U16, e + 14) & (PackedRing.F_AVAIL | PackedRing.F_USED))
                        .isEqualTo(PackedRing.F_AVAIL | PackedRing.F_USED);
            } else {
                long e = base + layout.usedOffset() + SplitRing.USED_RING + 8L * i;
                assertThat(d.get(U32, e)).as("used entry %d's head", i).isEqualTo(i);
                assertThat(d.get(U32, e + 4)).as("used entry %d's length", i).isZero();
            }
        }
        if (!isPacked) {
            assertThat(d.get(U16, base + layout.usedOffset() + SplitRing.USED_IDX)).isEqualTo((short) 4);
        }
        assertThat(q.isBroken()).isFalse();
    }

    @ParameterizedTest
    @ValueSource(booleans = {false, true})
    void chainsGivenBackComeAgainAndCompletionsAreChecked(boolean isPacked) {
        DeviceRing q = device(isPacked, false);
        for (int i = 0; i < 5; i++) {
            one(i, buf(i), 64 + i, false);
        }
        ChainBurst b = new ChainBurst();
        assertThat(q.popBurst(b, 64, false)).isEqualTo(5);
        q.completeBurst(b, 0, 3, 0);
        q.giveBack(2);
        ChainBurst again = new ChainBurst();
        assertThat(q.popBurst(again, 64, false)).isEqualTo(2);
        assertThat(again.id(0)).isEqualTo(3);
        assertThat(again.length(1)).isEqualTo(68);
        assertThatThrownBy(() -> q.completeBurst(again, 1, 2, 0)).isInstanceOf(IllegalArgumentException.class);
        assertThatThrownBy(() -> q.completeBurst(again, -1, 1, 0)).isInstanceOf(IllegalArgumentException.class);
        q.completeBurst(again, 0, 2, 0);
        if (isPacked) { // a packed ring knows which ids are in flight: completing one twice is the caller's bug
            assertThatThrownBy(() -> q.completeBurst(again, 0, 1, 0)).isInstanceOf(IllegalArgumentException.class)
                    .hasMessageContaining("not in flight");
        }
        assertThat(q.isBroken()).isFalse();
    }

    @ParameterizedTest
    @ValueSource(booleans = {false, true})
    void touchStaysInsideEachBuffer(boolean isPacked) {
        DeviceRing q = device(isPacked, false);
        // buffers that end exactly at the end of guest memory: touching their second line would fault beyond it
        one(0, mem.gpa(MEM - 1), 1, false);
        one(1, mem.gpa(MEM - 65), 65, false);
        one(2, mem.gpa(MEM - 64), 64, false);
        one(3, buf(0), 0, false);
        ChainBurst b = new ChainBurst();
        assertThat(q.popBurst(b, 64, false)).isEqualTo(4);
        b.touch(0);
        b.touch(256);
    }

    @org.junit.jupiter.api.Test
    void bytesBeyondTheHeaderSumsUnsignedLengthsAndSaysWhenOneIsShorter() {
        ChainBurst b = new ChainBurst();
        int[] lens = {76, 12, -1, 1512}; // -1: 2^32-1 bytes
        for (int i = 0; i < lens.length; i++) {
            b.add(i, 0, 0x1000L * (i + 1), lens[i], i);
        }
        b.count = lens.length;
        assertThat(b.bytesBeyond(0, 4, 12)).isEqualTo(64 + 0 + (0xffff_ffffL - 12) + 1500);
        assertThat(b.bytesBeyond(3, 1, 12)).isEqualTo(1500);
        assertThat(b.bytesBeyond(1, 1, 13)).as("shorter than the header").isEqualTo(-1);
        assertThat(b.bytesBeyond(0, 0, 12)).isZero();
        assertThatThrownBy(() -> b.bytesBeyond(2, 3, 12)).isInstanceOf(IllegalArgumentException.class);
    }
}
