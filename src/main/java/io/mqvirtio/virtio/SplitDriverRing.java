package io.mqvirtio.virtio;

import static io.mqvirtio.virtio.SplitRing.*;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.invoke.VarHandle;

/**
 * The driver's side of one split virtqueue (VIRTIO 1.3, 2.7): a free list of descriptors, chains added to the
 * avail ring, one release store of avail.idx per batch, the kick decision (EVENT_IDX's {@code avail_event} or
 * VIRTQ_USED_F_NO_NOTIFY), and reaping used entries.
 *
 * <p>The device is not trusted either: a used entry naming a descriptor that is not in flight, or one added but
 * not published yet, or a used index that runs ahead of what was made available, throws {@link VirtqueueException}
 * and breaks the queue. A device sees the avail ring's entries as they are written, before avail.idx publishes
 * them: returning those would let it keep a reap loop that reposts each buffer it reaps going for ever, since what
 * the loop reposts becomes "in flight" at once. So only what was published can come back.
 *
 * <p>With IN_ORDER (2.7.9) descriptors are taken in ring order (the free list is first in, first out, and the
 * device gives chains back in the order they were made available), and one used entry may stand for a batch: it
 * lies in the slot of the batch's first chain, names its last, and the used index moves on by the batch's size, so
 * the used index counts chains either way. The chains before the one it names were used whole: each is reaped with
 * the bytes its writable descriptors offer, as Linux's virtio_ring does (its {@code total_len}); only the named one
 * has the entry's length. They are reaped one by one, oldest first.
 *
 * <p>Buffers are given by guest-physical address, as the device will see them. Single-threaded: one queue-pair
 * handle owns a queue.
 */
public final class SplitDriverRing implements DriverRing {
    private final int size;
    private final int mask;
    private final MemorySegment desc;
    private final MemorySegment avail;
    private final MemorySegment used;
    private final boolean eventIdx;
    private final long usedEventOff;
    private final long availEventOff;
    private final int[] chainLength;   // by head: descriptors the chain took from the free list (0 = not in flight)
    private final int[] writable;      // by head: bytes its device-writable buffers offer (a skipped chain's length)
    private final int[] next;          // free-list and chain links, kept here: the device can write the table too
    private final MemorySegment indirectArea;
    private final long indirectAreaGpa;
    private final int indirectMax;     // descriptors per indirect table slot

    private int freeHead;
    private int freeTail;
    private int numFree;
    private final boolean inOrder;
    private final int[] order;     // IN_ORDER: heads in the order they were made available
    /** {@link #addBurst}'s descriptors and avail entries before they are copied into the ring, where they go there. */
    private final MemorySegment stageDesc;
    private final MemorySegment stageAvail;
    private int orderHead;
    private int orderTail;
    private int chainsInFlight;
    private int batchLeft;         // IN_ORDER: chains of the current used entry still to reap
    private int batchLen;
    private int availIdx;      // shadow of avail.idx
    private int publishedIdx;  // avail.idx as last stored: the chains before it were made available
    private final int[] availAt;   // by head: the avail index its entry was written at
    private int kickedAvail;   // avail.idx at the previous kick decision
    private int lastUsed;      // next used slot to reap
    private int usedShadow;    // used.idx as last read
    private int reapedLen;
    private String broken;

    /**
     * @param desc/avail/used the ring parts in this process's view of the shared memory (all zeroed by the caller)
     * @param indirectArea    null, or memory for one indirect table per head ({@code size × indirectMax × 16} bytes)
     *                        whose guest-physical address is {@code indirectAreaGpa}
     */
    public SplitDriverRing(int size, MemorySegment desc, MemorySegment avail, MemorySegment used, long features,
                       MemorySegment indirectArea, long indirectAreaGpa, int indirectMax) {
        if (!isValidSize(size)) {
            throw new IllegalArgumentException("queue size " + size + " is not a power of two in 1.." + MAX_SIZE);
        }
        checkPart("descriptor table", desc, descTableBytes(size), 16);
        checkPart("available ring", avail, availBytes(size), 2);
        checkPart("used ring", used, usedBytes(size), 4);
        this.size = size;
        this.mask = size - 1;
        this.desc = desc;
        this.avail = avail;
        this.used = used;
        this.eventIdx = VirtioFeatures.has(features, VirtioFeatures.F_EVENT_IDX);
        this.usedEventOff = usedEventOffset(size);
        this.availEventOff = availEventOffset(size);
        this.chainLength = new int[size];
        this.writable = new int[size];
        this.availAt = new int[size];
        this.next = new int[size];
        this.indirectArea = indirectArea;
        this.indirectAreaGpa = indirectAreaGpa;
        this.indirectMax = indirectArea == null ? 0 : indirectMax;
        if (indirectArea != null && indirectArea.byteSize() < (long) size * indirectMax * DESC_SIZE) {
            throw new IllegalArgumentException("indirect area too small");
        }
        for (int i = 0; i < size; i++) {
            next[i] = (i + 1) & mask;
        }
        freeHead = 0;
        freeTail = size - 1;
        numFree = size;
        this.inOrder = VirtioFeatures.has(features, VirtioFeatures.F_IN_ORDER);
        this.order = new int[size];
        Arena stages = Arena.ofAuto();
        this.stageDesc = stages.allocate(descTableBytes(size), 64);
        this.stageAvail = stages.allocate(2L * size, 64);
    }

