package io.mqvirtio.fuzz;

import static io.mqvirtio.virtio.SplitRing.*;

import com.code_intelligence.jazzer.api.FuzzedDataProvider;
import io.mqvirtio.linux.MemFd;
import io.mqvirtio.linux.Mmap;
import io.mqvirtio.memory.GuestMemory;
import io.mqvirtio.memory.MemoryRegion;
import io.mqvirtio.virtio.ChainBurst;
import io.mqvirtio.virtio.DescriptorChain;
import io.mqvirtio.virtio.DeviceRing;
import io.mqvirtio.virtio.SplitDeviceRing;
import io.mqvirtio.virtio.SplitRing;
import io.mqvirtio.virtio.VirtioFeatures;
import io.mqvirtio.virtio.VirtqueueException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * Fuzz target (a): the device side of a split virtqueue ({@link SplitDeviceRing}) fed whatever a hostile driver can
 * write: the descriptor table, the available ring and indirect tables, over real guest memory (one memfd mapped
 * twice, as a frontend and a backend would see it), in three regions: one holds the ring, one is 4 GiB (sparse), one
 * ends at 2^64 and has an odd guest base.
 *
 * <p>The input is decoded into a ring state (queue size, features, start index, descriptors as structured or raw
 * values, long template-filled chains and loops, avail entries) and then a script of operations: mostly pops, with
 * gives-back, pushes, driver rewrites between pops and notification calls mixed in.
 *
 * <p>Oracle, for every pop: either it returns a chain every buffer of which lies inside one region of guest memory
 * (checked on {@link DescriptorChain#segment} against the region's mapping, and on the guest address), whose total
 * length is at most 2^32-1 and whose buffer count is at most the chain's capacity, readable before writable; or it
 * throws {@link VirtqueueException} and the queue is broken from then on (every later pop, push and
 * {@code available} throws it again). Any other exception, or a disagreement with an independent reference walk of
 * the same bytes ({@link #reference}), is a finding. Work is bounded: at most {@link #MAX_OPS} operations per input
 * and the fuzzer's per-input timeout catches a pop that does not end.
 */
public final class RingFuzzer {
    static final ValueLayout.OfShort LE16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final ValueLayout.OfInt LE32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final ValueLayout.OfLong LE64 = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);

    // Region A holds the ring (sized for the largest queue), an indirect area and data; B is 4 GiB of data (sparse:
    // never touched), so that two buffers inside memory can add up to more than 2^32-1 bytes; C ends at 2^64, so
    // any end-of-range arithmetic that overflows shows.
    static final long A_GPA = 0x4000_0000L, A_SIZE = 0x10_0000L, A_FILE = 0;
    // C's guest base is odd, unlike its page-aligned mapping: a 16-byte-aligned indirect table in it is misaligned
    // in the device's view (what a frontend's memory table can do).
    static final long C_GPA = 0xFFFF_FFFF_FFFF_000FL, C_SIZE = 0xFFF1L, C_FILE = 0x10_0000L;
    static final long IND_C_GPA = C_GPA + 1, IND_C_FILE = C_FILE + 1; // 16-byte aligned guest address
    static final long B_GPA = 0x1_0000_0000L, B_SIZE = 0x1_0000_0000L, B_FILE = 0x11_0000L;
    static final long FILE_SIZE = B_FILE + B_SIZE;
    static final long DESC_OFF = 0, AVAIL_OFF = 0x8_0000L, USED_OFF = 0x9_1000L;
    static final long IND_OFF = 0xD_2000L, IND_BYTES = 0x1_0000L; // 4096 descriptors
    static final long DATA_OFF = 0xE_2000L;
    static final int MAX_OPS = 400;
    static final int TEMPLATE_MAX = 1100;
    static final int[] CAPACITIES = {1, 2, 3, 16, 64, 1024};

    static MemFd memfd;
    static Mmap driverMap;
    static Mmap deviceMap;
    static GuestMemory guest;
    static MemorySegment drv;
    static MemorySegment dev;
    static int lastSize = MAX_SIZE;
    static long dirtyIndA; // bytes of the indirect area in A written by the last input
    static long dirtyIndC; // bytes at the start of region C written by the last input

    // per input
    static int size;
    static int capacity;
    static boolean indirectAllowed;
    static boolean inOrder;
    static final List<long[]> expected = new ArrayList<>();

    // the used ring's model (IN_ORDER batches as design.md's "IN_ORDER" paragraph says)
    static int refUsed;       // the used index after every completion so far
    static int refPublished;  // the used index the driver can see
    static int refBatchAt;    // IN_ORDER: the used index of the open batch's first chain, or -1
    static int refBatchHead;  // the open batch's last head (its entry names it)
    static final List<int[]> shadow = new ArrayList<>(); // entries written since the last publish: used index, id, len

    /**
     * A chain popped and not completed: its head, whether it has no writable descriptor (IN_ORDER may batch it), and
     * what completes it: the chain {@code pop} filled (IN_ORDER inputs keep each one) or a burst and its index.
     */
    record Out(int head, boolean readsOnly, DescriptorChain chain, ChainBurst burst, int index) {}
    static final ArrayDeque<DescriptorChain> freeChains = new ArrayDeque<>();

    private RingFuzzer() {}

    public static void fuzzerInitialize() {
        FuzzSupport.quietLogging();
        memfd = MemFd.create("mqv-fuzz-ring", FILE_SIZE);
        driverMap = Mmap.shared(memfd, 0, FILE_SIZE);
        deviceMap = Mmap.shared(memfd, 0, FILE_SIZE);
        drv = driverMap.segment();
        dev = deviceMap.segment();
        long uva = drv.address();
        guest = GuestMemory.of(List.of(
                new MemoryRegion(A_GPA, A_SIZE, uva + A_FILE, A_FILE, dev.asSlice(A_FILE, A_SIZE)),
                new MemoryRegion(B_GPA, B_SIZE, uva + B_FILE, B_FILE, dev.asSlice(B_FILE, B_SIZE)),
                new MemoryRegion(C_GPA, C_SIZE, uva + C_FILE, C_FILE, dev.asSlice(C_FILE, C_SIZE))));
        // Some recognisable bytes in the data areas, for readFrom to copy.
        for (long off = DATA_OFF; off < A_SIZE; off += 8) {
            drv.set(LE64, off, off * 0x9E37_79B9_7F4A_7C15L);
        }
    }

    public static void fuzzerTearDown() {
        deviceMap.close();
        driverMap.close();
        memfd.close();
    }

    public static void fuzzerTestOneInput(FuzzedDataProvider d) {
        probes = 0; // the burst probes repeat for each input
        // One byte: its low four bits the size's log (as before IN_ORDER was fuzzed, so older inputs decode to the
        // same rings), the next one IN_ORDER.
        int sizeAndOrder = d.consumeInt(0, 31);
        size = 1 << (sizeAndOrder & 15);
        inOrder = sizeAndOrder >= 16;
        long features = (d.consumeBoolean() ? VirtioFeatures.bit(VirtioFeatures.F_INDIRECT_DESC) : 0)
                | (d.consumeBoolean() ? VirtioFeatures.bit(VirtioFeatures.F_EVENT_IDX) : 0)
                | (inOrder ? VirtioFeatures.bit(VirtioFeatures.F_IN_ORDER) : 0);
        indirectAllowed = (features & VirtioFeatures.bit(VirtioFeatures.F_INDIRECT_DESC)) != 0;
        int lastCapacity = capacity;
        capacity = d.consumeBoolean() ? CAPACITIES[d.consumeInt(0, CAPACITIES.length - 1)] : d.consumeInt(1, 1100);
        if (capacity != lastCapacity) {
            freeChains.clear();
        }
        refUsed = 0;
        refPublished = 0;
        refBatchAt = -1;
        shadow.clear();
        int lastAvail = switch (d.consumeInt(0, 3)) {
            case 0 -> 0;
            case 1 -> 0xffff - d.consumeInt(0, 16);
            default -> d.consumeShort() & 0xffff;
        };

        // The driver's writes: descriptor table, indirect areas, avail ring; the used ring starts zeroed. Only what
        // a walk can reach is written one by one (a chain holds at most 1100 buffers); the rest is zeroed in bulk.
        // Everything the last input's ring could have written (by the driver or the device) is cleared first.
        drv.asSlice(A_FILE + DESC_OFF, descTableBytes(lastSize)).fill((byte) 0);
        drv.asSlice(A_FILE + AVAIL_OFF, availBytes(lastSize)).fill((byte) 0);
        drv.asSlice(A_FILE + USED_OFF, usedBytes(lastSize)).fill((byte) 0);
        lastSize = size;
        writeTable(d, drv, A_FILE + DESC_OFF, Math.min(size, TEMPLATE_MAX), size);
        writeIndirectAreas(d, (off, count) -> writeTable(d, drv, off, count, 4096));
        int availIdx = writeAvail(d, lastAvail);

        MemorySegment desc = guest.gpa(A_GPA + DESC_OFF, descTableBytes(size));
        MemorySegment avail = guest.gpa(A_GPA + AVAIL_OFF, availBytes(size));
        MemorySegment used = guest.gpa(A_GPA + USED_OFF, usedBytes(size));
        SplitDeviceRing q = new SplitDeviceRing(guest, size, desc, avail, used, features, lastAvail, 0);
        DescriptorChain chain = new DescriptorChain(capacity);

        // The reference's own view of the queue's progress (what pop's bookkeeping must match).
        int refLast = lastAvail;
        int refShadow = lastAvail;
        List<Out> outstanding = new ArrayList<>(); // popped and not completed, in pop order
        try (Arena scratchArena = Arena.ofConfined()) {
            MemorySegment scratch = scratchArena.allocate(256);
            for (int op = 0; op < MAX_OPS; op++) {
                boolean more = d.remainingBytes() > 0;
                int kind = more ? d.consumeInt(0, 15) : 0;
                if (kind <= 9) {
                    // pop: first what the reference says must happen
                    String refError = null;
                    int refHead = -1;
                    boolean refNone = false;
                    if (refLast == refShadow) {
                        int idx = Short.toUnsignedInt(drv.get(LE16, A_FILE + AVAIL_OFF + AVAIL_IDX));
                        int n = (idx - refLast) & 0xffff;
                        if (n > size) {
                            refError = "avail index jump";
                        } else {
                            refShadow = idx;
                            refNone = n == 0;
                        }
                    }
                    if (refError == null && !refNone) {
                        refHead = Short.toUnsignedInt(drv.get(LE16, A_FILE + AVAIL_OFF + AVAIL_RING + 2L * (refLast & (size - 1))));
                        refLast = (refLast + 1) & 0xffff;
                        refError = reference(refHead);
                    }
                    // IN_ORDER: each chain popped is kept until its completion, which takes it (as the worker's)
                    DescriptorChain c = !inOrder ? chain : freeChains.isEmpty() ? new DescriptorChain(capacity)
                            : freeChains.pop();
                    int got = popAgainst(q, c, refError, refNone, expected, "head " + refHead);
                    if (got < 0) {
                        return;
                    }
                    if (got == 0) {
                        if (inOrder) {
                            freeChains.push(c);
                        }
                        if (!more) {
                            break;
                        }
                        continue;
                    }
                    checkChain(c, refHead, scratch);
                    if (q.lastAvailIndex() != refLast) {
                        throw new FuzzFinding("last avail index " + q.lastAvailIndex() + ", expected " + refLast);
                    }
                    boolean readsOnly = expected.stream().allMatch(e -> e[2] == 0);
                    outstanding.add(new Out(refHead, readsOnly, inOrder ? c : null, null, -1));
                } else if (kind == 10) {
                    int n = d.consumeInt(0, Math.min(outstanding.size(), size));
                    q.giveBack(n);
                    refLast = (refLast - n) & 0xffff;
                    for (int i = 0; i < n; i++) {
                        Out o = outstanding.remove(outstanding.size() - 1);
                        if (o.chain() != null) {
                            freeChains.push(o.chain());
                        }
                    }
                } else if (kind == 11 && !inOrder) {
                    if (!outstanding.isEmpty()) {
                        int head = outstanding.remove(d.consumeInt(0, outstanding.size() - 1)).head();
                        int len = d.consumeInt();
                        q.push(head, len);
                        modelPush(head, len);
                        publish(q);
                    }
                } else if (kind == 11) {
                    // IN_ORDER: completions as the worker makes them, in pop order (the device's promise)
                    int sub = d.consumeInt(0, 3);
                    if (sub <= 1) {
                        int n = d.consumeInt(1, 8);
                        for (int i = 0; i < n && !outstanding.isEmpty(); i++) {
                            completeOne(q, outstanding.remove(0), d.consumeBoolean() ? 0 : d.consumeInt());
                        }
                        if (d.consumeBoolean()) {
                            publish(q);
                        }
                    } else if (sub == 2) {
                        int[] last = {refLast, refShadow};
                        if (!burst(q, d, chain, outstanding, last)) {
                            return;
                        }
                        refLast = last[0];
                        refShadow = last[1];
                    } else {
                        // the ring's memory faulted before a publish: what was not published is forgotten
                        q.discardUnpublished();
                        refUsed = refPublished;
                        refBatchAt = -1;
                        shadow.clear();
                        if (q.usedIndex() != refUsed) {
                            throw new FuzzFinding("after discardUnpublished the used index is " + q.usedIndex()
                                    + ", the driver saw " + refPublished);
                        }
                    }
                } else if (kind == 12) {
                    // the driver makes more (or fewer, or absurdly many) chains available
                    int idx = d.consumeBoolean() ? (availIdx + d.consumeInt(0, size + 1)) & 0xffff : d.consumeShort() & 0xffff;
                    availIdx = idx;
                    drv.set(LE16, A_FILE + AVAIL_OFF + AVAIL_IDX, (short) idx);
                    drv.set(LE16, A_FILE + AVAIL_OFF + AVAIL_RING + 2L * (d.consumeInt(0, size - 1)),
                            (short) head(d));
                } else if (kind == 13) {
                    // the driver rewrites a descriptor between two pops
                    writeDesc(d, drv, A_FILE + DESC_OFF, d.consumeInt(0, size - 1), size);
                } else if (kind == 14) {
                    q.needsNotification();
                    if (d.consumeBoolean()) {
                        q.disableKicks();
                    } else {
                        q.enableKicks();
                    }
                } else {
                    // available() is also where the avail index is validated, once the chains seen are popped;
                    // while some are left, an index that jumped or moved back among them is not believed (pop's view)
                    int idx = Short.toUnsignedInt(drv.get(LE16, A_FILE + AVAIL_OFF + AVAIL_IDX));
                    int n = (idx - refLast) & 0xffff;
                    int have = (refShadow - refLast) & 0xffff;
                    boolean believed = have == 0 || n > have && n <= size;
                    try {
                        int got = q.available();
                        int want = believed ? n : have;
                        if (believed && n > size || got != want) {
                            throw new FuzzFinding("available() = " + got + ", expected "
                                    + (believed && n > size ? "a failure" : want));
                        }
                        if (believed) {
                            refShadow = idx;
                        }
                    } catch (VirtqueueException e) {
                        if (!believed || n <= size) {
                            throw new FuzzFinding("available() threw " + e.getMessage() + " for " + n + " chains", e);
                        }
                        checkBroken(q, chain);
                        return;
                    }
                }
            }
        }
    }

    /** Completes {@code o} on the ring as the worker does ({@code complete}, or {@code completeBurst} of one) and in the model. */
    private static void completeOne(SplitDeviceRing q, Out o, int len) {
        if (o.chain() != null) {
            q.complete(o.chain(), len);
            freeChains.push(o.chain());
        } else {
            q.completeBurst(o.burst(), o.index(), 1, len);
        }
        if (inOrder && len == 0 && o.readsOnly()) {
            modelBatch(q, o.head(), 1);
        } else {
            modelPush(o.head(), len);
        }
    }

    /** The model's entry of its own: written at once, at the used index, which moves on by one. */
    private static void modelPush(int head, int len) {
        modelEndBatch();
        shadow.add(new int[] {refUsed, head, len});
        refUsed = (refUsed + 1) & 0xffff;
    }

    /**
     * The model's IN_ORDER batch: {@code n} chains the device only read, completed with 0, the last at {@code head},
     * join the open batch (one entry, naming the last head, in the slot of the batch's first chain, written when the
     * batch ends); one entry never stands for more chains than the ring holds: a batch that would is published first.
     */
    private static void modelBatch(SplitDeviceRing q, int head, int n) {
        if (refBatchAt < 0) {
            refBatchAt = refUsed;
        } else if (((refUsed - refBatchAt) & 0xffff) + n > size) {
            modelEndBatch();
            checkUsed(q, "the publish before a batch longer than the ring");
            refBatchAt = refUsed;
        }
        refBatchHead = head;
        refUsed = (refUsed + n) & 0xffff;
    }

    private static void modelEndBatch() {
        if (refBatchAt >= 0) {
            if (((refUsed - refBatchAt) & 0xffff) > size) {
                throw new IllegalStateException("the model's batch is longer than the ring");
            }
            shadow.add(new int[] {refBatchAt, refBatchHead, 0});
            refBatchAt = -1;
        }
    }

    private static void publish(SplitDeviceRing q) {
        q.publish();
        modelEndBatch();
        checkUsed(q, "publish");
    }

    /**
     * After a publish: the used index the model's, and every entry written since the last publish in its slot (the
     * later write wins where two share one), as the driver reads them.
     */
    private static void checkUsed(SplitDeviceRing q, String after) {
        long u = A_FILE + USED_OFF;
        int idx = Short.toUnsignedInt(drv.get(LE16, u + USED_IDX));
        // (the ring's own index is checked only after a publish of ours: inside a completion it has moved on already)
        if (idx != refUsed || after.equals("publish") && q.usedIndex() != refUsed) {
            throw new FuzzFinding("after " + after + " the used index is " + idx + " (the ring's " + q.usedIndex()
                    + "), the model has " + refUsed + " (published before: " + refPublished + ")");
        }
        Map<Integer, int[]> want = new HashMap<>();
        for (int[] e : shadow) {
            want.put(e[0] & (size - 1), e);
        }
        for (var w : want.entrySet()) {
            long e = u + USED_RING + (long) USED_ELEM_SIZE * w.getKey();
            int id = drv.get(LE32, e);
            int len = drv.get(LE32, e + 4);
            int[] v = w.getValue();
            if (id != v[1] || len != v[2]) {
                throw new FuzzFinding("after " + after + " used slot " + w.getKey() + " has id " + id + ", len " + len
                        + "; the model wrote id " + v[1] + ", len " + v[2] + " for used index " + v[0]);
            }
        }
        shadow.clear();
        refPublished = refUsed;
    }

    /**
     * IN_ORDER inputs: a burst ({@code popBurst} of 1..70, either direction) held against the model (the avail index
     * read as {@code available} reads it when the burst wants more than was seen; then chains of one descriptor of
     * that direction, inside memory, until one is not), then a prefix completed with {@code completeBurst} in runs
     * (after the chains popped before it; each run's length zero or not, a publish between runs or not) and the rest
     * given back or left for later completions. {@code last} holds the model's last avail index and avail shadow, in
     * and out. Returns false when the ring broke (as it must).
     */
    private static boolean burst(SplitDeviceRing q, FuzzedDataProvider d, DescriptorChain spare, List<Out> outstanding,
                                 int[] last) {
        int max = d.consumeInt(1, 70);
        boolean writable = d.consumeBoolean();
        int refLast = last[0];
        int refShadow = last[1];
        int have = (refShadow - refLast) & 0xffff;
        boolean jump = false;
        if (have < max) {
            int idx = Short.toUnsignedInt(drv.get(LE16, A_FILE + AVAIL_OFF + AVAIL_IDX));
            int n = (idx - refLast) & 0xffff;
            if (have == 0 && n > size) {
                jump = true;
            } else if (have == 0 || n > have && n <= size) {
                refShadow = idx;
                have = n;
            }
        }
        ChainBurst b = new ChainBurst();
        int k;
        try {
            k = q.popBurst(b, max, writable);
        } catch (VirtqueueException e) {
            if (!jump) {
                throw new FuzzFinding("popBurst threw " + e.getMessage() + "; the model counts " + have, e);
            }
            checkBroken(q, spare);
            return false;
        }
        if (jump) {
            throw new FuzzFinding("popBurst took " + k + " past an avail index that jumped beyond the ring");
        }
        int limit = Math.min(Math.min(max, ChainBurst.MAX), have);
        int want = 0;
        boolean other = false;
        List<long[]> takes = new ArrayList<>(); // head, gpa, len
        while (want < limit) {
            int head = Short.toUnsignedInt(drv.get(LE16, A_FILE + AVAIL_OFF + AVAIL_RING + 2L * ((refLast + want) & (size - 1))));
            long db = A_FILE + DESC_OFF + 16L * head;
            int flags = head < size ? Short.toUnsignedInt(drv.get(LE16, db + 12)) : 0;
            long addr = head < size ? drv.get(LE64, db) : 0;
            long len = head < size ? Integer.toUnsignedLong(drv.get(LE32, db + 8)) : 0;
            if (head >= size || (flags & (DESC_F_NEXT | DESC_F_INDIRECT | DESC_F_WRITE)) != (writable ? DESC_F_WRITE : 0)
                    || fileOffset(addr, len) < 0) {
                other = true;
                break;
            }
            takes.add(new long[] {head, addr, len});
            want++;
        }
        if (k != want || b.count() != k || b.stoppedAtOther() != other) {
            throw new FuzzFinding("popBurst of " + max + (writable ? " writable" : " readable") + " took " + k
                    + (b.stoppedAtOther() ? " and stopped before another chain" : "") + "; the model takes " + want
                    + (other ? " and stops before another chain" : "") + " of " + have + " available");
        }
        for (int i = 0; i < k; i++) {
            long[] t = takes.get(i);
            if (b.id(i) != t[0] || b.guestAddress(i) != t[1] || Integer.toUnsignedLong(b.length(i)) != t[2]
                    || b.hostAddress(i) != dev.address() + fileOffset(t[1], t[2])) {
                throw new FuzzFinding("popBurst's chain " + i + " is head " + b.id(i) + " 0x"
                        + Long.toHexString(b.guestAddress(i)) + "+" + Integer.toUnsignedLong(b.length(i))
                        + "; the model has head " + t[0] + " 0x" + Long.toHexString(t[1]) + "+" + t[2]);
            }
            outstanding.add(new Out((int) t[0], !writable, null, b, i));
        }
        refLast = (refLast + k) & 0xffff;
        if (q.lastAvailIndex() != refLast) {
            throw new FuzzFinding("after popBurst the last avail index is " + q.lastAvailIndex() + ", expected " + refLast);
        }
        int complete = d.consumeInt(0, k);
        if (complete > 0) {
            while (outstanding.get(0).burst() != b) { // in pop order: those popped before the burst first
                completeOne(q, outstanding.remove(0), d.consumeBoolean() ? 0 : d.consumeInt());
            }
        }
        for (int done = 0; done < complete; ) {
            int n = d.consumeInt(1, complete - done);
            int len = d.consumeBoolean() ? 0 : d.consumeInt();
            q.completeBurst(b, done, n, len);
            for (int i = done; i < done + n; i++) {
                outstanding.remove(0);
                if (len != 0 || writable) {
                    modelPush(b.id(i), len);
                }
            }
            if (len == 0 && !writable) {
                modelBatch(q, b.id(done + n - 1), n);
            }
            done += n;
            if (d.consumeBoolean()) {
                publish(q);
            }
        }
        if (complete < k && d.consumeBoolean()) {
            q.giveBack(k - complete); // the burst's last chains: the last popped, none completed
            refLast = (refLast - (k - complete)) & 0xffff;
            for (int i = complete; i < k; i++) {
                outstanding.remove(outstanding.size() - 1);
            }
        }
        last[0] = refLast;
        last[1] = refShadow;
        return true;
    }

    /**
     * Pops once and holds the outcome against the model's: {@code refError}, why the ring must refuse (or null);
     * {@code refNone}, nothing to pop; else the chain the model walked (into {@code walked}), named {@code what}.
     * Returns 1 for a chain (to be checked by the caller), 0 for nothing, -1 for a refusal (the ring then checked
     * broken).
     */
    static int popAgainst(DeviceRing q, DescriptorChain chain, String refError, boolean refNone, List<long[]> walked,
                          String what) {
        int probe = burstProbe(q, what);
        boolean got;
        try {
            got = q.pop(chain);
        } catch (VirtqueueException e) {
            if (refError == null) {
                throw new FuzzFinding("pop threw " + e.getMessage() + " but the model accepts "
                        + (refNone ? "nothing to pop" : what + " as " + describe(walked)), e);
            }
            checkBroken(q, chain);
            if (probe >= 0 && (probe & 1) == 0 && !probeLeft) {
                throw new FuzzFinding("popBurst took nothing and found no chain for pop, but pop broke the ring: "
                        + e.getMessage());
            }
            return -1;
        }
        if (refError != null) {
            throw new FuzzFinding("pop returned " + got + " (" + chain + ") but the model says: " + refError);
        }
        if (got == refNone) {
            throw new FuzzFinding(got ? "pop returned " + chain + " but the model has nothing to pop (" + what + ")"
                    : "pop returned nothing; the model pops " + what);
        }
        checkBurstProbe(chain, got, probe, what);
        return got ? 1 : 0;
    }

    /** Which direction the burst probe before each pop asks for, in turn: none, readable, writable. */
    static int probes;
    private static final ChainBurst BURST = new ChainBurst();

    /**
     * The burst path, held against pop: before every second and third pop, {@link DeviceRing#popBurst} for one chain
     * of a direction (readable, then writable); what it takes is given back, and the pop that follows must return
     * that very chain (one buffer, not indirect, that direction, the same address, length and id). Returns how many
     * it took, plus 2 when it asked for writable ones (-1: no probe). It must never throw on a ring that works, and
     * leave nothing changed.
     */
    static int burstProbe(DeviceRing q, String what) {
        int kind = probes++ % 3;
        if (kind == 0 || q.isBroken()) {
            return -1;
        }
        boolean writable = kind == 2;
        int took;
        try {
            took = q.popBurst(BURST, 1, writable);
        } catch (VirtqueueException e) {
            if (q.isBroken()) { // only the avail index of a split ring, checked as pop checks it first
                return -1;
            }
            throw new FuzzFinding("popBurst threw on a ring that is not broken: " + e.getMessage(), e);
        }
        if (took != BURST.count() || took > 1) {
            throw new FuzzFinding("popBurst of 1 took " + took + " (count " + BURST.count() + ")");
        }
        if (q.isBroken()) {
            throw new FuzzFinding("popBurst broke the ring at " + what + ": " + q.brokenReason());
        }
        if (took == 1) {
            q.giveBack(1);
        }
        probeLeft = BURST.stoppedAtOther();
        return took + (writable ? 2 : 0);
    }

    /** What the last probe said of where it stopped ({@link ChainBurst#stoppedAtOther()}). */
    private static boolean probeLeft;

    static void checkBurstProbe(DescriptorChain c, boolean popped, int probe, String what) {
        if (probe < 0) {
            return;
        }
        if ((probe & 1) == 0 && probeLeft != popped) {
            throw new FuzzFinding("popBurst took nothing and said it " + (probeLeft ? "stopped at" : "found no")
                    + " chain for pop, but pop " + (popped ? "returned " + c : "returned nothing") + " (" + what + ")");
        }
        boolean writable = probe >= 2;
        boolean took = (probe & 1) == 1;
        boolean simple = popped && c.count() == 1 && !c.isIndirect() && c.isWritable(0) == writable;
        if (took != simple) {
            throw new FuzzFinding("popBurst (" + (writable ? "writable" : "readable") + ") " + (took ? "took" : "left")
                    + " " + what + ", which pop returned as " + (popped ? c : "nothing"));
        }
        if (took && (BURST.guestAddress(0) != c.guestAddress(0) || BURST.length(0) != c.length(0)
                || BURST.id(0) != c.id() || BURST.hostAddress(0) != c.hostAddress(0))) {
            throw new FuzzFinding("popBurst took " + what + " as gpa 0x" + Long.toHexString(BURST.guestAddress(0)) + "+"
                    + BURST.length(0) + " id " + BURST.id(0) + ", pop returned " + c);
        }
    }

    /**
     * A ring that threw is broken, whatever its layout: it refuses every later pop, count and completion with the same
     * exception type, asks for no work, and read-ahead (a hint) is harmless on it.
     */
    static void checkBroken(DeviceRing q, DescriptorChain chain) {
        if (!q.isBroken() || q.brokenReason() == null) {
            throw new FuzzFinding("the ring threw but is not broken");
        }
        try {
            q.pop(chain);
            throw new FuzzFinding("a broken ring popped again");
        } catch (VirtqueueException expected) {
            // refused
        }
        try {
            q.available();
            throw new FuzzFinding("a broken ring counted available chains");
        } catch (VirtqueueException expected) {
            // refused
        }
        try {
            q.complete(chain, 0);
            throw new FuzzFinding("a broken ring accepted a completion");
        } catch (VirtqueueException expected) {
            // refused
        }
        if (q.enableKicks() || q.enableKicksForMore()) {
            throw new FuzzFinding("a broken ring asks to be processed");
        }
        q.readAhead(q.size());
    }

    /** The safety oracle: every buffer inside one region of guest memory, the sums and order as the spec says. */
    private static void checkChain(DescriptorChain c, int head, MemorySegment scratch) {
        if (c.head() != head || head < 0 || head >= size) {
            throw new FuzzFinding("chain head " + c.head() + ", avail ring named " + head);
        }
        checkBuffers(c, expected, capacity, scratch);
    }

    /**
     * The safety oracle for any ring layout: every buffer of {@code c} inside one region of guest memory, its segment
     * that region's slice, readable before writable, the sums right, and buffer by buffer what the reference walk
     * put in {@code expected} (gpa, len, writable).
     */
    static void checkBuffers(DescriptorChain c, List<long[]> expected, int capacity, MemorySegment scratch) {
        int n = c.count();
        if (n < 1 || n > capacity || n > c.capacity()) {
            throw new FuzzFinding(n + " buffers in a chain of capacity " + capacity);
        }
        long readable = 0, writable = 0;
        boolean touchesB = false;
        for (int i = 0; i < n; i++) {
            boolean w = c.isWritable(i);
            if (w != (i >= c.readableCount())) {
                throw new FuzzFinding("buffer " + i + " writable=" + w + " but " + c.readableCount() + " are readable");
            }
            long len = Integer.toUnsignedLong(c.length(i));
            MemorySegment s = c.segment(i);
            if (s.byteSize() != len) {
                throw new FuzzFinding("buffer " + i + ": segment of " + s.byteSize() + " bytes, length " + len);
            }
            if (c.hostAddress(i) != s.address()) {
                throw new FuzzFinding("buffer " + i + ": host address differs from its segment's");
            }
            // The buffer's guest range must lie inside one region (found here by our own arithmetic), and its
            // segment must be exactly the matching slice of that region's mapping in the device's view.
            long gpa = c.guestAddress(i);
            touchesB |= gpa - B_GPA >= 0 && gpa - B_GPA <= B_SIZE;
            long file = fileOffset(gpa, len);
            if (file < 0) {
                throw new FuzzFinding("buffer " + i + " (gpa 0x" + Long.toHexString(gpa) + "+" + len
                        + ") is not inside guest memory");
            }
            if (s.address() != dev.address() + file) {
                throw new FuzzFinding("buffer " + i + ": guest address 0x" + Long.toHexString(gpa)
                        + " does not translate to its segment");
            }
            MemoryRegion r = regionOfHost(s.address(), len);
            if (r == null || !r.segment().asSlice(s.address() - r.segment().address(), len).equals(s)) {
                throw new FuzzFinding("buffer " + i + ": its segment is not inside a region's mapping");
            }
            if (w) {
                writable += len;
            } else {
                readable += len;
            }
            long[] e = expected.get(i);
            if (e[0] != gpa || e[1] != len || (e[2] != 0) != w) {
                throw new FuzzFinding("buffer " + i + " is 0x" + Long.toHexString(gpa) + "+" + len + (w ? " w" : " r")
                        + ", the reference walk has " + describe(expected));
            }
        }
        if (n != expected.size()) {
            throw new FuzzFinding(n + " buffers, the reference walk has " + describe(expected));
        }
        if (readable != c.readableBytes() || writable != c.writableBytes() || readable + writable > 0xffff_ffffL) {
            throw new FuzzFinding("chain sums " + c + " vs " + readable + "/" + writable);
        }
        if (!touchesB) { // reading B would fill the sparse 4 GiB with pages
            long copied = c.readFrom(0, scratch);
            if (copied != Math.min(readable, scratch.byteSize())) {
                throw new FuzzFinding("readFrom copied " + copied + " of " + readable);
            }
        }
    }

    /** The region whose mapping (in the device's view) holds [addr, addr+len), or null. */
    static MemoryRegion regionOfHost(long addr, long len) {
        for (MemoryRegion r : guest.regions()) {
            long start = r.segment().address();
            long end = start + r.segment().byteSize();
            if (addr >= start && addr <= end && len <= end - addr) {
                return r;
            }
        }
        return null;
    }

    /**
     * An independent walk of the chain at {@code head} over the driver's view of the same bytes, by the rules of
     * design.md ("Split virtqueue"); fills {@link #expected} with (gpa, len, writable) rows and returns null, or
     * returns why the chain must be refused. Region containment is computed differently from {@code MemoryRegion}
     * (by the carry of {@code addr + len}), so a mistake in either shows as a disagreement.
     */
    static String reference(int head) {
        expected.clear();
        if (head >= size) {
            return "head out of range";
        }
        long tableOff = A_FILE + DESC_OFF;
        MemorySegment table = drv;
        int tableSize = size;
        int idx = head;
        int seen = 0;
        boolean inIndirect = false;
        boolean writableSeen = false;
        long total = 0;
        while (true) {
            if (++seen > tableSize) {
                return "loop";
            }
            long b = tableOff + 16L * idx;
            long addr = table.get(LE64, b);
            long len = Integer.toUnsignedLong(table.get(LE32, b + 8));
            int flags = Short.toUnsignedInt(table.get(LE16, b + 12));
            int next = Short.toUnsignedInt(table.get(LE16, b + 14));
            if ((flags & DESC_F_INDIRECT) != 0) {
                if (!indirectAllowed || inIndirect || seen != 1 || (flags & DESC_F_NEXT) != 0) {
                    return "indirect not allowed here";
                }
                if (len == 0 || len % 16 != 0 || len / 16 > capacity || (addr & 15) != 0) {
                    return "bad indirect table";
                }
                long file = fileOffset(addr, len);
                if (file < 0) {
                    return "indirect table outside memory";
                }
                tableOff = file;
                tableSize = (int) (len / 16);
                inIndirect = true;
                idx = 0;
                seen = 0;
                continue;
            }
            boolean w = (flags & DESC_F_WRITE) != 0;
            String why = buffer(expected, capacity, addr, len, w, writableSeen, total);
            if (why != null) {
                return why;
            }
            writableSeen |= w;
            total += len;
            if ((flags & DESC_F_NEXT) == 0) {
                return null;
            }
            if (next >= tableSize) {
                return "next out of range";
            }
            idx = next;
        }
    }

    /**
     * The reference's rules for one more buffer of a chain (either layout): readable before writable, at most 2^32-1
     * bytes in all, inside one region, no more than {@code capacity}; adds it to {@code walked} and returns null, or
     * returns why the chain must be refused.
     */
    static String buffer(List<long[]> walked, int capacity, long addr, long len, boolean w, boolean writableSeen,
                         long total) {
        if (!w && writableSeen) {
            return "readable after writable";
        }
        if (total + len > 0xffff_ffffL) {
            return "too long";
        }
        if (fileOffset(addr, len) < 0) {
            return "buffer outside memory";
        }
        if (walked.size() == capacity) {
            return "too many buffers";
        }
        walked.add(new long[] {addr, len, w ? 1 : 0});
        return null;
    }

    /** Where [gpa, gpa+len) lies in the memfd, or -1 if it is not wholly inside one region. */
    static long fileOffset(long gpa, long len) {
        long[][] regions = {{A_GPA, A_SIZE, A_FILE}, {B_GPA, B_SIZE, B_FILE}, {C_GPA, C_SIZE, C_FILE}};
        for (long[] r : regions) {
            long base = r[0], end = r[0] + r[1]; // end 0 stands for 2^64
            if (Long.compareUnsigned(gpa, base) < 0) {
                continue;
            }
            long last = gpa + len;
            boolean carry = Long.compareUnsigned(last, gpa) < 0;
            boolean inside = carry ? last == 0 && end == 0 : end == 0 || Long.compareUnsigned(last, end) <= 0;
            if (inside) {
                return r[2] + (gpa - base);
            }
        }
        return -1;
    }

    static String describe(List<long[]> l) {
        StringBuilder b = new StringBuilder("[");
        for (long[] e : l) {
            b.append(" 0x").append(Long.toHexString(e[0])).append('+').append(e[1]).append(e[2] != 0 ? "w" : "r");
        }
        return b.append(" ]").toString();
    }

    // ---- decoding the input into ring contents ----------------------------------------------------------------------

    /**
     * Writes {@code count} descriptors at {@code off}: some decoded one by one from the input, the rest from a
     * template (same buffer, flags and a stride for {@code next}), which makes long chains and loops cheap to reach.
     */
    private static void writeTable(FuzzedDataProvider d, MemorySegment s, long off, int count, int tableSize) {
        int explicit = d.consumeInt(0, Math.min(count, 32));
        for (int i = 0; i < explicit; i++) {
            writeDesc(d, s, off, i, tableSize);
        }
        if (explicit == count) {
            return;
        }
        boolean template = d.consumeBoolean();
        long addr = template ? addr(d) : 0;
        int len = template ? len(d) : 0;
        short flags = template ? (short) flags(d) : 0;
        int stride = template ? d.consumeInt(0, 3) : 0;
        int wrapTo = template ? d.consumeInt(0, tableSize) : 0;
        int endAt = template ? d.consumeInt(explicit, count) : 0; // the template's chain ends there (no NEXT)
        for (int i = explicit; i < count; i++) {
            long b = off + 16L * i;
            s.set(LE64, b, addr);
            s.set(LE32, b + 8, len);
            s.set(LE16, b + 12, i == endAt ? (short) (flags & ~DESC_F_NEXT) : flags);
            int next = i + stride;
            s.set(LE16, b + 14, (short) (next >= count ? wrapTo : next));
        }
    }

    private static void writeDesc(FuzzedDataProvider d, MemorySegment s, long off, int i, int tableSize) {
        long b = off + 16L * i;
        if (d.consumeInt(0, 7) == 0) { // raw bytes
            s.set(LE64, b, d.consumeLong());
            s.set(LE64, b + 8, d.consumeLong());
            return;
        }
        s.set(LE64, b, addr(d));
        s.set(LE32, b + 8, len(d));
        s.set(LE16, b + 12, (short) flags(d));
        s.set(LE16, b + 14, (short) switch (d.consumeInt(0, 3)) {
            case 0 -> d.consumeShort();
            case 1 -> i + 1; // as drivers chain them
            default -> d.consumeInt(0, tableSize);
        });
    }

    static long addr(FuzzedDataProvider d) {
        return switch (d.consumeInt(0, 9)) {
            case 0 -> d.consumeLong();
            case 1 -> A_GPA + DATA_OFF + d.consumeInt(0, (int) (A_SIZE - DATA_OFF) + 64);
            case 2 -> B_GPA + (d.consumeBoolean() ? d.consumeLong(0, B_SIZE + 64) : B_SIZE - d.consumeLong(0, 0x8000_0040L));
            case 3 -> C_GPA + d.consumeInt(0, (int) C_SIZE + 64); // past 2^64 wraps to small addresses
            case 4 -> A_GPA + IND_OFF + 16L * d.consumeInt(0, 1100);
            case 5 -> IND_C_GPA + 16L * d.consumeInt(0, 64);
            case 6 -> new long[] {A_GPA, B_GPA, C_GPA}[d.consumeInt(0, 2)] - d.consumeInt(1, 64);
            case 7 -> new long[] {A_GPA + A_SIZE, B_GPA + B_SIZE, 0}[d.consumeInt(0, 2)] - d.consumeInt(0, 64);
            case 8 -> A_GPA + d.consumeInt(0, (int) A_SIZE); // anywhere, the ring itself included
            default -> A_GPA + IND_OFF + d.consumeInt(0, 64);
        };
    }

    static int len(FuzzedDataProvider d) {
        return switch (d.consumeInt(0, 5)) {
            case 0 -> d.consumeInt();
            case 1 -> d.consumeInt(0, 2048);
            case 2 -> 16 * d.consumeInt(0, 1100);
            case 3 -> -1 - d.consumeInt(0, 64); // near 2^32
            case 4 -> 0x8000_0000 + d.consumeInt(-16, 16);
            default -> d.consumeInt(0, 64);
        };
    }

    private static int flags(FuzzedDataProvider d) {
        return d.consumeInt(0, 7) == 0 ? d.consumeShort() & 0xffff : d.consumeInt(0, 7);
    }

    private static int head(FuzzedDataProvider d) {
        return d.consumeInt(0, 3) == 0 ? d.consumeShort() & 0xffff : d.consumeInt(0, size);
    }

    /** Writes {@code count} indirect descriptors at file offset {@code off}, in a ring layout's format. */
    interface TableWriter {
        void write(long off, int count);
    }

    /**
     * The two indirect areas (A's, and the 16-byte-aligned guest address at the start of C) with up to 1100 and 64
     * descriptors, whatever of the last input's tables lay beyond them zeroed.
     */
    static void writeIndirectAreas(FuzzedDataProvider d, TableWriter w) {
        int indA = d.consumeInt(0, 1100);
        w.write(A_FILE + IND_OFF, indA);
        long indABytes = 16L * indA;
        if (dirtyIndA > indABytes) {
            drv.asSlice(A_FILE + IND_OFF + indABytes, dirtyIndA - indABytes).fill((byte) 0);
        }
        dirtyIndA = indABytes;
        int indC = d.consumeInt(0, 64);
        w.write(IND_C_FILE, indC);
        long indCBytes = 16L * indC;
        if (dirtyIndC > indCBytes) {
            drv.asSlice(IND_C_FILE + indCBytes, dirtyIndC - indCBytes).fill((byte) 0);
        }
        dirtyIndC = indCBytes;
    }

    /** Writes the avail ring; returns the avail index written. */
    private static int writeAvail(FuzzedDataProvider d, int lastAvail) {
        long a = A_FILE + AVAIL_OFF;
        drv.set(LE16, a + AVAIL_FLAGS, d.consumeShort());
        int idx = switch (d.consumeInt(0, 3)) {
            case 0 -> d.consumeShort() & 0xffff;
            case 1 -> (lastAvail + size + d.consumeInt(0, 3)) & 0xffff; // full ring, or just over
            default -> (lastAvail + d.consumeInt(0, Math.min(size, 64))) & 0xffff;
        };
        drv.set(LE16, a + AVAIL_IDX, (short) idx);
        int explicit = d.consumeInt(0, Math.min(size, 64));
        for (int i = 0; i < explicit; i++) {
            drv.set(LE16, a + AVAIL_RING + 2L * ((lastAvail + i) & (size - 1)), (short) head(d));
        }
        int stride = d.consumeInt(0, 3);
        for (int i = explicit; i < Math.min(size, 2 * MAX_OPS); i++) {
            drv.set(LE16, a + AVAIL_RING + 2L * ((lastAvail + i) & (size - 1)), (short) ((i * stride) & (size - 1)));
        }
        drv.set(LE16, a + SplitRing.AVAIL_RING + 2L * size, d.consumeShort()); // used_event
        return idx;
    }
}