    public SplitDriverRing(int size, MemorySegment desc, MemorySegment avail, MemorySegment used, long features) {
        this(size, desc, avail, used, features, null, 0, 0);
    }

    @Override
    public int size() {
        return size;
    }

    @Override
    public int freeDescriptors() {
        return numFree;
    }

    /** Chains added and not yet reaped. */
    @Override
    public int inFlight() {
        return chainsInFlight;
    }

    public int availIndex() {
        return availIdx;
    }

    @Override
    public boolean isBroken() {
        return broken != null;
    }

    @Override
    public String brokenReason() {
        return broken;
    }

    @Override
    public boolean supportsIndirect() {
        return indirectMax > 0;
    }

    /**
     * Adds a chain of {@code out} device-readable then {@code in} device-writable buffers (guest-physical address
     * and length each) using direct descriptors. Not visible to the device until {@link #publish()}.
     *
     * @return the head index (the chain's identity in the used ring), or -1 if the ring has too few free descriptors
     */
    @Override
    public int add(long[] addr, int[] len, int out, int in) {
        int n = out + in;
        if (n <= 0 || n > addr.length || n > len.length) {
            throw new IllegalArgumentException("chain of " + out + "+" + in + " buffers");
        }
        checkNotBroken();
        if (numFree < n) {
            return -1;
        }
        int head = freeHead;
        int idx = head;
        long offered = 0;
        for (int i = 0; i < n; i++) {
            offered += i >= out ? Integer.toUnsignedLong(len[i]) : 0;
            long base = (long) idx * DESC_SIZE;
            desc.set(U64, base + DESC_ADDR, addr[i]);
            desc.set(U32, base + DESC_LEN, len[i]);
            setU16(desc, base + DESC_FLAGS, (i >= out ? DESC_F_WRITE : 0) | (i + 1 < n ? DESC_F_NEXT : 0));
            setU16(desc, base + DESC_NEXT, next[idx]);
            idx = next[idx];
        }
        freeHead = idx;
        numFree -= n;
        chainLength[head] = n;
        writable[head] = offeredLength(offered);
        exposeHead(head);
        return head;
    }

    /**
     * {@inheritDoc} The descriptors (the address, then the length, flags and a zero next as one long) and the avail
     * entries are written into buffers of this ring's own, then copied into the ring a run at a time: the
     * descriptors in one copy when their heads are one run (as the free list gives them back under IN_ORDER), else
     * one by one; the avail entries in one copy, or two at the ring's end. Whole lines at a time, where stores field
     * by field into the ring each waited for a line the device's CPU held. Measured against those stores (paired
     * windows, 2026-12-07): our driver into DPDK's vhost 1.18x at 64 B (1500 B 0.995x), into our backend 1.22x /
     * 1.21x, the CPUs far apart.
     */
    @Override
    public int addBurst(long[] addr, int[] len, int n, boolean writable, int[] ids) {
        if (n < 0 || n > addr.length || n > len.length || n > ids.length) {
            throw new IllegalArgumentException("burst of " + n + " chains");
        }
        checkNotBroken();
        int k = Math.min(n, numFree);
        if (k == 0) {
            return 0;
        }
        MemorySegment sd = stageDesc;
        MemorySegment sa = stageAvail;
        long flags = (long) (writable ? DESC_F_WRITE : 0) << 32;
        int head = freeHead;
        int lo = size;
        int hi = -1;
        int firstSlot = availIdx & mask;
        for (int i = 0; i < k; i++) {
            long base = (long) head * DESC_SIZE;
            sd.set(U64, base + DESC_ADDR, addr[i]);
            sd.set(U64, base + DESC_LEN, Integer.toUnsignedLong(len[i]) | flags);
            sa.set(U16, 2L * (availIdx & mask), (short) head);
            chainLength[head] = 1;
            this.writable[head] = writable ? len[i] : 0;
            exposed(head);
            ids[i] = head;
            lo = Math.min(lo, head);
            hi = Math.max(hi, head);
            head = next[head];
        }
        freeHead = head;
        numFree -= k;
        if (hi - lo + 1 == k) {
            Rings.copyEntries(sd, desc, 0, lo, k, size, DESC_SIZE); // one run: never past the table's end
        } else {
            for (int i = 0; i < k; i++) {
                long base = (long) ids[i] * DESC_SIZE;
                desc.set(U64, base + DESC_ADDR, sd.get(U64, base + DESC_ADDR));
                desc.set(U64, base + DESC_LEN, sd.get(U64, base + DESC_LEN));
            }
        }
        Rings.copyEntries(sa, avail, AVAIL_RING, firstSlot, k, size, 2);
        return k;
    }

    /**
     * Adds a chain through one indirect descriptor (VIRTIO 1.3, 2.7.5.3): the buffers go into this head's slot of
     * the indirect area and only one ring descriptor is used.
     *
     * @return the head index, or -1 if no descriptor is free
     */
    @Override
    public int addIndirect(long[] addr, int[] len, int out, int in) {
        int n = out + in;
        if (indirectMax == 0) {
            throw new IllegalStateException("no indirect area");
        }
        if (n <= 0 || n > indirectMax) {
            throw new IllegalArgumentException("indirect chain of " + n + " buffers, at most " + indirectMax);
        }
        checkNotBroken();
        if (numFree < 1) {
            return -1;
        }
        int head = freeHead;
        long slot = (long) head * indirectMax * DESC_SIZE;
        long offered = 0;
        for (int i = 0; i < n; i++) {
            offered += i >= out ? Integer.toUnsignedLong(len[i]) : 0;
            long base = slot + (long) i * DESC_SIZE;
            indirectArea.set(U64, base + DESC_ADDR, addr[i]);
            indirectArea.set(U32, base + DESC_LEN, len[i]);
            setU16(indirectArea, base + DESC_FLAGS, (i >= out ? DESC_F_WRITE : 0) | (i + 1 < n ? DESC_F_NEXT : 0));
            setU16(indirectArea, base + DESC_NEXT, i + 1);
        }
        long base = (long) head * DESC_SIZE;
        desc.set(U64, base + DESC_ADDR, indirectAreaGpa + slot);
        desc.set(U32, base + DESC_LEN, n * DESC_SIZE);
        setU16(desc, base + DESC_FLAGS, DESC_F_INDIRECT);
        freeHead = next[head];
        numFree--;
        chainLength[head] = 1;
        writable[head] = offeredLength(offered);
        exposeHead(head);
        return head;
    }

    /** A chain's writable bytes as a used length (32 bits, unsigned; a chain may not offer more, 2.7.5). */
    static int offeredLength(long bytes) {
        return (int) Math.min(bytes, 0xffff_ffffL);
    }

    private void exposeHead(int head) {
        setU16(avail, AVAIL_RING + 2L * (availIdx & mask), head);
        exposed(head);
    }

    /** The books of a chain whose avail entry was written at {@code availIdx}. */
    private void exposed(int head) {
        availAt[head] = availIdx;
        availIdx = (availIdx + 1) & 0xffff;
        chainsInFlight++;
        if (inOrder) {
            order[orderTail] = head;
            orderTail = orderTail + 1 == size ? 0 : orderTail + 1;
        }
    }

    /** Makes the chains added so far visible to the device (one release store). */
    @Override
    public void publish() {
        setU16Release(avail, AVAIL_IDX, availIdx);
        publishedIdx = availIdx;
    }

    /** Chains added and not published yet: the newest in flight. */
    private int unpublished() {
        return (availIdx - publishedIdx) & 0xffff;
    }

    /** Whether the chain in flight at {@code head} was published (its avail entry lies before publishedIdx). */
    private boolean published(int head) {
        return ((availAt[head] - publishedIdx) & 0xffff) >= unpublished();
    }

    /**
     * Whether the device wants a kick for what was published since the previous call (VIRTIO 1.3, 2.7.10): with
     * EVENT_IDX, when {@code avail_event} was crossed; otherwise unless it set VIRTQ_USED_F_NO_NOTIFY.
     */
    @Override
    public boolean needsKick() {
        VarHandle.fullFence();
        int old = kickedAvail;
        kickedAvail = availIdx;
        if (eventIdx) {
            return needEvent(getU16(used, availEventOff), availIdx, old);
        }
        return old != availIdx && (getU16(used, USED_FLAGS) & USED_F_NO_NOTIFY) == 0;
    }

    /**
     * Chains the device has used (published) that were not reaped yet, exact whatever {@code enough} is: the used
     * index counts them; a broken ring throws, as the packed one does (it counted on, from a used index it checked
     * against books the break left behind).
     */
    @Override
    public int usedPending(int enough) {
        checkNotBroken();
        int idx = getU16Acquire(used, USED_IDX);
        int entries = (idx - lastUsed) & 0xffff;
        // The used index counts chains, IN_ORDER or not (2.7.9: a batch's one entry moves it on by the batch's
        // size; lastUsed moves on by each chain reaped, a batch's included), so it stays within the published avail
        // index and the chains published and in flight.
        int publishedInFlight = chainsInFlight - unpublished();
        if (entries > ((publishedIdx - lastUsed) & 0xffff) || entries > publishedInFlight) {
            fail("used index " + idx + " runs ahead of the " + publishedInFlight + " chains in flight that were made "
                    + "available");
        }
        usedShadow = idx;
        return entries;
    }

    /**
     * IN_ORDER: how many chains, from the {@code skip}-th oldest in flight on, up to and including {@code head}; the
     * batch may not reach past the chains published.
     */
    private int batchSize(int head, int skip) {
        int h = (orderHead + skip) % size;
        for (int n = 1; n <= chainsInFlight - unpublished() - skip; n++) {
            if (order[h] == head) {
                return n;
            }
            h = h + 1 == size ? 0 : h + 1;
        }
        fail("used entry names descriptor " + Integer.toUnsignedString(head) + ", which is not among the chains made "
                + "available and in flight (IN_ORDER)");
        return 0;
    }

    /**
     * Reaps one used entry: returns its head, or -1 if none is pending; {@link #reapedLength()} then tells how many
     * bytes the device wrote. The chain's descriptors return to the free list.
     */
    @Override
    public int reap() {
        checkNotBroken();
        if (batchLeft > 0) {
            return reapFromBatch();
        }
        if (lastUsed == usedShadow && usedPending(1) == 0) {
            return -1;
        }
        long e = USED_RING + (long) USED_ELEM_SIZE * (lastUsed & mask);
        int id = used.get(U32, e);
        int len = used.get(U32, e + 4);
        if (id < 0 || id >= size || chainLength[id] == 0) {
            fail("used ring slot " + (lastUsed & mask) + " returns descriptor " + Integer.toUnsignedString(id)
                    + ", which is not a chain in flight");
        }
        if (!published(id)) {
            fail("used ring slot " + (lastUsed & mask) + " returns descriptor " + id + ", a chain not made available"
                    + " yet (added, not published)");
        }
        if (inOrder) {
            int batch = batchSize(id, 0);
            int counted = (usedShadow - lastUsed) & 0xffff;
            if (batch > counted) {
                fail("used ring slot " + (lastUsed & mask) + " names descriptor " + id + ", the last of a batch of "
                        + batch + " chains (IN_ORDER), but the used index counts only " + counted + " more");
            }
            batchLeft = batch;
            batchLen = len;
            return reapFromBatch();
        }
        lastUsed = (lastUsed + 1) & 0xffff;
        release(id);
        reapedLen = len;
        return id;
    }

    /**
     * The oldest chain of the current IN_ORDER batch: the one the entry named, the last, gets its length; the ones
     * before it were used whole (2.7.9), each the bytes it offered.
     */
    private int reapFromBatch() {
        int head = order[orderHead];
        orderHead = orderHead + 1 == size ? 0 : orderHead + 1;
        batchLeft--;
        lastUsed = (lastUsed + 1) & 0xffff;
        reapedLen = batchLeft == 0 ? batchLen : writable[head];
        release(head);
        return head;
    }

    /** The chain at {@code head} goes back to the free list, at its end (ring order, for IN_ORDER). */
    private void release(int head) {
        int n = chainLength[head];
        chainLength[head] = 0;
        int tail = head;
        for (int i = 1; i < n; i++) {
            tail = next[tail];
        }
        if (numFree == 0) {
            freeHead = head;
        } else {
            next[freeTail] = head;
        }
        freeTail = tail;
        numFree += n;
        chainsInFlight--;
    }

    /** Bytes the device wrote into the chain the last {@link #reap()} returned. */
    @Override
    public int reapedLength() {
        return reapedLen;
    }

    /** Asks the device not to notify (the driver polls). */
    @Override
    public void disableInterrupts() {
        if (!eventIdx) {
            setU16(avail, AVAIL_FLAGS, AVAIL_F_NO_INTERRUPT);
        }
    }

    /**
     * Asks the device to notify on the next used entry. Returns true if entries arrived meanwhile (reap them before
     * sleeping).
     */
    @Override
    public boolean enableInterrupts() {
        if (eventIdx) {
            setU16(avail, usedEventOff, lastUsed);
        } else {
            setU16(avail, AVAIL_FLAGS, 0);
        }
        VarHandle.fullFence();
        return batchLeft > 0 || getU16Acquire(used, USED_IDX) != lastUsed;
    }

    private void checkNotBroken() {
        if (broken != null) {
            throw new VirtqueueException("queue is broken: " + broken);
        }
    }

    private void fail(String why) {
        broken = why;
        throw new VirtqueueException(why);
    }
}
